"""The campaign check (`campaign check`): every letter template of a campaign rendered for every target and language
with a named and an anonymous hostile signer, before anything is served, so a broken or unsafe template is found
by the organiser and never by an official; and what must be fixed before delivering (`review`): a sample
organisation as the applicant, targets whose details nobody has checked for six months.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from jinja2 import TemplateError, TemplateSyntaxError

from app.campaigns import Campaign
from app.letters import KINDS, Letter, SignerView, environment, preview_view, render_letter, template_name

HOSTILE_NAME = "{{ config }}<script>alert(1)</script>\r\nBcc: victim@example.org"
HOSTILE_CITY = "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}"
HOSTILE_MESSAGE = "{{ 7 * 7 }} <b>bold</b> & \"quotes\"\r\nSubject: injected"
# Office holders and addresses change: a target's details older than this are to be checked again before sending.
STALE_AFTER = timedelta(days=183)


@dataclass(frozen=True)
class Finding:
    """One thing `campaign check` reports: an error fails the check, a warning is printed and passes."""

    level: Literal["error", "warning"]
    text: str


def review(campaign: Campaign, *, production: bool, today: date) -> list[Finding]:
    """What an organiser must fix or check before delivering anything, every item at once: a SAMPLE organisation
    (an error in production, where a pack would name a made-up applicant; a warning elsewhere) and each target
    whose details were last checked more than six months ago, or never."""
    where = campaign.folder / "campaign.toml"
    found: list[Finding] = []
    org = campaign.organisation
    if org is not None and org.is_sample:
        found.append(Finding(
            "error" if production else "warning",
            f"{where}: organisation: SAMPLE values ({org.email}, {org.privacy_contact}) on a reserved domain; the "
            "appeal names its applicant and the privacy notice its controller: put your organisation's own "
            "name, postal address, e-mail, representative and privacy contact there",
        ))
    for target in campaign.targets:
        if target.verified_on is None:
            found.append(Finding("warning", f"{where}: target {target.key}: verified_on is missing; check its "
                                            "name, office and addresses and record the date"))
        elif today - target.verified_on > STALE_AFTER:
            age = (today - target.verified_on).days
            found.append(Finding("warning", f"{where}: target {target.key}: details last checked on "
                                            f"{target.verified_on.isoformat()} ({age} days ago, more than six "
                                            "months): check the name, office and addresses before sending"))
    return found


def _where(exc: BaseException, folder: Path) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"{exc.filename or exc.name}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno}"
    return str(folder)


def check_campaign(campaign: Campaign, *, secret: bytes = b"check") -> list[str]:
    """Render every template for every target and language, with a named and an anonymous hostile signer.

    Returns the problems, each naming the file and line; an empty list means every letter renders safely."""
    problems: list[str] = []
    for lang in campaign.languages:
        path = campaign.folder / template_name(lang, "txt")
        if not path.is_file():
            problems.append(f"{path}: missing (every language needs its letter; the .html.j2 form is optional)")
    if problems:
        return problems
    env = environment(campaign.folder, campaign.revision)
    for lang in campaign.languages:
        for kind in KINDS:
            if kind == "html" and not (campaign.folder / template_name(lang, kind)).is_file():
                continue
            try:
                env.get_template(template_name(lang, kind))
            except TemplateError as exc:
                problems.append(f"{_where(exc, campaign.folder)}: {type(exc).__name__}: {exc}")
    if problems:
        return problems
    for target in campaign.targets:
        views = [
            SignerView("check-named", name=HOSTILE_NAME, city=HOSTILE_CITY, country="KZ", message=HOSTILE_MESSAGE),
            SignerView("check-anon", country="KZ", message=HOSTILE_MESSAGE),
            preview_view(target),
        ]
        for lang in campaign.languages:
            for view in views:
                try:
                    letter = render_letter(campaign, target, lang, view, secret=secret)
                except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as exc:
                    problems.append(f"{_where(exc, campaign.folder)}: target {target.key}, {lang}: "
                                    f"{type(exc).__name__}: {exc}")
                    continue
                problems += _unsafe(letter, view, campaign.folder / template_name(lang, "html"))
    return list(dict.fromkeys(problems))


def _unsafe(letter: Letter, view: SignerView, html_path: Path) -> Iterable[str]:
    if view.message and view.message.strip() not in letter.text:
        yield f"{html_path.with_name(html_path.name.replace('.html.', '.txt.'))}: the signer's message is missing"
    if view.name and not view.placeholder:
        if "<script>" in letter.html or "<b>bold</b>" in letter.html:
            yield f"{html_path}: signer text is not escaped (is autoescape off, or a `|safe` used?)"
        if "&lt;script&gt;" not in letter.html:
            yield f"{html_path}: the signer's name does not appear in the letter"
        if view.name not in letter.text:
            yield f"{html_path.with_name(html_path.name.replace('.html.', '.txt.'))}: the signer's name is missing"
