"""Shared pieces of the `lmforge serve` tests: tiny random run dirs of every kind (written with
lmforge's own run-dir writers, about a second for all), slow stand-ins for timeouts, the app under a
real uvicorn server in a thread on a free loopback port, and response checks."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from helpers import make_corpus

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from lmforge.config import FinetuneConfig, ModelConfig, RunConfig, save_config  # noqa: E402
from lmforge.runs import files as ckpt  # noqa: E402
from lmforge.tokenizer import train_tokenizer  # noqa: E402
from lmforge.tools.generate import generate, stream_decode  # noqa: E402
from lmforge.tools.serve import bind  # noqa: E402
from lmforge.tools.serve.protocol import server_config  # noqa: E402

CLASSIFIERS = ("clf-gpt", "clf-bert", "clf-lstm", "clf-int8")
LM_CFG = dict(n_layer=1, n_head=2, n_embd=32, block_size=64)


def write_run(folder: Path, cfg: RunConfig, tok, tensors: dict, meta: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    ckpt.atomic_write_text(folder / ckpt.CONFIG, save_config(cfg))
    tok.save(folder / ckpt.TOKENIZER)
    ckpt.save_tensors(folder / ckpt.WEIGHTS, tensors, meta)
    return folder


def make_runs(folder: Path, names: dict[str, str] | None = None) -> dict[str, Path]:
    """Random-weight run dirs: a GPT LM ("lm"), its int8 ("lm-int8") and head-pruned ("lm-heads") copies,
    GPT / BERT / LSTM classifiers and an int8 GPT classifier (``CLASSIFIERS``), and a seq2seq translation
    model ("translate", joint vocabulary). ``names`` renames folders."""
    from lmforge.models import build
    from lmforge.models.quantize import int8_state_dict, quantize_int8
    from lmforge.tasks.classify import build_classifier
    from lmforge.tools.compress.prune import prune_structured

    names = names or {}
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = train_tokenizer(make_corpus(folder / "corpus.txt").read_text(encoding="utf-8").splitlines(), vocab_size=320)
    V, pad = tok.vocab_size, tok.pad_id
    runs = {}

    def add(key, cfg, tensors, meta=None):
        runs[key] = write_run(folder / names.get(key, key), cfg, tok, tensors, meta)

    lm_cfg = RunConfig(model=ModelConfig(vocab_size=V, **LM_CFG))
    lm = build(lm_cfg.model).eval()
    add("lm", lm_cfg, lm.state_dict())
    q_cfg = copy.deepcopy(lm_cfg)
    q_cfg.compress.quantize, q_cfg.compress.source = "int8", str(runs["lm"])
    add("lm-int8", q_cfg, int8_state_dict(*quantize_int8(copy.deepcopy(lm))), {"lmforge": "int8"})
    pruned, p_cfg = copy.deepcopy(lm), copy.deepcopy(lm_cfg)
    kept, _ = prune_structured(pruned, "heads", 0.5)
    p_cfg.model.layer_n_head, p_cfg.compress.structured = ",".join(map(str, kept)), "heads"
    add("lm-heads", p_cfg, pruned.state_dict(), {"lmforge": "pruned"})
    ft = FinetuneConfig(labels="negative,neutral,positive", max_length=24)
    for key, model_cfg in (("clf-gpt", ModelConfig(vocab_size=V, **LM_CFG)),
                           ("clf-bert", ModelConfig(name="bert", vocab_size=V, **LM_CFG)),
                           ("clf-lstm", ModelConfig(name="lstm", vocab_size=V, n_layer=1, n_embd=16))):
        cfg = RunConfig(model=model_cfg, finetune=ft)
        clf = build_classifier(cfg.model, ft, 3, pad).eval()
        add(key, cfg, clf.state_dict())
        if key == "clf-gpt":
            cq = copy.deepcopy(cfg)
            cq.compress.quantize = "int8"
            add("clf-int8", cq, int8_state_dict(*quantize_int8(copy.deepcopy(clf))), {"lmforge": "int8"})
    tr_cfg = RunConfig(task="translate", model=ModelConfig(name="seq2seq", vocab_size=V, decoder_layers=1, **LM_CFG))
    add("translate", tr_cfg, build(tr_cfg.model).eval().state_dict())
    return runs


class Slow(torch.nn.Module):
    """A language model that takes ``delay`` s per step and never samples eos: a generation that surely outlasts a timeout."""

    def __init__(self, inner: torch.nn.Module, eos_id: int, delay: float = 0.02):
        super().__init__()
        self.inner, self.cfg, self.eos_id, self.delay = inner, inner.cfg, eos_id, delay

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)

    def forward(self, *args):
        time.sleep(self.delay)
        logits = self.inner(*args)  # (B, T, V)
        logits[..., self.eos_id] = float("-inf")
        return logits


class SlowClassifier(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, delay: float = 1.0):
        super().__init__()
        self.inner, self.delay = inner, delay

    def forward(self, *args):
        time.sleep(self.delay)
        return self.inner(*args)


@contextlib.contextmanager
def running(app):
    """``app`` under uvicorn in a thread on a free loopback port, configured as `lmforge serve` runs it (its
    Limits' header deadline, keep-alive and connection cap); yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


def expected_text(sm, prompt: str, max_tokens: int, **kw) -> tuple[str, int]:
    """What lmforge.tools.generate gives for the same request: (text, tokens generated)."""
    ids = list(generate(sm.model, sm.tok.encode(prompt), max_tokens, eos_id=sm.tok.eos_id, **kw))
    return "".join(stream_decode(sm.tok, ids)), len(ids)


def sse_events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]
