"""`lmforge serve` endpoints: health, models, docs, completions (plain, streaming, stop strings, seeds),
classify for every family, batching of concurrent requests, a free event loop during generation.

The app runs under a real uvicorn server in a thread, on a free loopback port (test_serve_http.py
starts `lmforge serve` as a process and talks to it with the `openai` package)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from helpers.serve import CLASSIFIERS, assert_error, expected_text, running, sse_events  # noqa: E402

from lmforge.tasks.classify import predict_proba  # noqa: E402
from lmforge.tools.serve.app import create_app  # noqa: E402
from lmforge.tools.serve.limits import Limits  # noqa: E402


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
