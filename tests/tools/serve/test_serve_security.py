"""`lmforge serve`'s open doors (issue 14): an empty or unusable API key, connections that stall in
their headers or pile up, docs pages that call out to CDNs; and the start-up flags checked in one line.

The connection tests open raw sockets to a real uvicorn server on a free 127.0.0.1 port (the app
under :func:`lmforge.tools.serve.protocol.server_config`, as `lmforge serve` runs it), with a header
timeout of about a second; every read has a socket timeout and every loop a bound.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from helpers.serve import running  # noqa: E402

from lmforge.__main__ import main  # noqa: E402
from lmforge.tools.serve import app as app_module  # noqa: E402
from lmforge.tools.serve.app import create_app  # noqa: E402
from lmforge.tools.serve.limits import Limits  # noqa: E402


# ----------------------------------------------------------------------------- start-up flags
@pytest.fixture
def started(monkeypatch):
    """uvicorn.Server.run replaced by a stub: a `lmforge serve` that gets as far as serving records its
    config and returns at once (so a check that is missing makes main() return 0 instead of hanging)."""
    configs = []

    def run(self, sockets=None):
        configs.append(self.config)
        for s in sockets or []:
            s.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.delenv("LMFORGE_API_KEY", raising=False)
    return configs


def served_key(config) -> str | None:
    (guard,) = [m for m in config.app.user_middleware if m.cls.__name__ == "Guard"]
    return guard.kwargs["api_key"]


def one_line_error(capsys, *argv) -> str:
    code = main(["serve", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lmforge: error: ") and "\n" not in err and "Traceback" not in err
    return err[len("lmforge: error: "):]


def test_an_empty_api_key_is_an_error_not_no_key(runs, started, capsys, monkeypatch):
    lm = runs["lm"]
    err = one_line_error(capsys, lm, "--port", "0", "--api-key", "")  # --api-key "$UNSET_VAR"
    assert err.startswith("--api-key: expected a key of printable ASCII characters, got an empty string"), err
    monkeypatch.setenv("LMFORGE_API_KEY", "")
    err = one_line_error(capsys, lm, "--port", "0")
    assert err.startswith("LMFORGE_API_KEY: expected a key") and "empty" in err, err
    assert not started
    monkeypatch.setenv("LMFORGE_API_KEY", "sk-from-env")
    assert main(["serve", str(lm), "--port", "0"]) == 0 and served_key(started[-1]) == "sk-from-env"
    assert main(["serve", str(lm), "--port", "0", "--api-key", "sk-flag"]) == 0 and served_key(started[-1]) == "sk-flag"
    monkeypatch.delenv("LMFORGE_API_KEY")
    assert main(["serve", str(lm), "--port", "0"]) == 0 and served_key(started[-1]) is None


@pytest.mark.parametrize("key, what", [("clé-secrète", "a non-ASCII character at position 3"),
                                       ("sk test", "a space at position 3"), ("sk\ttest", "a control character"),
                                       ("sk-\x7f", "a control character"), (" sk", "a space at position 1"),
                                       ("ключ", "a non-ASCII character at position 1")])
def test_api_keys_must_be_printable_ascii(runs, started, capsys, monkeypatch, key, what):
    err = one_line_error(capsys, runs["lm"], "--port", "0", "--api-key", key)
    assert err.startswith("--api-key: expected printable ASCII characters only") and what in err, err
    assert key not in err  # the key is never echoed
    monkeypatch.setenv("LMFORGE_API_KEY", key)
    err = one_line_error(capsys, runs["lm"], "--port", "0")
    assert err.startswith("LMFORGE_API_KEY: expected printable ASCII") and what in err, err
    assert not started


def test_create_app_refuses_keys_that_could_never_match(models):
    from lmforge.errors import UserError

    for key in ("", "  ", "clé", "a b"):
        with pytest.raises(UserError, match=r"^api_key: expected"):
            create_app(models, api_key=key)


def test_a_printable_ascii_key_with_symbols_works(runs, started, models):
    key = "sk-!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~"
    assert main(["serve", str(runs["lm"]), "--port", "0", "--api-key", key, "--log-level", "warning"]) == 0
    assert served_key(started[-1]) == key
    with TestClient(create_app(models, api_key=key)) as c:
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key[:-1]}"}).status_code == 401


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port: expected an integer in 1-65535 (0 = any free port), got 70000"),
    (["--port", "65536"], "--port: expected an integer in 1-65535"),
    (["--port", "-1"], "--port: expected an integer in 1-65535"),
    (["--workers", "0"], "--workers: expected an integer >= 1, got 0"),
    (["--workers", "-3"], "--workers: expected an integer >= 1, got -3"),
    (["--max-batch", "0"], "--max-batch: expected an integer >= 1, got 0"),
    (["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (["--threads", "1000000000"], "--threads: expected an integer in 1-1024, got 1000000000"),
    (["--batch-window-ms", "nan"], "--batch-window-ms: expected a finite number >= 0, got nan"),
    (["--batch-window-ms", "inf"], "--batch-window-ms: expected a finite number >= 0, got inf"),
    (["--batch-window-ms", "-1"], "--batch-window-ms: expected a finite number >= 0, got -1.0"),
    (["--max-inputs", "0"], "--max-inputs: expected an integer >= 1, got 0"),
    (["--max-concurrent", "-1"], "--max-concurrent: expected an integer >= 1, got -1"),
    (["--max-connections", "0"], "--max-connections: expected an integer >= 1, got 0"),
    (["--timeout", "nan"], "--timeout: expected a finite number of seconds > 0, got nan"),
    (["--timeout", "inf"], "--timeout: expected a finite number of seconds > 0, got inf"),
    (["--header-timeout", "0"], "--header-timeout: expected a finite number of seconds > 0, got 0.0"),
    (["--keep-alive=-inf"], "--keep-alive: expected a finite number of seconds > 0, got -inf"),
])
def test_bad_serve_flags_are_one_line_field_errors(runs, started, capsys, flags, message):
    err = one_line_error(capsys, runs["lm"], *flags)
    assert err.startswith(message), err
    assert not started


def test_port_zero_is_still_any_free_port(runs, started, capsys):
    assert main(["serve", str(runs["lm"]), "--port", "0", "--log-level", "warning"]) == 0
    assert re.search(r"on http://127\.0\.0\.1:\d+ ", capsys.readouterr().out)


# ----------------------------------------------------------------------------- connections
def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    return host, int(port)


def read_until_closed(s: socket.socket, limit_s: float = 6.0) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    s.settimeout(limit_s)
    reply = b""
    for _ in range(1000):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        reply += chunk
    return reply


HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def guarded(models):
    with running(create_app(models, Limits(header_timeout_s=HEADER_TIMEOUT))) as u:
        yield u


def test_stalled_headers_are_dropped_while_others_are_served(guarded):
    addr = address(guarded)
    starts = [b"", b"G", b"GET /healthz HTTP/1.1\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
              b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Len"]
    stalled = []
    t0 = time.monotonic()
    for i in range(25):
        s = socket.create_connection(addr, timeout=5)
        s.sendall(starts[i % len(starts)]) if starts[i % len(starts)] else None
        stalled.append(s)
    try:
        with httpx.Client(base_url=guarded, timeout=5) as c:  # others are served meanwhile, at once
            for _ in range(5):
                t = time.monotonic()
                assert c.get("/healthz").status_code == 200
                assert c.post("/v1/classify", json={"model": "clf-lstm", "input": ["x"]}).status_code == 200
                assert time.monotonic() - t < HEADER_TIMEOUT / 2
        for s in stalled:
            reply = read_until_closed(s)
            assert reply.startswith(b"HTTP/1.1 408 ") and b'"code": "timeout"' in reply, reply
            assert b"request headers not received within 1 s" in reply
        waited = time.monotonic() - t0
        assert HEADER_TIMEOUT * 0.9 <= waited < HEADER_TIMEOUT + 2.5, waited
    finally:
        for s in stalled:
            s.close()


def test_dripping_headers_do_not_extend_the_deadline(guarded):
    """One header byte every 50 ms: the deadline counts from the connection's start, not the last byte."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(address(guarded), timeout=5) as s:
        t0 = time.monotonic()
        s.settimeout(0.05)
        reply, closed = b"", False
        for byte in request[:150]:  # at most 7.5 s of dripping, never the whole request
            try:
                s.send(bytes([byte]))
            except OSError:  # closed by the server
                closed = True
                break
            try:
                chunk = s.recv(4096)
                reply += chunk
                if not chunk:
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed and reply.startswith(b"HTTP/1.1 408 "), reply
    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 2.0, elapsed


