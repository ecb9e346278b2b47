"""The scale-out topology as real processes: two app servers (no in-process mail sender), two `campaign outbox`
workers, one PostgreSQL, one Redis, and an SMTP sink. Signers sign through either server, confirm through the
other; every mail arrives exactly once (counted by Message-ID at the sink); the rate limit is one limit across
both servers."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from app.models import OutboxMessage, Signature
from app.settings import ROOT
from tests.servers import AppProcess, server_env
from tests.support import SIGNER, body, link_in

pytestmark = pytest.mark.postgres
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of its own: emptied before and after


def redis_reason() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return None
    except OSError as exc:
        return f"Redis not reachable at 127.0.0.1:6379 ({exc})"


@pytest.fixture
def redis_db():
    reason = redis_reason()
    if reason:
        pytest.skip(reason)
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sign(server: AppProcess, *, email: str, client_ip: str) -> httpx.Response:
    # The servers trust X-Forwarded-For from loopback (their proxy): each signer is its own client.
    return httpx.post(f"{server.url}/api/v1/campaigns/mamay/signatures", json={**SIGNER, "email": email,
                      "consent": True}, headers={"X-Forwarded-For": client_ip}, timeout=10)


def test_two_servers_two_senders_postgres_redis(tmp_path, pg_url, redis_db, smtp):
    env = server_env(var_dir=tmp_path / "var", database_url=pg_url, smtp_url=smtp.url,
                     sign_rate_limit="5/minute", redis_url=redis_db, outbox_poll_seconds="0.2")
    servers = [AppProcess(env), AppProcess(env)]
    senders: list[subprocess.Popen] = []
    try:
        for server in servers:
            server.start()
        for _ in range(2):
            senders.append(subprocess.Popen([sys.executable, "-m", "app.cli", "outbox"], env=env, cwd=ROOT,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        signers = [f"scale{i}@example.org" for i in range(24)]
        for i, email in enumerate(signers):
            assert sign(servers[i % 2], email=email, client_ip=f"192.0.2.{i + 1}").status_code == 202
        wait_for(lambda: len(smtp.sink.messages) >= len(signers), timeout=20, what="the confirmation mails")

        # Confirm a third of them, opening the link on one server and pressing the button on the other.
        to_confirm = signers[::3]
        with httpx.Client(timeout=10) as browser:
            for i, email in enumerate(to_confirm):
                [mail] = smtp.sink.to(email)
                link = link_in(body(mail), "/confirm/")
                page = browser.get(f"{servers[i % 2].url}{link}")
                token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
                done = browser.post(f"{servers[(i + 1) % 2].url}{link}", data={"csrf_token": token, "lang": "en"})
                assert done.status_code in (200, 303)
        expected = len(signers) + len(to_confirm)  # a confirmation mail each, a thank-you mail per confirmation
        wait_for(lambda: len(smtp.sink.messages) >= expected, timeout=20, what="the thank-you mails")
        time.sleep(1)  # anything sent twice would arrive now

        ids = [r.message["Message-ID"] for r in smtp.sink.messages]
        assert len(ids) == expected and len(set(ids)) == expected, "a mail was sent twice or lost"
        assert all(len(smtp.sink.to(email)) == 1 + (email in to_confirm) for email in signers)
        engine = create_engine(pg_url)
        try:
            with engine.connect() as conn:
                assert conn.scalar(select(func.count()).select_from(Signature)) == len(signers)
                assert conn.scalar(select(func.count()).where(Signature.status == "confirmed")) == len(to_confirm)
                states = dict(conn.execute(text("SELECT state, count(*) FROM outbox GROUP BY state")).all())
                assert states == {"sent": expected}
                assert conn.scalar(select(func.count()).select_from(OutboxMessage)) == expected
        finally:
            engine.dispose()
        # Every server publishes the same figures for a period (the exact count is the rows', checked above); a
        # second try covers the rare run that crosses a boundary between the two answers.
        for _ in range(2):
            answers = {httpx.get(f"{server.url}/api/v1/campaigns/mamay/stats", timeout=10).content
                       for server in servers}
            if len(answers) == 1:
                break
        assert len(answers) == 1, answers

        # One client, 5 per minute, spread over both servers: the sixth is refused wherever it lands.
        answers = [sign(servers[i % 2], email=f"limit{i}@example.org", client_ip="198.51.100.7") for i in range(6)]
        assert [a.status_code for a in answers] == [202] * 5 + [429]
        assert int(answers[-1].headers["Retry-After"]) > 0
    finally:
        for sender in senders:
            sender.terminate()
        for sender in senders:
            try:
                sender.wait(10)
            except subprocess.TimeoutExpired:
                sender.kill()
        for server in servers:
            server.stop()
