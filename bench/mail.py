"""Mail: the outbox sending queued confirmation mails to a loopback aiosmtpd sink (its own process), against a
bare smtplib loop sending the same messages over one connection in the same run. Then two `campaign outbox`
worker processes drain one queue together, and the sink's count of Message-IDs shows every mail arrived once.

Goal (issue 6): outbox >= 0.7x the bare smtplib loop (connection reuse; N workers never send one mail twice).

    python -m bench.mail            BENCH_MAILS=3000
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from email.utils import make_msgid
from pathlib import Path

from sqlalchemy import func, select

from app import mail, outbox, smtp
from app.db import Database, utcnow
from app.models import OutboxMessage
from app.settings import load_settings
from app.state import Services
from bench import harness
from bench.harness import Report

MAILS = int(os.environ.get("BENCH_MAILS", "3000"))


class Sink:
    def __init__(self, folder: Path, name: str) -> None:
        self.port = harness.free_port()
        self.out = folder / f"sink-{name}.json"
        self.process = subprocess.Popen(
            [str(harness.BIN / "python"), "-m", "bench.smtpsink", "--port", str(self.port), "--out", str(self.out),
             "--seconds", "900"],
            cwd=harness.ROOT, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("SMTP sink did not start")

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> dict:
        self.process.terminate()
        self.process.wait(30)
        return json.loads(self.out.read_text())


def services(var_dir: Path, url: str, smtp_url: str) -> Services:
    settings = load_settings(
        env="development", var_dir=var_dir, database_url=url, data_key=harness.BENCH_DATA_KEY,
        secret_key=harness.BENCH_SECRET, smtp_url=smtp_url, outbox_in_process=False,
    )
    return Services.build(settings, db=Database(url))


def queue_mails(svc: Services, n: int) -> list[bytes]:
    """n confirmation mails queued as signing queues them (composed, sealed); returns their bytes."""
    campaign = svc.campaigns["mamay"]
    raw: list[bytes] = []
    now = utcnow()
    with svc.db.write.begin() as session:
        for i in range(n):
            msg = svc.composer.confirmation(campaign=campaign, lang=("en", "ru", "kk")[i % 3],
                                            to=f"mail{i}@example.org", token=f"t{i:040d}", code="ACDEFGHJ",
                                            discreet=False)
            outbox.enqueue(session, msg, kind="confirm", keyring=svc.keyring, now=now)
            stored = msg.raw if isinstance(msg, mail.Prepared) else msg.as_bytes(policy=mail.STORED)
            raw.append(stored.replace(b"\n", b"\r\n"))  # on the wire: CRLF
    return raw


def bare_smtplib(messages: list[bytes], smtp_port: int) -> float:
    """The floor: one connection, sendmail of ready bytes, nothing else (each with its own Message-ID)."""
    started = time.perf_counter()
    conn = smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)
    try:
        for i, body in enumerate(messages):
            stamped = f"Message-ID: {make_msgid(str(i), domain='bench')}\r\n".encode() + body
            conn.sendmail("campaign@localhost", [f"mail{i}@example.org"], stamped)
    finally:
        conn.quit()
    return len(messages) / (time.perf_counter() - started)


def outbox_in_process(svc: Services) -> tuple[float, int]:
    """The shipped sender loop (claim a batch, open, send over one reused connection, record each outcome)."""
    transport = smtp.transport(svc.settings)
    sent = 0
    started = time.perf_counter()
    try:
        while report := outbox.deliver_due(svc.db, keyring=svc.keyring, transport=transport,
                                           domain=mail.mail_domain(svc.settings)):
            sent += report.sent
            if not report.sent:
                break
    finally:
        transport.close()
    return sent / (time.perf_counter() - started), sent


def remaining(svc: Services) -> int:
    with svc.db.read() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.state != "sent"))


def main() -> Report:
    harness.header(f"outbox sending {MAILS:,} mails vs a bare smtplib loop")
    report = Report("mail")
    with harness.var_dir("mail") as var_dir:
        url = f"sqlite:///{var_dir / 'campaign.db'}"
        harness.campaign_cli("db", "upgrade", env=harness.app_env(var_dir, url))

        # 1. One sender against the bare loop, each with its own fresh sink, twice, alternating.
        bare_runs, outbox_runs = [], []
        for round_ in range(2):
            sink = Sink(var_dir, f"bare{round_}")
            svc = services(var_dir, url, sink.url)
            messages = queue_mails(svc, MAILS)
            bare_runs.append(bare_smtplib(messages, sink.port))
            bare_seen = sink.stop()
            sink = Sink(var_dir, f"outbox{round_}")
            svc.settings = svc.settings.model_copy(update={"smtp_url": sink.url})
            rate, sent = outbox_in_process(svc)
            outbox_runs.append(rate)
            seen = sink.stop()
            svc.db.dispose()
            print(f"  round {round_ + 1}: bare smtplib {bare_runs[-1]:,.0f} mails/s ({bare_seen['messages']} "
                  f"received); outbox {rate:,.0f} mails/s ({sent} sent, {seen['messages']} received, "
                  f"{seen['unique_ids']} distinct Message-IDs)", flush=True)
            if seen["messages"] != MAILS or seen["unique_ids"] != MAILS:
                report.check(f"round {round_ + 1}: every queued mail received once", seen, f"{MAILS} once", False)
        report.figure("outbox mails/s (one sender, connection reused)", max(outbox_runs), "mails/s",
                      max(bare_runs), "bare smtplib loop, one connection", goal=0.7)

        # 2. Two `campaign outbox` processes drain one queue: nothing sent twice, nothing left.
        sink = Sink(var_dir, "workers")
        svc = services(var_dir, url, sink.url)
        queue_mails(svc, MAILS)
        env = harness.app_env(var_dir, url, CAMPAIGN_SMTP_URL=sink.url, CAMPAIGN_OUTBOX_POLL_SECONDS="0.2")
        started = time.perf_counter()
        workers = [
            subprocess.Popen([str(harness.BIN / "python"), "-m", "app.cli", "outbox"], env=env, cwd=harness.ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for _ in range(2)
        ]
        try:
            deadline = time.monotonic() + 300
            while remaining(svc) and time.monotonic() < deadline:
                time.sleep(0.1)
            drained = time.perf_counter() - started
        finally:
            for worker in workers:
                harness.stop_process(worker)
        left = remaining(svc)
        svc.db.dispose()
        seen = sink.stop()
        report.check("two outbox worker processes: each mail received exactly once",
                     f"{seen['messages']} received, {seen['unique_ids']} distinct Message-IDs, "
                     f"{len(seen['duplicates'])} duplicated, {left} left unsent",
                     f"{MAILS} received, {MAILS} distinct, 0 duplicated, 0 left",
                     seen["messages"] == seen["unique_ids"] == MAILS and not seen["duplicates"] and left == 0)
        print(f"  two worker processes drained {MAILS:,} mails in {drained:.1f} s "
              f"({MAILS / drained:,.0f} mails/s, process start-up included)", flush=True)
        report.details.update(bare_runs=bare_runs, outbox_runs=outbox_runs, two_workers_seconds=round(drained, 2),
                              two_workers_sink=seen)
    report.write()
    return report


if __name__ == "__main__":
    main()
