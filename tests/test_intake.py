"""Group commit on the sign path: many signatures per transaction, each answered only after its commit,
one bad item never sinks its batch, and the API still stores exactly what it acknowledged."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import date

import pytest
from sqlalchemy import func, select

from app import signing
from app.intake import Committer, Intake, ThreadIntake, WriterGone
from app.intake_process import WRITER_NICENESS, ProcessIntake
from app.models import Notice, OutboxMessage, Signature
from tests.support import SIGNER, count


def signer(i: int, **changes: object) -> signing.SignatureIn:
    return signing.validate({**SIGNER, "email": f"intake{i}@example.org", "consent": "on", **changes})


def process_intake(svc, **settings: object) -> ProcessIntake:
    """An intake whose batches are signed by a writer process, as under `campaign serve`."""
    return ProcessIntake(svc.settings.model_copy(update=settings))


@pytest.fixture(params=["thread", "process"])
def intake(svc, request) -> Intake:
    """The writer as a thread of this process, and as the child process `campaign serve` uses."""
    if request.param == "process":
        return process_intake(svc)
    return ThreadIntake(Committer(svc.db, keyring=svc.keyring, settings=svc.settings))


def run(intake: Intake, scenario: Callable[[], Awaitable[None]]) -> None:
    """As the app's lifespan does: start the intake on an event loop, sign there, then stop it."""
    async def main() -> None:
        intake.start()
        try:
            await scenario()
        finally:
            intake.stop()

    asyncio.run(main())


def sign(intake: Intake, campaign, data: signing.SignatureIn) -> asyncio.Task[signing.Signed]:
    """A request's signature, handed over on the loop's next turn (in call order)."""
    return asyncio.create_task(intake.sign(campaign, data))


async def answer(task: asyncio.Task[signing.Signed], timeout: float = 10) -> signing.Signed:
    return await asyncio.wait_for(asyncio.shield(task), timeout)


def hold_write_lock(svc):
    """Another connection holds SQLite's write lock, as a slow writer would (BEGIN IMMEDIATE in db.py)."""
    conn = svc.db.engine.connect()
    conn.begin()
    return conn


def test_no_answer_before_commit_and_the_row_is_there_when_it_comes(svc, intake):
    async def scenario() -> None:
        blocker = hold_write_lock(svc)
        try:
            task = sign(intake, svc.campaigns["mamay"], signer(1))
            await asyncio.sleep(0.3)
            assert not task.done(), "answered while the transaction could not yet commit"
        finally:
            blocker.rollback()
            blocker.close()
        signed = await answer(task)
        assert signed.created
        with svc.db.read() as s:  # durable and visible to any other connection
            assert s.get(Signature, signed.signature_id) is not None
        assert count(svc, Notice) == 1  # its mail is made from this, off the sign path (notices.py)

    run(intake, scenario)


def test_signatures_waiting_on_the_lock_are_committed_together_in_one_batch(svc, intake):
    n = intake.batch_size + 24

    async def scenario() -> None:
        blocker = hold_write_lock(svc)
        try:
            # The writer takes the first and waits for the lock with it; the rest queue up meanwhile.
            first = sign(intake, svc.campaigns["mamay"], signer(0))
            await asyncio.sleep(0.2)
            tasks = [first, *(sign(intake, svc.campaigns["mamay"], signer(i)) for i in range(1, n))]
            await asyncio.sleep(0.2)
        finally:
            blocker.rollback()
            blocker.close()
        ids = {(await answer(t)).signature_id for t in tasks}
        assert len(ids) == n

    run(intake, scenario)
    assert count(svc) == n and count(svc, Notice) == n
    # The first went alone; the rest filled whole batches.
    assert intake.totals.largest_batch == intake.batch_size
    assert intake.totals.batches == 1 + math.ceil((n - 1) / intake.batch_size)


def test_a_refused_item_does_not_sink_the_rest_of_its_batch(svc, intake):
    mamay = svc.campaigns["mamay"]
    closed = mamay.model_copy(update={"opens_on": date(2000, 1, 1), "closes_on": date(2000, 12, 31)})

    async def scenario() -> None:
        blocker = hold_write_lock(svc)
        try:
            before = sign(intake, mamay, signer(1))
            refused = sign(intake, closed, signer(2))
            after = sign(intake, mamay, signer(3))
            await asyncio.sleep(0.2)
        finally:
            blocker.rollback()
            blocker.close()
        assert (await answer(before)).created and (await answer(after)).created
        with pytest.raises(signing.CampaignClosed):
            await answer(refused)

    run(intake, scenario)
    assert count(svc) == 2 and count(svc, Notice) == 2


