"""Organiser pages: sign-in with a token (exchanged for a signed, HttpOnly, SameSite=Strict cookie), sign-out, the
dashboard, and its forms that record an appeal pack delivered and a reply from an official (with its scan).
Every page but the sign-in form needs an organiser; all of them work without JavaScript; every form carries the
CSRF token, and a refused one changes nothing and shows the dashboard again with the form as typed.
"""

from __future__ import annotations

import html
from datetime import date

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from app import audit, dashboard, i18n, ledger, organisers, replies, security
from app.db import utcnow
from app.organisers import CurrentOrganiser
from app.pages import client_address, page, petition_page, pick_lang, read_form, write
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
    done = request.query_params.get("done")
    return _dashboard(request, who, pick_lang(request, lang), done=done if done in ("pack", "reply", "public")
                      else None)


def _dashboard(request: Request, who: organisers.Who, lang: str, *, status: int = 200, done: str | None = None,
               problem: dict | None = None) -> HTMLResponse:
    """The dashboard; `problem` ({slug, form, field, message, typed}) shows a refused form again, as typed."""
    svc = services(request)
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
        team = {slug: organisers.members(session, slug) for slug in mine if who.may(slug, "owner")}
        names = {m.name for members in team.values() for m in members}
        log = audit.recent(session, campaigns=owned, team=names) if owned is None or owned else []
    snippets = {
        o.campaign.slug: (  # from the campaign's own address where it has one
            f'<iframe src="{o.campaign.links_base(svc.settings.base_url)}/c/{o.campaign.slug}/embed'
            f'?lang={o.campaign.lang(lang)}" '
            f'title="{html.escape(o.campaign.title[o.campaign.lang(lang)])}" width="360" height="560" '
            'loading="lazy"></iframe>'
        )
        for o in overviews
    }
    return page(
        request, "admin/dashboard.html", lang, status=status, who=who, overviews=overviews, health=health, log=log,
        snippets=snippets, frame_ancestors=svc.settings.frame_ancestors, pack_channels=ledger.PACK_CHANNELS,
        today=now.date(), done=done, problem=problem, team=team, roles=organisers.ROLES,
        problems=getattr(svc.campaigns, "problems", {}) if owned is None else {}, phase_names={
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
    return _campaign(request, who, slug, "owner").slug


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


def _campaign(request: Request, who: organisers.Who, slug: str, need: str):
    """A campaign this organiser's role allows the act in (404 outside their campaigns, 403 below the role)."""
    campaign = services(request).campaigns.get(slug)
    if campaign is None:
        raise HTTPException(404, "No such campaign")
    organisers.require(who, slug, need)
    return campaign


def _reply_campaign(request: Request, who: organisers.Who, reply_id: int) -> None:
    """A reply is its campaign's: only that campaign's editors may show, hide or read it."""
    with services(request).db.read() as session:
        slug = replies.campaign_of(session, reply_id)
    if slug is None:
        raise HTTPException(404, "No such reply")
    organisers.require(who, slug, "editor")


def _refused(request: Request, who: organisers.Who, lang: str, slug: str, form: str, exc: ledger.LedgerError,
             values: dict) -> HTMLResponse:
    message = i18n.gettext(lang, exc.message) % exc.params if exc.params else i18n.gettext(lang, exc.message)
    problem = {"slug": slug, "form": form, "field": exc.field, "message": message, "typed": values}
    return _dashboard(request, who, lang, status=422, problem=problem)


def _day(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ledger.LedgerError(field, i18n.N_("Give the date as YYYY-MM-DD.")) from exc


@router.post("/organiser/c/{slug}/packs")
async def record_pack(request: Request, slug: str, who: CurrentOrganiser) -> Response:
    """Record the organisation's appeal pack delivered to one target."""
    svc = services(request)
    campaign = _campaign(request, who, slug, "editor")
    form = await read_form(request)
    lang = pick_lang(request, form.get("lang"))
    values = {k: str(form.get(k, ""))[:300] for k in ("target", "delivered_on", "channel", "reference", "supporters")}
    try:
        delivered_on = _day(values["delivered_on"], "delivered_on")
        supporters = None
        if values["supporters"].strip():
            if not values["supporters"].strip().isdigit():
                raise ledger.LedgerError("supporters", i18n.N_("Supporters must be a whole number."))
            supporters = int(values["supporters"])
        def record(session) -> None:
            ledger.record_pack(session, campaign=campaign, target=values["target"], delivered_on=delivered_on,
                               channel=values["channel"], reference=values["reference"], supporters=supporters,
                               recorded_by=who.name, now=utcnow())
            audit.record(session, organiser=who.name, action="pack_delivered", campaign=slug,
                         what=f"{values['target']}: {values['delivered_on']} {values['channel']} {values['reference']}")

        await write(svc, record)
    except ledger.LedgerError as exc:
        return _refused(request, who, lang, slug, "pack", exc, values)
    return RedirectResponse(f"/organiser?lang={lang}&done=pack#ledger-{slug}", status_code=303)


# A reply's form: its fields and one scan of at most replies.SCAN_MAX (the body may not be much larger).
REPLY_FORM_MAX = replies.SCAN_MAX + 64 * 1024


@router.post("/organiser/c/{slug}/replies")
async def record_reply(request: Request, slug: str, who: CurrentOrganiser) -> Response:
    """Record a reply from an official, with an optional scan (PDF, PNG or JPEG, at most 5 MB)."""
    svc = services(request)
    campaign = _campaign(request, who, slug, "editor")
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > REPLY_FORM_MAX:  # refused before a byte of the body is read
        raise HTTPException(413, "The form is too large: a scan may be at most 5 MB.")
    form = await request.form(max_files=1, max_fields=20, max_part_size=64 * 1024)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not security.csrf_valid(svc.settings.secret_key, request.cookies.get(security.CSRF_COOKIE),
                               fields.get(security.CSRF_FIELD)):
        raise HTTPException(403, "This form has expired. Go back, reload the page and send it again.")
    lang = pick_lang(request, fields.get("lang"))
    values = {k: str(fields.get(k, ""))[:replies.SUMMARY_MAX + 100]
              for k in ("target", "received_on", "summary", "public")}
    upload = form.get("scan")
    scan = await upload.read(replies.SCAN_MAX + 1) if isinstance(upload, UploadFile) else b""
    await form.close()
    try:
        received_on = _day(values["received_on"], "received_on")
        def record(session) -> None:
            replies.record(session, campaign=campaign, target=values["target"], received_on=received_on,
                           summary=values["summary"], scan=scan or None, public=values["public"] == "on",
                           recorded_by=who.name, now=utcnow())
            audit.record(session, organiser=who.name, action="reply_recorded", campaign=slug,
                         what=f"{values['target']}: {values['received_on']}")

        await write(svc, record)
    except ledger.LedgerError as exc:
        return _refused(request, who, lang, slug, "reply", exc, values)
    return RedirectResponse(f"/organiser?lang={lang}&done=reply#replies-{slug}", status_code=303)


@router.post("/organiser/replies/{reply_id}/public")
async def reply_public(request: Request, reply_id: int, who: CurrentOrganiser) -> Response:
    """Show a reply on the public page, or take it off (it leaves the page at the next publication)."""
    svc = services(request)
    form = await read_form(request)
    lang = pick_lang(request, form.get("lang"))
    _reply_campaign(request, who, reply_id)
    if not await write(svc, lambda session: replies.set_public(session, reply_id, public=form.get("public") == "on")):
        raise HTTPException(404, "No such reply")
    return RedirectResponse(f"/organiser?lang={lang}&done=public#replies", status_code=303)


@router.get("/organiser/replies/{reply_id}/scan")
def reply_scan(request: Request, reply_id: int, who: CurrentOrganiser) -> Response:
    """A reply's scan, for organisers: always a download, never shown in the page (its bytes are not ours)."""
    svc = services(request)
    _reply_campaign(request, who, reply_id)
    with svc.db.read() as session:
        found = replies.scan(session, reply_id)
    if found is None:
        raise HTTPException(404, "No scan for this reply")
    data, media = found
    return Response(data, media_type=media, headers=replies.download_headers(reply_id, media))
