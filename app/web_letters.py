"""Letter pages: the public preview of a campaign's letter, and on the signer's own page their letter to each
target with the three ways to deliver it (own mailbox, sent for them, print and post) and the opt-ins, including
being named in the organisation's appeal to an authority that only the organisation's pack reaches.

Each page shows a letter exactly as its target would receive it: the same function renders the mail, the PDF and
the batch. Everything works without JavaScript; forms carry the CSRF token. Every way out is recorded in the
delivery ledger (ledger.py): "open in my mail program" is a small form whose answer records the letter and sends
the browser on to the mailto: address (a POST, so no prefetcher or link scanner records a letter nobody opened).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import ledger, letters, naming, pdf, security
from app.campaigns import Campaign
from app.db import utcnow
from app.models import MAILTO, PDF
from app.pages import (
    campaign_or_404,
    negotiated,
    page,
    pick_lang,
    public_page,
    read_form,
    signer_or_404,
    write,
)
from app.state import Services, services

router = APIRouter(include_in_schema=False)
MAILTO_LIMIT = 1800  # longer mailto: links are cut or refused by some mail programs and browsers
DONE = ("named", "unnamed", "sent")


def mailto(to: str, subject: str, body: str | None = None) -> str:
    """A mailto: URL (RFC 6068): every part percent-encoded as UTF-8, line breaks as CRLF."""
    url = f"mailto:{quote(to, safe='@')}?subject={quote(subject, safe='')}"
    if body is not None:
        url += "&body=" + quote(body.replace("\r\n", "\n").replace("\n", "\r\n"), safe="")
    return url


@dataclass(frozen=True)
class Card:
    """What the signer's page shows for one target."""

    item: letters.TargetLetter
    mailto: str | None  # the whole letter pre-filled, when short enough
    mailto_short: str | None  # address and subject only; the text is then given to copy


def card(item: letters.TargetLetter) -> Card:
    email = item.target.email
    if not email:
        return Card(item, None, None)
    url = mailto_url(email, item.letter)
    return Card(item, url, None) if "&body=" in url else Card(item, None, url)


def mailto_url(email: str, letter: letters.Letter) -> str:
    """The whole letter pre-filled when short enough for mail programs; else the address and subject only."""
    if len(letter.text.encode()) > MAILTO_LIMIT:  # encoded, each byte takes 1 or 3 characters: too long already
        return mailto(email, letter.subject)
    full = mailto(email, letter.subject, letter.text)
    return full if len(full) <= MAILTO_LIMIT else mailto(email, letter.subject)


# The signer's page may send its "open in my mail program" form on to a mailto: address (form-action is checked
# on the redirect too); every other page keeps form-action 'self'.
SIGNER_PAGE_CSP = security.content_security_policy().replace("form-action 'self'", "form-action 'self' mailto:")


@router.get("/c/{slug}/letter", response_class=HTMLResponse)
async def preview(request: Request, slug: str, lang: str | None = None, target: str | None = None) -> Response:
    svc = services(request)
    campaign = campaign_or_404(svc, slug)
    chosen_lang = pick_lang(request, lang, campaign)
    # Only the targets a signer writes to: a pack-only one gets the organisation's appeal, never this letter.
    offered = [t for t in campaign.targets if t.offered_to_signers]
    chosen = campaign.target(target) if target else (offered[0] if offered else None)
    if chosen is None or chosen not in offered:
        raise HTTPException(404, "No such recipient in this campaign")
    return await public_page(request, "letter_preview.html", chosen_lang, (chosen.key,), lambda: {
        "campaign": campaign, "target": chosen, "offered": offered, "variants": len(campaign.openings[chosen_lang])
        * len(campaign.closings[chosen_lang]),
        "letter": letters.render_letter(campaign, chosen, chosen_lang, letters.preview_view(chosen),
                                        secret=letters.variation_secret(svc.settings.secret_key)),
    }, negotiated=negotiated(lang))


# A signer's page is rendered for each view (it is theirs alone; see docs/operations.md): CPU work that holds the
# interpreter lock. Two threads at a time render as many pages a second as forty would, without making every
# page wait behind all the others.
RENDERING = anyio.CapacityLimiter(2)


