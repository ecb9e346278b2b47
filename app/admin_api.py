"""Organiser JSON/CSV routes: exports of counts, signatures and the delivery ledger. Every route needs an
organiser (Bearer token, or the browser's organiser session); every export is streamed and written to the export
log."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from app import exports, i18n, ledger, organisers
from app.organisers import CurrentOrganiser
from app.state import Services, ServicesDep

router = APIRouter(prefix="/api/v1", tags=["organiser"])
ERRORS: dict[int | str, dict] = {401: {"description": "No valid organiser token"},
                                 404: {"description": "No such campaign"}}
STREAM: dict[int | str, dict] = {200: {"content": {"text/csv": {}, "application/json": {}}}}


def _campaign(svc: Services, who: organisers.Who, slug: str, need: str) -> str:
    """The campaign, if it exists and this organiser's role in it allows the act (404 / 403 otherwise)."""
    if slug not in svc.campaigns:
        raise HTTPException(404, "No such campaign")
    organisers.require(who, slug, need)
    return slug


def _download(chunks, *, fmt: exports.Format, name: str) -> StreamingResponse:
    return StreamingResponse(
        chunks, media_type=exports.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/campaigns/{slug}/signatures", response_class=StreamingResponse, responses={**STREAM, **ERRORS})
def export_signatures(
    slug: str,
    who: CurrentOrganiser,
    svc: ServicesDep,
    format: Annotated[exports.Format, Query()] = "csv",  # noqa: A002 - the public parameter name
    status: Annotated[exports.Status, Query()] = "confirmed",
    since: Annotated[date | None, Query(description="Only signatures made on or after this day (UTC)")] = None,
) -> StreamingResponse:
    """Signatures with their personal data, erased ones left out. Cells a spreadsheet would run are made inert."""
    query = exports.SignatureQuery(campaign=_campaign(svc, who, slug, "editor"), status=status, since=since)
    chunks = exports.signatures(svc.db, svc.keyring, query, organiser=who.name, fmt=format)
    return _download(chunks, fmt=format, name=exports.filename(slug, f"signatures-{status}", format))


@router.get("/campaigns/{slug}/counts", response_class=StreamingResponse, responses={**STREAM, **ERRORS})
def export_counts(
    slug: str,
    who: CurrentOrganiser,
    svc: ServicesDep,
    by: Annotated[exports.CountsBy, Query()] = "country",
    format: Annotated[exports.Format, Query()] = "csv",  # noqa: A002
    lang: i18n.Lang = "en",
) -> StreamingResponse:
    """Exact confirmed counts per country (with country names) or per day."""
    chunks = exports.counts(svc.db, campaign=_campaign(svc, who, slug, "viewer"), by=by, fmt=format,
                            organiser=who.name, lang=lang)
    return _download(chunks, fmt=format, name=exports.filename(slug, f"counts-by-{by}", format))


@router.get("/campaigns/{slug}/ledger", response_class=StreamingResponse, responses={**STREAM, **ERRORS})
def export_ledger(
    slug: str,
    who: CurrentOrganiser,
    svc: ServicesDep,
    format: Annotated[exports.Format, Query()] = "csv",  # noqa: A002
    lang: i18n.Lang = "en",
) -> StreamingResponse:
    """The delivery ledger per target: letters by channel (sent, mailto, pdf, batch), bounces, appeal packs
    delivered (the last one's date, channel and reference) and replies. Exact counts; no personal data."""
    campaign = svc.campaigns[_campaign(svc, who, slug, "viewer")]
    chunks = ledger.export(svc.db, campaign=campaign, fmt=format, organiser=who.name, lang=lang)
    return _download(chunks, fmt=format, name=exports.filename(slug, "ledger", format))
