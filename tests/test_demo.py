"""Demo data: realistic, sealed like real signatures, and counted exactly (recount == stored counter)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from typer.testing import CliRunner

from app import addresses, counters, demo, signing
from app.cli import app as cli
from app.db import Database, utcnow
from app.models import CONFIRMED, PENDING, Notice, Signature, SignatureCount
from tests.support import TEST_DATA_KEY, TEST_SECRET


def check_filled(svc, db: Database, *, rows: int, confirmed: int, share: float, days: int, now) -> list[Signature]:
    """Everything a fill promises, read back through the models."""
    with db.read() as s:
        found = s.scalars(select(Signature).order_by(Signature.id)).all()
        assert len(found) == rows
        assert counters.recount(s, "mamay") == confirmed == s.scalar(select(func.sum(SignatureCount.confirmed)))
        assert counters.publishable(s, svc.campaigns["mamay"], k=5).confirmed == confirmed // 5 * 5
    assert share - 0.05 < confirmed / rows < share + 0.05
    names = {svc.keyring.open(r.name_enc, "name", r.key_id) for r in found}
    emails = [svc.keyring.open(r.email_enc, "email", r.key_id) for r in found]
    assert len(set(emails)) == rows and all(e.endswith("@example.org") for e in emails)
    assert any(any("\u0400" <= ch <= "\u04ff" for ch in n) for n in names)  # Cyrillic
    assert any(any(ch in "әғқңөұүһі" for ch in n.lower()) for n in names)  # Kazakh letters
    assert any(n.isascii() for n in names)  # Latin
    assert len({r.country for r in found}) >= 10 and {r.language for r in found} == {"en", "ru", "kk"}
    cities = [svc.keyring.open(r.city_enc, "city", r.key_id) for r in found if r.city_enc is not None]
    messages = [svc.keyring.open(r.message_enc, "message", r.key_id) for r in found if r.message_enc is not None]
    assert 0.75 < len(cities) / rows < 0.95 and 0.1 < len(messages) / rows < 0.3
    assert 0.05 < sum(r.discreet for r in found) / rows < 0.15
    days_seen = {r.created_at.date() for r in found}
    assert len(days_seen) >= min(days, 10) and min(r.created_at for r in found) >= now - timedelta(days=days, seconds=1)
    for r in found:
        assert (r.status == CONFIRMED) == (r.confirmed_at is not None) == (r.manage_token_hash is not None)
        assert (r.status == PENDING) == (r.confirm_code_hash is not None)
        assert r.confirmed_at is None or r.created_at <= r.confirmed_at <= now
        assert r.confirm_expires_at == r.created_at + timedelta(days=7)
        assert len(r.email_key) == len(r.confirm_token_hash) == 32 and r.code_attempts == 0 and r.erased_at is None
    for r, email in list(zip(found, emails, strict=True))[:50]:  # the dedupe key is the real one
        assert r.email_key == svc.keyring.email_key(addresses.normalise_email(email))
    return found


def test_demo_signers_are_sealed_varied_and_counted_exactly(svc):
    now = utcnow()
    filled = demo.fill(svc.db, campaign="mamay", count=3000, keyring=svc.keyring, now=now, confirmed_share=0.7,
                       days=20, chunk=700, processes=2, seed=7)
    assert filled.rows == 3000
    check_filled(svc, svc.db, rows=3000, confirmed=filled.confirmed, share=0.7, days=20, now=now)


def test_every_index_grows_in_order_so_a_big_load_appends(svc):
    """Rows go in by email_key; each partition takes its own slice of the token hashes and of the signing times,
    so over the whole load every index of `signatures` grows at its end instead of at random places."""
    now = utcnow()
    demo.fill(svc.db, campaign="mamay", count=4000, keyring=svc.keyring, now=now, chunk=500, processes=1, seed=11)
    with svc.db.read() as s:
        rows = s.execute(select(Signature.email_key, Signature.confirm_token_hash, Signature.manage_token_hash,
                                Signature.created_at).order_by(Signature.id)).all()
    keys = [r.email_key for r in rows]
    assert keys == sorted(keys)
    created = [r.created_at for r in rows]
    assert created == sorted(created)
    for column in (1, 2):  # ascending by their first two bytes (the rest is random)
        prefixes = [r[column][:2] for r in rows if r[column] is not None]
        assert prefixes == sorted(prefixes) and len(set(prefixes)) > 1000


def test_one_process_and_many_make_the_same_kind_of_rows_and_a_second_load_adds_up(svc):
    now = utcnow()
    first = demo.fill(svc.db, campaign="mamay", count=1200, keyring=svc.keyring, now=now, confirmed_share=0.5,
                      chunk=400, processes=1, seed=1)
    second = demo.fill(svc.db, campaign="mamay", count=1800, keyring=svc.keyring, now=now, confirmed_share=0.5,
                       chunk=400, processes=3, seed=1)  # same seed: another run tag, so other addresses
    check_filled(svc, svc.db, rows=3000, confirmed=first.confirmed + second.confirmed, share=0.5, days=30, now=now)


def test_loading_leaves_no_setting_behind_on_pooled_connections(svc):
    demo.fill(svc.db, campaign="mamay", count=100, keyring=svc.keyring, now=utcnow(), processes=1, seed=5)
    with svc.db.write.begin() as s:  # what the next user of the pool gets
        assert s.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL, as every connection is opened
        assert [row[1] for row in s.execute(text("PRAGMA database_list"))] == ["main"]
        assert s.execute(text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'signatures'")).scalar() > 0  # ANALYZE


def test_a_demo_signer_signing_again_is_recognised_as_the_same_signer(svc):
    demo.fill(svc.db, campaign="mamay", count=50, keyring=svc.keyring, now=utcnow(), processes=1, seed=3)
    with svc.db.read() as s:
        row = s.scalars(select(Signature).order_by(Signature.id)).first()
    email = svc.keyring.open(row.email_enc, "email", row.key_id)
    data = signing.validate({"name": "Again", "email": email.upper(), "country": "KZ", "consent": "on"})
    with svc.db.write.begin() as s:
        signed = signing.sign(s, campaign=svc.campaigns["mamay"], data=data, keyring=svc.keyring,
                              settings=svc.settings, now=utcnow())
    assert not signed.created
    with svc.db.read() as s:  # its notice names the demo row
        assert s.scalar(select(Notice.email_keys)) == row.email_key


@pytest.mark.postgres
def test_demo_data_on_postgresql(pg_svc):
    svc, db = pg_svc, pg_svc.db
    now = utcnow()
    filled = demo.fill(db, campaign="mamay", count=2000, keyring=svc.keyring, now=now, confirmed_share=0.8,
                       days=20, chunk=600, processes=2, seed=9)
    found = check_filled(svc, db, rows=2000, confirmed=filled.confirmed, share=0.8, days=20, now=now)
    assert [r.email_key for r in found] == sorted(r.email_key for r in found)


def test_demo_data_command_fills_the_campaign(settings):
    env = {"CAMPAIGN_DATABASE_URL": settings.database_url, "CAMPAIGN_VAR_DIR": str(settings.var_dir),
           "CAMPAIGN_DATA_KEY": TEST_DATA_KEY, "CAMPAIGN_SECRET_KEY": TEST_SECRET, "CAMPAIGN_ENV": "test"}
    result = CliRunner().invoke(cli, ["demo-data", "mamay", "--count", "400", "--confirmed-share", "1"], env=env)
    assert result.exit_code == 0, result.output
    stats = CliRunner().invoke(cli, ["stats", "mamay", "--exact"], env=env)
    assert '"confirmed": 400' in stats.output and '"recount": 400' in stats.output

    unknown = CliRunner().invoke(cli, ["demo-data", "nope", "--count", "1"], env=env)
    assert unknown.exit_code == 2


def test_demo_data_is_refused_on_a_production_database(settings):
    env = {"CAMPAIGN_DATABASE_URL": settings.database_url, "CAMPAIGN_VAR_DIR": str(settings.var_dir),
           "CAMPAIGN_DATA_KEY": TEST_DATA_KEY, "CAMPAIGN_SECRET_KEY": TEST_SECRET, "CAMPAIGN_ENV": "production",
           "CAMPAIGN_BASE_URL": "https://campaign.example.org", "CAMPAIGN_MAIL_FROM": "letters@mamay-campaign.org"}
    result = CliRunner().invoke(cli, ["demo-data", "mamay", "--count", "10"], env=env)
    assert result.exit_code == 2 and "refused" in result.output
