"""Generation quality measures (stops, loops, language match) and the decoding defaults they check."""

from types import SimpleNamespace

from transformers import GenerationConfig

from medtune.config import GenerationSettings
from medtune.eval.quality import answer_quality, degenerate_repetition, quality_summary
from medtune.generation import ended_at_stop, model_settings


def test_degenerate_repetition_words_and_cjk_characters():
    assert degenerate_repetition("take it with food. " * 3)
    assert not degenerate_repetition("Metformin treats type 2 diabetes and prediabetes; take it with food.")
    loop_ko = "흡입기의 사용법은 의사에게 알려주어야 합니다. " * 4
    assert degenerate_repetition(loop_ko)
    assert not degenerate_repetition("흡입기를 사용하기 전에 잘 흔들고, 숨을 내쉰 뒤 천천히 들이마시세요.")
    # a CJK term said three times is normal prose, not a loop (8-character n-grams)
    assert not degenerate_repetition("高血压患者要限盐。高血压患者要运动。高血压患者要按时服药。")
    assert degenerate_repetition("高血压患者应该注意饮食。" * 3)


def test_answer_quality_and_summary():
    rows = [answer_quality("What is metformin for?", "Type 2 diabetes.", True),
            answer_quality("二甲双胍用于什么？", "Type 2 diabetes.", False),
            answer_quality("q", "a b c d " * 3, None)]
    assert [r["language_match"] for r in rows[:2]] == [True, False]
    s = quality_summary(rows)
    assert s["stops"]["n"] == 2 and s["stops"]["k"] == 1          # unknown stops left out
    assert s["loops"]["k"] == 1 and s["loops"]["n"] == 3
    assert 0 <= s["language_match"]["ci95"][0] <= s["language_match"]["rate"]


def test_ended_at_stop():
    assert ended_at_stop([5, 6, 2, 0, 0], [2])
    assert not ended_at_stop([5, 6, 7], [2])


def test_unset_decoding_fields_take_the_models_defaults():
    model = SimpleNamespace(generation_config=GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8,
                                                               repetition_penalty=1.1))
    used = model_settings(model, GenerationSettings(max_new_tokens=32))
    assert (used.temperature, used.top_p, used.repetition_penalty) == (0.7, 0.8, 1.1)
    mine = model_settings(model, GenerationSettings(temperature=0.0, repetition_penalty=1.3))
    assert (mine.temperature, mine.top_p, mine.repetition_penalty) == (0.0, 0.8, 1.3)
    plain = SimpleNamespace(generation_config=GenerationConfig(bos_token_id=1))  # no tuned defaults: medtune's
    assert model_settings(plain, GenerationSettings()) == GenerationSettings()


def test_server_requests_take_the_models_defaults_unless_they_set_them():
    from medtune.config import ServeConfig
    from medtune.serve import ChatRequest, _job

    model = SimpleNamespace(generation_config=GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8,
                                                               repetition_penalty=1.1))
    engine = SimpleNamespace(model=model, context_length=4096, prompt_ids=lambda messages: [1, 2, 3])
    cfg = ServeConfig(model="m")
    ask = {"model": "m", "messages": [{"role": "user", "content": "What is gout?"}]}
    job, _ = _job(ChatRequest(**ask), cfg, engine)
    assert (job.settings.temperature, job.settings.top_p, job.settings.repetition_penalty) == (0.7, 0.8, 1.1)
    job, _ = _job(ChatRequest(**ask, temperature=0.0, top_p=0.5), cfg, engine)
    assert (job.settings.temperature, job.settings.top_p, job.settings.repetition_penalty) == (0.0, 0.5, 1.1)


def test_exact_mcnemar_matches_the_binomial_tail():
    from medtune.eval.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == 0.0625  # 2 * 0.5**5
    assert mcnemar_exact(0, 6) == 0.03125
    assert mcnemar_exact(1, 8) == round(2 * (1 + 9) / 2 ** 9, 6)
    assert mcnemar_exact(4, 4) == 1.0


def test_paired_before_after_is_tested_on_the_items_both_models_answered(tmp_path):
    import json

    from medtune.eval.report import comparisons

    def result(model, hits):
        d = tmp_path / model
        d.mkdir()
        rows = [{"id": f"q{i}", "hit_any": h, "hit_half": h} for i, h in enumerate(hits)]
        (d / "predictions.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        from medtune.eval.stats import proportion
        k = sum(hits)
        return {"task": "fact", "model": model, "data": "facts.jsonl", "_dir": str(d),
                "hit_any": proportion(k, len(hits)), "hit_half": proportion(k, len(hits))}

    base, tuned = result("base", [False] * 18), result("finetuned", [True] * 6 + [False] * 12)
    c = comparisons([base, tuned])[0]
    assert c["paired_p"] == 0.03125 and base["hit_any"]["ci95"][1] > tuned["hit_any"]["ci95"][0]  # CIs overlap
    assert c["verdict"].startswith("better (paired exact McNemar p = 0.0312")
    (tmp_path / "finetuned" / "predictions.jsonl").write_text("", encoding="utf-8")  # no per-item data: CIs only
    c = comparisons([base, tuned])[0]
    assert c["paired_p"] is None and "not shown to improve" in c["verdict"]
