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


@contextmanager
def running_gateway(cfg):
    """Serve gateway mode (``cfg.upstream`` set) with uvicorn in a thread on 127.0.0.1; yield url/upstream/cfg."""
    import uvicorn

    from medtune.gateway import connect_upstream, create_gateway_app

    up = connect_upstream(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_gateway_app(cfg, up), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "gateway did not start"
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", upstream=up, cfg=cfg)
    finally:
        server.should_exit = True
        thread.join(10)


class Process:
    """A server in a child process (``cmd`` must bind ``port``), started and killed by the test.

    ``start()`` waits until ``GET ready_path`` answers 200 (``timeout`` s); ``kill()`` sends SIGKILL.
    """

    def __init__(self, cmd: list[str], port: int, ready_path: str = "/v1/models", timeout: float = 180, env=None):
        self.cmd, self.port, self.ready_path, self.timeout, self.env = cmd, port, ready_path, timeout, env
        self.proc = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> "Process":
        import os
        import subprocess
        import sys

        import httpx

        log = open(os.devnull, "w") if not os.environ.get("MEDTUNE_TEST_SERVER_LOG") else sys.stderr
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"{self.cmd[:4]} exited with {self.proc.returncode}"
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.kill()
        raise AssertionError(f"{self.cmd[:4]} did not answer on port {self.port} within {self.timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.kill()


@contextmanager
def serving(kind: str, model_dir, **kw):
    """``medtune serve`` on ``model_dir`` with ``ServeConfig(**kw)`` (kind "engine"), or (kind "gateway") the
    same settings on a gateway in front of a plain ``medtune serve`` of ``model_dir`` (its ``generation`` too).

    Yields url, cfg (``cfg.model`` is the served model's name in both kinds), engine (the one that generates), kind.
    """
    from medtune.config import ServeConfig

    cfg = ServeConfig(model=str(model_dir), **kw)
    if kind == "engine":
        with running_server(cfg) as s:
            yield SimpleNamespace(url=s.url, cfg=cfg, engine=s.engine, kind=kind)
        return
    upstream_cfg = ServeConfig(model=str(model_dir), generation=cfg.generation)
    with running_server(upstream_cfg) as up, running_gateway(cfg.model_copy(update={"upstream": up.url + "/v1"})) as gw:
        yield SimpleNamespace(url=gw.url, cfg=gw.cfg, engine=up.engine, kind=kind, upstream=gw.upstream)
