"""API-key authentication over the whole app, as ASGI middleware.

Every request but ``GET /health`` (load balancers poll it) must carry
``Authorization: Bearer KEY`` with one of the server's keys; ``/metrics`` too, unless the
config makes it public. The check runs before routing and before any of the body is read,
so a caller without a key learns nothing: unknown paths, ``/docs`` and oversized bodies all
get the same 401, with ``WWW-Authenticate: Bearer`` and the usual error body, counted in
``bertrt_request_errors_total{reason="unauthorized"}``.

The middleware wraps any ASGI app, so every engine that serves the app (uvicorn, a Ray Serve
ingress) enforces the same keys: :func:`protect` installs it from a :class:`ServeConfig`.

Example::

    keys = protect(app, config, metrics)   # None when config has no keys
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bertrt.serve.config import ServeConfig
from bertrt.serve.keys import ApiKeys
from bertrt.serve.metrics import ServeMetrics, endpoint_label

OPEN_PATHS = frozenset({"/health"})
REASON = "unauthorized"
MISSING = (
    "This server needs an API key; send it as the header `Authorization: Bearer KEY` "
    "(OpenAI clients: pass it as api_key)."
)
INVALID = "The API key is not valid; send one of the server's keys as `Authorization: Bearer KEY`."


def protect(app: FastAPI, config: ServeConfig, metrics: ServeMetrics) -> ApiKeys | None:
    """Make ``app`` require the API keys of ``config``; returns them (None when it has none).

    Add it after middleware that should only see authenticated requests (it then runs
    before them) and before the request metrics, which count the 401s too.
    """
    keys = ApiKeys.from_config(config)
    if keys is not None:
        open_paths = OPEN_PATHS | {"/metrics"} if config.metrics_public else OPEN_PATHS
        app.add_middleware(Authentication, keys=keys, metrics=metrics, open_paths=open_paths)
    return keys


class Authentication:
    """Pure ASGI middleware answering 401 to HTTP requests without a valid Bearer key,
    except on ``open_paths``."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, metrics: ServeMetrics, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        if token is not None and self.keys.accepts(token):
            await self.app(scope, receive, send)
            return
        self.metrics.count_error(endpoint_label(scope["path"]), REASON)
        challenge, message = ("Bearer", MISSING) if token is None else ('Bearer error="invalid_token"', INVALID)
        response = JSONResponse(
            {"error": {"type": REASON, "message": message}}, status_code=401, headers={"WWW-Authenticate": challenge}
        )
        await response(scope, receive, send)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the request's one ``Authorization: Bearer TOKEN`` header (the scheme in
    any case), or None when there is no such header, or more than one."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token
