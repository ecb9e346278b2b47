"""Public JSON API: sign, campaign list, public stats, health.

Errors come back as {"detail": [{"field": ..., "message": ...}]} in the requested language; every count here
is folded so that no cell under the minimum can be read or subtracted out.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import text

from app import counters, i18n, pages
from app.db import utcnow
from app.state import ServicesDep, services

router = APIRouter(prefix="/api/v1", tags=["public"])


class SignRequest(BaseModel):
    """Shape only; the rules (lengths, printable text, a real country, consent) are checked by signing.validate,
    which answers 422 naming each field in the signer's language."""

    name: str = Field(max_length=1000)
    email: str = Field(max_length=1000)
    country: str = Field(max_length=10)
    city: str = Field(default="", max_length=1000)
    message: str = Field(default="", max_length=20000)
    consent: bool
    lang: i18n.Lang = "en"
    discreet: bool = False
    message_private: bool = False  # keep the paragraph out of letters to the authorities of Kazakhstan


class SignAccepted(BaseModel):
    status: Literal["pending"] = "pending"


# The sign route reads its body itself (below), so the schema says what it expects.
SIGN_SCHEMA = SignRequest.model_json_schema()
SIGN_ACCEPTED = SignAccepted().model_dump_json().encode()


async def sign_request(request: Request) -> SignRequest:
    """The JSON body parsed and shape-checked in one pass of pydantic-core, where FastAPI's own body handling
    (a dependency solver, a content-type parse, json.loads, then validation) cost as much as the rest of
    the request. Errors come back as FastAPI's would, through the app's 422 handler."""
    try:
        return SignRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        ) from None


JSON_ONLY = "Send the body as JSON, with Content-Type: application/json."


def not_json(request: Request) -> JSONResponse | None:
    """415 unless the body is declared JSON. A web page may post text/plain, form or multipart bodies to any site
    without a CORS preflight; application/json always needs one, which we never grant, so only this check stops
    another site from making its visitors' browsers sign."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == "application/json":
        return None
    return JSONResponse({"detail": JSON_ONLY}, 415)


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: list[FieldError] | str


class StatsOut(BaseModel):
    campaign: str
    confirmed: int
    goal: int
    min_cell: int
    by_country: dict[str, int]
    by_day: dict[str, int]


class CampaignOut(BaseModel):
    slug: str
    title: str
    summary: str
    goal: int
    opens_on: date
    closes_on: date | None
    languages: list[str]


# 422 is declared wherever a parameter can be wrong: our handler answers {"detail": [{field, message}]}, not FastAPI's
# default shape, and the schema must say so.
@router.get("/campaigns", response_model=list[CampaignOut], responses={422: {"model": ErrorBody}})
def list_campaigns(svc: ServicesDep, lang: i18n.Lang = "en") -> list[CampaignOut]:
    return [
        CampaignOut(
            slug=c.slug, title=c.title[c.lang(lang)], summary=c.summary[c.lang(lang)], goal=c.goal,
            opens_on=c.opens_on, closes_on=c.closes_on, languages=list(c.languages),
        )
        for c in svc.campaigns.values() if c.is_public(utcnow().date())
    ]


@router.post(
    "/campaigns/{slug}/signatures",
    status_code=202,
    response_model=SignAccepted,
    responses={
        400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody},
        415: {"model": ErrorBody}, 429: {"model": ErrorBody},
    },
    openapi_extra={
        "parameters": [{"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": SIGN_SCHEMA}}},
    },
)
async def sign(request: Request):
    """Sign a petition. New and repeat signers get the same answer; the mail differs."""
    # The slug is read here, not declared as a parameter: FastAPI's parameter solving cost a fifth of this
    # route's time in the event loop. The schema still declares it (above).
    if refused := not_json(request):
        return refused
    svc = services(request)  # not a dependency: a sync dependency costs a thread hop on every request
    campaign = pages.campaign_or_404(svc, request.path_params["slug"])
    body = await sign_request(request)
    await pages.sign(request, campaign, body.model_dump(), lang=body.lang)  # answers after the commit
    return Response(SIGN_ACCEPTED, 202, media_type="application/json")


@router.get("/campaigns/{slug}/stats", response_model=StatsOut,
            responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
async def stats(slug: str, request: Request) -> Response:
    """Confirmed signatures as published for the current period (they change only at the schedule's boundaries);
    every figure is a multiple of the minimum cell size, and countries and days under it are folded."""
    svc = services(request)  # not a dependency: a sync dependency costs a thread hop on every request
    campaign = pages.campaign_or_404(svc, slug)

    def render(s: counters.Stats) -> bytes:
        return StatsOut(
            campaign=slug, confirmed=s.confirmed, goal=s.goal, min_cell=svc.settings.min_cell,
            by_country=s.by_country, by_day=s.by_day,
        ).model_dump_json().encode()

    # Served from memory until the next boundary (see stats_cache.py); else fetched in a thread.
    body = svc.stats_cache.cached(slug) or await run_in_threadpool(svc.stats_cache.answer, campaign, render)
    return Response(body, media_type="application/json")


@router.get("/ping")
async def ping() -> dict[str, str]:
    """Touches nothing: the benchmarks' baseline for what the server and framework alone cost per request."""
    return {"status": "ok"}


health_router = APIRouter(tags=["public"])


@health_router.get("/healthz", responses={503: {"model": ErrorBody}})
def healthz(svc: ServicesDep) -> dict[str, str]:
    try:
        with svc.db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise HTTPException(503, "database unavailable") from exc
    return {"status": "ok"}