def test_a_kept_alive_connection_gets_the_deadline_for_each_request(guarded):
    with socket.create_connection(address(guarded), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        for _ in range(100):
            first += s.recv(4096)
            if b'"status":"ok"' in first:
                break
        assert first.startswith(b"HTTP/1.1 200 ")
        time.sleep(HEADER_TIMEOUT * 1.2)  # idle between requests: the keep-alive timeout's business (5 s), not this
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        second = b""
        for _ in range(100):
            second += s.recv(4096)
            if b'"status":"ok"' in second:
                break
        assert second.startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # a third request that stalls
        reply = read_until_closed(s)
        assert reply.startswith(b"HTTP/1.1 408 ") and HEADER_TIMEOUT * 0.9 <= time.monotonic() - t0 < HEADER_TIMEOUT + 2


def test_a_slow_but_complete_request_is_served(guarded):
    with socket.create_connection(address(guarded), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(HEADER_TIMEOUT / 2)
        s.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        assert read_until_closed(s).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("pieces", [1, 10])
def test_oversized_headers_get_400(guarded, pieces):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    with socket.create_connection(address(guarded), timeout=5) as s:
        step, reply = -(-len(request) // pieces), b""
        for i in range(0, len(request), step):  # stop sending once answered (more bytes would reset the connection)
            s.sendall(request[i:i + step])
            s.settimeout(0.05)
            try:
                reply = s.recv(65536)
            except socket.timeout:
                continue
            break
        reply += read_until_closed(s)
        assert reply.startswith(b"HTTP/1.1 400 "), reply
    with socket.create_connection(address(guarded), timeout=5) as s:  # 12 KB of headers are fine
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n")
        assert read_until_closed(s).startswith(b"HTTP/1.1 200 ")


def test_idle_kept_alive_connections_are_closed(models):
    with running(create_app(models, Limits(keep_alive_s=0.3))) as u:
        with socket.create_connection(address(u), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            reply = read_until_closed(s, 5)
            assert reply.startswith(b"HTTP/1.1 200 ") and 0.25 <= time.monotonic() - t0 < 3


def test_connections_beyond_the_limit_get_503_until_the_stalled_ones_are_dropped(models):
    with running(create_app(models, Limits(max_connections=4, header_timeout_s=HEADER_TIMEOUT))) as u:
        held = [socket.create_connection(address(u), timeout=5) for _ in range(4)]
        try:
            time.sleep(0.1)  # accepted by the server
            with httpx.Client(base_url=u, timeout=5) as c:
                r = c.get("/healthz")
                assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
                assert "4 connections open (limit 4)" in r.json()["error"]["message"]
                assert r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
                for _ in range(60):  # the held connections are dropped at the header deadline; then all is served
                    time.sleep(0.1)
                    if c.get("/healthz").status_code == 200:
                        break
                else:
                    raise AssertionError("never served again")
                assert c.post("/v1/classify", json={"model": "clf-lstm", "input": ["x"]}).status_code == 200
            for s in held:
                assert read_until_closed(s).startswith(b"HTTP/1.1 408 ")
        finally:
            for s in held:
                s.close()


def test_many_stalled_connections_at_once(guarded):
    """200 connections with partial headers, from threads: all dropped, /healthz served meanwhile."""
    addr = address(guarded)
    socks, lock = [], threading.Lock()

    def open_one():
        s = socket.create_connection(addr, timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost")
        with lock:
            socks.append(s)

    threads = [threading.Thread(target=open_one) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert len(socks) == 200
        assert httpx.get(f"{guarded}/healthz", timeout=5).status_code == 200
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        for s in socks:
            assert read_until_closed(s, max(0.1, deadline - time.monotonic())).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in socks:
            s.close()


# ----------------------------------------------------------------------------- docs without CDNs
def references(html: str) -> list[str]:
    """Every URL the page makes a browser load or link to (src=, href=, url(...), spec-url=, url: '...')."""
    refs = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", html)
    refs += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    return refs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_other_sites(models, page):
    with TestClient(create_app(models), base_url="http://127.0.0.1:8000") as c:
        r = c.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        assert not re.search(r"https?://|(?<![:\w])//[\w.-]+\.\w", html), re.findall(r"\S*https?://\S*", html)
        assert "fonts.googleapis" not in html and "cdn.jsdelivr" not in html and "unpkg" not in html
        refs = references(html)
        assert refs and "/openapi.json" in refs
        assets = [u for u in refs if u.startswith("/docs/assets/")]
        assert len(assets) >= (3 if page == "/docs" else 2), refs
        for u in refs:
            got = c.get(u)
            assert got.status_code == 200 and got.content, u
            if u.endswith((".css", ".js")):
                assert b"fonts.googleapis" not in got.content and b"cdn.jsdelivr" not in got.content, u
        assert c.get("/openapi.json").json()["info"]["title"] == "lmforge serve"


def test_docs_without_the_assets_package_still_call_nowhere(models, monkeypatch):
    monkeypatch.setattr(app_module, "_docs_assets", lambda: None)
    with TestClient(create_app(models)) as c:
        for page in ("/docs", "/redoc"):
            r = c.get(page)
            assert r.status_code == 200 and "fastapi-offline" in r.text and not re.search(r"https?://", r.text)
        assert c.get("/docs/assets/swagger-ui-bundle.js").status_code == 404


def test_head_healthz(models):
    with TestClient(create_app(models)) as c:
        r = c.head("/healthz")
        assert r.status_code == 200 and r.content == b""
        assert "head" not in c.get("/openapi.json").json()["paths"]["/healthz"]
