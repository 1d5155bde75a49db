"""Helpers for tests that run a real medtune server on 127.0.0.1 (imported by the serve/web tests)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(cfg):
    """Load ``cfg``'s model, serve it with uvicorn in a thread on 127.0.0.1, yield url/engine, then stop."""
    import uvicorn

    from medtune.engine import load_engine
    from medtune.serve import create_app

    engine = load_engine(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", engine=engine, cfg=cfg)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.close()


def make_adapter(base_dir, out_dir, seed: int = 1):
    """Save a LoRA adapter with random (non-zero) weights on the tiny model, so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.mul_(20.0)
    peft.save_pretrained(out_dir)
    return out_dir
