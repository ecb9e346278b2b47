"""The embeddable widget: the public (folded) counter and a compact sign form, for an iframe on a partner site.

Only origins listed in CAMPAIGN_FRAME_ANCESTORS may frame it (its own Content-Security-Policy; none by default).
Inside a third-party frame the browser neither stores nor sends our SameSite=Strict CSRF cookie, so the form
carries a signed, expiring form token instead and posts to the top window; a form that does not validate opens the
full petition page, filled in, where the signer can correct it.
"""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app import i18n, security, signing
from app.campaigns import Campaign
from app.db import utcnow
from app.settings import Settings
from app.state import Services, services
from app.web import HONEYPOT_FIELD, campaign_or_404, client_address, page, pick_lang, too_many

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
FORM_SALT = "embed-form v1"
FORM_SECONDS = 24 * 3600
# A CSP host-source (scheme://host[:port], '*.' wildcard allowed) or 'self'; anything else is refused.
SOURCE = re.compile(r"^(?:'self'|https?://(?:\*\.)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::\d{1,5})?)$")


def frame_ancestors(settings: Settings) -> str:
    """The CSP frame-ancestors value from settings; 'none' when nothing (valid) is configured."""
    valid = [s.strip().rstrip("/") for s in settings.frame_ancestors if SOURCE.match(s.strip().rstrip("/"))]
    if len(valid) != len(settings.frame_ancestors):
        log.warning("CAMPAIGN_FRAME_ANCESTORS: ignored entries that are not scheme://host[:port] or 'self'")
    return " ".join(valid) or "'none'"


def _serializer(svc: Services) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(svc.settings.secret_key, salt=FORM_SALT)


@router.get("/c/{slug}/embed", response_class=HTMLResponse)
def embed(request: Request, slug: str, lang: str | None = None) -> HTMLResponse:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    lang = pick_lang(request, lang, campaign)
    stats = svc.stats_cache.stats(campaign)
    html = i18n.page_env(lang).get_template("embed.html").render(
        campaign=campaign, stats=stats, countries=i18n.countries(lang), form_token=_serializer(svc).dumps(slug),
        is_open=campaign.is_open(utcnow().date()), path=request.url.path,
    )
    # No CSRF cookie here: in a third-party frame it would be neither stored nor sent back.
    response = HTMLResponse(html)
    response.headers["Content-Security-Policy"] = security.content_security_policy(frame_ancestors(svc.settings))
    response.headers["Cache-Control"] = "no-store"
    return response


def _form_token_valid(svc: Services, slug: str, token: object) -> bool:
    if not isinstance(token, str) or len(token) > 200:
        return False
    try:
        return _serializer(svc).loads(token, max_age=FORM_SECONDS) == slug
    except BadSignature:
        return False


def _full_petition(request: Request, campaign: Campaign, lang: str, *, status: int, form: dict, errors: dict
                   ) -> HTMLResponse:
    svc = services(request)
    stats = svc.stats_cache.stats(campaign)
    return page(
        request, "petition.html", lang, status=status, campaign=campaign, stats=stats,
        countries=i18n.countries(lang), form=form, errors=errors, is_open=campaign.is_open(utcnow().date()),
    )


@router.post("/c/{slug}/embed/sign")
async def embed_sign(request: Request, slug: str) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    raw = await request.form(max_files=0, max_fields=50, max_part_size=64 * 1024)
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    lang = campaign.lang(form.get("lang") or pick_lang(request, None, campaign))
    form["lang"] = lang
    thanks = RedirectResponse(f"/c/{slug}/thanks?lang={lang}", status_code=303)
    if form.get(HONEYPOT_FIELD):
        return thanks
    if not _form_token_valid(svc, slug, form.get("form_token")):
        return _full_petition(request, campaign, lang, status=403, form=form,
                              errors={"form": "This form has expired. Go back, reload the page and send it again."})
    retry_after = svc.sign_limiter.hit("sign", client_address(request))
    if retry_after:
        return too_many(request, lang, retry_after, campaign)
    try:
        data = signing.validate(form)
        await svc.intake.sign(campaign, data)  # answers after the batch holding it is committed
    except signing.ValidationFailed as exc:
        return _full_petition(request, campaign, lang, status=422, form=form, errors=exc.errors)
    except signing.CampaignClosed:
        return page(request, "error.html", lang, status=409, message_id="closed", campaign=campaign)
    return thanks
