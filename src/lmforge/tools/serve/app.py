"""The FastAPI app: routes, request checks and the JSON error handlers.

``create_app(models)`` needs no network: tests and the load benchmark run it under uvicorn on a
loopback port; ``lmforge serve`` (:func:`lmforge.tools.serve.serve`) does the same with the run dirs it loads.

``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from this server, never from a CDN
or Google Fonts: the files come from the ``fastapi-offline`` package (in the ``serve`` extra), served
under ``/docs/assets/``. Without that package both pages say how to get it and point to ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from lmforge.tools.serve import completion as C
from lmforge.tools.serve.batching import ClassifyBatcher
from lmforge.tools.serve.limits import APIError, Guard, Limits, deadline, error_body, input_texts
from lmforge.tools.serve.registry import ServedModel, served
from lmforge.tools.serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from lmforge.tools.serve.translation import add_translate_route, translate_batchers

ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 408, 413, 422, 503)}
UNION_FIELDS = {"prompt": "a string, a list of strings, a list of token ids or a list of such lists",
                "input": "a string or a list of strings", "stop": "a string or a list of strings"}
TINY = 1e-20  # a temperature below this is greedy, a top_p below this keeps the most likely token only
DOCS_ASSETS = "/docs/assets"


def create_app(models: dict[str, ServedModel], limits: Limits | None = None, api_key: str | None = None,
               batching: bool = True, batch_window_ms: float = 5.0, max_batch: int = 32,
               workers: int | None = None) -> FastAPI:
    """The app serving ``models`` ({id: ServedModel}); ``workers`` threads run generation, as many run classification
    and as many translation."""
    from lmforge.tools.serve.limits import check_api_key

    limits = limits or Limits()
    api_key = check_api_key(api_key, "api_key")  # one that could never match (empty, non-ASCII) is an error
    workers = workers or min(4, os.cpu_count() or 1)
    gen_pool = ThreadPoolExecutor(workers, thread_name_prefix="lmforge-generate")
    clf_pool = ThreadPoolExecutor(workers, thread_name_prefix="lmforge-classify")
    trn_pool = ThreadPoolExecutor(workers, thread_name_prefix="lmforge-translate")
    batchers = {i: ClassifyBatcher(m.model, m.tok.pad_id if m.tok.pad_id is not None else 0, clf_pool,
                                   batch_window_ms / 1e3, max_batch, batching, parallel=workers)
                for i, m in models.items() if m.kind == "classification" and not m.images}
    if any(m.images for m in models.values()):
        from lmforge.tools.serve.images import ImageBatcher

        batchers.update({i: ImageBatcher(m.model, clf_pool, batch_window_ms / 1e3, max_batch, batching, parallel=workers)
                         for i, m in models.items() if m.images})
    translators = translate_batchers(models, trn_pool, batch_window_ms / 1e3, max_batch, batching, workers)

    @asynccontextmanager
    async def lifespan(app):
        yield
        for b in (*batchers.values(), *translators.values()):
            b.close()
        for pool in (gen_pool, clf_pool, trn_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="lmforge serve", version=__import__("lmforge").__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # added by _add_docs: local assets, no CDN
                  description="OpenAI-compatible completions, and classify and translate endpoints, for lmforge run dirs. "
                              "Errors are `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.")
    app.state.models, app.state.batchers, app.state.limits = models, batchers, limits
    app.state.translators = translators
    app.add_middleware(Guard, limits=limits, api_key=api_key)
    secured = [Depends(HTTPBearer(auto_error=False))] if api_key else []  # documents the key; Guard checks it
    _add_error_handlers(app)
    _add_docs(app)

    _add_health_routes(app)
    _add_model_routes(app, secured)
    _add_completion_route(app, secured, gen_pool)
    _add_classify_route(app, secured)
    add_translate_route(app, secured, ERRORS)
    return app


def _add_health_routes(app: FastAPI) -> None:
    models = app.state.models

    @app.get("/healthz", tags=["health"], summary="liveness: 200 with the served model ids (no key needed)")
    async def healthz():
        return {"status": "ok", "models": list(models)}

    @app.head("/healthz", include_in_schema=False)  # load balancers' probes; uvicorn sends no body for HEAD
    async def healthz_head():
        return await healthz()


def _add_model_routes(app: FastAPI, secured: list) -> None:
    models = app.state.models

    @app.get("/v1/models", response_model=ModelList, tags=["models"], dependencies=secured, responses=ERRORS,
             response_model_exclude_none=True,
             summary="the served models (OpenAI list format, plus kind, labels and context length)")
    async def list_models():
        return {"object": "list", "data": [m.describe() for m in models.values()]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, tags=["models"], dependencies=secured,
             responses=ERRORS, response_model_exclude_none=True, summary="one served model")
    async def get_model(model_id: str):
        if model_id not in models:
            raise APIError(404, f"model {model_id!r} not found (served: {', '.join(models)})", "model_not_found", "model")
        return models[model_id].describe()


def _add_completion_route(app: FastAPI, secured: list, gen_pool: ThreadPoolExecutor) -> None:
    models, limits = app.state.models, app.state.limits

    @app.post("/v1/completions", response_model=CompletionResponse, tags=["completions"], dependencies=secured,
              summary="OpenAI-compatible text completion; `stream: true` sends server-sent events",
              responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description":
                                         "JSON, or with `stream: true` `data: {chunk}` events then `data: [DONE]`"}})
    async def completions(body: CompletionRequest, request: Request):
        sm = served(models, body.model, "completion")
        job = make_job(sm, body, limits)
        run = C.Running(sm, job, gen_pool, deadline(request, limits))
        if not job.stream:
            return JSONResponse(await C.complete(run, job, limits.timeout_s))  # response_model documents it
        try:
            first = await run.next_event(limits.timeout_s)  # errors before any token are ordinary JSON errors
        except BaseException:
            run.cancel()
            raise
        return StreamingResponse(C.stream(run, job, first, limits.timeout_s), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _add_classify_route(app: FastAPI, secured: list) -> None:
    models, batchers, limits = app.state.models, app.state.batchers, app.state.limits

    @app.post("/v1/classify", response_model=ClassifyResponse, tags=["classify"], dependencies=secured,
              responses=ERRORS, summary="label and every label's probability for each input text "
                                        "(concurrent requests share forward passes)")
    async def classify(body: ClassifyRequest, request: Request):
        from lmforge.data.batches import encode_texts

        sm = served(models, body.model, "classification")
        texts = input_texts(body, limits)
        if sm.images:  # an image run: each input is a base64 image file
            from lmforge.tools.serve.images import decode_images

            rows = decode_images(texts, sm.cfg, limits)
        else:
            rows = encode_texts(sm.tok, texts, sm.max_length)
        try:
            probs = await batchers[sm.id].submit(rows, deadline(request, limits) - time.monotonic())
        except asyncio.TimeoutError:
            raise APIError(408, f"classification not finished within the server's timeout of {limits.timeout_s:g} s",
                           "timeout") from None
        data = []
        for i, p in enumerate(probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            data.append({"object": "classification", "index": i, "label": sm.labels[best], "score": p[best],
                         "probabilities": dict(zip(sm.labels, p))})
        n = 0 if sm.images else sum(len(r) for r in rows)
        return JSONResponse({"object": "list", "model": sm.id, "data": data, "usage": {"prompt_tokens": n, "total_tokens": n}})


def make_job(sm: ServedModel, body: CompletionRequest, limits: Limits) -> C.Job:
    """Check a completion request against the model and the limits; encode its prompts."""
    for name, value, default in (("echo", body.echo, False), ("logprobs", body.logprobs, None),
                                 ("suffix", body.suffix, None), ("presence_penalty", body.presence_penalty, 0),
                                 ("frequency_penalty", body.frequency_penalty, 0), ("logit_bias", body.logit_bias, None)):
        if value not in (default, None) and not (name in ("suffix", "logit_bias") and not value):
            raise APIError(400, f"{name}: not supported by lmforge serve (leave it out)", "unsupported_parameter", name)
    if body.best_of not in (None, 1, body.n):
        raise APIError(400, "best_of: not supported by lmforge serve (leave it out)", "unsupported_parameter", "best_of")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > limits.max_completion_tokens:
        raise APIError(422, f"max_tokens: {max_tokens} is above this server's limit of {limits.max_completion_tokens}",
                       "invalid_value", "max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or "" in stop:
        raise APIError(422, "stop: expected at most 4 non-empty strings", "invalid_value", "stop")
    n = body.n or 1
    p = body.prompt
    count = 1 if isinstance(p, str) or (p and isinstance(p[0], int)) else len(p)
    if count * n > limits.max_inputs:  # before any tokenizing
        raise APIError(422, f"prompt, n: {count} prompts x n={n} completions, the limit is {limits.max_inputs} "
                            "per request", "invalid_value", "n" if n > 1 else "prompt")
    prompts = encode_prompts(sm, p)
    for ids in prompts:
        if len(ids) > limits.max_prompt_tokens:
            raise APIError(400, f"prompt: {len(ids)} tokens, this server's limit is {limits.max_prompt_tokens}",
                           "prompt_too_long", "prompt")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    if temperature < TINY:  # logits / 1e-300 overflow float32 to inf (then NaN): such a temperature is greedy
        temperature = 0.0
    top_p, top_k = None if body.top_p in (None, 1) else float(body.top_p), body.top_k or None
    if top_p is not None and top_p < TINY:  # rounds to 0 in float32, which would keep no token: keep the first
        top_p, top_k = None, 1
    return C.Job(sm.id, prompts, n, max_tokens, temperature, top_p, top_k, body.seed, stop, bool(body.stream),
                 include_usage)


def encode_prompts(sm: ServedModel, prompt) -> list[list[int]]:
    """Token ids of each prompt (an empty text starts from bos); token ids are range-checked."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(422, "prompt: expected at least one prompt", "invalid_value", "prompt")
    out = []
    texts = [p for p in prompt if isinstance(p, str)]
    encoded = iter(sm.tok.encode_batch(texts) if texts else [])
    vocab = sm.cfg.model.vocab_size
    for p in prompt:
        ids = next(encoded) if isinstance(p, str) else list(p)
        if not ids:
            if sm.tok.bos_id is None or not isinstance(p, str):
                raise APIError(422, "prompt: empty (and the tokenizer has no bos token to start from)", "invalid_value",
                               "prompt")
            ids = [sm.tok.bos_id]
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(422, f"prompt: token ids must be in [0, {vocab})", "invalid_value", "prompt")
        out.append(ids)
    return out


