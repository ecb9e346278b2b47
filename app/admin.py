"""Organiser pages: sign-in with a token (exchanged for a signed, HttpOnly, SameSite=Strict cookie), sign-out, and
the dashboard. Every page but the sign-in form needs an organiser; all of them work without JavaScript.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import dashboard, exports, i18n, organisers
from app.db import utcnow
from app.organisers import CurrentOrganiser
from app.pages import client_address, page, petition_page, pick_lang, read_form
from app.state import services

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only back to our own organiser pages and exports, never to another site."""
    if target and target.startswith(("/organiser", "/api/v1/campaigns/")) and "//" not in target and "\\" not in target:
        return target
    return "/organiser"


def _signed_in(request: Request) -> organisers.Who | None:
    svc = services(request)
    with svc.db.read() as session:
        return organisers.from_cookie(session, request.cookies.get(organisers.SESSION_COOKIE), settings=svc.settings,
                                      now=utcnow())


@router.get("/organiser/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None, lang: str | None = None) -> Response:  # noqa: A002
    if _signed_in(request):
        return RedirectResponse(_safe_next(next), status_code=303)
    return page(request, "admin/login.html", pick_lang(request, lang), next=_safe_next(next), problem=None)


@router.post("/organiser/login")
async def login(request: Request) -> Response:
    svc = services(request)
    form = await read_form(request)
    lang = pick_lang(request, form.get("lang"))
    target = _safe_next(form.get("next"))
    retry_after = svc.login_limiter.hit("login", client_address(request))
    if retry_after:
        response = page(request, "admin/login.html", lang, status=429, next=target, problem="too_many")
        response.headers["Retry-After"] = str(retry_after)
        return response
    with svc.db.write.begin() as session:
        who = organisers.authenticate(session, str(form.get("token", "")).strip(), settings=svc.settings)
        cookie = organisers.session_cookie(who, session, settings=svc.settings, now=utcnow()) if who else None
    if cookie is None:
        return page(request, "admin/login.html", lang, status=401, next=target, problem="wrong")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        organisers.SESSION_COOKIE, cookie, max_age=organisers.SESSION_SECONDS, httponly=True, samesite="strict",
        secure=svc.settings.base_url.startswith("https://"), path="/",
    )
    return response


@router.post("/organiser/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    svc = services(request)
    with svc.db.write.begin() as session:  # ends the session on the server: a copy of the cookie dies too
        organisers.end_session(session, request.cookies.get(organisers.SESSION_COOKIE), settings=svc.settings)
    response = RedirectResponse("/organiser/login", status_code=303)
    response.delete_cookie(organisers.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/organiser", response_class=HTMLResponse)
def dashboard_page(request: Request, who: CurrentOrganiser, lang: str | None = None) -> HTMLResponse:
    svc = services(request)
    lang = pick_lang(request, lang)
    now = utcnow()
    chart_label = i18n.gettext(lang, "Confirmed signatures per day")
    with svc.db.read() as session:
        overviews = [
            dashboard.overview(session, c, lang=lang, today=now.date(), chart_label=chart_label)
            for c in svc.campaigns.values()
        ]
        health = dashboard.outbox_health(session, now=now)
        log = exports.recent(session, limit=20)
    base = svc.settings.base_url.rstrip("/")
    snippets = {
        o.campaign.slug: (
            f'<iframe src="{base}/c/{o.campaign.slug}/embed?lang={o.campaign.lang(lang)}" '
            f'title="{html.escape(o.campaign.title[o.campaign.lang(lang)])}" width="360" height="560" '
            'loading="lazy"></iframe>'
        )
        for o in overviews
    }
    return page(
        request, "admin/dashboard.html", lang, who=who, overviews=overviews, health=health, log=log,
        snippets=snippets, frame_ancestors=svc.settings.frame_ancestors,
        problems=getattr(svc.campaigns, "problems", {}), today=now.date(), phase_names={
            "draft": i18n.gettext(lang, "Draft: organisers only"), "upcoming": i18n.gettext(lang, "Not open yet"),
            "open": i18n.gettext(lang, "Open"), "closed": i18n.gettext(lang, "Closed")},
    )


@router.get("/organiser/preview/{slug}", response_class=HTMLResponse)
def preview(request: Request, slug: str, who: CurrentOrganiser, lang: str | None = None) -> HTMLResponse:
    """The petition page as the public will see it, for a draft too (which the public cannot reach)."""
    campaign = services(request).campaigns.get(slug)
    if campaign is None:
        raise HTTPException(404, "No such campaign")
    return petition_page(request, campaign, pick_lang(request, lang, campaign))
