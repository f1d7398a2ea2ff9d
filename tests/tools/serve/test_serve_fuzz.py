"""Fuzzing `lmforge serve` with hypothesis (issue 14): every endpoint of the app's own OpenAPI schema,
bodies drawn from that schema and from anything else JSON can hold (wrong types, huge and non-finite
numbers, lone surrogates as ``\\ud800`` escapes or as invalid UTF-8, deep nesting, sizes around the
limits), and raw bytes. Every answer must be a 4xx JSON error in the server's shape or a well-formed
200, never a 500, and arrive within a bound (a request running past it fails the test, it cannot
hang it).

The app runs in process (FastAPI's TestClient: the Guard middleware, routes, validation and worker
threads, without sockets) over tiny random models; the examples are derandomized, so a run is
reproducible. About 10 s.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lmforge.tools.serve.app import create_app  # noqa: E402
from lmforge.tools.serve.limits import Limits  # noqa: E402

KEY = "sk-fuzz"
LIMITS = Limits(max_body_bytes=32 * 1024, max_prompt_tokens=48, max_completion_tokens=16, max_inputs=4, timeout_s=5)
REQUEST_BOUND_S = LIMITS.timeout_s + 5  # the server's own timeout, plus slack for a loaded machine
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


# ----------------------------------------------------------------------------- the app and bounded calls
@pytest.fixture(scope="module")
def clients(models):
    """{"open": client, "keyed": client}: the same models without and with an API key."""
    with TestClient(create_app(models, LIMITS, workers=2), raise_server_exceptions=False) as open_, \
            TestClient(create_app(models, LIMITS, api_key=KEY, workers=2), raise_server_exceptions=False) as keyed:
        yield {"open": open_, "keyed": keyed}


def bounded(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a daemon thread; AssertionError if it runs past REQUEST_BOUND_S."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = e

    t0 = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(REQUEST_BOUND_S)
    assert not thread.is_alive(), f"no answer within {REQUEST_BOUND_S} s: {fn.__name__}{args} (a hang)"
    if "error" in box:
        raise box["error"]
    return box["result"], time.monotonic() - t0


def check(client, method: str, path: str, **kwargs):
    """One request: never a 500, never past the bound, errors in the server's JSON shape, 200s well-formed."""
    r, took = bounded(client.request, method, path, **kwargs)
    shown = f"{method} {path} {kwargs!r:.300} -> {r.status_code} {r.text[:300]!r}"
    assert r.status_code < 500, shown
    assert took < REQUEST_BOUND_S, shown
    if r.status_code >= 400 and method != "HEAD":
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["code"], shown
        assert "\n" not in err["message"] and len(err["message"]) < 1000, shown
    elif r.status_code == 200 and method == "POST" and path in ("/v1/completions", "/v1/classify"):
        if r.headers["content-type"].startswith("text/event-stream"):
            events = [e for e in r.text.split("\n\n") if e]
            assert events[-1] == "data: [DONE]" and all(e.startswith("data: {") for e in events[:-1]), shown
            [json.loads(e[6:]) for e in events[:-1]]
        else:
            body = r.json()
            assert body["object"] in ("text_completion", "list") and body["usage"]["total_tokens"] >= 0, shown
    return r


# ----------------------------------------------------------------------------- strategies
def lone_surrogates():
    return st.integers(0xD800, 0xDFFF).map(chr)


TEXT = st.one_of(
    st.text(max_size=24),
    st.text(st.characters(max_codepoint=0x7F), max_size=24),
    st.lists(st.one_of(st.characters(), lone_surrogates()), max_size=12).map("".join),  # "\ud800" and friends
    st.sampled_from(["", " ", "the king", "\x00", "\ufeff", "\u202e", "a" * 3000, "猫" * 200, "\U0001f600" * 50]),
)
NUMBER = st.one_of(
    st.integers(-3, 70), st.integers(), st.just(2**64), st.just(-(2**63) - 1), st.just(10**400),
    st.floats(), st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-45, 1.0000001, 2.0, 2.0000001, 1e308]),
)
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
ANY = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=4),
                   max_leaves=12)


VALID_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
MODES = ("valid", "one-bad", "edges", "mixed")


