"""Red-flag rules: phrase groups per language and category, NegEx-style negation, resolution cues.

Each rule is a set of phrase groups that must all occur, unnegated, in the message. Negation is
handled in the NegEx style (Chapman et al., 2001, "A simple algorithm for identifying negated
findings and diseases in discharge summaries"): a cue such as "no", "denies", "没有" shortly
*before* a phrase (Chinese, English) or "없다"/"않다" shortly *after* it (Korean) cancels it within
its clause. A resolution cue in the same or the next sentence ("now gone", "已经好了", "지금은
괜찮아요") cancels the whole sentence unless a persistence cue ("still", "又", "다시") is there too,
and general knowledge questions with no person in them ("What are the signs of a stroke?") raise
no flag. Rules are fast, auditable and give the same result in every front end; the learned
classifier (:mod:`medtune.safety.classifier`) weighs their verdict (:mod:`medtune.safety.guard`).
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache

from medtune.text import detect_language



def _c(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE)


# Phrase groups. A rule fires when every group in it matches somewhere in the message, unnegated.
_EN = {
    "chest": r"chest (pain|pressure|tightness|discomfort|hurts|feels (tight|heavy))|pain in (my|his|her|the) chest"
             r"|(crushing|squeezing|heavy) (feeling|pressure|pain|weight) (in|on) (my|his|her|the) chest"
             r"|chest (is|was|has been|had been|keeps|kept|started|feels like it'?s) (crushing|squeezing|being crushed|being squeezed)",
    "cardiac_sign": r"sweat|clammy|short(ness)? of breath|breathless|out of breath|can'?t (catch (my|his|her) )?breath"
                    r"|(trouble|difficulty|hard time) breathing|(left )?arm|jaw|nause|faint|dizz|light-?headed",
    "fever": r"fever|temperature (of |is )?(3[89]|10[0-4])|\b3[89](\.\d)? ?°? ?c\b|\b10[0-4](\.\d)? ?°? ?f\b|burning up|feels? (very )?hot",
    "infant": r"newborn|neonat|\b([1-9]|1[0-2]|one|two|three|four|five|six|seven|eight|nine|ten)[- ]?(weeks?|wks?)[- ]old"
              r"|\b(\d{1,2}|one|two|three|four|five|six|ten)[- ]?days?[- ]old|\b([12]|one|two)[- ]?months?[- ]old",
}


RULES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "en": [
        ("cardiac", (_EN["chest"], _EN["cardiac_sign"])),
        ("cardiac", (r"(crushing|severe|squeezing|worst) chest pain|(is|am|'m|be) having a heart attack",)),
        ("stroke", (r"(face|mouth|smile) (is |looks )?(droop|twisted|lopsided|uneven|sagging)|droop(ing|y) (face|mouth|smile)"
                    r"|slurr|can'?t (speak|talk|get (my|his|her) words out|find (my|his|her) words)|speech (is |sounds )?(garbled|slurred)"
                    r"|sudden(ly)?\b.{0,40}\b(weak|numb|confus|can'?t see|vision|lost (his|her|my) balance)"
                    r"|(weak|numb|paraly[sz]ed?)\w*.{0,25}(one side|left side|right side|one arm|one leg)"
                    r"|(one|left|right) side of (my|his|her) (body|face).{0,25}(weak|numb|droop|dead)"
                    r"|worst headache|(is|am|'m) having a stroke",)),
        ("anaphylaxis", (r"(throat|tongue|lips?|face) (is |are |feels? |started )?(swell|swollen|puff|closing|tight)"
                         r"|swelling (of|in) (the |my |his |her )?(throat|tongue|lips)|anaphyla|epi-?pen",)),
        ("anaphylaxis", (r"\b(stung|sting|peanut|shellfish|allerg|penicillin|injection)",
                         r"can'?t breathe|(trouble|difficulty) breathing|wheez|hives all over|throat")),
        ("breathing", (r"can'?t breathe|cannot breathe|unable to breathe|struggling to breathe|gasping for (air|breath)"
                       r"|turning blue|(lips|face) (are |is |look |looks )?(turning )?(blue|grey|gray)|is choking|choking on",)),
        ("bleeding", (r"(bleed\w*|blood)\b.{0,30}(won'?t|will not|doesn'?t|does not|can'?t|not) stop|soak\w* (through )?(a |the |my )?(pad|towel|bandage|shirt)s?"
                      r"|(vomit\w*|throw\w* up|threw up) (a lot of |lots of )?blood|cough\w* (up )?blood|spurting|gushing|heavy bleeding|bleeding heavily"
                      r"|black,? tarry stool|pregnan.{0,50}bleed|bleed.{0,50}pregnan",)),
        ("suicide", (r"kill (myself|me)|suicid|end (my life|it all)|take my (own )?life|want to die|wanna die"
                     r"|(don'?t|do not) want to (live|be alive|wake up)|better off dead|hurt(ing)? myself|self[- ]harm|cut(ting)? myself|no reason to live",)),
        ("poisoning", (r"overdos|took (too many|a (whole|full) (bottle|box|pack|strip)|all (of )?(my|the|his|her) (pills|tablets|medicine))"
                       r"|(swallow|drank|drunk|ate|eaten|drink)\w*\b.{0,40}(bleach|button battery|batter(y|ies)|detergent|laundry pod|pesticide|antifreeze|weed ?killer|rat poison|paint thinner|pills|tablets)"
                       r"|(?<!food )poison(ed|ing)|carbon monoxide",)),
        ("infant_fever", (_EN["infant"], _EN["fever"])),
        ("seizure", (r"(seiz|convuls|fit)\w*\b.{0,40}(\d+ minutes|won'?t stop|not stopping|keeps? going)"
                     r"|unconscious|unresponsive|(won'?t|can'?t|doesn'?t|not) wak(e|ing) (him|her|up)|passed out and (isn'?t|is not|hasn'?t)",)),
        ("head_injury", (r"(hit|bang|bump|injur|fell on)\w* (on )?(his|her|my|the) head",
                         r"vomit|threw up|passed out|knocked out|confus|drowsy|(very|really) sleepy")),
        ("meningitis", (r"stiff neck.{0,50}(fever|rash)|(fever|rash).{0,50}stiff neck|rash.{0,30}(doesn'?t|does not|won'?t) fade",)),
    ],
    "zh": [
        ("cardiac", (r"胸(口|部)?.{0,3}(痛|疼|闷|压|紧|憋)|心(口|前区)(痛|疼)",
                     r"(出|冒)(冷)?汗|大汗|喘不(上|过)气|呼吸(困难|急促)|气短|气促|憋气|左(臂|肩|胳膊)|下巴|恶心|头晕|晕厥")),
        ("cardiac", (r"剧烈(的)?胸(痛|疼)|胸口像.{0,4}(压|石头)|心(脏)?病(发作|犯了)|心梗",)),
        ("stroke", (r"(嘴|口)(角)?(歪|斜)|面瘫|说话(不清|含糊|含混|说不清|说不出)|口齿不清|说不出话"
                    r"|(一侧|半边|单侧|左侧|右侧|左边|右边)(身体|手脚|肢体|胳膊|手|腿|脸)?.{0,6}(无力|麻木|动不了|没力气|没劲)"
                    r"|突然.{0,10}(看不见|失明|意识模糊|糊涂|站不稳|无力|麻木)|(这辈子|一生中|有史以来)最(剧烈|严重|痛)的头痛|中风|脑卒中",)),
        ("anaphylaxis", (r"(喉咙|嗓子|舌头|嘴唇)(发?肿|肿胀|肿起|发紧|堵)|过敏性休克",)),
        ("anaphylaxis", (r"过敏|(被)?(蜂|蜜蜂|黄蜂)(蛰|蜇)|花生|海鲜|青霉素|打(完)?针",
                         r"呼吸困难|喘不(上|过)气|(喉咙|嗓子)|全身(起)?(荨麻疹|风团|疹子)")),
        ("breathing", (r"喘不(上|过)气|无法呼吸|不能呼吸|呼吸不了|(嘴唇|脸)(色)?(发紫|发青|青紫)|噎住|窒息",)),
        ("bleeding", (r"(血|出血|流血).{0,6}(止不住|不止|停不下来|一直流)|大(量)?出血|(吐|呕)(了)?.{0,4}血|出血(很|非常|特别)多|咯血|咳血|黑便|柏油(样)?便"
                      r"|喷血|怀孕.{0,20}(出血|流血)|(出血|流血).{0,10}(湿透|浸透)|(湿透|浸透).{0,4}(卫生巾|纱布|毛巾)|(卫生巾|纱布|毛巾).{0,6}(湿透|浸透)",)),
        ("suicide", (r"自杀|轻生|想死|不想活|活不下去|结束(自己的)?生命|了结自己|自残|割腕|跳楼|伤害自己",)),
        ("poisoning", (r"(吃|喝|吞|服)(了|下)?.{0,10}(农药|百草枯|敌敌畏|老鼠药|鼠药|漂白|洗衣(液|凝珠)|消毒(液|水)|纽扣电池|整(瓶|盒))"
                       r"|误(服|食|吞|喝)|(服|吃)(药)?过量|吃了(一|整)(瓶|盒|把)|(多|过)量服(用)?|(?<!食物)中毒|煤气|偷吃|(孩子|宝宝|小孩).{0,10}吃(了|下).{0,10}药",)),
        ("infant_fever", (r"新生儿|(\d{1,2}|[一二两三四五六七八九十]+)(天|周)(大)?的?(宝宝|婴儿|孩子|宝|女儿|儿子)|(出生|生下来)(\d{1,2}|[一二两三四五六七八九十]+)(天|周)"
                          r"|([12]|[一两二])个(多)?月(大的?|的|宝宝|婴儿)",
                          r"发烧|发热|高烧|烧到|体温.{0,4}3[89]|3[89](\.\d)?\s*(度|℃)")),
        ("seizure", (r"抽(搐|筋|风).{0,12}((\d+|[一二两三四五六七八九十几]+)\s*分钟|不停|停不下来)|叫不醒|昏迷|失去意识|不省人事|没(有)?反应",)),
        ("head_injury", (r"(撞|摔|磕|碰)(到|伤|了)?.{0,4}头", r"呕吐|吐了|昏|意识(不清|模糊)|嗜睡|叫不醒|犯困")),
        ("meningitis", (r"脖子(僵硬|发硬).{0,10}(发烧|发热|皮疹)|(发烧|发热).{0,10}脖子(僵硬|发硬)",)),
    ],
    "ko": [
        ("cardiac", (r"가슴(이|에|을|이\s*너무)?\s*(통증|아프|아파|아픈|조이|조여|답답|짓누르|누르|쥐어짜|압박)|흉통",
                     r"식은\s*땀|땀(이|을|으로)?\s*(많이|흘|나|줄줄|흠뻑)|숨(이|을)?\s*(차|쉬기\s*(힘들|어렵)|막히|못\s*쉬)|호흡\s*곤란|왼(쪽)?\s*(팔|어깨)|턱|메스껍|구역|어지럽|실신|기절")),
        ("cardiac", (r"(심한|극심한|찢어지는|쥐어짜는)\s*(가슴\s*통증|흉통)|심장\s*마비|심근\s*경색(이\s*온|인\s*것)",)),
        ("stroke", (r"(입|얼굴|입꼬리)(이|가)?\s*(한쪽으로\s*)?(돌아가|비뚤|처지|처졌|마비)|말(이|을)?\s*(어눌|안\s*나오|잘\s*안\s*나|꼬이|못\s*하)|발음이\s*어눌"
                    r"|(한쪽|왼쪽|오른쪽|반쪽)\s*(팔|다리|몸|얼굴|손)?(이|에|가)?\s*(힘이\s*(없|빠)|마비|저리|감각이\s*없)"
                    r"|갑자기.{0,15}(안\s*보|시야|혼란|의식|힘이\s*빠)|뇌졸중|중풍|(인생|살면서|평생)\s*(최악의|처음\s*겪는)\s*두통",)),
        ("anaphylaxis", (r"(혀|입술|얼굴)(이|가)?\s*(붓|부어|부었|퉁퉁)|목(이|구멍이)?\s*(조여|막히|막혀|조이)|아나필락시스",)),
        ("anaphylaxis", (r"벌에|벌\s*쏘|땅콩|새우|갑각류|페니실린|주사|알레르기",
                         r"숨|호흡|두드러기|목(이|구멍)")),
        ("breathing", (r"숨(을)?\s*(못\s*쉬|쉴\s*수\s*(가\s*)?없)|숨이\s*막혀|호흡(을|이)?\s*(못|안\s*돼|멈)|(입술|얼굴)(이|가)?\s*(파랗|파래|새파|보라)|질식|목에\s*(걸려|막혀)",)),
        ("bleeding", (r"피(가)?\s*(멈추지|멎지)\s*않|피(가)?\s*(안\s*멈|안\s*멎|계속\s*(나|흘))|지혈이\s*(안|되지)|대량\s*출혈|출혈이\s*심"
                      r"|피를.{0,6}(토|쏟)|토혈|객혈|각혈|검은\s*변|임신.{0,25}(출혈|피가)|(패드|수건|거즈).{0,10}(흠뻑|적실|젖)",)),
        ("suicide", (r"자살|죽고\s*싶|살고\s*싶지\s*않|목숨을\s*끊|(모든\s*걸|다)\s*끝내(려|고\s*싶|버리)|삶을\s*끝(내|낼)|다\s*끝내고\s*싶|자해|손목을\s*긋|뛰어내리",)),
        ("poisoning", (r"(농약|제초제|락스|표백제|세제|부동액|쥐약|버튼\s*(형\s*)?전지|건전지).{0,15}(마시|마셨|마셔|먹|삼키|삼켰|삼켜)"
                       r"|(약|수면제|진통제|해열제|타이레놀).{0,15}(한\s*통|통째로|전부|한꺼번에|잔뜩)|과다\s*복용|일산화탄소|연탄가스|(아이|아기|애기)(가|는)?.{0,15}약을.{0,12}(먹었|삼켰)",)),
        ("infant_fever", (r"신생아|생후\s*\d{1,2}\s*(일|주)|(생후\s*)?[12]\s*개월|\d{1,2}\s*(일|주)\s*된",
                          r"열이|열나|고열|발열|미열|3[89](\.\d)?\s*(도|℃)")),
        ("seizure", (r"(경련|발작).{0,15}(\d+\s*분|멈추지\s*않|안\s*멈|계속)|\d+\s*분(째|동안|이상).{0,10}(경련|발작)|의식(이|을)?\s*(없|잃)|깨워도\s*(안\s*일어나|일어나지\s*않|반응)|반응이\s*없",)),
        ("head_injury", (r"머리(를|가)?\s*(부딪|다치|박|찧)", r"토(하|했|해)|구토|의식|기절|졸려|혼란|멍해")),
        ("meningitis", (r"목이\s*(뻣뻣|굳).{0,15}(열|발진)|(열|발진).{0,15}목이\s*(뻣뻣|굳)",)),
    ],
}


COMPILED = {lang: [(cat, tuple(_c(g) for g in groups)) for cat, groups in rules] for lang, rules in RULES.items()}


NEGATION_BEFORE = {
    "en": _c(r"\b(no|not|never|without|denies|denied|didn'?t|don'?t|doesn'?t|isn'?t|wasn'?t|aren'?t|haven'?t|hasn'?t|free of|nor|neither|absence of)\b[^,;]{0,25}$"),
    "zh": _c(r"(没有|没|无|不|否认|未|并非|不是)[^，,；;]{0,3}$"),
    "ko": None,
}


NEGATION_AFTER = {"ko": _c(r"^(?:(?!(고|서|는데|며|면서)\s).){0,15}?(없|않|아니)"), "en": None, "zh": _c(r"^(没有|不明显)")}


RESOLVED = {
    "en": _c(r"now (gone|fine|ok|okay|better|resolved|normal)|(went|go|gone) away|has (gone|passed|resolved|settled|stopped)|resolved|no longer|back to normal|fine now|recovered|it stopped|(has|have) stopped"),
    "zh": _c(r"好了|消失了|没事了|缓解了|恢复正常|不(痛|疼|闷)了|止住了|已经停|没再"),
    "ko": _c(r"괜찮아졌|지금은\s*괜찮|사라졌|나았|멈췄|멎었|좋아졌|회복|없어졌|가라앉았"),
}


PERSISTING = {
    "en": _c(r"\b(still|again|worse|returned|came back|right now|keeps)\b"),
    "zh": _c(r"还在|又|仍然|越来越|加重|一直"),
    "ko": _c(r"아직|또|다시|여전히|계속|심해"),
}


GENERAL_QUESTION = {
    "en": _c(r"\b(signs?|symptoms?|causes?|difference|prevent\w*|recogni[sz]e|first aid|mean|risk factors?|what is|what are)\b"),
    "zh": _c(r"症状|表现|征兆|原因|预防|区别|急救|是什么|有哪些|什么是"),
    "ko": _c(r"증상|징후|원인|예방|차이|응급\s*처치|무엇|뭔가요|알려\s*주|알아볼|구별"),
}


PERSON = {
    "en": _c(r"\b(i|i'm|i've|me|my|he|she|his|her|him|we|our|us|mom|mum|dad|son|daughter|baby|wife|husband|friend)\b"),
    "zh": _c(r"我|他|她|咱|孩子|宝宝|老公|老婆|爸|妈|儿子|女儿|朋友|奶奶|爷爷|同事|病人"),
    "ko": _c(r"제가|저는|저도|저의|제\s|내가|나는|나도|우리|아이|아기|애기|남편|아내|엄마|아빠|아버지|어머니|친구|할머니|할아버지|동생"),
}


GENERIC_ASKER = _c(r"\bhow (do|can|should|would|could) (i|we|you)\b|아이의|孩子的")


SENTENCE = re.compile(r"(?:[^.!?。！？\n]|(?<=\d)\.(?=\d))+[.!?。！？\n]*")  # "38.5" is not a sentence end


CLAUSE_BREAK = re.compile(r"[,;，；、]|\b(but|and)\b|但是|但|不过|하지만|그런데|지만")


CUE_WINDOW = 64  # chars around a match that a negation cue can reach (longest cue + its gap, with margin)


BREAK_AT = re.compile(f"(?=(?:{CLAUSE_BREAK.pattern}))")  # every position where a clause break starts


@lru_cache(maxsize=256)
def _breaks(text: str) -> tuple[list[int], list[int]]:
    """Ends of the clause breaks found scanning ``text`` left to right, and every position a break can start."""
    return [m.end() for m in CLAUSE_BREAK.finditer(text)], [m.start() for m in BREAK_AT.finditer(text)]


def _clause_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    """Character span of the clause around ``text[start:end]`` (split at commas, semicolons, "but").

    Linear overall: the breaks of ``text`` are found once and bisected, instead of rescanning the
    text before every match. A break that only ends at ``start`` when the text is cut there (e.g.
    "但" of "但是") counts, as it did when the text before the match was scanned on its own.
    """
    ends, starts = _breaks(text)
    left = ends[bisect.bisect_right(ends, start) - 1] if ends and ends[0] <= start else 0
    if any(m.end() == start for m in CLAUSE_BREAK.finditer(text, max(0, start - 3), start)):
        left = start
    i = bisect.bisect_left(starts, end)
    return left, starts[i] if i < len(starts) else len(text)


def _negated(sentence: str, m: re.Match, lang: str) -> bool:
    left, right = _clause_bounds(sentence, m.start(), m.end())
    before, after = NEGATION_BEFORE[lang], NEGATION_AFTER[lang]
    return bool((before and before.search(sentence[max(left, m.start() - CUE_WINDOW):m.start()]))
                or (after and after.search(sentence[m.end():min(right, m.end() + CUE_WINDOW)])))


def _live_matches(sentence: str, pattern: re.Pattern, lang: str) -> bool:
    return any(not _negated(sentence, m, lang) for m in pattern.finditer(sentence))


def detect_red_flags(text: str, lang: str | None = None) -> list[str]:
    """Red-flag categories found in one user message, in rule order, without duplicates.

    Args:
        text: the user's message.
        lang: ``zh``, ``ko`` or ``en``; detected from the script when None. Mixed messages are
            also screened with the English rules.

    Returns:
        Category names such as ``["cardiac"]``; empty when nothing urgent is described.
    """
    lang = lang or detect_language(text, default="en")
    found: list[str] = []
    for rules_lang in dict.fromkeys([lang, "en"]):
        if GENERAL_QUESTION[rules_lang].search(text) and not PERSON[rules_lang].search(GENERIC_ASKER.sub(" ", text)):
            continue
        sentences = [s for s in SENTENCE.findall(text) if s.strip()]
        live = [s for i, s in enumerate(sentences) if not _resolved(sentences, i, rules_lang)]
        for category, groups in COMPILED[rules_lang]:
            if category not in found and all(any(_live_matches(s, g, rules_lang) for s in live) for g in groups):
                found.append(category)
    return found


PARACETAMOL_ALERT_MG = 6000  # reported ingestion (one sentence, at once or per day) that needs assessment now


PARACETAMOL = {
    "en": r"paracetamol|acetaminophen|tylenol|panadol|calpol|co-?codamol|excedrin",
    "zh": r"对乙酰氨基酚|對乙醯胺基酚|扑热息痛|撲熱息痛|泰诺|泰諾|必理痛|百服宁|百服寧|普拿疼",
    "ko": r"타이레놀|아세트아미노펜|펜잘|게보린|써스펜",
}
_NUMBER_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                              "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"a dozen": 12, "dozen": 12, "thirty": 30, "forty": 40, "fifty": 50})
_KO_NUMBERS = {"열": 10, "열한": 11, "열두": 12, "열세": 13, "열네": 14, "열다섯": 15, "열여섯": 16, "열일곱": 17, "열여덟": 18,
               "열아홉": 19, "스무": 20, "스물": 20, "서른": 30, "마흔": 40, "쉰": 50}
_NUMBER_WORDS.update(_KO_NUMBERS)
_ZH_DIGITS = {"一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_DOSE = {
    "count": {
        "en": _c(r"\b(?P<n>\d{1,3}|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b(\s*(or so|ish|odd))?\s*(x\s*)?"
                 r"(\d{3,4}\s*mg\s*)?((of\s+)?(my|the|his|her|those|these)\s+)?(extra[- ]strength\s+)?"
                 r"(" + PARACETAMOL["en"] + r"|tablets?|pills?|caplets?|tabs?)"),
        "zh": _c(r"(?P<n>\d{1,3}|[一二两兩三四五六七八九十]{1,3})\s*(片|粒|颗|顆)"),
        "ko": _c(r"(?P<n>\d{1,3}|" + "|".join(sorted(_KO_NUMBERS, key=len, reverse=True)) + r")\s*(알|정|개(?!월)|캡슐)"),
    },
    "ingested": {
        "en": _c(r"\b(took|take|takes|taken|taking|ate|eaten|swallowed|had|downed|popped|necked|overdosed)\b"),
        "zh": _c(r"吃了|吃下|吃掉|服了|服下|服用了|吞了|吞下|一共吃|总共吃|吃|食咗|食左|食了|吞咗|服咗"),
        "ko": _c(r"먹었|먹엇|먹음|먹어\s*버렸|삼켰|삼킴|복용했|먹고|먹은|털어\s*넣"),
    },
    "not_now": {  # hypothetical, exam or textbook case, long past
        "en": _c(r"\b(if|what if|can i|could i|should i|how many|is it (ok|safe)|maximum|max|case|scenario|vignette|exam|patient"
                 r"|years? ago|when i was|back in|(19|20)\d\d)\b"),
        "zh": _c(r"如果|要是|万一|假如|能不能|可不可以|可以吃|能吃|最多|上限|病例|考题|考试|题目|患者|年前|那年|那时|当年|以前|(19|20)\d\d年"),
        "ko": _c(r"만약|먹어도|먹으면|최대|사례|시험|문제|환자가|년\s*전|예전에|옛날|그때|대학\s*때|(19|20)\d\d년"),
    },
}
_STRENGTH = _c(r"(?P<mg>\d{3,4})\s*(mg|毫克|밀리)")
_GRAMS = _c(r"(?P<g>\d{1,2}(\.\d+)?)\s*(g|grams?|克|그램)(?![a-z])")


def _count(word: str) -> int:
    """A tablet count written as digits, English words or Chinese numerals ("十四" -> 14)."""
    w = word.lower()
    if w.isdigit():
        return int(w)
    if w in _NUMBER_WORDS:
        return _NUMBER_WORDS[w]
    tens, _, ones = w.partition("十")
    if "十" in w:
        return (_ZH_DIGITS.get(tens, 0) if tens else 1) * 10 + _ZH_DIGITS.get(ones, 0)
    return _ZH_DIGITS.get(w, 0)


def paracetamol_ingested_mg(text: str, lang: str) -> int:
    """The largest paracetamol (acetaminophen) amount a sentence of ``text`` reports as taken, in mg; 0 when none.

    A sentence counts when it names paracetamol (generic or a brand: Tylenol, Panadol, 泰诺, 타이레놀 ...) and an
    ingestion verb, and has no cue of a hypothetical, an exam case or a long-past event. The amount is the
    largest tablet count times the stated strength (500 mg when none is stated), or a stated weight in grams.
    Linear in the text.

    Why a quantitative rule: early paracetamol poisoning causes no symptoms for a day or more while the
    liver injury is being set (Rumack-Matthew nomogram; Chiew et al. 2020, "Updated guidelines for the
    management of paracetamol poisoning in Australia and New Zealand", Med J Aust 212:175), so "I feel
    fine" is expected and is no reassurance. Those guidelines assess an acute ingestion from 10 g or 200 mg/kg
    and repeated ingestions from 6 g or 150 mg/kg a day; the UK's from 75 mg/kg (MHRA 2012). The guard flags
    from ``PARACETAMOL_ALERT_MG`` (6 g, about 12 tablets of 500 mg: 100 mg/kg at 60 kg), at once or per day.
    """
    if lang not in PARACETAMOL:
        return 0
    best = 0
    for s in SENTENCE.findall(text):
        if not (re.search(PARACETAMOL[lang], s, re.IGNORECASE) and _DOSE["ingested"][lang].search(s)) \
                or _DOSE["not_now"][lang].search(s):
            continue
        strengths = [int(m.group("mg")) for m in _STRENGTH.finditer(s)]
        per_tablet = max(strengths) if strengths else 500
        amounts = [_count(m.group("n")) * per_tablet for m in _DOSE["count"][lang].finditer(s)]
        amounts += [int(float(m.group("g")) * 1000) for m in _GRAMS.finditer(s) if 1 <= float(m.group("g")) <= 60]
        best = max([best, *amounts])
    return best


TABLETS_ALERT = 10  # tablets of one medicine reported swallowed at once: a possible overdose to assess now


_TABLETS = {  # a count of tablets of any medicine (the paracetamol pattern's units, and "12 of my amitriptyline 25mg")
    "en": _c(r"\b(?P<n>\d{1,3}|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b(\s*(or so|ish|odd))?\s*"
             r"(x\s*)?(\d{1,4}(\.\d+)?\s*(mg|mcg)\s*)?(of\s+(my|the|his|her|their|those|these|mum's|dad's)\s+)?"
             r"(extra[- ]strength\s+|sleeping\s+|blood[- ]pressure\s+|heart\s+|water\s+|diabetes\s+|[a-z-]+\s*\d{1,4}(\.\d+)?\s*(mg|mcg)\s+)?"
             r"(" + PARACETAMOL["en"] + r"|tablets?|pills?|caplets?|tabs?|capsules?|caps|painkillers?|sleepers|antidepressants?"
             r"|[a-z-]+\s*\d{1,4}(\.\d+)?\s*(mg|mcg)\b)"),
    "zh": _DOSE["count"]["zh"],
    "ko": _DOSE["count"]["ko"],
}
_SWALLOWED = {  # past or perfect only: "I take 10 tablets every morning" is a regimen
    "en": _c(r"\b(took|taken|ate|eaten|swallowed|downed|popped|necked|overdosed)\b"),
    "zh": _c(r"吃了|吃下|吃掉|服了|服下|服用了|吞了|吞下|一共吃|总共吃|一口气吃|食咗|食左|食了|吞咗|服咗"),  # Cantonese 食咗
    "ko": _c(r"먹었|먹엇|먹음|먹어\s*버렸|먹어\s*부렀|삼켰|삼킴|삼켜\s*버렸|복용했|털어\s*넣"),  # informal 먹음
}
_MEDICINE = {"zh": _c(r"药|藥|片|胶囊|膠囊|mg|毫克|" + PARACETAMOL["zh"]),
             "ko": _c(r"약|mg|밀리|정|캡슐|수면제|진통제|해열제|소염제|안정제|이부프로펜|부루펜|졸피뎀|트라마돌|" + PARACETAMOL["ko"]),
             "en": None}  # 粒 / 颗 / 알 / 개 count anything
_PER_DAY = {"en": _c(r"\b(a|per|each|every) day\b|\bdaily\b|times a day"), "zh": _c(r"一天|每天|每日|一日|日服"),
            "ko": _c(r"하루|매일|1일|일일")}


def tablets_swallowed(text: str, lang: str) -> int:
    """The largest count of tablets (capsules, pills) of a medicine that a sentence of ``text`` reports as
    swallowed, at once or within hours; 0 when none.

    A sentence counts when it has a past ingestion verb ("took", "吃了", "먹었"), a tablet count, a medicine
    word where the count unit is generic (粒 / 颗 / 알 / 개 count berries and sweets too), and no cue of a
    hypothetical, exam case, long-past event or daily regimen ("a day", "每天", "하루"). Linear in the text.

    Used beside :func:`paracetamol_ingested_mg` for the medicines whose toxic dose the rules do not know:
    ten tablets of one prescription medicine is over a day's maximum for nearly all of them (zolpidem 10 mg:
    100 mg; amitriptyline 25 mg: 250 mg, toxic from ~10 mg/kg), and poisons-information services ask for
    assessment of any such ingestion, symptoms or not (TCAs and sedatives act within hours).
    """
    if lang not in _TABLETS:
        return 0
    best = 0
    for s in SENTENCE.findall(text):
        if not _SWALLOWED[lang].search(s) or _DOSE["not_now"][lang].search(s) or _PER_DAY[lang].search(s) \
                or (_MEDICINE[lang] is not None and not _MEDICINE[lang].search(s)):
            continue
        best = max([best, *(_count(m.group("n")) for m in _TABLETS[lang].finditer(s))])
    return best


_BATTERY = {  # a button (coin) cell, by name or by the device it came from
    "en": _c(r"(button|coin|disc|watch|lithium|flat,? round|round,? flat|little round|small round)[- ](cell |type )?batter(y|ies)"
             r"|batter(y|ies) (from|out of) (the|a|his|her|my) (tv )?(remote|key ?fob|car key|scales?|watch|toy|calculator|hearing aid|thermometer)"),
    "zh": _c(r"(纽扣|钮扣|鈕扣|紐扣|扣式|圆形|扁圆|圆扁|小圆)(的)?(锂)?(电池|電池)|(遥控器|遙控器|电子秤|電子秤|手表|玩具|体温计|體溫計)(里|裡)?(的)?(电池|電池)"),
    "ko": _c(r"(단추형|동전형|코인|버튼|수은|리튬|동그랗고\s*납작한|납작한)\s*(형\s*)?(건전지|전지|배터리)"
             r"|(리모컨|체중계|저울|시계|장난감|체온계)\s*(의\s*)?(건전지|전지|배터리)"),
}
_SWALLOWED_OBJECT = {"en": _c(r"\b(swallowed|swallow(ed)? it|ate|eaten|gulped)\b"), "zh": _c(r"吞|吃(了|下|进)|咽(了|下)|食咗"),
                     "ko": _c(r"삼켰|삼킨|삼킴|삼켜|먹었|먹어\s*버렸|먹은")}
_NOT_SWALLOWED = {  # found, spat out, counted; or a question about the risk, the news, a hypothetical
    "en": _c(r"found (it|the battery|them|both)|spat|spit|didn'?t swallow|not swallowed|all (there|accounted)|false alarm|turned out"
             r"|how (common|dangerous)|why (is|are)|what (happens|should)|\bif (a|my|your|someone)\b|news|article|read about|story"),
    "zh": _c(r"找到了|吐出来|嘴(里|巴)(里)?抠出来|没(有)?(吞|咽)|都在|对得上|虚惊|看错|为什么|怎么防|如果|新闻|报道"),
    "ko": _c(r"찾았|뱉|안\s*삼켰|다\s*있|그대로|착각|왜|어떻게\s*(예방|보관)|만약|뉴스|기사"),
}


def battery_swallowed(text: str, lang: str) -> bool:
    """Whether ``text`` reports a button (coin) battery swallowed: a sentence names one (or a battery from a remote,
    scales, a watch ...) with a swallowing verb and no hypothetical or exam cue, and the text has no cue that it
    was found, spat out or not swallowed, or that it is a question about the risk or the news. Linear.

    A swallowed button battery burns through the oesophagus within two hours while the child looks well
    (US National Capital Poison Center, "Button Battery Ingestion Triage and Treatment Guideline", 2018:
    every ingestion goes to an emergency department for an X-ray at once), so "she's playing fine" is no
    reassurance: like a dose, it decides whatever the learned heads say.
    """
    if lang not in _BATTERY or _NOT_SWALLOWED[lang].search(text):
        return False
    return any(_BATTERY[lang].search(s) and _SWALLOWED_OBJECT[lang].search(s) and not _DOSE["not_now"][lang].search(s)
               for s in SENTENCE.findall(text))


_PREPARATION = {  # a method set up now: hanging, sealed charcoal burning (strong on their own)
    "en": _c(r"\bhang(ing)? myself\b|\bnoose\b|charcoal.{0,40}\b(sealed|taped|tape)\b|\b(sealed|taped) .{0,40}charcoal"),
    "zh": _c(r"上吊|挂好.{0,4}(绳|繩)|(绳子|繩子).{0,6}(挂好|掛好|系好|綁好|绑好)|(炭).{0,20}(胶带|膠帶|门缝|門縫).{0,10}(封|贴|貼)"),
    "ko": _c(r"목\s*(을\s*)?(맬|매려|매면|매달).{0,15}(줄|끈|밧줄)|(줄|끈|밧줄).{0,15}목\s*(을\s*)?(맬|매|매달)"
             r"|(줄|끈|밧줄)(을|를)?\s*(걸어\s*(놓|놨|뒀|두)|매달아\s*(놓|놨|뒀|두))|번개탄.{0,20}(테이프|문틈|막아)"),
}
_ROPE = {"en": _c(r"\brope\b.{0,30}\b(tied|ready|over the|up in|in the garage|bought)\b"), "zh": _c(r"(买|買)(了|好).{0,4}(绳子|繩子)"),
         "ko": _c(r"(줄|끈|밧줄)(을|를)?\s*(사\s*왔|샀)")}  # a rope bought or ready: only with an intent cue beside it
_INTENT = {"en": _c(r"better off|end it|\bdie\b|kill|i'?m done|can'?t go on|tonight|goodbye|no point"),
           "zh": _c(r"死|结束|結束|最后|最後|不想活|今晚|就差|解脱|解脫"),
           "ko": _c(r"하려고|끝내|죽|마지막|오늘\s*밤|안\s*무섭")}
_NOT_MINE = {"en": _c(r"news|article|drama|film|movie|novel|story|years? ago|\bif\b|prevent|tourniquet"),
             "zh": _c(r"新闻|新聞|报道|報導|电视剧|電視劇|小说|小說|电影|電影|年前|如果|预防|預防"),
             "ko": _c(r"뉴스|기사|드라마|영화|소설|예전에|년\s*전|만약|예방")}


def suicide_preparation(text: str, lang: str) -> bool:
    """Whether ``text`` reports a suicide method being set up now: hanging ("I'll hang myself", a noose, a cord tied
    up, 上吊, 목 맬 끈), charcoal burning with the room sealed, or a rope bought or ready beside a cue of intent
    ("better off without me", "오늘 하려고요"), with no cue of news, fiction, a long-past event or a hypothetical.

    Preparatory acts (acquiring or setting up a method) are the highest rung of the Columbia Suicide Severity Rating
    Scale's behaviour items (Posner et al. 2011, Am J Psychiatry 168:1266), so they decide on their own, whatever
    the learned heads make of a casual frame ("just curious", a question about the next appointment). Linear.
    """
    if lang not in _PREPARATION or _NOT_MINE[lang].search(text):
        return False
    return bool(_PREPARATION[lang].search(text) or (_ROPE[lang].search(text) and _INTENT[lang].search(text)))


_CELSIUS = _c(r"(?<![\d.])(?P<v>(3[4-9]|4[0-2])(\.\d{1,2})?)\s*(?P<u>°\s*c?|℃|度|도|c(?![a-z]))?")
_FAHRENHEIT = _c(r"(?<![\d.])(?P<v>(9[5-9]|10[0-8])(\.\d)?)\s*(°\s*f|℉|f\b|degrees? f)|화씨\s*(?P<w>(9[5-9]|10[0-8])(\.\d)?)")
_FEVER_CUE = _c(r"fever|temp|read|hit|烧|热|体温|温度|到|열|체온|온도")  # a bare "38" after these is a reading
ANTIPYRETIC = _c(r"paracetamol|acetaminophen|tylenol|calpol|panadol|ibuprofen|nurofen|motrin|advil|antipyretic|fever reducer"
                 r"|退烧|退热|美林|泰诺林|布洛芬|对乙酰氨基酚|扑热息痛|해열|타이레놀|부루펜|챔프|이부프로펜|아세트아미노펜")


def body_temperatures(text: str) -> list[float]:
    """Body temperatures stated in ``text``, in degrees Celsius: 34-42.99 written with a decimal or a unit
    ("37.4", "38度", "38 도", "38°C") or after a fever word ("烧到38", "temp 38"), and 95-108.9 written with a
    Fahrenheit unit ("100.4F", "화씨 101"). Linear."""
    out = [float(m.group("v")) for m in _CELSIUS.finditer(text)
           if "." in m.group("v") or m.group("u") or _FEVER_CUE.search(text[max(0, m.start() - 12):m.start()])]
    return out + [(float(m.group("v") or m.group("w")) - 32) * 5 / 9 for m in _FAHRENHEIT.finditer(text)]


def only_normal_temperatures(text: str) -> bool:
    """Whether ``text`` states at least one body temperature and every one is 35.5-37.9 °C, with no fever
    medicine named (a reading lowered by paracetamol or ibuprofen says nothing about the fever)."""
    temps = body_temperatures(text)
    return bool(temps) and all(35.5 <= t < 38.0 for t in temps) and not ANTIPYRETIC.search(text)


def _resolved(sentences: list[str], i: int, lang: str) -> bool:
    """Whether sentence ``i`` describes something that has passed (resolution cue here or in the next sentence)."""
    scope = sentences[i] + (sentences[i + 1] if i + 1 < len(sentences) else "")
    return bool(RESOLVED[lang].search(scope)) and not PERSISTING[lang].search(sentences[i])