def test_the_same_signer_twice_in_one_batch_is_one_row_and_two_notices(svc, intake):
    async def scenario() -> None:
        blocker = hold_write_lock(svc)
        try:
            first = sign(intake, svc.campaigns["mamay"], signer(7))
            again = sign(intake, svc.campaigns["mamay"], signer(7, email="INTAKE7+x@example.org"))
            await asyncio.sleep(0.2)
        finally:
            blocker.rollback()
            blocker.close()
        a, b = await answer(first), await answer(again)
        assert a.created and not b.created and b.signature_id is None  # the repeat's row is not even looked up

    run(intake, scenario)
    assert count(svc) == 1 and count(svc, Notice) == 2 and count(svc, OutboxMessage) == 0  # the same work for both


def test_repeat_signers_in_a_batch_of_new_ones_get_their_own_answer_and_notice(svc, intake):
    answers: list[signing.Signed] = []

    async def scenario() -> None:
        answers.append(await answer(sign(intake, svc.campaigns["mamay"], signer(1))))
        blocker = hold_write_lock(svc)
        try:
            mixed = [signer(1), signer(2), signer(1, email="Intake1+again@example.org"), signer(3), signer(2)]
            tasks = [sign(intake, svc.campaigns["mamay"], data) for data in mixed]
            await asyncio.sleep(0.2)
        finally:
            blocker.rollback()
            blocker.close()
        answers.extend([await answer(t) for t in tasks])

    run(intake, scenario)
    earlier, *answers = answers
    assert [a.created for a in answers] == [False, True, False, True, False]
    assert [a.signature_id is None for a in answers] == [True, False, True, False, True]
    with svc.db.read() as s:
        waiting = s.scalars(select(Notice.email_keys).order_by(Notice.id)).all()
    assert count(svc) == 3 and count(svc, OutboxMessage) == 0
    # Every signature is a notice, new or repeat (answered later by mail to the stored address), in request order.
    key = svc.keyring.email_keys
    assert waiting == [key(f"intake{i}@example.org")[0] for i in (1, 1, 2, 1, 3, 2)]


def test_stop_commits_and_answers_everything_already_queued(svc, intake):
    async def scenario() -> None:
        tasks = [sign(intake, svc.campaigns["mamay"], signer(i)) for i in range(25)]
        await asyncio.sleep(0)  # handed over (the process writer sends them at the end of this turn)
        intake.stop()
        await asyncio.sleep(0)  # each request wakes up with its answer
        assert all(t.done() and t.exception() is None for t in tasks)

    run(intake, scenario)
    assert count(svc) == 25 and not intake.running


def test_a_writer_process_that_dies_fails_what_it_held_and_the_next_signature_gets_a_new_one(svc):
    intake = process_intake(svc)

    async def scenario() -> None:
        assert (await answer(sign(intake, svc.campaigns["mamay"], signer(1)))).created
        child = intake.writer
        # It yields the CPU to the server's event loop when cores are short.
        assert os.getpriority(os.PRIO_PROCESS, child.process.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0)
                                                                         + WRITER_NICENESS)
        blocker = hold_write_lock(svc)  # the child waits on the lock with the next signature
        try:
            held = sign(intake, svc.campaigns["mamay"], signer(2))
            await asyncio.sleep(0.3)
            os.kill(child.process.pid, signal.SIGKILL)
            with pytest.raises(WriterGone):
                await answer(held)  # never acknowledged
        finally:
            blocker.rollback()
            blocker.close()
        again = await answer(sign(intake, svc.campaigns["mamay"], signer(3)), timeout=30)
        assert again.created and intake.writer is not child

    run(intake, scenario)
    assert count(svc) == 2  # the one that died with the child was never committed


