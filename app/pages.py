"""What every route uses: render a page (for one request with its CSRF cookie, or once for everyone from the page
cache), read a form (a public one checked by its origin, a private one by its CSRF token), pick the language,
find the campaign or the signer behind a private link, run a write transaction off the event loop, and the one
way in for a signature (form, embed and API) with the one map from its refusals to answers.

Each route module (web, web_letters, web_embed, web_erasure, admin, api) builds on this one and on none of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.orm import Session

from app import i18n, security, signing
from app.campaigns import Campaign
from app.db import utcnow
from app.models import Signature
from app.page_cache import MARKER, PageCache
from app.ratelimit import RateLimited
from app.settings import Settings
from app.state import Services, services

HONEYPOT_FIELD = "website"
FORM_LIMITS = {"max_files": 0, "max_fields": 50, "max_part_size": 64 * 1024}
T = TypeVar("T")


def campaign_or_404(svc: Services, slug: str) -> Campaign:
    """A campaign the public may see: a draft is the organisers' (their preview is behind sign-in)."""
    campaign = svc.campaigns.get(slug)
    if campaign is None or campaign.draft:
        raise HTTPException(404, "No such campaign")
    return campaign


def signer_or_404(session: Session, token: str) -> Signature:
    """The signer behind a private link from their mail; 404 once erased or unknown."""
    row = signing.signer_by_manage_token(session, token)
    if row is None:
        raise HTTPException(404, "This link is not valid (any more).")
    return row


def pick_lang(request: Request, lang: str | None, campaign: Campaign | None = None) -> str:
    chosen = i18n.negotiate(lang, request.headers.get("accept-language"))
    return campaign.lang(chosen) if campaign else chosen


def secure(svc: Services) -> bool:
    """Whether cookies are marked Secure: the site is served over HTTPS."""
    return svc.settings.base_url.startswith("https://")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def render(template: str, lang: str, *, path: str, settings: Settings, asked_lang: str = "", **context: Any) -> str:
    """One of our pages as HTML: for one request (`page`) or for everyone (`public_page`). `asked_lang`: a `?lang=`
    the page is not in, which it then says (escaped)."""
    return i18n.page_env(lang).get_template(template).render(
        path=path,
        min_cell=settings.min_cell,
        retention_days=settings.retention_days,
        refresh_minutes=f"{settings.public_refresh_minutes:g}",
        asked_lang=asked_lang if asked_lang != lang else "",
        **context,
    )


def campaigns_version(svc: Services) -> int:
    """Changes when a campaign folder is reloaded: a cached page never outlives the campaign it shows."""
    return getattr(svc.campaigns, "version", 0)


def asked(request: Request) -> str:
    """The `?lang=` a visitor asked for, bounded: a page in another language says so (one cached form per value
    that reaches a page: a known language, or "" for anything else, which the page calls unknown)."""
    wanted = request.query_params.get("lang") or ""
    return wanted if wanted in i18n.LANGUAGES else ("?" if wanted else "")


def visitor_csrf(request: Request) -> tuple[str, bool]:
    """The visitor's CSRF cookie, or a new one (True: it must be handed out with the answer)."""
    cookie = request.cookies.get(security.CSRF_COOKIE)
    if cookie is None or len(cookie) > 100:
        return security.new_token(), True
    return cookie, False


def give_csrf_cookie(response: Response, svc: Services, cookie: str) -> None:
    response.set_cookie(security.CSRF_COOKIE, cookie, httponly=True, samesite="strict", secure=secure(svc), path="/")


