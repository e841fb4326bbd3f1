"""The HTTP endpoints: three tasks, OpenAI-compatible embeddings, health and metrics.

Each task endpoint validates its body (pydantic), awaits its task's batcher (the event
loop stays free while the batch runs) and returns the results' ``to_dict()`` forms.
Responses are built as plain JSON; the response models document them in the OpenAPI schema.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from bertrt.errors import InputError
from bertrt.serve.host import ServingHost
from bertrt.serve.metrics import CONTENT_TYPE, ServeMetrics
from bertrt.serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    QARequest,
    QAResponse,
)
from bertrt.types import Pooling, Task

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    404: {"model": ErrorResponse, "description": "This server does not serve the task."},
    422: {"model": ErrorResponse, "description": "A field is missing or invalid, or an input breaks a limit."},
    503: {"model": ErrorResponse, "description": "Models still loading, queue full (retry later) or shutting down."},
}


def build_router(host: ServingHost, metrics: ServeMetrics) -> APIRouter:
    """The API routes over ``host``'s batchers."""
    router = APIRouter()

    @router.post("/embed", response_model=EmbedResponse, responses=ERRORS, tags=["tasks"])
    async def embed(body: EmbedRequest) -> JSONResponse:
        """Sentence vectors (and optionally token vectors) for each text."""
        results = await host.batcher(Task.EMBED).acall(
            body.texts, pooling=body.pooling.value, normalize=body.normalize, token_embeddings=body.token_embeddings
        )
        return JSONResponse({"results": [r.to_dict(body.token_embeddings) for r in results]})

    @router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["tasks"])
    async def classify(body: ClassifyRequest) -> JSONResponse:
        """Label, score and every label's probability for each text."""
        results = await host.batcher(Task.CLASSIFY).acall(body.texts, top_k=body.top_k)
        return JSONResponse({"results": [r.to_dict() for r in results]})

    @router.post("/qa", response_model=QAResponse, responses=ERRORS, tags=["tasks"])
    async def qa(body: QARequest) -> JSONResponse:
        """Answers copied from each context, best first."""
        results = await host.batcher(Task.QA).acall(
            body.question,
            body.context,
            top_k=body.top_k,
            max_answer_length=body.max_answer_length,
            null_threshold=body.null_threshold,
        )
        return JSONResponse({"results": [r.to_dict() for r in results]})

    @router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, responses=ERRORS, tags=["openai"])
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> JSONResponse:
        """OpenAI-compatible embeddings: mean pooling, unit length."""
        texts = _openai_texts(body.input)
        batcher = host.batcher(Task.EMBED)
        dim = host.embedding_dim()
        if body.dimensions is not None and dim is not None and body.dimensions != dim:
            raise InputError(f"This model returns {dim}-dimensional embeddings; omit dimensions or pass {dim}.")
        results = await batcher.acall(texts, pooling=Pooling.MEAN.value, normalize=True, token_embeddings=False)
        tokens = sum(len(r.tokens) for r in results)
        data = [
            {"object": "embedding", "embedding": _encode(r.vector, body.encoding_format), "index": i}
            for i, r in enumerate(results)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": host.model_name, "usage": usage})

    @router.get("/health", tags=["service"], responses={503: {"description": "Models loading or failed to load."}})
    async def health() -> JSONResponse:
        """200 with the served tasks once every model is loaded; 503 before (or if loading failed)."""
        return JSONResponse(host.describe(), status_code=200 if host.ready else 503)

    @router.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        """Request counts, errors, latency histograms, batch sizes and queue depth (Prometheus
        text); with several worker processes, every worker's."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return router


def _openai_texts(value: str | list[str] | list[int] | list[list[int]]) -> str | list[str]:
    """The texts of an OpenAI ``input``; token ids are refused with a clear message."""
    if isinstance(value, str) or all(isinstance(item, str) for item in value):
        return value  # type: ignore[return-value]  # a str, or a list whose items are all str
    raise InputError("input holds token ids, which this server does not accept; send a string or a list of strings.")


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 format: the raw little-endian float32 bytes.
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    values: list[float] = vector.tolist()
    return values
