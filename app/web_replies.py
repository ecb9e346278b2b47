"""The public scan of an official's reply, where the organisers chose to publish the reply (replies.py).

Served as a download only, with nosniff and no-store: its bytes came from outside, and this origin never shows
them as a page. A reply that is not public is not found, the same answer as a reply that does not exist.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from app import replies
from app.pages import campaign_or_404
from app.state import services

router = APIRouter(include_in_schema=False)


@router.get("/c/{slug}/replies/{reply_id}/scan")
def public_scan(request: Request, slug: str, reply_id: int) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    with svc.db.read() as session:
        found = replies.scan(session, reply_id, campaign=campaign.slug, public_only=True)
    if found is None:
        raise HTTPException(404, "No such reply")
    data, media = found
    return Response(data, media_type=media, headers=replies.download_headers(reply_id, media))
