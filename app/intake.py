"""Sign intake: one writer per server process commits many signatures per transaction (group commit).

Request handlers hand over (campaign, validated data) with `await intake.sign(...)`, on the event loop that
started the intake; the writer takes up to `batch_size` waiting items and signs them together
(`signing.sign_many`; if that fails, again with each item in its own SAVEPOINT, so one bad item never sinks the
batch) in one transaction, and only after the commit are the requests answered. So a request is never answered
before its signature and its notice (notices.py turns it into mail) are durable, and the database sees one write
transaction where it would have seen hundreds competing for the lock.

Where the batches are signed (`CAMPAIGN_SIGN_WRITER`, chosen in state.py):
- "process" (`campaign serve`): `intake_process.ProcessIntake`, in a child process. In a thread of the server,
  sealing, the mail and the SQL of a batch held the interpreter lock as long as the request handling did, and each
  side waited for the other: one event loop took half the requests (bench/sign.py).
- "thread": `ThreadIntake` below, a thread of this process signs the batches itself (in-process tests, where a
  child per test would cost a second each; embedding without a child).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app import signing
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.encryption import Keyring
from app.settings import Settings

log = logging.getLogger(__name__)


Outcome = signing.Signed | Exception


@dataclass(frozen=True)
class Item:
    """One signature waiting for its batch, and the future its request awaits (on the intake's loop)."""

    campaign: Campaign
    data: signing.SignatureIn
    future: asyncio.Future[signing.Signed]


@dataclass
class Totals:
    """What the writer has done since it started (for benchmarks and tests)."""

    batches: int = 0
    signed: int = 0
    failed: int = 0
    largest_batch: int = 0


class WriterGone(RuntimeError):
    """The writer process ended before it answered: the signature was never acknowledged."""


class Committer:
    """Signs one batch in one transaction: the work both kinds of writer do."""

    def __init__(self, db: Database, *, keyring: Keyring, settings: Settings) -> None:
        self.db, self.keyring, self.settings = db, keyring, settings

    def write(self, batch: Sequence[tuple[Campaign, signing.SignatureIn]]) -> tuple[list[Outcome], bool]:
        """The outcome of each item, in order, and whether the transaction committed (with every Signed)."""
        try:
            try:
                # A database error is rare, so first try the batch without a savepoint per item; if anything
                # fails, nothing of it is kept and the batch runs again with each item isolated.
                return self._commit(batch, isolate=False), True
            except Exception:
                return self._commit(batch, isolate=True), True
        except Exception as exc:  # the transaction itself failed: nothing of this batch is durable
            log.exception("sign intake: batch of %d not committed", len(batch))
            return [exc] * len(batch), False

    def _commit(self, batch: Sequence[tuple[Campaign, signing.SignatureIn]], *, isolate: bool) -> list[Outcome]:
        """One transaction for every item; with `isolate`, each in its own SAVEPOINT so a failure (rolled back
        to its savepoint) leaves the others in place."""
        with self.db.write.begin() as session:
            if not isolate:
                return self._sign(session, batch)
            outcomes: list[Outcome] = []
            for item in batch:
                try:
                    with session.begin_nested():
                        outcomes.append(self._sign(session, [item])[0])
                except Exception as exc:
                    outcomes.append(exc)
            return outcomes

    def _sign(self, session, batch: Sequence[tuple[Campaign, signing.SignatureIn]]) -> list[Outcome]:
        return signing.sign_many(session, batch, keyring=self.keyring, settings=self.settings, now=utcnow())


class Writer(Protocol):
    """One running writer (a thread, a child process), started on the intake's event loop."""

    @property
    def alive(self) -> bool: ...

    def put(self, item: Item) -> None: ...

    def stop(self, timeout: float) -> None: ...


class Intake:
    """The way in to the writer: `await sign(...)`, on the event loop that started it; answered after commit.
    A subclass says what kind of writer signs the batches (`_new_writer`)."""

    def __init__(self, *, batch_size: int = 128) -> None:
        self.batch_size = batch_size
        self.totals = Totals()
        self.writer: Writer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _new_writer(self) -> Writer:
        raise NotImplementedError

    def start(self) -> None:
        """Start the writer, from the running event loop that will sign and be answered (the app's lifespan)."""
        self._start()

    def _start(self) -> Writer:
        self.loop = asyncio.get_running_loop()
        writer = self.writer = self._new_writer()
        return writer

    def stop(self, timeout: float = 30) -> None:
        """Finish (commit and answer) every item already handed over, then end the writer. Called on the
        intake's loop (or after it closed)."""
        writer, self.writer, self.loop = self.writer, None, None
        if writer is not None:
            writer.stop(timeout)

    @property
    def running(self) -> bool:
        return self.writer is not None and self.writer.alive

    async def sign(self, campaign: Campaign, data: signing.SignatureIn) -> signing.Signed:
        """Sign from a request handler; returns after the signature is committed, raises what signing raised."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # its answers are settled on the loop that started it, and only there
            raise RuntimeError("sign intake: sign() on an event loop that did not start it (or after stop)")
        writer = self.writer
        if writer is None or not writer.alive:  # its writer died (having failed what it held), or did not start
            # Starting another holds up the event loop for the child's start-up, about a second: a crash path,
            # logged as an error. If it cannot start, this signature fails with WriterGone; the next tries again.
            log.error("sign intake: no writer running; starting another")
            if writer is not None:
                self.writer = None
                writer.stop(30)
            writer = self._start()
        future: asyncio.Future[signing.Signed] = loop.create_future()
        writer.put(Item(campaign, data, future))
        return await future

    def settle(self, outcomes: list[tuple[Item, Outcome]], committed: bool) -> None:
        """Answer a batch, on the intake's loop."""
        signed = 0
        for item, outcome in outcomes:
            signed += isinstance(outcome, signing.Signed)
            if item.future.done():  # its request went away meanwhile
                continue
            if isinstance(outcome, Exception):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        totals = self.totals
        totals.signed += signed
        totals.failed += len(outcomes) - signed
        if committed:
            totals.batches += 1
            totals.largest_batch = max(totals.largest_batch, len(outcomes))


class ThreadIntake(Intake):
    """The batches are signed by a thread of this process (`CAMPAIGN_SIGN_WRITER=thread`)."""

    def __init__(self, committer: Committer, *, batch_size: int = 128) -> None:
        super().__init__(batch_size=batch_size)
        self.committer = committer

    def _new_writer(self) -> _ThreadWriter:
        return _ThreadWriter(self)


_STOP = object()


class _ThreadWriter:
    """A thread takes up to a batch of what is waiting, signs it, commits, then hands the answers to the loop."""

    def __init__(self, intake: ThreadIntake) -> None:
        self.intake, self.loop = intake, asyncio.get_running_loop()
        self.queue: queue.SimpleQueue[Item | object] = queue.SimpleQueue()
        self.answered: deque[tuple[list[tuple[Item, Outcome]], bool]] = deque()  # for the loop to settle
        self.thread = threading.Thread(target=self._run, name="sign-intake", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def put(self, item: Item) -> None:
        self.queue.put(item)

    def stop(self, timeout: float = 30) -> None:
        self.queue.put(_STOP)
        self.thread.join(timeout)
        self._settle()  # the loop is held up here: answer the last batches now rather than on its next turn

    def _settle(self) -> None:
        while self.answered:
            self.intake.settle(*self.answered.popleft())

    def _run(self) -> None:
        batch_size, waiting = self.intake.batch_size, self.queue
        stopping = False
        while not stopping:
            first = waiting.get()
            batch: list[Item] = []
            if first is _STOP:
                stopping = True
            else:
                batch.append(first)  # type: ignore[arg-type]
            # Take whatever else is already waiting, up to the batch size; never wait for more to arrive.
            while len(batch) < batch_size:
                try:
                    item = waiting.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    continue
                batch.append(item)  # type: ignore[arg-type]
            # A request that went away before its turn is dropped unanswered: it was never acknowledged.
            live = [item for item in batch if not item.future.cancelled()]
            if live:
                outcomes, committed = self.intake.committer.write([(item.campaign, item.data) for item in live])
                self.answered.append((list(zip(live, outcomes, strict=True)), committed))
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
                    self.loop.call_soon_threadsafe(self._settle)
