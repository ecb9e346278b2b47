"""A real server is killed with SIGKILL in the middle of a sign load, then restarted on the same database.

Every signature that was answered 2xx must be there with exactly one confirmation mail queued (and delivered once
the outbox runs); nothing half-written: no signature without its mail, no mail without its signature, and the
SQLite file passes PRAGMA integrity_check. Run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from app import addresses, notices
from app.models import Notice, OutboxMessage, Signature
from app.state import Services
from tests.servers import AppProcess, record_figures, server_env, upgrade
from tests.support import SIGNER, answer_notices, deliver, make_settings

THREADS = 8
KILL_AFTER_ACKS = 120  # acknowledged signatures before the kill (or KILL_AFTER_SECONDS, whichever first)
KILL_AFTER_SECONDS = 4.0
AFTER_RESTART = "after-restart@example.org"


@dataclass
class Load:
    """Sign requests from several threads, each with a distinct address, and what became of each."""

    url: str
    prefix: str = "crash"
    attempted: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)  # answered, but not 2xx
    broken: list[str] = field(default_factory=list)  # connection died: no answer
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def worker(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stopping.is_set():
                email = f"{self.prefix}-{n}-{i}@example.org"
                i += 1
                with self.lock:
                    self.attempted.append(email)
                    self.in_flight += 1
                try:
                    answer = client.post("/api/v1/campaigns/mamay/signatures",
                                         json={**SIGNER, "email": email, "name": f"Crash {n} {i}", "consent": True})
                except httpx.HTTPError:
                    with self.lock:
                        self.broken.append(email)
                        self.in_flight -= 1
                    return  # the server is gone
                with self.lock:
                    self.in_flight -= 1
                    if 200 <= answer.status_code < 300:
                        self.acknowledged.append(email)
                    else:
                        self.refused.append((email, answer.status_code))


def run_and_kill(server: AppProcess, *, prefix: str = "crash", acks: int = KILL_AFTER_ACKS) -> tuple[Load, int]:
    load = Load(server.url, prefix)
    threads = [threading.Thread(target=load.worker, args=(n,), daemon=True) for n in range(THREADS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + KILL_AFTER_SECONDS
    while time.monotonic() < deadline and len(load.acknowledged) < acks:
        time.sleep(0.02)
    with load.lock:  # nobody records an answer while we count and kill
        in_flight = load.in_flight
        server.kill()
        load.stopping.set()
    for t in threads:
        t.join(35)
    return load, in_flight


def check_after_restart(svc: Services, load: Load, in_flight: int, smtp, name: str) -> None:
    with svc.db.read() as session:
        rows = session.scalars(select(Signature).where(Signature.campaign == "mamay")).all()
        found = {svc.keyring.open(r.email_enc, "email", r.key_id): r for r in rows}
        assert found.pop(AFTER_RESTART), "the signature taken after the restart is missing"
        waiting = session.scalars(select(Notice)).all()
        if svc.db.dialect == "sqlite":
            assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"

    # Every acknowledged signature survived, also findable by its keyed email hash.
    missing = [e for e in load.acknowledged if e not in found]
    assert not missing, f"{len(missing)} acknowledged signatures lost, e.g. {missing[:3]}"
    for email in load.acknowledged:
        assert found[email].email_key == svc.keyring.email_key(addresses.normalise_email(email))
    # Nothing appeared that nobody sent; extra rows can only be requests in flight when the server died.
    assert set(found) <= set(load.attempted)
    unacknowledged = set(found) - set(load.acknowledged)
    assert unacknowledged <= set(load.broken)
    assert not load.refused, f"refused under load: {load.refused[:5]}"

    # Nothing half-written: each signature has exactly one notice (its mail to be), each notice its signature.
    assert Counter(notices.keys_of(n)[0] for n in waiting) == {r.email_key: 1 for r in rows}
    assert answer_notices(svc) == len(rows)
    with svc.db.read() as session:
        mails = session.scalars(select(OutboxMessage)).all()
    assert sorted(m.signature_id for m in mails) == sorted(r.id for r in rows)
    assert all(m.kind == "confirm" and m.state == "queued" for m in mails)
    for m in mails:
        row = next(r for r in rows if r.id == m.signature_id)
        assert svc.keyring.open(m.recipient_enc, "recipient", m.key_id) == svc.keyring.open(
            row.email_enc, "email", row.key_id)

    # The queued mails really go out after the restart: one confirmation per acknowledged signer.
    report = deliver(svc, smtp.url)
    assert report.sent == len(rows) and not report.failed
    for email in [*load.acknowledged, AFTER_RESTART]:
        [mail] = smtp.sink.to(email)
        assert "/confirm/" in mail.get_body(preferencelist=("plain",)).get_content()
    message_ids = [r.message["Message-ID"] for r in smtp.sink.messages]
    assert len(message_ids) == len(set(message_ids)) == len(rows)

    record_figures(
        name, requests_attempted=len(load.attempted), in_flight_when_killed=in_flight,
        acknowledged=len(load.acknowledged), found=len(found), found_unacknowledged=len(unacknowledged),
        connections_broken=len(load.broken), mails_queued=len(mails), mails_delivered=report.sent,
        signed_after_restart=1,
    )


def crash_and_restart(tmp_path: Path, database_url: str, smtp, name: str) -> None:
    env = server_env(var_dir=tmp_path / "var", database_url=database_url)
    if database_url.startswith("sqlite"):
        upgrade(env)
    server = AppProcess(env).start()
    try:
        load, in_flight = run_and_kill(server)
        assert load.acknowledged, f"no signature acknowledged before the kill:\n{server.log_tail()}"
        assert in_flight > 0, "the kill should land while requests are in flight"
        server.start()  # same database, same port
        # The restarted service works: it takes a new signature.
        after = httpx.post(f"{server.url}/api/v1/campaigns/mamay/signatures",
                           json={**SIGNER, "email": AFTER_RESTART, "consent": True}, timeout=30)
        assert after.status_code == 202
    finally:
        server.stop()
    settings = make_settings(tmp_path, database_url)
    svc = Services.build(settings)
    try:
        check_after_restart(svc, load, in_flight, smtp, name)
    finally:
        svc.db.dispose()


def test_sigkill_mid_load_loses_no_acknowledged_signature_sqlite(tmp_path, smtp):
    crash_and_restart(tmp_path, f"sqlite:///{tmp_path / 'crash.db'}", smtp, "crash-sqlite")


@pytest.mark.postgres
def test_sigkill_mid_load_loses_no_acknowledged_signature_postgres(tmp_path, pg_url, smtp):
    crash_and_restart(tmp_path, pg_url, smtp, "crash-postgres")


# --- soak: many kills in a row (make soak) -----------------------------------------------------------------


def kill_again_and_again(tmp_path: Path, database_url: str, smtp, name: str, cycles: int) -> None:
    env = server_env(var_dir=tmp_path / "var", database_url=database_url)
    if database_url.startswith("sqlite"):
        upgrade(env)
    server = AppProcess(env).start()
    total, in_flight = Load(server.url), 0
    rng = random.Random(cycles)
    try:
        for cycle in range(cycles):
            load, flying = run_and_kill(server, prefix=f"c{cycle}", acks=rng.randint(5, 400))
            in_flight += flying
            for part in ("attempted", "acknowledged", "refused", "broken"):
                getattr(total, part).extend(getattr(load, part))
            server.start()
        after = httpx.post(f"{server.url}/api/v1/campaigns/mamay/signatures",
                           json={**SIGNER, "email": AFTER_RESTART, "consent": True}, timeout=30)
        assert after.status_code == 202
    finally:
        server.stop()
    svc = Services.build(make_settings(tmp_path, database_url))
    try:
        check_after_restart(svc, total, in_flight, smtp, name)
    finally:
        svc.db.dispose()


@pytest.mark.slow
def test_soak_twenty_kills_in_a_row_lose_nothing_sqlite(tmp_path, smtp):
    kill_again_and_again(tmp_path, f"sqlite:///{tmp_path / 'soak.db'}", smtp, "crash-soak-sqlite", 20)


@pytest.mark.slow
@pytest.mark.postgres
def test_soak_twenty_kills_in_a_row_lose_nothing_postgres(tmp_path, pg_url, smtp):
    kill_again_and_again(tmp_path, pg_url, smtp, "crash-soak-postgres", 20)


def test_a_writer_process_ends_with_its_server_even_when_the_server_is_killed_alone(tmp_path):
    """SIGKILL of the server process only (not its group): its sign writer sees the pipe close and exits, so no
    orphan holds the database, and a restarted server signs with a writer of its own."""
    import os
    import signal

    env = server_env(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'orphan.db'}")
    upgrade(env)
    server = AppProcess(env).start()
    try:
        first = httpx.post(f"{server.url}/api/v1/campaigns/mamay/signatures",
                           json={**SIGNER, "email": "orphan1@example.org", "consent": True}, timeout=30)
        assert first.status_code == 202
        children = [int(c) for task in Path(f"/proc/{server.proc.pid}/task").glob("*/children")
                    for c in task.read_text().split()]
        assert children, "the server has no writer process"
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in children):
            assert time.monotonic() < deadline, f"writer processes {children} outlived their server"
            time.sleep(0.1)
        server.start()
        again = httpx.post(f"{server.url}/api/v1/campaigns/mamay/signatures",
                           json={**SIGNER, "email": "orphan2@example.org", "consent": True}, timeout=30)
        assert again.status_code == 202
    finally:
        server.stop()
    svc = Services.build(make_settings(tmp_path, env["CAMPAIGN_DATABASE_URL"]))
    try:
        with svc.db.read() as session:
            assert session.scalar(select(text("count(*)")).select_from(Signature)) == 2
    finally:
        svc.db.dispose()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