def page(request: Request, template: str, lang: str, *, status: int = 200, csrf: bool = True,
         **context: Any) -> HTMLResponse:
    """Render one of our pages for this request only (never stored by anyone); with `csrf`, its forms carry the
    visitor's token, and the CSRF cookie is handed out when the visitor has none yet."""
    svc = services(request)
    cookie, fresh = visitor_csrf(request) if csrf else ("", False)
    html = render(template, lang, path=request.url.path, settings=svc.settings, asked_lang=asked(request),
                  csrf_token=security.csrf_form_token(svc.settings.secret_key, cookie) if csrf else "", **context)
    response = HTMLResponse(html, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    if fresh:
        give_csrf_cookie(response, svc, cookie)
    return response


def page_cache(request: Request) -> PageCache:
    return request.app.state.page_cache


async def public_page(request: Request, template: str, lang: str, key: tuple[Hashable, ...],
                      context: Callable[[], dict[str, Any]], *, negotiated: bool) -> Response:
    """A page that is the same for everyone in this period, served from memory (and cacheable by any proxy).
    `key` holds whatever besides the path and language selects its bytes; `context` runs only when it is
    rendered; `negotiated`: the language came from Accept-Language rather than `?lang=`."""
    svc = services(request)
    path, wanted = request.url.path, asked(request)
    wanted = wanted if wanted != lang else ""
    return await page_cache(request).public(
        (path, lang, wanted, campaigns_version(svc), *key),
        lambda: render(template, lang, path=path, settings=svc.settings, asked_lang=wanted, **context()),
        if_none_match=request.headers.get("if-none-match"), negotiated=negotiated,
    )


async def csrf_page(request: Request, template: str, lang: str, key: tuple[Hashable, ...],
                    context: Callable[[], dict[str, Any]], *, status: int = 200) -> Response:
    """A private page whose only per-visitor part is its forms' CSRF token: rendered once per period and key, the
    token filled into the bytes; never stored by anyone, and hands out the CSRF cookie when the visitor has none."""
    svc = services(request)
    path, wanted = request.url.path, asked(request)
    wanted = wanted if wanted != lang else ""
    cookie, fresh = visitor_csrf(request)
    response = await page_cache(request).private(
        (path, lang, status, wanted, campaigns_version(svc), *key),
        lambda: render(template, lang, path=path, settings=svc.settings, csrf_token=MARKER, asked_lang=wanted,
                       **context()),
        security.csrf_form_token(svc.settings.secret_key, cookie), status=status,
    )
    if fresh:
        give_csrf_cookie(response, svc, cookie)
    return response


def negotiated(lang: str | None) -> bool:
    """Whether a page's language comes from Accept-Language (no valid `?lang=` in its URL)."""
    return lang not in i18n.LANGUAGES


def petition_context(svc: Services, campaign: Campaign, lang: str, *, form: Mapping[str, object] | None = None,
                     errors: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"campaign": campaign, "stats": svc.stats_cache.stats(campaign), "countries": i18n.countries(lang),
            "form": form or {}, "errors": errors or {}, "is_open": campaign.is_open(utcnow().date()),
            "phase": campaign.phase(utcnow().date()), "public_url": campaign.links_base(svc.settings.base_url)}


def petition_page(request: Request, campaign: Campaign, lang: str, *, status: int = 200,
                  form: Mapping[str, object] | None = None, errors: Mapping[str, str] | None = None) -> HTMLResponse:
    """The petition with its form filled in as typed, with the errors, when a signature was refused: for this
    request only (the page everyone gets is web.petition's, from the page cache)."""
    context = petition_context(services(request), campaign, lang, form=form, errors=errors)
    return page(request, "petition.html", lang, status=status, csrf=False, **context)


async def read_fields(request: Request) -> dict[str, str]:
    """A form's text fields (files refused, sizes bounded)."""
    form = await request.form(**FORM_LIMITS)
    return {k: v for k, v in form.items() if isinstance(v, str)}


FORM_EXPIRED = "This form has expired. Go back, reload the page and send it again."


async def read_public_form(request: Request) -> dict[str, str]:
    """A public form's text fields, after checking that a browser sent it from one of our own pages (403
    otherwise): public pages carry no per-visitor token, so that they can be cached (security.same_origin)."""
    svc = services(request)
    if not security.same_origin(request.headers, base_url=svc.settings.base_url):
        raise HTTPException(403, FORM_EXPIRED)
    return await read_fields(request)


async def read_form(request: Request) -> dict[str, str]:
    """A form's text fields, after its CSRF token is checked against the visitor's cookie (403 otherwise)."""
    data = await read_fields(request)
    svc = services(request)
    if not security.csrf_valid(
        svc.settings.secret_key, request.cookies.get(security.CSRF_COOKIE), data.get(security.CSRF_FIELD)
    ):
        raise HTTPException(403, FORM_EXPIRED)
    return data


async def write(svc: Services, work: Callable[[Session], T]) -> T:
    """Run `work` in one write transaction, committed before it returns, in a thread (never on the event loop)."""

    def run() -> T:
        with svc.db.write.begin() as session:
            return work(session)

    return await run_in_threadpool(run)


class Refused(Exception):
    """A signature refused (a SigningError or the rate limit), with what its answer shows again."""

    def __init__(self, error: Exception, *, campaign: Campaign, form: Mapping[str, object], lang: str) -> None:
        super().__init__(str(error))
        self.error, self.campaign, self.form, self.lang = error, campaign, form, lang


async def sign(request: Request, campaign: Campaign, form: Mapping[str, object], *, lang: str
               ) -> signing.SignatureIn:
    """The one way in for a signature, whichever door it came through (form, embed, API): the rate limit, the
    rules, then the intake, which answers after the signature is committed. Raises Refused."""
    svc = services(request)
    try:
        svc.sign_limiter.check("sign", client_address(request))
        data = signing.validate(form)
        await svc.intake.sign(campaign, data)
    except (signing.SigningError, RateLimited) as exc:
        raise Refused(exc, campaign=campaign, form=form, lang=lang) from exc
    return data


def field_errors(errors: Mapping[str, str], lang: str) -> list[dict[str, str]]:
    return [{"field": f, "message": i18n.gettext(lang, m)} for f, m in errors.items()]


def refusal(request: Request, exc: Exception) -> Response:
    """The one map from a refusal to its answer, as JSON under /api/ and as a page elsewhere (main.py registers it
    for Refused and for RateLimited raised by any route)."""
    campaign, form = (exc.campaign, exc.form) if isinstance(exc, Refused) else (None, {})
    lang = exc.lang if isinstance(exc, Refused) else pick_lang(request, request.query_params.get("lang"))
    error = exc.error if isinstance(exc, Refused) else exc
    api = request.url.path.startswith("/api/")
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after)}
        if api:
            return JSONResponse({"detail": "Too many requests. Try again later."}, 429, headers=headers)
        answer = page(request, "error.html", lang, status=429, message_id="too_many", campaign=campaign)
        answer.headers.update(headers)
        return answer
    if isinstance(error, signing.ValidationFailed):
        if api:
            return JSONResponse({"detail": field_errors(error.errors, lang)}, 422)
        return petition_page(request, campaign, lang, status=422, form=form, errors=error.errors)
    if isinstance(error, signing.CampaignClosed):
        upcoming = campaign is not None and campaign.phase(utcnow().date()) == "upcoming"
        if api:
            return JSONResponse({"detail": "This campaign is not open yet." if upcoming else
                                 "This campaign is closed."}, 409)
        return page(request, "error.html", lang, status=409, message_id="upcoming" if upcoming else "closed",
                    campaign=campaign)
    raise error
