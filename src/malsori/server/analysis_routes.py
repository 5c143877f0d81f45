"""``POST /v1/analysis/sentiment``: the sentiment of texts, one result per text, in order.

The texts are checked here (number and length: ``analysis.max_texts``, ``analysis.max_text_chars``,
422 with which limit), then analysed in the sentiment service's thread (scaled out: on the ``analyze``
queue while a worker serves it). The model loads on the first call (about a second).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.service import SentimentService
from ..engine.options import normalize_language
from .auth import TranscribeDep
from .deps import ServicesDep
from .services import NotReadyError

__all__ = ["router", "SentimentDep"]

router = APIRouter(tags=["analysis"])


def get_sentiment(services: ServicesDep) -> SentimentService:
    if services.sentiment is None:  # only between app construction and startup
        raise NotReadyError("the sentiment service is starting; try again shortly", retry_after=1.0)
    return services.sentiment


SentimentDep = Annotated[SentimentService, Depends(get_sentiment)]


class SentimentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="The texts, e.g. transcript utterances")
    language: str | None = Field(default=None, description="Their language (ISO code such as en, ko), a hint")


class SentimentResult(BaseModel):
    label: Literal["negative", "neutral", "positive"]
    score: float = Field(description="The label's probability, 0..1")


class SentimentResponse(BaseModel):
    results: list[SentimentResult]


@router.post(
    "/v1/analysis/sentiment",
    response_model=SentimentResponse,
    summary="Sentiment (negative, neutral, positive) of each text",
)
async def sentiment(_: TranscribeDep, body: SentimentRequest, service: SentimentDep) -> SentimentResponse:
    texts = service.check(body.texts)
    results = await service.analyze_async(texts, normalize_language(body.language))
    return SentimentResponse(results=[SentimentResult(**r.to_dict()) for r in results])
