"""Public HTML routes: campaign list, petition page and form, thank-you and code entry, confirmation links and
the privacy notice (the signer's own page is with its letters, web_letters.py).

Every page works without JavaScript and loads nothing from another origin. The public pages (home, petition,
privacy) are the same for everyone and set no cookie, so they are served from the page cache and any proxy may
keep them until the next figures boundary; the sign form is taken only from our own origin. Routes parse, call
one domain function inside one transaction, and render.
"""

from __future__ import annotations

from collections.abc import Awaitable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import addresses, counters, i18n, security, share_image, signing
from app.campaigns import Campaign
from app.db import utcnow
from app.pages import (
    HONEYPOT_FIELD,
    campaign_or_404,
    client_address,
    csrf_page,
    negotiated,
    page,
    page_cache,
    petition_context,
    pick_lang,
    public_page,
    read_form,
    read_public_form,
    secure,
    sign,
    write,
)
from app.state import Services, services

router = APIRouter(include_in_schema=False)
TICKET_COOKIE = "ticket"
TICKET_SECONDS = 86400  # a day to type the code (the mailed link works for longer): a seized browser tells less


def _ticket_for(svc: Services, slug: str, email: str) -> str:
    """The cookie that lets the page after signing take a code: the campaign and the address's index hashes,
    sealed (security.seal_handle), so it is new and random each time and says nothing of the row or the address."""
    keys = svc.keyring.email_keys(addresses.normalise_email(email))
    return security.seal_handle(svc.settings.secret_key, TICKET_COOKIE, slug.encode() + b"\0" + b"".join(keys))


def _ticket(request: Request, svc: Services, slug: str) -> list[bytes] | None:
    payload = security.open_handle(svc.settings.secret_key, TICKET_COOKIE, request.cookies.get(TICKET_COOKIE),
                                   max_age=TICKET_SECONDS)
    named, _, keys = (payload or b"").partition(b"\0")
    if named != slug.encode() or not keys or len(keys) % 32:
        return None
    return [keys[i:i + 32] for i in range(0, len(keys), 32)]


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, lang: str | None = None) -> Response:
    svc = services(request)
    chosen = pick_lang(request, lang)

    def context() -> dict:
        listed = [c for c in svc.campaigns.values() if c.is_public(utcnow().date())]
        return {"campaigns": listed, "stats": {c.slug: svc.stats_cache.stats(c) for c in listed}}

    return await public_page(request, "index.html", chosen, (), context, negotiated=negotiated(lang))


@router.get("/c/{slug}", response_class=HTMLResponse)
async def petition(request: Request, slug: str, lang: str | None = None) -> Response:
    """The petition everyone gets: no per-visitor value, no cookie (its form is guarded by its origin)."""
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    chosen = pick_lang(request, lang, campaign)
    is_open = campaign.is_open(utcnow().date())
    return await public_page(request, "petition.html", chosen, (is_open,),
                             lambda: petition_context(svc, campaign, chosen), negotiated=negotiated(lang))


@router.get("/c/{slug}/share.png")
async def share_png(request: Request, slug: str, lang: str | None = None) -> Response:
    """The picture a link preview shows (og:image): title and published count, drawn by us, the same for everyone
    (its language is the `?lang=` or the campaign's first, never negotiated)."""
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    cache = page_cache(request)
    now = cache.clock()
    stats = await run_in_threadpool(svc.stats_cache.stats, campaign)
    body = await run_in_threadpool(share_image.png, campaign, campaign.lang(lang or ""), stats)
    return share_image.response(body, if_none_match=request.headers.get("if-none-match"), now=now,
                                ends_at=counters.period(now, cache.every)[1])


