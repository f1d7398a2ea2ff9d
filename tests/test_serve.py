"""`lmforge serve`: every endpoint, streaming, batching, each limit, the API key, 404s and pickle refusal.

The app runs under a real uvicorn server in a thread, on a free loopback port (test_serve_http.py
starts `lmforge serve` as a process and talks to it with the `openai` package). Models are tiny and
random, written with lmforge's own run-dir writers (about a second for all of them).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import pickle
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import make_corpus

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from lmforge import checkpoint as ckpt  # noqa: E402
from lmforge.__main__ import main  # noqa: E402
from lmforge.config import FinetuneConfig, ModelConfig, RunConfig, save_config  # noqa: E402
from lmforge.evaluate import predict_proba  # noqa: E402
from lmforge.generate import generate, stream_decode  # noqa: E402
from lmforge.serve import bind  # noqa: E402
from lmforge.serve.app import create_app  # noqa: E402
from lmforge.serve.limits import Limits  # noqa: E402
from lmforge.serve.registry import load_models  # noqa: E402
from lmforge.tokenizer import train_tokenizer  # noqa: E402

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
    GPT / BERT / LSTM classifiers and an int8 GPT classifier (``CLASSIFIERS``). ``names`` renames folders."""
    from lmforge.compress.prune import prune_structured
    from lmforge.compress.quantize import int8_state_dict, quantize_int8
    from lmforge.finetune import build_classifier
    from lmforge.models import build

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
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def models(runs):
    return load_models([str(p) for p in runs.values()])


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


@pytest.fixture(scope="module")
def slow_models(models):
    """``models`` plus "slow": the LM at 20 ms per token, without eos, and "slow-clf": 1 s per forward pass."""
    lm, clf = models["lm"], models["clf-gpt"]
    return {**models, "slow": dataclasses.replace(lm, id="slow", model=Slow(lm.model, lm.tok.eos_id)),
            "slow-clf": dataclasses.replace(clf, id="slow-clf", model=SlowClassifier(clf.model))}


