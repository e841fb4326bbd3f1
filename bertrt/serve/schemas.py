"""Request and response bodies of the HTTP API (pydantic models, shown in the OpenAPI schema).

Requests forbid unknown fields, so a misspelt option fails with a 422 naming it instead
of being silently ignored; the OpenAI-compatible request ignores them, as OpenAI clients
send fields this server has no use for.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from bertrt.types import Pooling

T = TypeVar("T")


def unicode_texts(value: T) -> T:
    """``value`` when every text in it is valid Unicode. JSON's ``\\ud800`` escapes can
    carry lone surrogates, which no tokenizer can encode: they are refused here (422)."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = "The text" if isinstance(value, str) else f"Text #{index}"
            raise PydanticCustomError(
                "invalid_unicode",
                "{where} holds a lone surrogate ({code}) at character {at}, which is not valid Unicode; "
                "send UTF-8 text",
                {"where": where, "code": f"U+{ord(text[exc.start]):04X}", "at": exc.start},
            ) from None
    return value


Texts = Annotated[str | list[str], AfterValidator(unicode_texts)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Strict):
    """``POST /embed``: one text or a list of them."""

    texts: Texts = Field(description="A text or a list of texts.", examples=["I love Paris"])
    pooling: Pooling = Field(Pooling.MEAN, description="cls, mean (over real tokens) or pooler.")
    normalize: bool = Field(False, description="Scale each sentence vector to unit length.")
    token_embeddings: bool = Field(False, description="Also return every token's vector.")


class ClassifyRequest(_Strict):
    """``POST /classify``: one text or a list of them."""

    texts: Texts = Field(description="A text or a list of texts.", examples=["What a wonderful film"])
    top_k: int = Field(1, ge=1, description="Labels to return per text, best first.")


class QARequest(_Strict):
    """``POST /qa``: one question and its context, or two lists of the same length."""

    question: Texts = Field(description="A question or a list of them.", examples=["Where is the tower?"])
    context: Texts = Field(description="Its context, or one per question.", examples=["The tower is in Paris."])
    top_k: int = Field(1, ge=1, description="Answers to return per question, best first.")
    max_answer_length: int = Field(30, ge=1, description="Longest answer span, in tokens.")
    null_threshold: float | None = Field(
        None, description="Return an empty answer when 'no answer' beats the best span by more than this."
    )


class OpenAIEmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` as OpenAI defines it; vectors are mean-pooled and unit length."""

    model_config = ConfigDict(extra="ignore")

    input: Annotated[str | list[str] | list[int] | list[list[int]], AfterValidator(unicode_texts)] = Field(
        description="A text or a list of texts (token-id input is not supported).", examples=["I love Paris"]
    )
    model: str | None = Field(None, description="Accepted and ignored: the server has one embedding model.")
    encoding_format: Literal["float", "base64"] = Field("float", description="float lists or base64 of float32.")
    dimensions: int | None = Field(None, description="Must equal the model's dimension when given.")
    user: str | None = None


class EmbeddingOut(BaseModel):
    """One text's embedding."""

    vector: list[float]
    dim: int
    pooling: str
    normalized: bool
    tokens: list[str]
    truncated: bool
    token_embeddings: list[list[float]] | None = None


class EmbedResponse(BaseModel):
    """One embedding per text, in order."""

    results: list[EmbeddingOut]


class LabelScoreOut(BaseModel):
    """A label and its probability."""

    label: str
    score: float


class ClassificationOut(BaseModel):
    """One text's classification."""

    label: str
    score: float
    top: list[LabelScoreOut]
    probabilities: dict[str, float]
    truncated: bool


class ClassifyResponse(BaseModel):
    """One classification per text, in order."""

    results: list[ClassificationOut]


class AnswerOut(BaseModel):
    """An exact span of the context (``context[start:end]``) and its score."""

    text: str
    start: int
    end: int
    score: float


class QAResultOut(BaseModel):
    """One question's answers, best first, and how many windows covered its context."""

    answers: list[AnswerOut]
    windows: int


class QAResponse(BaseModel):
    """One result per question, in order."""

    results: list[QAResultOut]


class OpenAIEmbedding(BaseModel):
    """One vector (a float list, or base64 of little-endian float32)."""

    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class OpenAIUsage(BaseModel):
    """Tokens read (special tokens included)."""

    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    """The OpenAI embeddings response."""

    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class ErrorDetail(BaseModel):
    """What went wrong (``type`` is a short machine-readable reason) and what to do."""

    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body."""

    error: ErrorDetail