@router.post("/c/{slug}/sign")
async def sign_form(request: Request, slug: str) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    form = await read_public_form(request)
    lang = campaign.lang(form.get("lang") or pick_lang(request, None, campaign))
    form["lang"] = lang
    thanks = RedirectResponse(f"/c/{slug}/thanks?lang={lang}", status_code=303)
    if form.get(HONEYPOT_FIELD):
        return thanks  # a bot filled the hidden field: same answer, nothing stored
    data = await sign(request, campaign, form, lang=lang)
    thanks.set_cookie(
        TICKET_COOKIE, _ticket_for(svc, slug, data.email), max_age=TICKET_SECONDS, httponly=True,
        samesite="strict", secure=secure(svc), path=f"/c/{slug}",
    )
    return thanks


def _thanks(request: Request, campaign: Campaign, lang: str, *, has_ticket: bool, problem: bool = False,
            status: int = 200) -> Awaitable[Response]:
    """The thank-you page, rendered once per kind; only its CSRF token is the visitor's own."""
    return csrf_page(request, "thanks.html", lang, (has_ticket, problem), lambda: {
        "campaign": campaign, "has_ticket": has_ticket, "problem": problem}, status=status)


@router.get("/c/{slug}/thanks", response_class=HTMLResponse)
async def thanks(request: Request, slug: str, lang: str | None = None) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    return await _thanks(request, campaign, pick_lang(request, lang, campaign),
                         has_ticket=_ticket(request, svc, slug) is not None)


@router.post("/c/{slug}/code")
async def confirm_code(request: Request, slug: str) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    form = await read_form(request)
    lang = campaign.lang(form.get("lang") or "en")
    keys = _ticket(request, svc, slug)
    code = str(form.get("code", ""))[:64]
    if keys is None:
        return await _thanks(request, campaign, lang, has_ticket=False, status=400)
    svc.sign_limiter.check("code", client_address(request))

    opened = await write(svc, lambda session: signing.confirm_by_code(
        session, campaign=slug, keys=keys, code=code, campaigns=svc.campaigns, keyring=svc.keyring,
        composer=svc.composer, settings=svc.settings, now=utcnow(),
    ))
    if isinstance(opened, signing.ConfirmProblem):  # one answer for every wrong, used-up or unknown code
        return await _thanks(request, campaign, lang, has_ticket=True, problem=True, status=422)
    return RedirectResponse(f"/s/{opened.manage_token}?lang={lang}", status_code=303)


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_link(request: Request, token: str, lang: str | None = None) -> HTMLResponse:
    """Mail scanners open links: GET only shows a button, it never confirms."""
    svc = services(request)
    lang = pick_lang(request, lang)
    with svc.db.read() as session:
        try:
            row = signing.find_by_token(session, token[:100], secret=svc.settings.secret_key, now=utcnow())
        except signing.ConfirmProblem as exc:
            return page(request, "confirm.html", lang, status=404, problem=exc, campaign=None, done=False)
    campaign = svc.campaigns.get(row.campaign)
    return page(request, "confirm.html", lang, problem=None, campaign=campaign,
                done=row.status != "pending", token=token)


@router.post("/confirm/{token}")
async def confirm_post(request: Request, token: str) -> Response:
    svc = services(request)
    form = await read_form(request)
    lang = i18n.negotiate(form.get("lang"), None)

    try:
        opened = await write(svc, lambda session: signing.confirm_by_token(
            session, token[:100], campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
            secret=svc.settings.secret_key, now=utcnow(),
        ))
    except signing.ConfirmProblem as exc:
        return page(request, "confirm.html", lang, status=404, problem=exc, campaign=None, done=False)
    return RedirectResponse(f"/s/{opened.manage_token}?lang={lang}", status_code=303)


@router.get("/privacy", response_class=HTMLResponse)
async def privacy(request: Request, lang: str | None = None) -> Response:
    svc = services(request)
    return await public_page(request, "privacy.html", pick_lang(request, lang), (),
                             lambda: {"campaigns": [c for c in svc.campaigns.values() if not c.draft]},
                             negotiated=negotiated(lang))
