"""``medtune export``: a model to GGUF (llama.cpp, LM Studio) and Ollama, with a parity check.

- :mod:`medtune.export.gguf`    llama.cpp's own converter (``convert_hf_to_gguf.py``) and quantizer;
- :mod:`medtune.export.parity`  greedy decoding, llama.cpp vs transformers, token for token;
- :mod:`medtune.export.ollama`  the Modelfile (TEMPLATE translated from the chat template);
- :mod:`medtune.export.stage`   :func:`export_model`, the stage function.
"""
