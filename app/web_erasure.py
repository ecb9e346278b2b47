"""Public erasure pages: ask for a link by email, open it, press the button.

Asking always gets the same page, whether or not the address has signed; the link (GET) only shows a button
(mail scanners open links); the POST behind the button erases the signer's personal data from every campaign.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app import erasure
from app.db import utcnow
from app.pages import client_address, page, pick_lang, read_form, write
from app.state import services

router = APIRouter(include_in_schema=False)


@router.get("/erase", response_class=HTMLResponse)
def erase_form(request: Request, lang: str | None = None) -> HTMLResponse:
    return page(request, "erase.html", pick_lang(request, lang), form={}, error=None)


@router.post("/erase")
async def erase_request(request: Request) -> Response:
    svc = services(request)
    form = await read_form(request)
    lang = pick_lang(request, form.get("lang"))
    svc.sign_limiter.check("erase", client_address(request))
    email = str(form.get("email", "")).strip()
    try:
        if len(email) > 254:
            raise EmailNotValidError("too long")
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError:
        return page(request, "erase.html", lang, status=422, form={"email": email[:254]},
                    error="Enter a valid email address.")

    await write(svc, lambda session: erasure.request_link(session, email=email, lang=lang, keyring=svc.keyring,
                                                          now=utcnow()))
    return page(request, "erase_sent.html", lang)  # the same page whether or not this address signed


@router.get("/erase/{token}", response_class=HTMLResponse)
def erase_link(request: Request, token: str, lang: str | None = None) -> HTMLResponse:
    svc = services(request)
    lang = pick_lang(request, lang)
    valid = erasure.read_link_token(svc.settings, token) is not None
    return page(request, "erase_confirm.html", lang, status=200 if valid else 404, valid=valid, token=token)


@router.post("/erase/{token}")
async def erase_post(request: Request, token: str) -> Response:
    svc = services(request)
    form = await read_form(request)
    lang = pick_lang(request, form.get("lang"))
    keys = erasure.read_link_token(svc.settings, token)
    if keys is None:
        return page(request, "erase_confirm.html", lang, status=404, valid=False, token=token)

    done = await write(svc, lambda session: erasure.erase(session, keys=keys, now=utcnow()))
    return page(request, "erase_done.html", lang, done=done)
