"""Limits, the JSON error shape, and the ASGI guard that applies what can be checked before the app runs.

Every error the server sends has OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:

=====  =========================  ==================================================================
 400   ``invalid_json``           the body is not JSON
 400   ``prompt_too_long``        a prompt has more than ``max_prompt_tokens`` tokens
 400   ``unsupported_parameter``  echo, logprobs, suffix, best_of > 1, penalties, logit_bias
 400   ``wrong_model_kind``       a model of another kind than the endpoint's (completions on a classifier,
                                  classify on a language model, translate on either ...)
 401   ``invalid_api_key``        ``--api-key`` is set and the Bearer key is missing or wrong
 404   ``model_not_found``        no served model has that id (and unknown paths: ``not_found``)
 408   ``timeout``                the request took longer than ``timeout_s`` (body upload included), or
                                  its line and headers took longer than ``header_timeout_s`` (then closed)
 413   ``body_too_large``         the body exceeds ``max_body_bytes``
 413   ``image_too_large``        an image exceeds ``max_image_bytes`` or ``max_image_pixels``
 422   ``invalid_value``          wrong types or values, ``max_tokens`` or ``beam`` above the cap, too many inputs,
                                  an image input that is not base64 or not an image, or of another size than the run's
 503   ``overloaded``             more than ``max_concurrent`` requests in flight, or more than
                                  ``max_connections`` connections open (retry later)
=====  =========================  ==================================================================
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from dataclasses import dataclass, field, fields
from typing import Any

from lmforge.errors import UserError


def _limit(default, flag: str, help: str):
    """A Limits field with its ``lmforge serve`` flag and help text (``build_parser`` adds the flag from these)."""
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass
class Limits:
    """What one request may ask for; every field is a ``lmforge serve`` flag (``--max-body-bytes`` ...).

    Each field's metadata holds its flag and help text; :func:`option_specs` lists them for the CLI.
    """

    max_body_bytes: int = _limit(1 << 20, "--max-body-bytes", "larger request bodies get 413 (default 1 MiB)")
    max_prompt_tokens: int = _limit(1024, "--max-prompt-tokens", "longer prompts get 400 (default 1024)")
    max_completion_tokens: int = _limit(512, "--max-completion-tokens", "a larger max_tokens gets 422 (default 512)")
    max_inputs: int = _limit(64, "--max-inputs", "classify or translate texts, or prompts x n, per request; more get "
                             "422 (default 64)")
    max_image_bytes: int = _limit(1 << 20, "--max-image-bytes", "classify on an image run: a larger image (its decoded "
                                  "base64 bytes) gets 413 (default 1 MiB)")
    max_image_pixels: int = _limit(1 << 22, "--max-image-pixels", "classify on an image run: an image of more pixels "
                                   "(width x height) gets 413 (default 4,194,304)")
    max_beam: int = _limit(8, "--max-beam", "the largest beam a translate request may ask for; more get 422 (default 8)")
    timeout_s: float = _limit(30.0, "--timeout", "seconds per request, upload included; then 408 (default 30)")
    max_concurrent: int = _limit(256, "--max-concurrent", "requests in flight; more get 503 (default 256)")
    header_timeout_s: float = _limit(10.0, "--header-timeout", "seconds for a request's line and headers to arrive; "
                                     "then 408 and the connection is closed (default 10)")
    keep_alive_s: float = _limit(5.0, "--keep-alive", "seconds an idle kept-alive connection stays open (default 5)")
    max_connections: int = _limit(1024, "--max-connections", "open connections; a request on one more gets 503 "
                                  "(default 1024)")

    def __post_init__(self) -> None:
        from lmforge.errors import UserError

        specs = option_specs()
        for name, _, flag, _, _ in (spec for spec in specs if spec[1] is int):  # counts first, then seconds
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{flag}: expected an integer >= 1, got {value!r}")
        for name, _, flag, _, _ in (spec for spec in specs if spec[1] is float):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise UserError(f"{flag}: expected a finite number of seconds > 0, got {value!r}")


_TYPES_OF = {"int": int, "float": float}  # the annotations, left as text by `from __future__ import annotations`


def option_specs() -> list[tuple[str, type, str, Any, str]]:
    """(field name, type, flag, default, help) of every :class:`Limits` field, in order: the CLI adds these flags.

    >>> option_specs()[0]
    ('max_body_bytes', <class 'int'>, '--max-body-bytes', 1048576, 'larger request bodies get 413 (default 1 MiB)')
    """
    return [(f.name, _TYPES_OF[f.type], f.metadata["flag"], f.default, f.metadata["help"]) for f in fields(Limits)]


def deadline(request, limits: Limits) -> float:
    """When the request must be answered: its arrival (stamped by Guard) plus the server's timeout."""
    return request.scope.get("lmforge.t0", time.monotonic()) + limits.timeout_s


