"""Signer safety: a stolen database names nobody, public figures single nobody out, keys rotate without loss,
discreet mail says nothing about the campaign, and the privacy notice stays true to the settings."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app import addresses, cli, counters, encryption, notices, signing
from app.db import Database, utcnow
from app.main import create_app
from app.models import Notice, OutboxMessage, Signature
from app.state import Services
from tests.support import SIGNER, answer_notices, body, deliver, make_settings, sign_form

PEOPLE = [
    {"name": "Zarina Qasymqyzy", "email": "zarina.marker@example.kz", "city": "Shymkent", "country": "KZ"},
    {"name": "Ерлан Сұлтанбеков", "email": "erlan.marker@example.org", "city": "Қарағанды", "country": "KZ"},
    {"name": "Helga Brandtmarker", "email": "helga@example.de", "city": "Wuppertal", "country": "DE"},
]


def sign_and_confirm(svc: Services, person: dict, *, now=None) -> int:
    now = now or utcnow()
    campaign = svc.campaigns["mamay"]
    data = signing.validate({**SIGNER, **person, "consent": True})
    with svc.db.write.begin() as session:
        signed = signing.sign(session, campaign=campaign, data=data, keyring=svc.keyring,
                              settings=svc.settings, now=now)
    answer_notices(svc, now=now)  # its confirmation mail, as the outbox worker would queue it
    with svc.db.write.begin() as session:
        row = session.get(Signature, signed.signature_id)
        signing._open(session, row, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer, now=now)
    return signed.signature_id


def database_bytes(url: str) -> bytes:
    """Everything an attacker copying the database gets: the file, its WAL, and a full SQL dump."""
    path = Path(url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    con = sqlite3.connect(path)
    dump = "\n".join(con.iterdump()).encode()
    con.close()
    return raw + dump


def test_a_copy_of_the_database_file_names_nobody(svc, smtp):
    for person in PEOPLE:
        sign_and_confirm(svc, person)
    deliver(svc, smtp.url)  # sent mails stay in the outbox too
    svc.db.dispose()
    stolen = database_bytes(svc.settings.sqlalchemy_url)
    for person in PEOPLE:
        for needle in (person["name"], person["email"], person["email"].split("@")[0], person["city"]):
            assert needle.encode() not in stolen, f"{needle!r} is readable in the database file"
            assert needle.encode().hex() not in stolen.decode("latin-1"), f"{needle!r} is in the dump as hex"
    # ...while the service itself can still read them, and the mails went out.
    assert len(smtp.sink.to("zarina.marker@example.kz")) == 2


def test_repeat_signer_is_found_by_keyed_hash_not_by_address(svc):
    first = sign_and_confirm(svc, PEOPLE[0])
    with svc.db.read() as session:
        row = session.get(Signature, first)
        assert row.email_key == svc.keyring.email_key("zarina.marker@example.kz")
        assert b"zarina" not in row.email_key
    other_ring = encryption.Keyring.parse("x1:" + encryption.new_key())
    assert other_ring.email_key("zarina.marker@example.kz") != row.email_key  # useless without our key


def test_keys_rotate_reseals_every_row_and_loses_none(tmp_path, sqlite_url, smtp):
    settings = make_settings(tmp_path, sqlite_url, data_key="")
    svc = Services.build(settings)  # generates var/data.key in test/development
    key_file = encryption.key_file(settings)
    old_spec = key_file.read_text().strip()
    ids = [sign_and_confirm(svc, p) for p in PEOPLE]
    svc.db.dispose()

    env = {"CAMPAIGN_DATABASE_URL": sqlite_url, "CAMPAIGN_VAR_DIR": str(settings.var_dir), "CAMPAIGN_ENV": "test",
           "CAMPAIGN_DATA_KEY": ""}
    result = CliRunner().invoke(cli.app, ["keys", "rotate"], env=env)
    assert result.exit_code == 0, result.output
    new_spec = key_file.read_text().strip()
    assert new_spec.startswith("k2:") and "," not in new_spec and old_spec not in new_spec

    new_ring = encryption.Keyring.parse(new_spec)
    db = Database(sqlite_url)
    with db.read() as session:
        rows = [session.get(Signature, i) for i in ids]
        assert {r.key_id for r in rows} == {"k2"}
        assert [new_ring.open(r.name_enc, "name", r.key_id) for r in rows] == [p["name"] for p in PEOPLE]
        assert [new_ring.open(r.city_enc, "city", r.key_id) for r in rows] == [p["city"] for p in PEOPLE]
    db.dispose()
    # The repeat signer is still recognised under the new key alone.
    svc2 = Services.build(settings)
    with svc2.db.write.begin() as session:
        again = signing.sign(session, campaign=svc2.campaigns["mamay"],
                             data=signing.validate({**SIGNER, **PEOPLE[1], "consent": True}),
                             keyring=svc2.keyring, settings=settings, now=utcnow())
    assert not again.created
    with svc2.db.read() as session:  # the notice names the old row by its new hash, and nothing was added
        [notice] = session.scalars(select(Notice)).all()
        assert session.scalar(select(Signature.email_key).where(Signature.id == ids[1])) in notices.keys_of(notice)
        assert session.query(Signature).count() == len(PEOPLE)
    svc2.db.dispose()


def test_one_signer_in_kazakhstan_and_four_elsewhere_is_invisible_in_every_public_answer(svc, client):
    yesterday = utcnow() - timedelta(days=1)  # countries and days are published as they stood at midnight
    sign_and_confirm(svc, {"name": "Only One", "email": "only@example.kz", "country": "KZ"}, now=yesterday)
    for i in range(4):
        sign_and_confirm(svc, {"name": f"Other {i}", "email": f"o{i}@example.de", "country": "DE"}, now=yesterday)
    stats = client.get("/api/v1/campaigns/mamay/stats").json()
    assert stats["confirmed"] == 5
    assert "KZ" not in stats["by_country"] and "DE" not in stats["by_country"]
    assert stats["by_country"] == {"other": 5}
    assert all(n >= 5 for n in stats["by_day"].values())
    for url in ("/c/mamay", "/c/mamay/embed", "/", "/c/mamay?lang=kk", "/c/mamay/letter?target=president"):
        page = client.get(url).text
        assert "only@example.kz" not in page and "Only One" not in page, url
    for url in ("/c/mamay", "/c/mamay/embed", "/"):
        counts = {int(n) for n in re.findall(r'class="num">\s*([\d\s]+?)\s*<', client.get(url).text)}
        assert counts == {5}, f"{url} shows {counts}: only the total may appear"

    # One more German makes Germany big enough to show; Kazakhstan's lone signer must still not be derivable.
    sign_and_confirm(svc, {"name": "Other 5", "email": "o5@example.de", "country": "DE"})
    stats = client.get("/api/v1/campaigns/mamay/stats").json()
    shown = {c: n for c, n in stats["by_country"].items() if c != "other"}
    rest = stats["confirmed"] - sum(shown.values())
    assert "KZ" not in stats["by_country"]
    assert rest == 0 or rest >= 5, f"total minus shown countries reveals a cell of {rest}"


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"KZ": 1, "DE": 4}, {"other": 5}),
        ({"KZ": 1, "DE": 5}, {"other": 6}),
        ({"KZ": 1, "DE": 5, "GB": 7}, {"GB": 7, "other": 6}),
        ({"DE": 5, "GB": 7}, {"GB": 7, "DE": 5}),
        ({}, {}),
    ],
)
def test_folding_never_leaves_a_small_remainder(counts, expected):
    folded = counters.fold_countries(counts, 5)
    assert folded == expected
    assert sum(folded.values()) == sum(counts.values())


def test_small_days_are_carried_forward(svc):
    # Each shown day is a multiple of k (the rest carries on); the tail under k is not shown.
    assert counters.publish_days({"2026-01-01": 2, "2026-01-02": 4, "2026-01-03": 9, "2026-01-04": 1}, 5) == {
        "2026-01-02": 5, "2026-01-03": 10,
    }


def test_discreet_mail_names_neither_campaign_nor_country(client, svc, smtp):
    sign_form(client, email="quiet@example.org", discreet="on", lang="ru")
    deliver(svc, smtp.url)
    [mail] = smtp.sink.to("quiet@example.org")
    text = body(mail)
    assert mail["Subject"] != "" and "Мама" not in mail["Subject"] and "Mamay" not in mail["Subject"]
    for word in ("Mamay", "Мама", "Kazakh", "Казах", "Қазақ", "campaign", "petition", "петици"):
        assert word not in text and word not in str(mail["From"]) and word not in str(mail["Subject"])
    assert re.search(r"\b[A-Z0-9]{8}\b", text), "the code is still there"


def test_privacy_notice_states_the_configured_retention_and_cell_size(tmp_path, sqlite_url):
    settings = make_settings(tmp_path, sqlite_url, retention_days=97, min_cell=7)
    with TestClient(create_app(settings)) as c:
        for lang in ("en", "ru", "kk"):
            page = c.get(f"/privacy?lang={lang}").text
            assert "97" in page and "7" in page and "28" in page


def test_privacy_notice_is_linked_from_every_public_page(client):
    for url in ("/", "/c/mamay", "/c/mamay/thanks", "/privacy", "/confirm/unknown"):
        assert 'href="/privacy?lang=' in client.get(url).text, url


def test_stats_cli_prints_folded_json(tmp_path, sqlite_url, svc):
    yesterday = utcnow() - timedelta(days=1)  # countries and days are published as they stood at midnight
    sign_and_confirm(svc, {"name": "A", "email": "a@example.kz", "country": "KZ"}, now=yesterday)
    for i in range(5):
        sign_and_confirm(svc, {"name": f"D{i}", "email": f"d{i}@example.de", "country": "DE"}, now=yesterday)
    env = {"CAMPAIGN_DATABASE_URL": sqlite_url, "CAMPAIGN_VAR_DIR": str(tmp_path / "var"),
           "CAMPAIGN_DATA_KEY": svc.settings.data_key, "CAMPAIGN_ENV": "test"}
    out = CliRunner().invoke(cli.app, ["stats", "mamay"], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    # The published figures, in steps of the minimum cell size: the lone Kazakh signer is not in them.
    assert data["confirmed"] == 5 and data["by_country"] == {"DE": 5}


def test_a_confirmation_link_opens_only_with_its_own_row_and_secret_together(svc, smtp):
    """The link names its row (so no index over random hashes), encrypted; the row's part alone opens nothing."""
    now = utcnow()
    with svc.db.write.begin() as session:
        for email in ("row-a@example.org", "row-b@example.org"):
            signing.sign(session, campaign=svc.campaigns["mamay"], data=signing.validate(
                {**SIGNER, "email": email, "consent": True}), keyring=svc.keyring,
                settings=svc.settings, now=now)
    deliver(svc, smtp.url)
    tokens = {}
    for sent in smtp.sink.messages:
        tokens[sent.message["To"]] = re.search(r"/confirm/([\w.-]+)", body(sent.message)).group(1)
    a, b = tokens["row-a@example.org"], tokens["row-b@example.org"]
    (a_id, a_secret), (b_id, b_secret) = a.split("."), b.split(".")
    with svc.db.read() as session:
        a_row = session.scalar(select(Signature.id).where(
            Signature.email_key == svc.keyring.email_key("row-a@example.org")))
        assert signing.find_by_token(session, a, secret=svc.settings.secret_key, now=now).id == a_row
        for wrong in (f"{a_id}.{b_secret}", f"{b_id}.{a_secret}", a_id, f"{a_id}.", f".{a_secret}", a_secret,
                      f"{a_row}.{a_secret}", ("B" if a_id[0] != "B" else "C") + f"{a_id[1:]}.{a_secret}",
                      f"\u0661.{a_secret}", "9" * 40 + "." + a_secret,
                      f"{a_id}.{a_secret}x"):
            with pytest.raises(signing.ConfirmProblem) as problem:
                signing.find_by_token(session, wrong, secret=svc.settings.secret_key, now=now)
            assert problem.value.reason == "unknown", wrong


