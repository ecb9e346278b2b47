"""Demo data: realistic, sealed like real signatures, and counted exactly (recount == stored counter)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from typer.testing import CliRunner

from app import demo, signing
from app.cli import app as cli
from app.db import utcnow
from app.models import CONFIRMED, Signature, SignatureCount
from tests.conftest import TEST_DATA_KEY, TEST_SECRET


def test_demo_signers_are_sealed_varied_and_counted_exactly(svc):
    now = utcnow()
    filled = demo.fill(svc.db, campaign="mamay", count=3000, keyring=svc.keyring, now=now, confirmed_share=0.7,
                       days=20, chunk=700, processes=2, seed=7)
    assert filled.rows == 3000
    with svc.db.read() as s:
        rows = s.scalars(select(Signature)).all()
        assert len(rows) == 3000
        assert signing.recount(s, "mamay") == filled.confirmed == s.scalar(select(func.sum(SignatureCount.confirmed)))
        assert signing.public_stats(s, svc.campaigns["mamay"], k=5).confirmed == filled.confirmed
    assert 0.65 < filled.confirmed / 3000 < 0.75
    names = {svc.keyring.open(r.name_enc, "name", r.key_id) for r in rows}
    emails = [svc.keyring.open(r.email_enc, "email", r.key_id) for r in rows]
    assert len(set(emails)) == 3000 and all(e.endswith("@example.org") for e in emails)
    assert any(any("\u0400" <= ch <= "\u04ff" for ch in n) for n in names)  # Cyrillic
    assert any(any(ch in "әғқңөұүһі" for ch in n.lower()) for n in names)  # Kazakh letters
    assert any(n.isascii() for n in names)  # Latin
    assert len({r.country for r in rows}) >= 10 and {r.language for r in rows} == {"en", "ru", "kk"}
    days = {r.created_at.date() for r in rows}
    assert len(days) >= 10 and min(r.created_at for r in rows) >= now - timedelta(days=20, seconds=1)
    for r in rows:
        assert (r.status == CONFIRMED) == (r.confirmed_at is not None)
        assert r.confirmed_at is None or r.created_at <= r.confirmed_at <= now
    for r, email in list(zip(rows, emails, strict=True))[:50]:  # the dedupe key is the real one
        assert r.email_key == svc.keyring.email_key(signing.normalise_email(email))


def test_a_demo_signer_signing_again_is_recognised_as_the_same_signer(svc):
    demo.fill(svc.db, campaign="mamay", count=50, keyring=svc.keyring, now=utcnow(), processes=1, seed=3)
    with svc.db.read() as s:
        row = s.scalars(select(Signature).order_by(Signature.id)).first()
    email = svc.keyring.open(row.email_enc, "email", row.key_id)
    data = signing.validate({"name": "Again", "email": email.upper(), "country": "KZ", "consent": "on"})
    with svc.db.write.begin() as s:
        signed = signing.sign(s, campaign=svc.campaigns["mamay"], data=data, keyring=svc.keyring,
                              composer=svc.composer, settings=svc.settings, now=utcnow())
    assert signed.signature_id == row.id and not signed.created


def test_demo_data_command_fills_the_campaign(settings):
    env = {"CAMPAIGN_DATABASE_URL": settings.database_url, "CAMPAIGN_VAR_DIR": str(settings.var_dir),
           "CAMPAIGN_DATA_KEY": TEST_DATA_KEY, "CAMPAIGN_SECRET_KEY": TEST_SECRET, "CAMPAIGN_ENV": "test"}
    result = CliRunner().invoke(cli, ["demo-data", "mamay", "--count", "400", "--confirmed-share", "1"], env=env)
    assert result.exit_code == 0, result.output
    stats = CliRunner().invoke(cli, ["stats", "mamay", "--exact"], env=env)
    assert '"confirmed": 400' in stats.output and '"recount": 400' in stats.output

    unknown = CliRunner().invoke(cli, ["demo-data", "nope", "--count", "1"], env=env)
    assert unknown.exit_code == 2