def test_api_under_concurrent_load_stores_exactly_the_signatures_it_accepted(client, svc):
    def post(i: int) -> int:
        payload = {**SIGNER, "email": f"load{i}@example.org", "consent": True}
        return client.post("/api/v1/campaigns/mamay/signatures", json=payload).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, range(120)))
    assert codes.count(202) == 120
    assert count(svc) == 120 and count(svc, Notice) == 120
    with svc.db.read() as s:
        assert s.scalar(select(func.count(func.distinct(Signature.email_key)))) == 120


def test_ping_touches_nothing_and_answers(client):
    assert client.get("/api/v1/ping").json() == {"status": "ok"}


def test_batch_written_moments_read_back_exactly_and_are_stored_as_sqlalchemy_stores_them(svc):
    from datetime import timedelta

    from sqlalchemy import text
    from sqlalchemy.dialects import sqlite

    from app.db import utcnow

    now = utcnow().replace(microsecond=7)
    with svc.db.write.begin() as s:
        [signed] = signing.sign_many(s, [(svc.campaigns["mamay"], signer(1))], keyring=svc.keyring,
                                     settings=svc.settings, now=now)
    with svc.db.read() as s:
        row = s.get(Signature, signed.signature_id)
        notice = s.scalars(select(Notice)).one()
        stored = s.scalar(text("SELECT created_at FROM signatures"))
    assert row.created_at == now and notice.created_at == now
    assert row.confirm_expires_at == now + timedelta(days=svc.settings.confirm_token_days)
    as_sqlalchemy = sqlite.DATETIME().bind_processor(sqlite.dialect())(now.replace(tzinfo=None))
    assert stored == as_sqlalchemy  # so ORM queries compare and sort them like any other row's


def test_a_served_app_moves_the_log_into_the_database_itself_so_no_commit_waits_for_it(settings, db, tmp_path):
    import shutil
    import sqlite3

    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from app.main import create_app

    def autocheckpoint() -> int:
        with db.write.begin() as s:
            return s.execute(text("PRAGMA wal_autocheckpoint")).scalar()

    def rows_in_database_file_alone() -> int:
        copy = tmp_path / "file-alone.db"  # the main file without its -wal: only what was checkpointed
        shutil.copy(db.engine.url.database, copy)
        with sqlite3.connect(copy) as conn:
            return conn.execute("SELECT count(*) FROM signatures").fetchone()[0]

    with TestClient(create_app(settings, db=db)) as client:
        assert autocheckpoint() == 0  # commits only append to the log
        for i in range(30):
            answer = client.post("/api/v1/campaigns/mamay/signatures",
                                 json={**SIGNER, "email": f"wal{i}@example.org", "consent": True})
            assert answer.status_code == 202
        deadline = time.monotonic() + 10
        while rows_in_database_file_alone() < 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rows_in_database_file_alone() == 30
    assert autocheckpoint() == 1000  # stopped serving: SQLite's own checkpoints again


def test_a_writer_process_that_cannot_start_is_an_error_and_signing_works_once_it_can(svc):
    """A child that dies starting up (here: a data key it cannot read) is reported, not waited on for ever."""
    intake = process_intake(svc, data_key="not-a-key")

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(WriterGone, match="did not start"):
            intake.start()
        with pytest.raises(WriterGone, match="did not start"):  # and each signature tries again
            await intake.sign(svc.campaigns["mamay"], signer(1))
        assert time.monotonic() - started < 60 and not intake.running
        intake.settings = process_intake(svc).settings
        try:
            assert (await answer(sign(intake, svc.campaigns["mamay"], signer(1)), timeout=30)).created
        finally:
            intake.stop()

    asyncio.run(scenario())
    assert count(svc) == 1


def test_sign_on_another_event_loop_than_the_one_that_started_the_intake_or_after_stop_is_refused(svc, intake):
    """Its answers are settled on the loop that started it: a request on another would never hear back."""
    async def elsewhere() -> None:
        await intake.sign(svc.campaigns["mamay"], signer(1))

    async def scenario() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="did not start it"):
            await asyncio.wrap_future(pool.submit(asyncio.run, elsewhere()))

    run(intake, scenario)
    with pytest.raises(RuntimeError, match="after stop"):  # nor does a stopped intake start a writer again
        asyncio.run(elsewhere())
    assert count(svc) == 0 and not intake.running
