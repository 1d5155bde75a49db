"""Clinical safety: everything red-flag in one package (ground floor).

* :mod:`~medtune.safety.rules`: rule tables and :func:`detect_red_flags` (NegEx-style negation);
* :mod:`~medtune.safety.classifier`: the learned classifier at run time (e5 + n-gram heads, stacked);
* :mod:`~medtune.safety.fit`: folds, out-of-fold scores and :func:`train_classifier` (``medtune safety train``);
* :mod:`~medtune.safety.labelled`: the shipped labelled sets (``data/``) and reading them;
* :mod:`~medtune.safety.guard`: :func:`guard`, :func:`screen`, :func:`guarded_stream`, urgent
  messages and emergency numbers, used by every front end through :mod:`medtune.turn`;
* :mod:`~medtune.safety.evaluate`: detector precision/recall per language and category (``medtune eval safety``).

``from medtune.safety import guard`` and the other names below keep working (import submodules with
``from medtune.safety.guard import ...``: the package's ``guard`` is the function).
"""

from medtune.safety.guard import (DISCLAIMER, Guard, Screening, emergency_number, guard, guarded_stream, rule_hit,
                                  screen, urgent_message)
from medtune.safety.labelled import EVAL_SET, conversation, load_eval_set
from medtune.safety.evaluate import evaluate_safety
from medtune.safety.fit import train_classifier
from medtune.safety.rules import detect_red_flags

__all__ = ["DISCLAIMER", "EVAL_SET", "Guard", "Screening", "conversation", "detect_red_flags", "emergency_number",
           "evaluate_safety", "guard", "guarded_stream", "load_eval_set", "rule_hit", "screen", "train_classifier", "urgent_message"]