def test_confirmation_link_and_code_expire_after_the_configured_days(svc, smtp):
    campaign = svc.campaigns["mamay"]
    signed_at = utcnow()
    data = signing.validate({**SIGNER, "consent": True})
    with svc.db.write.begin() as session:
        signed = signing.sign(session, campaign=campaign, data=data, keyring=svc.keyring,
                              settings=svc.settings, now=signed_at)
    later = signed_at + timedelta(days=svc.settings.confirm_token_days, minutes=1)
    deliver(svc, smtp.url)
    text = body(smtp.sink.messages[0].message)
    token = re.search(r"/confirm/([\w.-]+)", text).group(1)
    code = re.search(r"\b([A-Z0-9]{8})\b", text).group(1)
    keys = svc.keyring.email_keys(addresses.normalise_email(SIGNER["email"]))
    with svc.db.write.begin() as session:
        with pytest.raises(signing.ConfirmProblem) as problem:
            signing.find_by_token(session, token, secret=svc.settings.secret_key, now=later)
        assert problem.value.reason == "expired"
        late = signing.confirm_by_code(session, campaign="mamay", keys=keys, code=code, campaigns=svc.campaigns,
                                       keyring=svc.keyring, composer=svc.composer, settings=svc.settings, now=later)
        assert isinstance(late, signing.ConfirmProblem) and late.reason == "wrong_code"
        # Two minutes earlier it was still valid.
        earlier = later - timedelta(minutes=2)
        found = signing.find_by_token(session, token, secret=svc.settings.secret_key, now=earlier)
        assert found.id == signed.signature_id


