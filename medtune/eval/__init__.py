"""Evaluation: multiple-choice benchmarks, fact recall, LLM-as-judge, rubric grading, the lm-evaluation-harness
bridge, answer collection and reports.

| module        | what                                                                |
|---------------|---------------------------------------------------------------------|
| ``config``    | the configs of the eval commands and of the recipe's ``eval`` stage  |
| ``backends``  | local models and OpenAI-compatible endpoints behind one interface    |
| ``mcq_data``  | loaders for CMExam, CMB, KorMedMCQA, MedQA, MedMCQA, PubMedQA, generic |
| ``mcq``       | log-likelihood and generate-then-parse scoring, ``results.json``     |
| ``fact``      | knowledge-base fact recall with the three hit criteria               |
| ``judge``     | rubric (1-4) and order-swapped pairwise LLM-as-judge                 |
| ``rubric``    | HealthBench-format conversations graded criterion by criterion       |
| ``harness``   | lm-evaluation-harness tasks on a model medtune loads (``lm-eval``)    |
| ``answer_samples`` | the report's "What the models said": seeded answers side by side |
| ``answers``   | one ``<name>_answer`` column per model                               |
| ``heldout``   | held-out answer perplexity on the train stage's own held-out examples |
| ``report``    | one self-contained HTML + markdown report                            |
| ``stage``     | the recipe's ``eval`` stage: base vs fine-tuned, then the report      |
"""