def from_schema(schema: dict, defs: dict, model_ids: tuple[list[str], list[str]], mode: str,
                name: str = "") -> st.SearchStrategy:
    """Values for a JSON schema (the subset the app's OpenAPI uses). ``model_ids``: (the endpoint's
    models, all models). ``mode``: "valid" (within its bounds, a few optional fields), "one-bad" (a
    valid body but for one field, which gets an "edges" value or anything at all), "edges" (on, just
    past and far past its bounds; lone surrogates), "mixed" (any property may be anything at all,
    required ones may be missing, unknown ones appear)."""
    def sub(sch, key=name, mode=mode):
        return from_schema(sch, defs, model_ids, mode, key)

    if "$ref" in schema:
        return sub(defs[schema["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in schema:
        bounds = {k: schema[k] for k in ("minimum", "maximum", "exclusiveMinimum", "ge", "gt", "le") if k in schema}
        return st.one_of([sub({**s, **bounds}) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        if name == "model":
            mine, every = model_ids
            return st.sampled_from(mine) if mode == "valid" else st.sampled_from(every + ["nope", "lm/../x"])
        return VALID_TEXT if mode == "valid" else TEXT
    if kind in ("integer", "number"):
        low = next((schema[k] for k in ("minimum", "exclusiveMinimum", "ge", "gt") if k in schema), None)
        high = next((schema[k] for k in ("maximum", "le") if k in schema), None)
        open_low = any(k in schema for k in ("exclusiveMinimum", "gt"))
        if kind == "integer":
            lo = -5 if low is None else int(low) + open_low
            valid = st.integers(lo, lo + 12 if high is None else min(int(high), lo + 12))
            if mode == "valid":
                return valid
            edges = [int(v) for b in (low, high) if b is not None for v in (b, b - 1, b + 1) if abs(v) < 2**70]
            return st.one_of(valid, st.sampled_from(edges) if edges else valid, st.integers())
        valid = st.floats(-10.0 if low is None else low, 10.0 if high is None else high, exclude_min=open_low)
        if mode == "valid":
            return valid
        edges = [v for b in (low, high) if b is not None for v in (b, b - 1, b + 1, b - 1e-9, b + 1e-9)]
        tiny = [1e-300, 5e-324, 1e-45] if low == 0 else []
        return st.one_of(valid, st.sampled_from(edges + tiny + [float("nan"), float("inf"), -float("inf")]),
                         st.integers(-3, 3))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        item = sub(schema.get("items", {}))
        few = st.lists(item, max_size=LIMITS.max_inputs if mode == "valid" else LIMITS.max_inputs + 1)
        return few if mode == "valid" else st.one_of(few, few, few, st.lists(item, min_size=60, max_size=70))
    if kind == "object" or "properties" in schema:
        props = {k: sub(v, k) for k, v in schema.get("properties", {}).items()}
        required = schema.get("required", [])
        if mode == "mixed":
            props = {k: v | ANY for k, v in props.items()}
            body = st.fixed_dictionaries({}, optional={**props, "unknown field": ANY})
        elif mode == "edges":
            body = st.fixed_dictionaries({k: props[k] for k in required},
                                         optional={k: v for k, v in props.items() if k not in required})
        elif mode == "one-bad":
            fields = schema.get("properties", {})
            valid = {k: sub(v, k, "valid") for k, v in fields.items()}
            bad = {k: sub(v, k, "edges") | ANY for k, v in fields.items()}
            optional = sorted(k for k in fields if k not in required)

            def one_bad(keys, wrong):
                return st.fixed_dictionaries({**{k: valid[k] for k in [*required, *sorted(keys)]}, wrong: bad[wrong]})

            body = st.tuples(st.sets(st.sampled_from(optional), max_size=2) if optional else st.just(set()),
                             st.sampled_from(sorted(fields))).flatmap(lambda t: one_bad(*t))
        else:  # a few optional fields at a time, so that many bodies pass
            optional = sorted(k for k in props if k not in required)
            body = st.sets(st.sampled_from(optional), max_size=3).flatmap(
                lambda keys: st.fixed_dictionaries({k: props[k] for k in [*required, *sorted(keys)]})) if optional \
                else st.fixed_dictionaries({k: props[k] for k in required})
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            body = body | st.dictionaries(TEXT, sub(extra, ""), max_size=3)
        return body
    return ANY


def endpoints(app) -> list[tuple[str, str, dict | None]]:
    """(method, path, request-body schema or None) of every operation in the app's OpenAPI schema."""
    spec = app.openapi()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            out.append((method.upper(), path, body))
    return out


def encodings(value) -> st.SearchStrategy:
    """The body as sent: JSON with \\u escapes (lone surrogates as \\ud800), UTF-8 with surrogates passed
    through (invalid UTF-8), or cut short."""
    escaped = json.dumps(value).encode()
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return st.one_of(st.just(escaped), st.just(escaped), st.just(raw),
                     st.integers(0, max(0, len(escaped) - 1)).map(lambda n: escaped[:n]))


HEADERS = st.fixed_dictionaries({}, optional={
    "content-type": st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=x", "application/json; charset=latin-1", ""]),
    "authorization": st.sampled_from([f"Bearer {KEY}", f"bearer {KEY}", f"Bearer  {KEY} ", "Bearer", "Basic x", "",
                                      f"Bearer {KEY}x"]) | st.binary(max_size=40).map(  # not latin-1 text even
        lambda b: b"Bearer " + b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")),
    "content-length": st.sampled_from(["0", "5", "-1", "abc", "99999999999999999999"]),
})


# ----------------------------------------------------------------------------- the tests
def test_every_endpoint_of_the_schema_is_fuzzed(clients):
    ops = {(m, p) for m, p, _ in endpoints(clients["open"].app)}
    assert {("GET", "/healthz"), ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"),
            ("POST", "/v1/completions"), ("POST", "/v1/classify")} <= ops, ops
    assert all(body is not None for m, p, body in endpoints(clients["open"].app) if m == "POST")


def test_schema_bodies_never_get_a_500(clients, models):
    app = clients["open"].app
    spec = app.openapi()
    defs = spec["components"]["schemas"]
    kinds = {"/v1/completions": "completion", "/v1/classify": "classification", "/v1/translate": "translation"}
    posts = [(path, from_schema(body, defs, ([i for i, sm in models.items() if sm.kind == kinds[path]], list(models)),
                                mode))
             for m, path, body in endpoints(app) if m == "POST" for mode in MODES]
    request = st.one_of([st.tuples(st.just(path), body) for path, body in posts])

    @settings(FUZZ, max_examples=400)
    @given(request=request, data=st.data(), keyed=st.booleans())
    def run(request, data, keyed):
        path, body = request
        content = data.draw(encodings(body), label="content")
        headers = {"content-type": "application/json"}
        if keyed:
            headers["authorization"] = f"Bearer {KEY}"
        check(clients["keyed" if keyed else "open"], "POST", path, content=content, headers=headers)

    run()


def test_anything_else_never_gets_a_500(clients, models):
    """Any method on any path of the schema (and some outside it), random bodies, bytes and headers."""
    paths = [p for _, p, _ in endpoints(clients["open"].app)] + ["/", "/docs", "/redoc", "/openapi.json", "/v1",
                                                                  "/v1/", "/docs/assets/../x", "/%ff", "/v1/models/"]
    model_path = st.one_of(st.sampled_from(list(models)), TEXT).map(lambda s: urllib.parse.quote(s, safe="", errors="surrogatepass"))
    path = st.sampled_from(paths).flatmap(
        lambda p: model_path.map(lambda m: p.replace("{model_id}", m)) if "{model_id}" in p else st.just(p))
    body = st.one_of(ANY.flatmap(encodings), st.binary(max_size=200),
                     st.sampled_from([b"[" * 20_000, b'{"a":' * 5000, b"9" * 5000, b'{"model": 1e999}',
                                      b'{"model": "lm", "prompt": "' + b"x" * 40_000 + b'"}', b"\xff\xfe", b"null"]))

    @FUZZ
    @given(method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]), path=path,
           body=body, headers=HEADERS, keyed=st.booleans())
    def run(method, path, body, headers, keyed):
        kwargs = {"headers": headers}
        if method in ("POST", "PUT", "PATCH"):
            kwargs["content"] = body
        check(clients["keyed" if keyed else "open"], method, path, **kwargs)

    run()


def test_valid_requests_stay_200_under_fuzzed_sampling(clients):
    """Bodies that are valid apart from the sampling numbers: any value in range is a 200."""
    @FUZZ
    @given(temperature=st.floats(0, 2) | st.sampled_from([0, 2, 1e-300, 5e-324]),
           top_p=st.floats(0, 1, exclude_min=True) | st.sampled_from([1, 1e-300, 5e-324, 1e-45]),
           top_k=st.none() | st.integers(0, 10**6), seed=st.none() | st.integers(-(2**62), 2**62),
           prompt=st.text(max_size=20) | st.lists(st.integers(0, 300), min_size=1, max_size=8),
           n=st.integers(1, 2), stream=st.booleans(), max_tokens=st.integers(0, LIMITS.max_completion_tokens))
    def run(**fields):
        if fields["prompt"] == "" or isinstance(fields["prompt"], str) and not fields["prompt"].strip():
            fields["prompt"] = "the"
        r = check(clients["open"], "POST", "/v1/completions", json={"model": "lm", **fields})
        assert r.status_code in (200, 400), r.text  # 400: a prompt past max_prompt_tokens

    run()
