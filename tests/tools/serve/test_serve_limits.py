"""`lmforge serve` limits and errors: body size, token and input counts, malformed and random bodies,
timeouts, overload, the API key; run dirs refused at start (pickles), bad flags, model ids."""

from __future__ import annotations

import json
import pickle
import socket
import time
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from helpers.serve import LM_CFG, assert_error, running, write_run  # noqa: E402

from lmforge.__main__ import main  # noqa: E402
from lmforge.config import ModelConfig, RunConfig  # noqa: E402
from lmforge.runs import files as ckpt  # noqa: E402
from lmforge.runs import loader
from lmforge.tools.serve.app import create_app  # noqa: E402
from lmforge.tools.serve.limits import Limits  # noqa: E402
from lmforge.tools.serve.registry import load_models  # noqa: E402


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
    # lone surrogates are valid JSON but not text: 422, not the tokenizer's TypeError (a 500)
    ('{"model": "lm", "prompt": "\\ud800"}', 422, "prompt"),
    ('{"model": "lm", "prompt": ["ok", "a\\udfffb"]}', 422, "prompt"),
    ('{"model": "lm", "prompt": "a", "stop": ["\\udc00"]}', 422, "stop"),
    ('{"model": "lm\\ud800", "prompt": "a"}', 422, "model"),
    ('{"model": "lm", "top_p": NaN}', 422, "top_p"),
    ('{"model": "lm", "top_p": Infinity}', 422, "top_p"),
    ('{"model": "lm", "temperature": -Infinity}', 422, "temperature"),
])
def test_bad_completion_bodies_get_json_errors(http, body, status, param):
    r = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert assert_error(r, status)["param"] == param


def test_bad_classify_bodies_and_unknown_things(http):
    for body in ('{"model": "clf-gpt", "input": [1, 2]}', '{"model": "clf-gpt"}', '{"model": "clf-gpt", "input": null}'):
        assert assert_error(http.post("/v1/classify", content=body, headers={"content-type": "application/json"}), 422)["param"] == "input"
    assert_error(http.post("/v1/classify", content="input=x"), 422)  # a form body, not JSON
    for body in ('{"model": "clf-gpt", "input": "\\ud800"}', '{"model": "clf-lstm", "input": ["fine", "x\\udbff"]}'):
        err = assert_error(http.post("/v1/classify", content=body, headers={"content-type": "application/json"}), 422)
        assert err["param"] == "input" and "lone surrogate" in err["message"], err
        assert err["message"].startswith("input: " if "[" not in body else "input[1]: "), err
    assert_error(http.post("/v1/classify", json={"model": "nope", "input": ["x"]}), 404, "model_not_found")
    assert_error(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "model_not_found")
    assert_error(http.post("/v1/completions", json={"model": "clf-gpt", "prompt": "x"}), 400, "wrong_model_kind")
    assert_error(http.post("/v1/classify", json={"model": "lm", "input": ["x"]}), 400, "wrong_model_kind")
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(http.get("/v1/completions"), 405, "method_not_allowed")


def test_tiny_top_p_and_temperature_are_not_a_500(http):
    """1e-300 passes `> 0` but is 0 in float32: top_p then kept no token and the temperature overflowed the logits."""
    def text(**kw):
        r = http.post("/v1/completions", json={"model": "lm", "prompt": "the", "max_tokens": 8, "seed": 1, **kw})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    greedy = text(temperature=0)
    for tiny in (1e-300, 5e-324, 1e-45):
        assert text(top_p=tiny) == text(top_k=1)  # the most likely token only
        assert text(temperature=tiny) == greedy
        assert text(temperature=tiny, top_p=tiny, stream=False) == greedy
    req = {"model": "lm", "prompt": "the", "max_tokens": 4, "top_p": 1e-300, "stream": True}
    assert http.post("/v1/completions", json=req).text.endswith("data: [DONE]\n\n")


def test_negative_seeds_and_bodies_that_are_not_utf8(http):
    req = {"model": "lm", "prompt": "the", "max_tokens": 6, "seed": -1}
    first = http.post("/v1/completions", json=req)  # generate() takes [0, 2**64): the server maps seed mod 2**64
    assert first.status_code == 200, first.text
    assert http.post("/v1/completions", json=req).json()["choices"] == first.json()["choices"]
    for body in (b'{"model": "lm", "prompt": "\xff"}', b'\xff\xfe{}', b"[" * 50_000):
        r = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert assert_error(r, 400, "invalid_json")["message"].startswith("request body is not valid JSON")


def test_head_healthz_answers_200(http):
    r = http.head("/healthz")
    assert r.status_code == 200 and r.content == b""


def test_a_generation_stopped_by_its_deadline_reports_no_finish(slow_models):
    """The worker stops at the deadline without a "done" event, which could otherwise reach a reader whose
    own timeout fires at the same moment and pass for a complete answer (seen under load)."""
    import threading
    import time

    from lmforge.tools.serve.completion import Job, run_job

    sm = slow_models["slow"]
    job = Job("slow", [sm.tok.encode("the")], 1, 50, 0.0, None, None, 0, [], stream=True)
    events: list = []
    run_job(sm, job, events.append, threading.Event(), deadline=time.monotonic() + 0.15)  # ~7 of 50 tokens
    kinds = [e[0] for e in events]
    assert kinds and set(kinds) == {"text"}, kinds


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

    tok = loader.load_run(runs["lm"])[2]
    mlm = RunConfig(model=ModelConfig(name="bert", vocab_size=tok.vocab_size, **LM_CFG))
    bert = write_run(tmp_path / "mlm", mlm, tok, build(mlm.model).state_dict())
    assert "bert pretraining run has nothing to serve" in refused(capsys, bert)
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
    assert "--api-key: expected a key of printable ASCII characters, got only spaces" in refused(
        capsys, runs["lm"], "--api-key", " ")
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