@router.get("/s/{token}", response_class=HTMLResponse)
async def signer_page(request: Request, token: str, lang: str | None = None) -> HTMLResponse:
    """The signer's own page: their letter to each target, the ways to deliver it, and the opt-ins."""
    return await anyio.to_thread.run_sync(_signer_page, request, token, lang, limiter=RENDERING)


def _signer_page(request: Request, token: str, lang: str | None) -> HTMLResponse:
    svc = services(request)
    done, acted_on = request.query_params.get("done"), request.query_params.get("target")
    with svc.db.read() as session:
        row = signer_or_404(session, token)
        campaign = campaign_or_404(svc, row.campaign)
        lang = campaign.lang(lang or row.language)
        try:
            said = naming.yeses(session, row.id)
            items = letters.signer_letters(
                session, campaign=campaign, row=row, lang=lang, keyring=svc.keyring,
                secret=letters.variation_secret(svc.settings.secret_key),
                public=svc.stats_cache.letter_countries(campaign), named=said,
            )
            pack_only = naming.pack_targets(campaign, row.country)
            choices = naming.choices(session, campaign=campaign, said=said,
                                     targets=[item.target for item in items] + pack_only)
        except letters.LetterRefused:
            items, pack_only, choices = [], [], {}
    answer = page(request, "signer.html", lang, campaign=campaign, stats=svc.stats_cache.stats(campaign),
                  token=token, cards=[card(item) for item in items], naming=choices,
                  pack=[choices[t.key] for t in pack_only], signer_country=row.country,
                  done=done if done in DONE else None, done_target=_shown(acted_on, items, pack_only))
    answer.headers["Content-Security-Policy"] = SIGNER_PAGE_CSP
    answer.headers["X-Frame-Options"] = "DENY"
    return answer


def _shown(target: str | None, items: list[letters.TargetLetter], pack_only: list) -> str | None:
    """The recipient whose card shows what was just done (None: the notice stays at the top)."""
    return target if target in {i.target.key for i in items} | {t.key for t in pack_only} else None


def _done_url(token: str, lang: str, done: str, target: str, campaign: Campaign) -> str:
    """Back to the signer's page, at the card of the recipient acted on, which then says what was done."""
    found = campaign.target(target)
    card_id = f"t-{target}" if found is None or found.offered_to_signers else f"pack-{target}"
    return f"/s/{token}?lang={lang}&done={done}&target={quote(target, safe='')}#{card_id}"


def _refused(request: Request, token: str, lang: str, campaign: Campaign, exc: letters.LetterRefused) -> HTMLResponse:
    conflict = exc.reason in ("already_sent", "pack_delivered")
    return page(request, "letter_refused.html", lang, status=409 if conflict else 400, campaign=campaign,
                reason=exc.reason, on=exc.on, back=f"/s/{token}?lang={lang}")


async def _signer_form(request: Request, token: str) -> tuple[Services, Campaign, dict, str]:
    svc = services(request)
    form = await read_form(request)
    with svc.db.read() as session:
        row = signer_or_404(session, token)
    campaign = campaign_or_404(svc, row.campaign)
    return svc, campaign, form, campaign.lang(str(form.get("lang") or row.language))


@router.post("/s/{token}/named")
async def named(request: Request, token: str) -> Response:
    """Say yes (box ticked) or no (box not ticked) to being named to one target. Off unless ticked."""
    svc, campaign, form, lang = await _signer_form(request, token)
    target_key, yes = str(form.get("target", ""))[:64], form.get("named") == "on"

    try:
        await write(svc, lambda session: letters.set_named(
            session, campaign=campaign, row=signer_or_404(session, token), target_key=target_key, named=yes,
            now=utcnow(),
        ))
    except letters.LetterRefused as exc:
        return _refused(request, token, lang, campaign, exc)
    return RedirectResponse(_done_url(token, lang, "named" if yes else "unnamed", target_key, campaign),
                            status_code=303)


