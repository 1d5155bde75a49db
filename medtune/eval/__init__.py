"""Evaluation: multiple-choice benchmarks, fact recall, LLM-as-judge, answer collection and reports.

| module        | what                                                                |
|---------------|---------------------------------------------------------------------|
| ``mcq_data``  | loaders for CMExam, CMB, KorMedMCQA, MedQA, MedMCQA, PubMedQA, generic |
| ``mcq``       | log-likelihood and generate-then-parse scoring, ``results.json``     |
| ``fact``      | knowledge-base fact recall with the three hit criteria               |
| ``judge``     | rubric (1-4) and order-swapped pairwise LLM-as-judge                 |
| ``answers``   | one ``<name>_answer`` column per model                               |
| ``report``    | one self-contained HTML + markdown report                            |
"""

import medtune.config  # noqa: F401,E402  (load the recipe config first: it imports medtune.eval.config)