class APIError(Exception):
    """An error answered as ``status`` + OpenAI-shaped JSON (raised anywhere in a request handler)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type_ or _TYPES.get(status, "invalid_request_error")


def input_texts(body, limits: Limits) -> list[str]:
    """A classify / translate request's ``input`` as a list: at least one text, at most ``limits.max_inputs``."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise APIError(422, "input: expected at least one text", "invalid_value", "input")
    if len(texts) > limits.max_inputs:
        raise APIError(422, f"input: {len(texts)} texts, the limit is {limits.max_inputs} per request",
                       "invalid_value", "input")
    return texts


_TYPES = {401: "authentication_error", 404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error",
          503: "server_error", 500: "server_error"}


def error_body(status: int, message: str, code: str, param: str | None = None, type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A complete JSON response through raw ASGI ``send``."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware, in front of everything: API key, concurrency, body size and upload time.

    For every ``/v1/...`` request: the Bearer key (401, checked on the headers alone), the number of
    requests in flight (503). For every request with a body: ``Content-Length`` above the limit is
    refused at once (413); otherwise the body is read here, in full, within ``timeout_s`` (a client
    that stalls mid-upload gets 408) and without passing ``max_body_bytes`` (a chunked upload that
    grows too large gets 413), then handed to the app. ``/healthz``, ``/docs`` and ``/openapi.json``
    need no key.
    """

    def __init__(self, app, limits: Limits, api_key: str | None = None):
        self.app, self.limits, self.api_key = app, limits, api_key
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["lmforge.t0"] = time.monotonic()  # the request's timeout counts from here
        path = scope.get("path", "")
        if path.startswith("/v1/"):
            if self.api_key is not None and not self._authorized(scope):
                return await send_json(send, 401, error_body(401, "missing or wrong API key: send the header "
                                                             "'Authorization: Bearer KEY'", "invalid_api_key"),
                                       [(b"www-authenticate", b"Bearer")])
            if self.in_flight >= self.limits.max_concurrent:
                return await send_json(send, 503, error_body(503, f"server busy: {self.in_flight} requests in flight "
                                                             f"(limit {self.limits.max_concurrent}); retry later",
                                                             "overloaded"), [(b"retry-after", b"1")])
        self.in_flight += 1
        try:
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body = await self._read_body(receive, send, _content_length(scope))
                if body is None:
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _authorized(self, scope) -> bool:
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())

    async def _read_body(self, receive, send, declared: int | None) -> bytes | None:
        """The whole body, or None after answering 413 / 408 / 400 itself."""
        limit = self.limits.max_body_bytes
        too_large = error_body(413, f"request body exceeds the limit of {limit} bytes", "body_too_large")
        if declared is not None and declared > limit:
            await send_json(send, 413, too_large, [(b"connection", b"close")])
            return None
        async def read_all() -> bytes | str | None:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return "too large"
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read_all(), self.limits.timeout_s)
        except asyncio.TimeoutError:
            await send_json(send, 408, error_body(408, f"request body not received within {self.limits.timeout_s:g} s",
                                                  "timeout"), [(b"connection", b"close")])
            return None
        if body == "too large":
            await send_json(send, 413, too_large, [(b"connection", b"close")])
            return None
        return body


def _content_length(scope) -> int | None:
    value = dict(scope.get("headers") or []).get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that gives ``body`` once, then waits on the real one (for disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def check_api_key(key: str | None, source: str = "--api-key") -> str | None:
    """``key`` if it can work as a Bearer key, else a UserError naming ``source`` (the flag or the variable).

    A key is 1 or more printable ASCII characters without spaces: HTTP headers are read as latin-1 and
    split on spaces, so any other key could never match. The key itself is never echoed.
    """
    if key is None:
        return None
    if not key.strip():
        got = "an empty string" if not key else "only spaces"
        if source.startswith("--"):
            raise UserError(f"{source}: expected a key of printable ASCII characters, got {got} "
                            "(an unset variable in --api-key \"$VAR\"?)")
        raise UserError(f"{source}: expected a key of printable ASCII characters, got {got} (the variable is set "
                        "but empty: unset it to serve without a key)")
    for i, c in enumerate(key):
        if not "!" <= c <= "~":
            what = ("a space" if c == " " else "a control character" if ord(c) < 32 or ord(c) == 127
                    else "a non-ASCII character")
            raise UserError(f"{source}: expected printable ASCII characters only (no spaces or control characters), "
                            f"got {what} at position {i + 1}")
    return key
