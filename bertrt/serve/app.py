"""The ASGI application: routes, error mapping, request metrics and the model lifecycle.

Errors always come back as ``{"error": {"type": ..., "message": ...}}``: 401 without a
valid API key when the config has keys (see :mod:`bertrt.serve.auth`), 400 for a body
that is not JSON, 422 for a missing or invalid field or an input the runtime refuses
(:class:`~bertrt.errors.InputError`), 404 for a task the server does not serve, 413 for a
body over ``max_body_bytes``, 503 while
loading, when the queue is full (with ``Retry-After``) or while shutting down.

Example::

    app = create_app(ServeConfig(models=Path("models/minilm")))
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import bertrt
from bertrt.bundle import Bundle
from bertrt.errors import (
    BatcherClosedError,
    BertrtError,
    ConfigError,
    InputError,
    NotReadyError,
    OverloadedError,
    TaskNotServedError,
)
from bertrt.serve.auth import protect
from bertrt.serve.config import ServeConfig
from bertrt.serve.host import ModelHost, ServingHost
from bertrt.serve.keys import ApiKeys
from bertrt.serve.metrics import ENDPOINT_TASKS, ServeMetrics, drop_created_series, endpoint_label
from bertrt.serve.routes import build_router

# uvicorn's worker processes rebuild the app from this variable (see bertrt.serve.server).
CONFIG_ENV = "BERTRT_SERVE_CONFIG"

# bertrt errors by HTTP status and machine-readable type; the first match wins.
ERROR_STATUS: tuple[tuple[type[BertrtError], int, str], ...] = (
    (OverloadedError, 503, "overloaded"),
    (BatcherClosedError, 503, "shutting_down"),
    (NotReadyError, 503, "not_ready"),
    (TaskNotServedError, 404, "not_served"),
    (InputError, 422, "invalid_input"),
    (ConfigError, 422, "invalid_option"),
    (BertrtError, 500, "internal"),
)


def create_app(
    config: ServeConfig,
    *,
    bundle: Bundle | None = None,
    metrics: ServeMetrics | None = None,
    host: ServingHost | None = None,
) -> FastAPI:
    """The server for ``config``; its models load in the background once it starts.

    ``bundle``: the bundle already opened for ``config`` by
    :func:`~bertrt.serve.host.open_bundle` (opened here when None). ``metrics``: where the
    app records (default: :meth:`ServeMetrics.for_this_process`). ``host``: the engine
    behind the routes (default: a :class:`ModelHost` over ``bundle`` in this process; the
    Ray engine passes a client of its deployments, recording into the same ``metrics``).
    """
    metrics = metrics if metrics is not None else ServeMetrics.for_this_process()
    host = host if host is not None else ModelHost(config, metrics, bundle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        host.start()
        keys: ApiKeys | None = app.state.api_keys
        stop_reloading = keys.reload_on_sighup() if keys is not None else None
        yield
        if stop_reloading is not None:
            stop_reloading()
        # uvicorn has let requests in flight finish; stop the batchers off the event loop.
        await asyncio.to_thread(host.close, config.shutdown_timeout_s)
        metrics.close()

    app = FastAPI(
        title="bertrt",
        version=bertrt.__version__,
        summary="BERT embeddings, classification and extractive QA on ONNX Runtime, batched across requests.",
        lifespan=lifespan,
    )
    app.state.host = host
    app.state.metrics = metrics
    app.include_router(build_router(host, metrics))
    _add_error_handlers(app, metrics)
    # The last middleware added runs first: metrics see every response, 401s and 413s
    # included, and a caller without a key is refused before any of its body is read.
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, metrics=metrics)
    app.state.api_keys = protect(app, config, metrics)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def app_from_environment() -> FastAPI:
    """The app for the config in ``$BERTRT_SERVE_CONFIG`` (uvicorn's worker processes call this)."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise ConfigError(f"${CONFIG_ENV} is not set; start the server with `bertrt serve`.")
    drop_created_series()  # a worker process belongs to `bertrt serve`
    return create_app(ServeConfig.from_json(text))


class RequestMetrics:
    """Pure ASGI middleware counting each request by endpoint and status, and timing it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = endpoint_label(scope["path"])
            task = ENDPOINT_TASKS.get(endpoint)
            seconds = time.perf_counter() - started if task else None
            self.metrics.count_request(endpoint, str(status), seconds, task)


class BodyTooLarge(HTTPException):
    """A request body passed the server's limit (raised from ``receive`` while streaming, an
    HTTPException so that FastAPI's body reader lets it through)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"The request body is larger than the server's limit of {max_bytes} bytes; send fewer or "
            "shorter texts per request, or start the server with a larger --max-body-mb.",
        )


class BodyLimit:
    """Pure ASGI middleware answering 413 to a body larger than ``max_bytes``: at once when
    Content-Length says so, else as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServeMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # Refused before reading a byte of it.
            self.metrics.count_error(endpoint_label(scope["path"]), "body_too_large")
            error = {"type": "body_too_large", "message": BodyTooLarge(self.max_bytes).detail}
            await JSONResponse({"error": error}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _add_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    def error(
        request: Request, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        metrics.count_error(endpoint_label(request.url.path), kind)
        return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(BertrtError)
    async def bertrt_error(request: Request, exc: BertrtError) -> JSONResponse:
        status, kind = next((s, k) for cls, s, k in ERROR_STATUS if isinstance(exc, cls))
        headers = {"Retry-After": "1"} if isinstance(exc, OverloadedError | NotReadyError) else None
        return error(request, status, kind, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error(request, 400, "invalid_json", "The request body is not valid JSON; send a JSON object.")
        return error(request, 422, "invalid_request", _describe(problems))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, BodyTooLarge):
            return error(request, 413, "body_too_large", exc.detail)
        if exc.status_code == 404:
            message = f"There is no {request.url.path}; see /docs for the endpoints."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs for the endpoints."
        else:
            message = str(exc.detail)
        return error(request, exc.status_code, "http_error", message, dict(exc.headers or {}))


def _describe(problems: Any) -> str:
    """Pydantic's errors as one sentence: ``texts: Field required; top_k: ...``."""
    parts = []
    for problem in problems:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) + "; see /docs for the request schema."
