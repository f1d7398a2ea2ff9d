"""``lmforge serve``: an HTTP API (FastAPI + uvicorn) over one or more run dirs.

Endpoints (see ``/docs`` for the schema, ``/openapi.json`` for the machine-readable one):

- ``GET /healthz``: ``{"status": "ok", "models": [...]}``, never behind the API key.
- ``GET /v1/models``, ``GET /v1/models/{id}``: OpenAI's list format, plus ``kind``, ``labels``, ``context_length``.
- ``POST /v1/completions``: OpenAI's legacy completions API (``prompt``, ``max_tokens``, ``temperature``,
  ``top_p``, ``stop``, ``seed``, ``n``, ``stream``), for GPT language models.
- ``POST /v1/classify``: ``{"model", "input": [texts]}`` -> each text's label and the probability of every label.
- ``POST /v1/translate``: ``{"model", "input": [texts], "beam"}`` -> each text's translation (translation runs).

Module map: ``registry`` (check and load run dirs), ``app`` (routes), ``completion`` (generation in
worker threads, SSE), ``batching`` (classify requests grouped into forward passes), ``translation``
(``/v1/translate``: requests grouped into batched decoding), ``limits``
(limits, API key, the JSON error shape), ``schemas`` (request / response bodies), ``protocol``
(uvicorn's HTTP/1.1 connection plus a header deadline and a connection cap).
FastAPI, uvicorn and fastapi-offline (the /docs assets) are the ``serve`` extra: ``pip install -e '.[serve]'``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from lmforge.errors import UserError
from lmforge.tools.serve.limits import check_api_key


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("lmforge serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), or a UserError naming the address."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise UserError(f"--host {host}: cannot use this address ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return False


def _check_int(flag: str, value, low: int = 1, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        want = f"an integer >= {low}" if high is None else f"an integer in {low}-{high}"
        raise UserError(f"{flag}: expected {want}, got {value!r}")


MAX_THREADS = 1024


def check_options(port: int = 8000, batch_window_ms: float = 5.0, max_batch: int = 32, workers: int | None = None,
                  threads: int = 1) -> None:
    """A UserError naming the flag of the first bad option (``--port``, ``--batch-window-ms`` ...)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise UserError(f"--port: expected an integer in 1-65535 (0 = any free port), got {port!r}")
    if (isinstance(batch_window_ms, bool) or not isinstance(batch_window_ms, (int, float))
            or not 0 <= batch_window_ms < float("inf")):
        raise UserError(f"--batch-window-ms: expected a finite number >= 0, got {batch_window_ms!r}")
    _check_int("--max-batch", max_batch)
    if workers is not None:
        _check_int("--workers", workers)
    _check_int("--threads", threads)
    if threads > MAX_THREADS:
        raise UserError(f"--threads: expected an integer in 1-{MAX_THREADS}, got {threads}")


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          limits=None, batching: bool = True, batch_window_ms: float = 5.0, max_batch: int = 32,
          workers: int | None = None, threads: int = 1, log_level: str = "info",
          api_key_source: str = "--api-key") -> None:
    """Load the run dirs (refusing pickles), bind ``host:port``, print the URL and serve until SIGINT / SIGTERM.

    ``api_key_source`` names where the key came from in error messages (``LMFORGE_API_KEY``).
    """
    _require_extra()
    import torch
    import uvicorn

    from lmforge.tools.serve.app import create_app
    from lmforge.tools.serve.limits import Limits
    from lmforge.tools.serve.protocol import server_config
    from lmforge.tools.serve.registry import load_models

    limits = limits or Limits()
    check_options(port, batch_window_ms, max_batch, workers, threads)
    api_key = check_api_key(api_key, api_key_source)
    torch.set_num_threads(threads)
    models = load_models(run_dirs)
    app = create_app(models, limits, api_key, batching, batch_window_ms, max_batch, workers)
    sock = bind(host, port)
    if not is_loopback(sock) and api_key is None:
        print(f"lmforge: warning: serving on {host}, reachable from other machines, without --api-key", file=sys.stderr)
    h, p = sock.getsockname()[:2]
    url = f"http://{'[' + h + ']' if ':' in h else h}:{p}"
    kinds = ", ".join(f"{i} ({m.kind})" for i, m in models.items())
    print(f"lmforge serve: {kinds} on {url} (docs: {url}/docs; batching {'on' if batching else 'off'}; "
          f"pid {os.getpid()})", flush=True)
    uvicorn.Server(server_config(app, log_level=log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])