@router.post("/s/{token}/send")
async def send(request: Request, token: str) -> Response:
    """"Send it for me": queue the letter to one target, once, through the outbox."""
    svc, campaign, form, lang = await _signer_form(request, token)
    target_key = str(form.get("target", ""))[:64]
    public = await letter_countries(svc, campaign)
    try:
        await write(svc, lambda session: letters.send_for_me(
            session, campaign=campaign, row=signer_or_404(session, token), target_key=target_key, lang=lang,
            keyring=svc.keyring, composer=svc.composer, secret=letters.variation_secret(svc.settings.secret_key),
            public=public, now=utcnow(),
        ))
    except letters.LetterRefused as exc:
        return _refused(request, token, lang, campaign, exc)
    return RedirectResponse(_done_url(token, lang, "sent", target_key, campaign), status_code=303)


@router.post("/s/{token}/mailto")
async def open_in_mail_program(request: Request, token: str) -> Response:
    """"Open it in my mail program": record the letter (once) and send the browser on to its mailto: address,
    which opens the signer's mail program with the letter filled in; the page stays where it was."""
    svc, campaign, form, lang = await _signer_form(request, token)
    target_key = str(form.get("target", ""))[:64]
    public = await letter_countries(svc, campaign)

    def work(session) -> str:
        row = signer_or_404(session, token)
        letter = _letter(svc, session, campaign, row, target_key, lang, public)
        email = campaign.target(letter.target).email  # type: ignore[union-attr] - the letter's own target
        if not email:
            raise HTTPException(404, "No email address for this recipient")
        ledger.record(session, signature_id=row.id, campaign=campaign.slug, target=letter.target, channel=MAILTO,
                      now=utcnow())
        return mailto_url(email, letter)

    return RedirectResponse(await write(svc, work), status_code=303)


async def letter_countries(svc: Services, campaign: Campaign) -> frozenset[str]:
    """The countries this period's letters may name, read before a write begins: at a boundary the figures
    cache reads (or publishes) them itself, which inside the write would wait for its own lock."""
    return await run_in_threadpool(svc.stats_cache.letter_countries, campaign)


def _letter(svc: Services, session, campaign: Campaign, row, target_key: str, lang: str,
            public: frozenset[str]) -> letters.Letter:
    try:
        return letters.signer_letter(
            session, campaign=campaign, row=row, target_key=target_key, lang=campaign.lang(lang),
            keyring=svc.keyring, secret=letters.variation_secret(svc.settings.secret_key), public=public,
        )
    except letters.LetterRefused as exc:
        raise HTTPException(404, "No such recipient for this signature") from exc


def _pdf(svc: Services, token: str, target: str, lang: str | None, *, record: bool) -> Response:
    with svc.db.read() as session:
        row = signer_or_404(session, token)
        campaign = campaign_or_404(svc, row.campaign)
        # A read takes no lock, so the figures may be published beside it at a boundary (as on the signer's page).
        letter = _letter(svc, session, campaign, row, target[:64], lang or row.language,
                         svc.stats_cache.letter_countries(campaign))
    content = pdf.letters_pdf([letter], lang=letter.lang, title=letter.subject)
    if record:
        with svc.db.write.begin() as session:  # made: now recorded, in a short write of its own
            ledger.record(session, signature_id=row.id, campaign=campaign.slug, target=letter.target, channel=PDF,
                          now=utcnow())
    return Response(content, media_type="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="letter-{letter.target}-{letter.lang}.pdf"',
        "Cache-Control": "no-store",
    })


@router.get("/s/{token}/letter.pdf")
def letter_pdf(request: Request, token: str, target: str, lang: str | None = None) -> Response:
    """The signer's own letter to one target as PDF, recorded nowhere: a mail scanner that follows the links of
    the signer's page must not make a letter count as posted (a batch would then leave it out)."""
    return _pdf(services(request), token, target, lang, record=False)


@router.post("/s/{token}/letter.pdf")
async def letter_pdf_recorded(request: Request, token: str) -> Response:
    """Print and post, as the signer's page asks it (a form, CSRF-checked): the PDF, and the download recorded in
    the ledger (once)."""
    form = await read_form(request)
    return await run_in_threadpool(_pdf, services(request), token, str(form.get("target", "")),
                                   form.get("lang") or None, record=True)