def test_repeat_signer_is_found_mid_rotation_when_the_row_still_has_the_old_hash(tmp_path, sqlite_url):
    old = encryption.new_key()
    before = Services.build(make_settings(tmp_path, sqlite_url, data_key=f"k1:{old}"))
    first = sign_and_confirm(before, PEOPLE[0])
    before.db.dispose()
    # A new primary key has been added, but the row has not been re-sealed yet.
    during = Services.build(make_settings(tmp_path, sqlite_url, data_key=f"k2:{encryption.new_key()},k1:{old}"))
    with during.db.write.begin() as session:
        again = signing.sign(session, campaign=during.campaigns["mamay"],
                             data=signing.validate({**SIGNER, **PEOPLE[0], "consent": True}),
                             keyring=during.keyring, settings=during.settings,
                             now=utcnow())
    assert not again.created
    with during.db.read() as session:
        assert session.query(Signature).count() == 1
    # Its notice finds the row by the old key's hash: one reminder, to the stored address.
    notices.answer_due(during.db, campaigns=during.campaigns, keyring=during.keyring, composer=during.composer,
                       settings=during.settings, now=utcnow() + timedelta(hours=2))
    with during.db.read() as session:
        assert [m.signature_id for m in session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "already"))
                ] == [first]
    during.db.dispose()


def test_no_request_is_traced_even_where_an_opentelemetry_provider_is_configured(settings, db):
    """FastAPI traces each request once a tracer provider is configured, with the URL path as an attribute, and our
    paths hold confirmation, private-page and erasure tokens: the app keeps its request telemetry off."""
    from opentelemetry import trace

    spans: list[str] = []

    class Tracer(trace.NoOpTracer):
        def start_span(self, name, *args, **kwargs):
            spans.append(name)
            return super().start_span(name, *args, **kwargs)

    class Provider(trace.TracerProvider):  # not a NoOpTracerProvider, which FastAPI skips
        def get_tracer(self, *args, **kwargs):
            return Tracer()

    # Set once per test process (OpenTelemetry allows no second); every app here is built by create_app alike.
    trace.set_tracer_provider(Provider())
    assert type(trace.get_tracer_provider()).__name__ == "Provider"
    with TestClient(create_app(settings, db=db)) as client:  # built after the provider, as a server would be
        assert client.get("/confirm/1.not-a-real-secret").status_code == 404
        assert client.get("/api/v1/ping").status_code == 200
    assert spans == []
