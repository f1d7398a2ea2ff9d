"""`POST /v1/translate` (issue 16): a served translation run gives what `lmforge translate` gives, for one text
or a list, any beam; concurrent requests share batched decoding; the limits, wrong model kinds and the timeout
answer OpenAI-style JSON errors; the endpoint is in the schema and fuzzed like the others."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch
from helpers import make_pairs, translation_recipe
from helpers.serve import assert_error, make_runs, running

httpx = pytest.importorskip("httpx")
pytest.importorskip("sacrebleu")

from fastapi.testclient import TestClient  # noqa: E402

from lmforge.recipes.train import train  # noqa: E402
from lmforge.tools.serve.app import create_app  # noqa: E402
from lmforge.tools.serve.limits import Limits  # noqa: E402
from lmforge.tools.serve.registry import load_models  # noqa: E402
from lmforge.tools.translate import translate_run  # noqa: E402

TEXTS = ["我们明天去北京。", "你好。", "他喜欢喝茶。", "我们去学校。", "明天", "我喜欢北京。"]
LIMITS = Limits(max_inputs=8, max_beam=4)


class Counting(torch.nn.Module):
    """A seq2seq model that counts its ``encode`` calls (one per decoded batch) and may sleep per step."""

    def __init__(self, inner: torch.nn.Module, delay: float = 0.0):
        super().__init__()
        self.inner, self.cfg, self.delay, self.encodes = inner, inner.cfg, delay, 0
        self.lock = threading.Lock()

    def encode(self, *args):
        with self.lock:
            self.encodes += 1
        return self.inner.encode(*args)

    def new_state(self, *args, **kwargs):
        return self.inner.new_state(*args, **kwargs)

    def step(self, *args):
        if self.delay:
            time.sleep(self.delay)
        return self.inner.step(*args)

    def reorder(self, *args):
        return self.inner.reorder(*args)


@pytest.fixture(scope="module")
def trun(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-translate")
    train(translation_recipe(tmp, make_pairs(tmp / "p.tsv")), out=tmp / "zh-en", progress=False)
    return tmp / "zh-en"


@pytest.fixture(scope="module")
def tmodels(trun, tmp_path_factory):
    runs = make_runs(tmp_path_factory.mktemp("serve-others"))
    models = load_models([str(trun), str(runs["lm"]), str(runs["clf-gpt"])])
    sm = models["zh-en"]
    return {**models, "counted": dataclasses.replace(sm, id="counted", model=Counting(sm.model)),
            "slow": dataclasses.replace(sm, id="slow", model=Counting(sm.model, delay=0.3))}


@pytest.fixture(scope="module")
def client(tmodels):
    with TestClient(create_app(tmodels, LIMITS, workers=2), raise_server_exceptions=False) as c:
        yield c


def post(client, **body):
    return client.post("/v1/translate", json={"model": "zh-en", **body})


@pytest.mark.parametrize("beam", [None, 1, 3])
def test_translate_equals_translate_run(client, trun, beam):
    want = translate_run(trun, TEXTS, beam=beam)
    r = post(client, input=TEXTS, **({} if beam is None else {"beam": beam}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "zh-en"
    assert [d["text"] for d in body["data"]] == want
    assert [(d["object"], d["index"]) for d in body["data"]] == [("translation", i) for i in range(len(TEXTS))]
    u = body["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_one_text_and_blank_texts(client, trun):
    r = post(client, input=TEXTS[0], beam=2)
    assert r.status_code == 200, r.text
    assert [d["text"] for d in r.json()["data"]] == translate_run(trun, [TEXTS[0]], beam=2)
    r = post(client, input=["  ", TEXTS[1], ""])
    assert r.status_code == 200, r.text
    assert [d["text"] for d in r.json()["data"]] == translate_run(trun, ["  ", TEXTS[1], ""])


def test_models_list_the_translation_model(client):
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["zh-en"]["kind"] == "translation" and cards["zh-en"]["family"] == "seq2seq"
    assert cards["zh-en"]["beam"] >= 1 and cards["zh-en"]["context_length"] > 0
    assert {cards["lm"]["kind"], cards["clf-gpt"]["kind"]} == {"completion", "classification"}
    assert "/v1/translate" in client.get("/openapi.json").json()["paths"]


def test_concurrent_requests_share_decoding(tmodels, trun):
    sm = tmodels["counted"]
    groups = [TEXTS[i : i + 2] for i in range(0, len(TEXTS), 2)] * 2  # 6 requests of 2 texts
    with running(create_app(tmodels, LIMITS, workers=2, batch_window_ms=200)) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            def ask(texts):
                r = http.post("/v1/translate", json={"model": "counted", "input": texts, "beam": 1})
                assert r.status_code == 200, r.text
                return [d["text"] for d in r.json()["data"]]

            before = sm.model.encodes
            sequential = [ask(g) for g in groups]
            seq_calls, before = sm.model.encodes - before, sm.model.encodes
            results = [None] * len(groups)

            def worker(i):
                results[i] = ask(groups[i])

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(groups))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            conc_calls = sm.model.encodes - before
    assert seq_calls == len(groups)
    assert results == sequential
    assert sequential[0] == translate_run(trun, groups[0], beam=1)
    assert conc_calls < seq_calls, (conc_calls, seq_calls)


def test_limits_and_wrong_kinds(client):
    assert_error(post(client, input=["x"] * (LIMITS.max_inputs + 1)), 422, "invalid_value")["param"] == "input"
    assert assert_error(post(client, input=[]), 422, "invalid_value")["param"] == "input"
    assert assert_error(post(client, input="x", beam=0), 422)["param"] == "beam"
    err = assert_error(post(client, input="x", beam=LIMITS.max_beam + 1), 422, "invalid_value")
    assert err["param"] == "beam" and str(LIMITS.max_beam) in err["message"]
    assert assert_error(post(client, input="x", beam="2"), 422)["param"] == "beam"
    assert assert_error(post(client), 422)["param"] == "input"
    assert_error(post(client, model="nope", input="x"), 404, "model_not_found")
    for model in ("lm", "clf-gpt"):
        err = assert_error(post(client, model=model, input="x"), 400, "wrong_model_kind")
        assert model in err["message"] and ("/v1/completions" if model == "lm" else "/v1/classify") in err["message"]
    err = assert_error(client.post("/v1/classify", json={"model": "zh-en", "input": "x"}), 400, "wrong_model_kind")
    assert "translation" in err["message"] and "/v1/translate" in err["message"]
    err = assert_error(client.post("/v1/completions", json={"model": "zh-en", "prompt": "x"}), 400, "wrong_model_kind")
    assert "translation" in err["message"] and "/v1/translate" in err["message"]


def test_body_size_limit(tmodels):
    with TestClient(create_app(tmodels, Limits(max_body_bytes=200)), raise_server_exceptions=False) as c:
        assert_error(c.post("/v1/translate", json={"model": "zh-en", "input": ["你好。"] * 50}), 413, "body_too_large")


def test_timeout_answers_408(tmodels):
    with TestClient(create_app(tmodels, Limits(timeout_s=0.5), workers=1), raise_server_exceptions=False) as c:
        t0 = time.monotonic()
        r = c.post("/v1/translate", json={"model": "slow", "input": TEXTS, "beam": 1})
        assert_error(r, 408, "timeout")
        assert time.monotonic() - t0 < 5


def _fuzz_module():
    """tests/tools/serve/test_serve_fuzz.py as a module (its strategies and checks), whatever pytest's import mode."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_serve_fuzz", Path(__file__).with_name("test_serve_fuzz.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_translate_endpoint_is_fuzzed(tmodels):
    """The fuzz suite's schema bodies on /v1/translate, with translation, completion and classify models served."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    fuzz = _fuzz_module()
    FUZZ, KEY, FUZZ_LIMITS, MODES, check, encodings = fuzz.FUZZ, fuzz.KEY, fuzz.LIMITS, fuzz.MODES, fuzz.check, fuzz.encodings
    endpoints, from_schema = fuzz.endpoints, fuzz.from_schema

    models = {k: v for k, v in tmodels.items() if k not in ("slow", "counted")}
    with TestClient(create_app(models, FUZZ_LIMITS, workers=2), raise_server_exceptions=False) as open_, \
            TestClient(create_app(models, FUZZ_LIMITS, api_key=KEY, workers=2), raise_server_exceptions=False) as keyed:
        spec = open_.app.openapi()
        body = next(b for m, p, b in endpoints(open_.app) if p == "/v1/translate")
        ids = ([i for i, sm in models.items() if sm.kind == "translation"], list(models))
        request = st.one_of([from_schema(body, spec["components"]["schemas"], ids, mode) for mode in MODES])

        @settings(FUZZ, max_examples=150)
        @given(body=request, data=st.data(), key=st.booleans())
        def run(body, data, key):
            content = data.draw(encodings(body), label="content")
            headers = {"content-type": "application/json", **({"authorization": f"Bearer {KEY}"} if key else {})}
            r = check(keyed if key else open_, "POST", "/v1/translate", content=content, headers=headers)
            if r.status_code == 200:
                assert all(isinstance(d["text"], str) for d in r.json()["data"])

        run()