@contextlib.contextmanager
def running(app):
    """``app`` under uvicorn in a thread on a free loopback port; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
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


@pytest.fixture(scope="module")
def url(models):
    with running(create_app(models, Limits(max_completion_tokens=200, max_prompt_tokens=40, max_inputs=8))) as u:
        yield u


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


def expected_text(sm, prompt: str, max_tokens: int, **kw) -> tuple[str, int]:
    """What lmforge.generate gives for the same request: (text, tokens generated)."""
    ids = list(generate(sm.model, sm.tok.encode(prompt), max_tokens, eos_id=sm.tok.eos_id, **kw))
    return "".join(stream_decode(sm.tok, ids)), len(ids)


def sse_events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


# ----------------------------------------------------------------------------- endpoints
def test_health_models_openapi_and_docs(http, models):
    assert http.get("/healthz").json() == {"status": "ok", "models": list(models)}
    listed = http.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == list(models)
    by_id = {m["id"]: m for m in listed["data"]}
    assert by_id["lm"]["kind"] == "completion" and by_id["lm"]["context_length"] == 64 and by_id["lm"]["object"] == "model"
    assert by_id["clf-lstm"]["kind"] == "classification" and by_id["clf-lstm"]["labels"] == ["negative", "neutral", "positive"]
    assert by_id["lm-int8"]["compression"] == "int8" and by_id["lm-heads"]["compression"] == "pruned heads"
    assert http.get("/v1/models/clf-bert").json()["family"] == "bert"
    assert_error(http.get("/v1/models/nope"), 404, "model_not_found")
    schema = http.get("/openapi.json").json()
    assert {"/healthz", "/v1/models", "/v1/completions", "/v1/classify"} <= set(schema["paths"])
    assert "CompletionRequest" in schema["components"]["schemas"] and "ClassifyResponse" in schema["components"]["schemas"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_completion_is_what_generate_gives(http, models):
    text, n = expected_text(models["lm"], "the king", 12, temperature=0)
    r = http.post("/v1/completions", json={"model": "lm", "prompt": "the king", "max_tokens": 12, "temperature": 0})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"text": text, "index": 0, "logprobs": None, "finish_reason": "length" if n == 12 else "stop"}]
    p = len(models["lm"].tok.encode("the king"))
    assert body["usage"] == {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


def test_seeds_prompt_lists_n_and_top_p(http, models):
    req = {"model": "lm", "prompt": ["the king", "春天"], "max_tokens": 8, "seed": 5, "temperature": 0.9, "top_p": 0.9, "n": 2}
    a, b = (http.post("/v1/completions", json=req).json() for _ in range(2))
    assert a["choices"] == b["choices"] and [c["index"] for c in a["choices"]] == [0, 1, 2, 3]
    for c, (prompt, seed) in zip(a["choices"], [("the king", 5), ("the king", 6), ("春天", 7), ("春天", 8)]):
        assert c["text"] == expected_text(models["lm"], prompt, 8, temperature=0.9, top_p=0.9, seed=seed)[0]
    ids = models["lm"].tok.encode("the king")
    by_ids = http.post("/v1/completions", json={**req, "prompt": ids, "n": 1}).json()
    assert by_ids["choices"][0]["text"] == a["choices"][0]["text"] and by_ids["usage"]["prompt_tokens"] == len(ids)
    assert http.post("/v1/completions", json={"model": "lm", "prompt": "", "max_tokens": 3}).status_code == 200  # from bos


def test_stop_strings_cut_before_the_stop_plain_and_streaming(http, models):
    full, _ = expected_text(models["lm"], "the", 60, temperature=0)
    stop = full[5:7] if full[5:7].strip() else full[3:6]
    want = full[: full.find(stop)]
    req = {"model": "lm", "prompt": "the", "max_tokens": 60, "temperature": 0, "stop": [stop, "never-there"]}
    choice = http.post("/v1/completions", json=req).json()["choices"][0]
    assert choice["text"] == want and choice["finish_reason"] == "stop"
    events = sse_events(http.post("/v1/completions", json={**req, "stream": True}).text)
    assert "".join(e["choices"][0]["text"] for e in events) == want and events[-1]["choices"][0]["finish_reason"] == "stop"


def test_streaming_sends_openai_chunks_then_done(http, models):
    text, n = expected_text(models["lm"], "the queen", 20, temperature=0)
    req = {"model": "lm", "prompt": "the queen", "max_tokens": 20, "temperature": 0, "stream": True,
           "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=req) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    *chunks, usage = events
    assert all(c["object"] == "text_completion" and c["model"] == "lm" and c["id"] == chunks[0]["id"] for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == text and len(chunks) > 2
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "length" if n == 20 else "stop"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == n


def test_compressed_language_models_complete(http):
    for model in ("lm-int8", "lm-heads"):
        r = http.post("/v1/completions", json={"model": model, "prompt": "the king", "max_tokens": 5, "seed": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5


def test_classify_every_family_matches_predict_proba(http, models):
    texts = ["the people sing of bread", "rain at the castle", "", "春天 来了"]
    for name in CLASSIFIERS:
        sm = models[name]
        r = http.post("/v1/classify", json={"model": name, "input": texts})
        assert r.status_code == 200, r.text
        body = r.json()
        ref = predict_proba(sm.model, sm.tok, texts, sm.max_length)
        assert body["model"] == name and [d["index"] for d in body["data"]] == [0, 1, 2, 3] and body["usage"]["prompt_tokens"] > 4
        for d, p in zip(body["data"], ref.tolist()):
            assert list(d["probabilities"]) == ["negative", "neutral", "positive"]
            assert d["probabilities"] == pytest.approx(dict(zip(sm.labels, p)), abs=1e-5)
            assert d["label"] == max(d["probabilities"], key=d["probabilities"].get) and d["score"] == max(p)
    one = http.post("/v1/classify", json={"model": "clf-gpt", "input": "the king"}).json()  # a single string
    assert len(one["data"]) == 1


def test_concurrent_classify_requests_share_forward_passes(models):
    texts = [f"the king {w} of bread" for w in ("and", "walks", "sings", "the", "at", "queen", "rain", "night")]
    for batching in (True, False):
        app = create_app(models, batching=batching, batch_window_ms=300, max_batch=32, workers=2)
        with running(app) as u, httpx.Client(base_url=u, timeout=30) as c, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda t: c.post("/v1/classify", json={"model": "clf-bert", "input": [t]}).json(), texts))
        stats = app.state.batchers["clf-bert"].stats
        assert stats["requests"] == 8 and stats["rows"] == 8
        if batching:  # 8 requests within a 300 ms window: fewer forward passes than requests
            assert stats["batches"] < 8 and stats["max_requests_per_batch"] > 1
            batched = results
        else:
            assert stats["batches"] == 8 and stats["max_requests_per_batch"] == 1
    for a, b in zip(batched, results):  # padding in a shared batch changes nothing
        assert a["data"][0]["probabilities"] == pytest.approx(b["data"][0]["probabilities"], abs=1e-5)


def test_generation_leaves_the_event_loop_free(slow_models):
    app = create_app(slow_models, Limits(max_completion_tokens=4000), workers=1)
    req = {"model": "slow", "prompt": "the", "max_tokens": 4000, "stream": True, "seed": 0}
    with running(app) as u, httpx.Client(base_url=u, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=req) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")  # generation has started ...
            assert c.get("/healthz").status_code == 200  # ... and the server still answers
            assert c.post("/v1/classify", json={"model": "clf-lstm", "input": ["x"]}).status_code == 200
            assert next(lines) is not None  # still streaming: the answers above did not wait for it
    # leaving the block closed the stream early: the server cancels the generation


# ----------------------------------------------------------------------------- limits and errors
def test_body_size_limit(models):
    with running(create_app(models, Limits(max_body_bytes=2000))) as u, httpx.Client(base_url=u) as c:
        big = {"model": "clf-gpt", "input": ["x" * 3000]}
        assert_error(c.post("/v1/classify", json=big), 413, "body_too_large")
        chunks = (b for b in [b'{"model": "clf-gpt", "input": ["', b"y" * 1500, b"y" * 1500, b'"]}'])
        assert_error(c.post("/v1/classify", content=chunks, headers={"content-type": "application/json"}), 413)
        assert c.post("/v1/classify", json={"model": "clf-gpt", "input": ["x" * 100]}).status_code == 200


def test_token_count_and_input_limits(http):
    long_prompt = "the king and the queen " * 30
    err = assert_error(http.post("/v1/completions", json={"model": "lm", "prompt": long_prompt}), 400, "prompt_too_long")
    assert err["param"] == "prompt" and "40" in err["message"]
    assert_error(http.post("/v1/completions", json={"model": "lm", "prompt": "a", "max_tokens": 201}), 422, "invalid_value")
    assert_error(http.post("/v1/classify", json={"model": "clf-gpt", "input": ["a"] * 9}), 422, "invalid_value")
    assert_error(http.post("/v1/completions", json={"model": "lm", "prompt": ["a"] * 3, "n": 3}), 422, "invalid_value")
    assert_error(http.post("/v1/classify", json={"model": "clf-gpt", "input": []}), 422)
    assert_error(http.post("/v1/completions", json={"model": "lm", "prompt": [99999]}), 422)
    assert_error(http.post("/v1/completions", json={"model": "lm", "stop": ["a", "b", "c", "d", "e"]}), 422)


@pytest.mark.parametrize("body, status, param", [
    ('{"model": "lm", "prompt": "a",', 400, None),  # malformed JSON
    ("[1, 2]", 422, None),  # not an object
    ('{"prompt": "a"}', 422, "model"),
    ('{"model": "lm", "max_tokens": "5"}', 422, "max_tokens"),
    ('{"model": "lm", "max_tokens": 1.5}', 422, "max_tokens"),
    ('{"model": "lm", "prompt": 5}', 422, "prompt"),
    ('{"model": "lm", "temperature": "hot"}', 422, "temperature"),
    ('{"model": "lm", "temperature": -1}', 422, "temperature"),
    ('{"model": "lm", "top_p": 0}', 422, "top_p"),
    ('{"model": "lm", "temperature": NaN}', 422, "temperature"),
    ('{"model": "lm", "seed": 100000000000000000000000}', 422, "seed"),
    ('{"model": "lm", "stream": "yes"}', 422, "stream"),
    ('{"model": 3, "prompt": "a"}', 422, "model"),
    ('{"model": "lm", "echo": true}', 400, "echo"),
    ('{"model": "lm", "logprobs": 2}', 400, "logprobs"),
])
def test_bad_completion_bodies_get_json_errors(http, body, status, param):
    r = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert assert_error(r, status)["param"] == param


def test_bad_classify_bodies_and_unknown_things(http):
    for body in ('{"model": "clf-gpt", "input": [1, 2]}', '{"model": "clf-gpt"}', '{"model": "clf-gpt", "input": null}'):
        assert assert_error(http.post("/v1/classify", content=body, headers={"content-type": "application/json"}), 422)["param"] == "input"
    assert_error(http.post("/v1/classify", content="input=x"), 422)  # a form body, not JSON
    assert_error(http.post("/v1/classify", json={"model": "nope", "input": ["x"]}), 404, "model_not_found")
    assert_error(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model_not_found")
    assert_error(http.post("/v1/completions", json={"model": "clf-gpt", "prompt": "x"}), 400, "wrong_model_kind")
    assert_error(http.post("/v1/classify", json={"model": "lm", "input": ["x"]}), 400, "wrong_model_kind")
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(http.get("/v1/completions"), 405, "method_not_allowed")


def test_timeouts_answer_408(slow_models):
    app = create_app(slow_models, Limits(timeout_s=0.5, max_completion_tokens=5000))
    with running(app) as u, httpx.Client(base_url=u, timeout=30) as c:
        # 5000 tokens at 20 ms each outlast 0.5 s; so does a 1 s forward pass. A stream times out after
        # its first tokens: an error event, then [DONE]
        assert_error(c.post("/v1/completions", json={"model": "slow", "prompt": "a", "max_tokens": 5000}), 408, "timeout")
        req = {"model": "slow", "prompt": "a", "max_tokens": 5000, "stream": True}
        events = [e for e in c.post("/v1/completions", json=req).text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["code"] == "timeout"
        assert_error(c.post("/v1/classify", json={"model": "slow-clf", "input": ["x"]}), 408, "timeout")
        # a client that stops sending its body half-way
        host, port = u.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"model\":")
            reply = b""
            while chunk := s.recv(4096):  # the server answers, then closes the connection
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and '"code": "timeout"' in reply
        assert c.get("/healthz").status_code == 200


def test_too_many_requests_in_flight_get_503(slow_models):
    app = create_app(slow_models, Limits(max_concurrent=1, max_completion_tokens=4000), workers=1)
    req = {"model": "slow", "prompt": "the", "max_tokens": 4000, "stream": True, "seed": 0}
    with running(app) as u, httpx.Client(base_url=u, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json=req) as r:
            lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
            assert next(lines).startswith("data: {")
            assert_error(c.post("/v1/classify", json={"model": "clf-gpt", "input": ["x"]}), 503, "overloaded")
            assert c.get("/healthz").status_code == 200
        for _ in range(100):  # the stream's slot is freed once the server sees the disconnect
            if c.post("/v1/classify", json={"model": "clf-gpt", "input": ["x"]}).status_code == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the slot of the closed stream was never freed")


def test_api_key(models):
    with running(create_app(models, api_key="sk-test")) as u, httpx.Client(base_url=u) as c:
        req = {"model": "clf-gpt", "input": ["x"]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-test"}, {"Authorization": "Basic sk-test"}):
            err = assert_error(c.post("/v1/classify", json=req, headers=headers), 401, "invalid_api_key")
            assert err["type"] == "authentication_error"
        assert_error(c.get("/v1/models"), 401)
        assert_error(c.post("/v1/classify", content="{bad json", headers={"Authorization": "Bearer nope"}), 401)
        ok = {"Authorization": "Bearer sk-test"}
        assert c.post("/v1/classify", json=req, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/docs").status_code == 200  # open, documented
        assert "HTTPBearer" in c.get("/openapi.json").json()["components"]["securitySchemes"]


def test_random_bodies_never_get_a_500(url):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=10)
    fields = st.fixed_dictionaries({}, optional={
        "model": st.sampled_from(["lm", "clf-lstm", "nope"]) | values, "prompt": values, "input": values,
        "max_tokens": st.integers(-2, 12) | st.just(201) | values, "temperature": values, "top_p": values, "stop": values,
        "n": st.integers(-1, 3), "seed": values | st.integers(), "stream": st.booleans(), "top_k": values})

    @hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
    @hypothesis.given(path=st.sampled_from(["/v1/completions", "/v1/classify"]), body=fields | values)
    def check(path, body):
        r = c.post(path, json=body)
        assert r.status_code in (200, 400, 404, 408, 422), (body, r.status_code, r.text)
        if r.status_code != 200:
            assert_error(r, r.status_code)

    with httpx.Client(base_url=url, timeout=30) as c:
        check()


# ----------------------------------------------------------------------------- refusing run dirs
def refused(capsys, *args) -> str:
    assert main(["serve", *map(str, args), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmforge: error: ") and "\n" not in err
    return err


def test_pickle_weights_are_refused_at_start(runs, tmp_path, capsys):
    lm = runs["lm"]
    state = {k: v.clone() for k, v in ckpt.load_tensors(lm / ckpt.WEIGHTS)[0].items()}

    def copy_run(name, weights: dict[str, bytes | None]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in (ckpt.CONFIG, ckpt.TOKENIZER, ckpt.WEIGHTS):
            (d / f).write_bytes((lm / f).read_bytes())
        for f, data in weights.items():
            (d / f).unlink() if data is None else (d / f).write_bytes(data)
        return d

    torch.save(state, tmp_path / "saved.pt")
    torch_zip = (tmp_path / "saved.pt").read_bytes()
    raw = pickle.dumps({"weights": [1, 2]}, protocol=4)
    instead = refused(capsys, copy_run("bin-instead", {ckpt.WEIGHTS: None, "pytorch_model.bin": torch_zip}))
    assert "pytorch_model.bin" in instead and "in place of model.safetensors" in instead and "safetensors" in instead
    assert "beside model.safetensors" in refused(capsys, copy_run("pt-beside", {"model.pt": torch_zip}))
    assert "is a pickle" in refused(capsys, copy_run("renamed-pickle", {ckpt.WEIGHTS: raw}))
    assert "zip archive" in refused(capsys, copy_run("renamed-torch-save", {ckpt.WEIGHTS: torch_zip}))
    assert "weights.dat" in refused(capsys, copy_run("sniffed", {"weights.dat": raw}))


def test_other_run_dirs_that_are_refused(runs, tmp_path, capsys):
    from lmforge.models import build

    tok = ckpt.load_run(runs["lm"])[2]
    mlm = RunConfig(model=ModelConfig(name="bert", vocab_size=tok.vocab_size, **LM_CFG))
    bert = write_run(tmp_path / "mlm", mlm, tok, build(mlm.model).state_dict())
    assert "masked-LM run has nothing to serve" in refused(capsys, bert)
    assert "given twice" in refused(capsys, runs["lm"], str(runs["lm"]) + "/")
    assert "run directory not found" in refused(capsys, tmp_path / "missing")
    (tmp_path / "torn").mkdir()
    for f in (ckpt.CONFIG, ckpt.TOKENIZER):
        (tmp_path / "torn" / f).write_bytes((runs["lm"] / f).read_bytes())
    (tmp_path / "torn" / ckpt.WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert "not a valid safetensors file" in refused(capsys, tmp_path / "torn")


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--api-key", "--max-body-bytes", "--max-prompt-tokens", "--max-completion-tokens",
                 "--max-inputs", "--timeout", "--max-concurrent", "--batch-window-ms", "--max-batch", "--no-batching"):
        assert flag in out, flag


def test_bad_flags_and_a_busy_port_are_one_line_errors(runs, capsys):
    assert "--timeout" in refused(capsys, runs["lm"], "--timeout", "0")
    assert "--max-inputs" in refused(capsys, runs["lm"], "--max-inputs", "0")
    assert "--api-key: empty key" in refused(capsys, runs["lm"], "--api-key", " ")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert main(["serve", str(runs["lm"]), "--port", str(s.getsockname()[1])]) == 2
    assert "cannot listen there" in capsys.readouterr().err


def test_clashing_folder_names_get_path_ids(runs, tmp_path):
    a, b = tmp_path / "a" / "lm", tmp_path / "b" / "lm"
    for d in (a, b):
        d.mkdir(parents=True)
        for f in (ckpt.CONFIG, ckpt.TOKENIZER, ckpt.WEIGHTS):
            (d / f).write_bytes((runs["lm"] / f).read_bytes())
    assert list(load_models([str(a), str(b), str(runs["clf-lstm"])])) == [str(a), str(b), "clf-lstm"]
