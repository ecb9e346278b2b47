"""The embeddable widget: the public (folded) counter and a compact sign form, for an iframe on a partner site.

Only origins listed in CAMPAIGN_FRAME_ANCESTORS may frame it (its own Content-Security-Policy; none by default).
Inside a third-party frame the browser neither stores nor sends our SameSite=Strict CSRF cookie, so the form
carries a sealed (security.seal_handle), expiring, single-use form token instead and posts to the top window; a
form that does not validate opens the full petition page, filled in, where the signer can correct it.

A token alone proves nothing about the browser that sends it (anyone can fetch one), so a post is also refused
unless its Origin (or, when that is absent or "null", its Referer) is this site or a listed frame ancestor: another
site cannot make its visitors sign, and a token, once used, cannot be replayed.
"""

from __future__ import annotations

import logging
import re
import secrets
from functools import lru_cache
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import Headers

from app import i18n, security
from app.db import utcnow
from app.page_cache import MARKER
from app.pages import HONEYPOT_FIELD, campaign_or_404, page_cache, petition_page, pick_lang, read_fields, render, sign
from app.settings import Settings
from app.state import Services, services

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
FORM_PURPOSE = "embed-form v3"  # v3: sealed (security.seal_handle): nonce + slug
FORM_SECONDS = 24 * 3600
# A CSP host-source (scheme://host[:port], '*.' wildcard allowed) or 'self'; anything else is refused.
SOURCE = re.compile(r"^(?:'self'|https?://(?:\*\.)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::\d{1,5})?)$")


@lru_cache(maxsize=8)
def embed_csp(ancestors: tuple[str, ...]) -> str:
    """The embed's Content-Security-Policy, with frame-ancestors from the settings ('none' when nothing valid is
    configured); worked out once, not per view."""
    valid = [s.strip().rstrip("/") for s in ancestors if SOURCE.match(s.strip().rstrip("/"))]
    if len(valid) != len(ancestors):
        log.warning("CAMPAIGN_FRAME_ANCESTORS: ignored entries that are not scheme://host[:port] or 'self'")
    return security.content_security_policy(" ".join(valid) or "'none'")


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL or an origin; None for "null", opaque or malformed values."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return None
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme.lower(), parts.hostname.lower().rstrip("."), port


def _allowed_sources(settings: Settings) -> list[tuple[str, str, int, bool]]:
    """This site and each valid frame-ancestors source as (scheme, host, port, subdomains only)."""
    found = []
    for source in [settings.base_url, *(s.strip().rstrip("/") for s in settings.frame_ancestors)]:
        if source != settings.base_url and not SOURCE.match(source):
            continue
        wildcard = "://*." in source
        origin = _origin(source.replace("://*.", "://", 1))
        if origin is not None:
            found.append((*origin, wildcard))
    return found


def allowed_origin(settings: Settings, headers: Headers) -> bool:
    """True when the post comes from a page of this site or of a listed frame ancestor (wildcards as in CSP).
    Browsers send Origin on every POST; "null" (a sandboxed or no-referrer page) falls back to the Referer, and
    neither at all is refused."""
    value = headers.get("origin", "")
    if not value or value == "null":
        value = headers.get("referer", "")
    got = _origin(value) if value else None
    if got is None:
        return False
    scheme, host, port = got
    return any(
        scheme == s and port == p and (host.endswith("." + h) if wildcard else host == h)
        for s, h, p, wildcard in _allowed_sources(settings)
    )


def new_form_token(svc: Services, slug: str) -> str:
    """A single-use form token for one embed: its own random nonce and the campaign, sealed with the time."""
    return security.seal_handle(svc.settings.secret_key, FORM_PURPOSE, secrets.token_bytes(16) + slug.encode())


@router.get("/c/{slug}/embed", response_class=HTMLResponse)
async def embed(request: Request, slug: str, lang: str | None = None) -> Response:
    """Rendered once per period and language (page_cache); each answer fills in its own single-use form token,
    so the answer itself is never stored by anyone."""
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    lang = pick_lang(request, lang, campaign)
    is_open = campaign.is_open(utcnow().date())
    path = request.url.path
    response = await page_cache(request).private(
        (path, lang, is_open),
        lambda: render("embed.html", lang, path=path, settings=svc.settings, campaign=campaign, is_open=is_open,
                       stats=svc.stats_cache.stats(campaign), countries=i18n.countries(lang), form_token=MARKER),
        new_form_token(svc, slug),
    )
    # No CSRF cookie here: in a third-party frame it would be neither stored nor sent back.
    response.headers["Content-Security-Policy"] = embed_csp(tuple(svc.settings.frame_ancestors))
    return response


def _form_token_valid(request: Request, slug: str, token: object) -> bool:
    """Signed by us for this campaign, not expired, and never used before (the nonce is spent here)."""
    if not isinstance(token, str) or len(token) > 200:
        return False
    data = security.open_handle(services(request).settings.secret_key, FORM_PURPOSE, token, max_age=FORM_SECONDS)
    if data is None or data[16:] != slug.encode():
        return False
    return request.app.state.used_forms.first_use(data[:16].hex(), FORM_SECONDS)


@router.post("/c/{slug}/embed/sign")
async def embed_sign(request: Request, slug: str) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    form = await read_fields(request)  # no CSRF cookie in a third-party frame: the form token stands for it
    lang = campaign.lang(form.get("lang") or pick_lang(request, None, campaign))
    form["lang"] = lang
    thanks = RedirectResponse(f"/c/{slug}/thanks?lang={lang}", status_code=303)
    if form.get(HONEYPOT_FIELD):
        return thanks
    # The origin first: a refused cross-site post must not spend the token of the visitor's own embed.
    if not allowed_origin(svc.settings, request.headers) or not _form_token_valid(
        request, slug, form.get("form_token")
    ):
        return petition_page(request, campaign, lang, status=403, form=form,
                             errors={"form": "This form has expired. Go back, reload the page and send it again."})
    await sign(request, campaign, form, lang=lang)
    return thanks
