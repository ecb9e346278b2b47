"""Many requests at once against a real server (two worker processes, so two writers per database):

- 200 simultaneous signatures for one address make one row, 200 notices and one confirmation mail to the stored
  address, on SQLite and PostgreSQL;
- hundreds of different signers signing and confirming at once on SQLite, with the outbox sender running in both
  processes: no "database is locked" (or any 5xx) ever reaches a user, and the count is exact.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app import counters, notices
from app.db import utcnow
from app.models import Notice, OutboxMessage, Signature, SignatureCount
from app.security import CODE_ALPHABET
from app.state import Services
from tests.servers import AppProcess, record_figures, server_env
from tests.support import SIGNER, make_settings

CODE = re.compile(rf"\b([{CODE_ALPHABET}]{{8}})\b")
LIMITS = httpx.Limits(max_connections=250, max_keepalive_connections=250)


def same_address_variants(n: int) -> list[str]:
    """One mailbox written n ways: case, +tags; all normalise to same@example.org."""
    forms = ["same@example.org", "Same@Example.ORG", "same+{i}@example.org", "SAME+x{i}@EXAMPLE.org"]
    return [forms[i % len(forms)].format(i=i) for i in range(n)]


async def sign_all_at_once(url: str, emails: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=LIMITS) as client:
        start = asyncio.Event()

        async def one(email: str) -> int:
            await start.wait()
            answer = await client.post("/api/v1/campaigns/mamay/signatures",
                                       json={**SIGNER, "email": email, "consent": True})
            return answer.status_code

        tasks = [asyncio.create_task(one(e)) for e in emails]
        await asyncio.sleep(0.05)
        start.set()
        return await asyncio.gather(*tasks)


def two_hundred_same_address(tmp_path: Path, database_url: str, name: str) -> None:
    env = server_env(var_dir=tmp_path / "var", database_url=database_url)
    emails = same_address_variants(200)
    with AppProcess(env, workers=2) as server:
        statuses = asyncio.run(sign_all_at_once(server.url, emails))
        log = server.log_tail(20000)
    assert Counter(statuses) == {202: 200}, (Counter(statuses), log)
    svc = Services.build(make_settings(tmp_path, database_url))
    try:
        with svc.db.read() as session:
            rows = session.scalars(select(Signature)).all()
            kinds = Counter(session.scalars(select(OutboxMessage.kind)))
            waiting = session.scalar(select(func.count()).select_from(Notice))
        # The 200 notices are answered with one confirmation, and no reminder while its code is fresh.
        answered = [notices.answer_due(svc.db, campaigns=svc.campaigns, keyring=svc.keyring, composer=svc.composer,
                                       settings=svc.settings, now=utcnow() + timedelta(hours=hours))
                    for hours in (0, 2)]
        with svc.db.read() as session:
            after = Counter(session.scalars(select(OutboxMessage.kind)))
    finally:
        svc.db.dispose()
    assert len(rows) == 1
    assert rows[0].email_key == svc.keyring.email_key("same@example.org")
    assert kinds == {} and waiting == 200 and answered == [200, 0]  # a notice each, the same for all 200
    assert after == {"confirm": 1}  # one confirmation; no reminder while its code is under an hour old
    record_figures(name, requests=200, rows=len(rows), notices=waiting, confirm_mails=after["confirm"],
                   already_mails=after["already"])


def test_200_simultaneous_signatures_of_one_address_make_one_row_sqlite(tmp_path, sqlite_url):
    two_hundred_same_address(tmp_path, sqlite_url, "same-address-sqlite")


@pytest.mark.postgres
def test_200_simultaneous_signatures_of_one_address_make_one_row_postgres(tmp_path, pg_url):
    two_hundred_same_address(tmp_path, pg_url, "same-address-postgres")


# --- many writers on SQLite ------------------------------------------------------------------------------


class Signer:
    """One browser-like visitor: its own cookies (CSRF, then the sign ticket) and its own form token."""

    def __init__(self, url: str, email: str) -> None:
        self.email = email
        self.client = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=2))
        self.csrf = ""

    async def open_form(self) -> int:
        """The petition (the same bytes for everyone, no cookie), and a CSRF token and cookie from a page with a
        private form, for the code and confirmation forms later."""
        page = await self.client.get("/c/mamay?lang=en")
        private = await self.client.get("/erase?lang=en")
        self.csrf = re.search(r'name="csrf_token" value="([^"]+)"', private.text).group(1)
        return page.status_code if private.status_code == 200 else private.status_code

    async def sign(self) -> int:
        answer = await self.client.post("/c/mamay/sign", data={**SIGNER, "email": self.email},
                                        headers={"Origin": str(self.client.base_url).rstrip("/")})
        return answer.status_code

    async def type_code(self, code: str) -> int:
        answer = await self.client.post("/c/mamay/code", data={"code": code, "lang": "en",
                                                               "csrf_token": self.csrf})
        return answer.status_code

    async def confirm_link(self, path: str) -> int:
        answer = await self.client.post(path, data={"lang": "en", "csrf_token": self.csrf})
        return answer.status_code


async def gather_phase(calls) -> list[int]:
    start = asyncio.Event()

    async def run(call):
        await start.wait()
        try:
            return await call
        except httpx.HTTPError as exc:  # a dropped connection is a failure a user would see
            return f"{type(exc).__name__}: {exc}"

    tasks = [asyncio.create_task(run(c)) for c in calls]
    await asyncio.sleep(0.05)
    start.set()
    return await asyncio.gather(*tasks)


def wait_for_mail(smtp, emails: list[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(smtp.sink.to(e) for e in emails):
            break
        time.sleep(0.1)
    found = {}
    for e in emails:
        [mail] = smtp.sink.to(e)
        found[e] = mail.get_body(preferencelist=("plain",)).get_content()
    return found


def test_many_writers_on_sqlite_never_show_a_lock_error_and_the_count_is_exact(tmp_path, sqlite_url, smtp):
    env = server_env(var_dir=tmp_path / "var", database_url=sqlite_url, smtp_url=smtp.url,
                     outbox_in_process=1, outbox_poll_seconds=0.1)
    first = [f"first{i}@example.org" for i in range(100)]
    second = [f"second{i}@example.org" for i in range(100)]
    with AppProcess(env, workers=2) as server:

        async def scenario() -> tuple[list, list, list]:
            signers = {e: Signer(server.url, e) for e in first + second}
            try:
                opened = await gather_phase([s.open_form() for s in signers.values()])
                # Phase 1: 100 sign through the form at once.
                signed = await gather_phase([signers[e].sign() for e in first])
                mail_bodies = await asyncio.to_thread(wait_for_mail, smtp, first)
                # Phase 2: at once, 100 new signers sign while the first 100 confirm: half by typing the code,
                # half by the link, and 20 of the links pressed twice (two tabs); the outbox keeps sending.
                calls = [signers[e].sign() for e in second]
                for i, e in enumerate(first):
                    if i % 2:
                        calls.append(signers[e].type_code(CODE.search(mail_bodies[e]).group(1)))
                    else:
                        link = re.search(r"https?://[^/\s]+(/confirm/[^\s?]+)", mail_bodies[e]).group(1)
                        calls.append(signers[e].confirm_link(link))
                        if i % 10 == 0:
                            calls.append(signers[e].confirm_link(link))
                mixed = await gather_phase(calls)
                return opened, signed, mixed
            finally:
                await asyncio.gather(*(s.client.aclose() for s in signers.values()))

        opened, signed, mixed = asyncio.run(scenario())
        wait_for_mail_count(smtp, 100 + 100 + 100)  # confirmations for both waves, thank-you mails for the first
        log = server.log_tail(200000)

    statuses = Counter(opened + signed + mixed)
    # 200 for the 200 pages opened; 303 after every sign and every press of a link or code (a second press of a
    # confirmed link reopens the signer's page).
    assert set(statuses) <= {200, 303}, (statuses, log[-3000:])
    assert statuses[200] == 200
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]

    svc = Services.build(make_settings(tmp_path, sqlite_url))
    try:
        with svc.db.read() as session:
            stored = session.scalar(select(func.sum(SignatureCount.confirmed))) or 0
            recounted = counters.recount(session, "mamay")
            rows = session.scalar(select(func.count()).select_from(Signature))
            states = Counter(session.scalars(select(OutboxMessage.state)))
    finally:
        svc.db.dispose()
    assert rows == 200
    assert recounted == stored == 100
    message_ids = Counter(r.message["Message-ID"] for r in smtp.sink.messages)
    assert max(message_ids.values()) == 1, "two outbox senders delivered one mail twice"
    record_figures("many-writers-sqlite", requests=sum(statuses.values()), statuses=dict(statuses),
                   signatures=rows, confirmed=recounted, stored_counter=stored, outbox_states=dict(states),
                   mails_delivered=len(smtp.sink.messages))


def wait_for_mail_count(smtp, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(smtp.sink.messages) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(smtp.sink.messages) >= n, f"only {len(smtp.sink.messages)} of {n} mails arrived"
