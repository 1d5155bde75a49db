"""The ``rag`` stage: build a retrieval index over guideline and knowledge-base passages (``medtune index build``).

Search and grounding live on the ground floor (:mod:`medtune.retrieval`), since chat, serve, web,
eval and the data stage all use them.
"""
