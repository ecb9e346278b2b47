"""Organiser pages: sign-in with a token (exchanged for a signed, HttpOnly, SameSite=Strict cookie), sign-out, and
the dashboard. Every page but the sign-in form needs an organiser; all of them work without JavaScript.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import audit, dashboard, i18n, organisers
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
        if who:
            audit.record(session, organiser=who.name, action="sign_in")
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
        cookie = request.cookies.get(organisers.SESSION_COOKIE)
        if who := organisers.from_cookie(session, cookie, settings=svc.settings, now=utcnow()):
            audit.record(session, organiser=who.name, action="sign_out")
        organisers.end_session(session, cookie, settings=svc.settings)
    response = RedirectResponse("/organiser/login", status_code=303)
    response.delete_cookie(organisers.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/organiser", response_class=HTMLResponse)
def dashboard_page(request: Request, who: CurrentOrganiser, lang: str | None = None) -> HTMLResponse:
    svc = services(request)
    lang = pick_lang(request, lang)
    now = utcnow()
    chart_label = i18n.gettext(lang, "Confirmed signatures per day")
    mine = who.campaigns(svc.campaigns)  # an organiser sees only the campaigns they have a role in
    owned = who.owned(mine)
    with svc.db.read() as session:
        overviews = [
            dashboard.overview(session, svc.campaigns[slug], lang=lang, today=now.date(), chart_label=chart_label)
            for slug in mine
        ]
        health = dashboard.outbox_health(session, now=now) if owned is None else None  # the operator's
        log = audit.recent(session, campaigns=owned) if owned is None or owned else []
        team = {slug: organisers.members(session, slug) for slug in mine if who.may(slug, "owner")}
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
        team=team, roles=organisers.ROLES, new_token=None,
        problems=getattr(svc.campaigns, "problems", {}) if owned is None else {}, today=now.date(), phase_names={
            "draft": i18n.gettext(lang, "Draft: organisers only"), "upcoming": i18n.gettext(lang, "Not open yet"),
            "open": i18n.gettext(lang, "Open"), "closed": i18n.gettext(lang, "Closed")},
    )


@router.get("/organiser/preview/{slug}", response_class=HTMLResponse)
def preview(request: Request, slug: str, who: CurrentOrganiser, lang: str | None = None) -> HTMLResponse:
    """The petition page as the public will see it, for a draft too (which the public cannot reach)."""
    campaign = services(request).campaigns.get(slug)
    if campaign is None:
        raise HTTPException(404, "No such campaign")
    organisers.require(who, slug, "viewer")
    return petition_page(request, campaign, pick_lang(request, lang, campaign))


def _owned(request: Request, who: organisers.Who, slug: str) -> str:
    if slug not in services(request).campaigns:
        raise HTTPException(404, "No such campaign")
    organisers.require(who, slug, "owner")
    return slug


@router.post("/organiser/campaigns/{slug}/organisers")
async def add_organiser(request: Request, slug: str, who: CurrentOrganiser) -> Response:
    """An owner adds an organiser to their campaign with a role; the new token is shown once, on this answer."""
    form = await read_form(request)
    slug, svc = _owned(request, who, slug), services(request)
    lang = pick_lang(request, form.get("lang"))
    role = str(form.get("role", ""))
    try:
        with svc.db.write.begin() as session:
            row, token = organisers.add(session, name=str(form.get("name", "")), now=utcnow(), roles={slug: role})
            audit.record(session, organiser=who.name, action="organiser_added", campaign=slug,
                         what=f"{row.name}: {role}")
    except organisers.OrganiserError as exc:
        raise HTTPException(400, str(exc)) from exc
    return page(request, "admin/token.html", lang, name=row.name, role=role, slug=slug, token=token)


@router.post("/organiser/campaigns/{slug}/organisers/{organiser_id}/role")
async def change_role(request: Request, slug: str, organiser_id: int, who: CurrentOrganiser) -> Response:
    """An owner changes (or removes: role "none") an organiser's role in their campaign."""
    form = await read_form(request)
    slug, svc = _owned(request, who, slug), services(request)
    role = str(form.get("role", ""))
    with svc.db.write.begin() as session:
        member = next((m for m in organisers.members(session, slug) if m.id == organiser_id), None)
        if member is None or member.everywhere:
            raise HTTPException(400, "This organiser has no role of this campaign's to change here.")
        try:
            organisers.set_role(session, organiser_id=organiser_id, campaign=slug,
                                role=None if role == "none" else role)
        except organisers.OrganiserError as exc:
            raise HTTPException(400, str(exc)) from exc
        audit.record(session, organiser=who.name, action="role_changed", campaign=slug, what=f"{member.name}: {role}")
    return RedirectResponse(f"/organiser?lang={pick_lang(request, form.get('lang'))}#c-{slug}", status_code=303)