def _add_error_handlers(app: FastAPI) -> None:
    def reply(status: int, message: str, code: str, param: str | None = None, type_: str | None = None, headers=None):
        return JSONResponse(error_body(status, message, code, param, type_), status_code=status, headers=headers)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return reply(e.status, e.message, e.code, e.param, e.type)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        errors = e.errors()
        for err in errors:
            if err["type"] == "json_invalid":
                return reply(400, f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})",
                             "invalid_json")
        # a value error (a lone surrogate in a text) says more than the union's "not a list" for the other shapes
        err = next((x for x in errors if x["type"] == "value_error"), errors[0])
        loc = list(err["loc"][1:]) if err["loc"] and err["loc"][0] == "body" else list(err["loc"])
        if not loc:
            return reply(422, "request body: expected a JSON object (send it with Content-Type: application/json)",
                         "invalid_value")
        field = str(loc[0])
        if err["type"] == "value_error":  # from a validator: its message, at the field (and item) it names
            where = field + "".join(f"[{x}]" for x in loc[1:] if isinstance(x, int))
            message = f"{where}: {err.get('ctx', {}).get('error', err['msg'])}"
        elif field in UNION_FIELDS and err["type"].endswith("_type"):
            message = f"{field}: expected {UNION_FIELDS[field]}"
        else:
            got = repr(err.get("input"))
            message = f"{'.'.join(map(str, loc))}: {err['msg']}" + ("" if err["type"] == "missing" else f" (got {got[:60]})")
        return reply(422, message, "invalid_value", field)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        if e.status_code == 400 and e.detail == "There was an error parsing the body":  # FastAPI's, for any body
            return reply(400, "request body is not valid JSON (not UTF-8, too deeply nested or a number too long)",
                         "invalid_json")
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return reply(e.status_code, message, code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):  # a bug: still JSON, never a traceback
        return reply(500, f"internal error ({type(e).__name__})", "internal_error")


