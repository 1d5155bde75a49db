"""medtune: from medical sources to a validated, served medical chat model.

Stages are plain functions (``medtune.train.sft.run_sft``, ``medtune.merge.merge_adapter``,
``medtune.chat.chat``, ``medtune.run.run_recipe``) configured by pydantic models in
``medtune.config``; the ``medtune`` CLI only parses arguments and calls them.
"""

__version__ = "0.1.0"
