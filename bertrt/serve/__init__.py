"""`bertrt serve`: an HTTP service over a bundle, with dynamic batching across requests.

Importing this package is light; the ASGI stack (FastAPI, Starlette, uvicorn: the
``serve`` extra) is imported only by :mod:`bertrt.serve.app` and :mod:`bertrt.serve.server`,
that is, only when a server is built or run.

Example::

    from bertrt.serve import ServeConfig
    from bertrt.serve.server import run
    run(ServeConfig(models=Path("models/minilm"), port=8000))

Endpoints: ``POST /embed``, ``/classify``, ``/qa``, ``/v1/embeddings`` (OpenAI-compatible),
``GET /health`` (200 once the models are loaded, 503 before), ``GET /metrics``
(Prometheus text), ``GET /openapi.json`` and ``/docs``. With API keys in the config, every
endpoint but ``/health`` wants ``Authorization: Bearer KEY`` (:mod:`bertrt.serve.auth`).
"""

from __future__ import annotations

from bertrt.serve.config import ServeConfig

__all__ = ["ServeConfig"]