def _docs_assets():
    """The folder of fastapi-offline's Swagger UI and ReDoc files, or None without the package."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    from pathlib import Path

    folder = Path(fastapi_offline.__file__).parent / "static"
    needed = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
    return folder if all((folder / f).is_file() for f in needed) else None


def _add_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` with every asset from this server (``/docs/assets/...``)."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = _docs_assets()
    if assets is not None:
        from starlette.staticfiles import StaticFiles

        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    def missing(name: str) -> HTMLResponse:
        return HTMLResponse(f"<!DOCTYPE html><html><head><title>{app.title}: {name}</title></head><body><p>{name} "
                            "needs the <code>fastapi-offline</code> package, which ships its files (this server loads "
                            "nothing from other sites): <code>pip install -e '.[serve]'</code>. The API schema is at "
                            "<a href=\"openapi.json\">/openapi.json</a>.</p></body></html>")

    def root(request: Request) -> str:
        return request.scope.get("root_path", "")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request):
        if assets is None:
            return missing("Swagger UI")
        r = root(request) + DOCS_ASSETS
        return get_swagger_ui_html(openapi_url=root(request) + app.openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{r}/swagger-ui-bundle.js", swagger_css_url=f"{r}/swagger-ui.css",
                                   swagger_favicon_url=f"{r}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        if assets is None:
            return missing("ReDoc")
        r = root(request) + DOCS_ASSETS
        return get_redoc_html(openapi_url=root(request) + app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{r}/redoc.standalone.js", redoc_favicon_url=f"{r}/favicon.png",
                              with_google_fonts=False)
