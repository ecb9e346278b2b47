"""Sign intake: one writer per server process commits many signatures per transaction (group commit).

Request handlers hand over (campaign, validated data) and await a future; the writer takes up to `batch_size`
waiting items and signs them together (`signing.sign_many`; if that fails, again with each item in its own
SAVEPOINT, so one bad item never sinks the batch) in one transaction, and only after the commit are the futures
resolved. So a request is never answered before its signature and mail are durable, and the database sees one
write transaction where it would have seen hundreds competing for the lock.

Where the batches are signed (`CAMPAIGN_SIGN_WRITER`):
- "process" (`campaign serve`): in a child process, `intake_process.py`. In a thread of the server, sealing, the
  mail and the SQL of a batch held the interpreter lock as long as the request handling did, and each side waited
  for the other: one event loop took half the requests (bench/sign.py).
- "thread": a thread of this process takes the batches and signs them itself (tests that inject a clock;
  embedding without a child).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from app import mail, signing
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.encryption import Keyring
from app.settings import Settings

log = logging.getLogger(__name__)


Outcome = signing.Signed | Exception


@dataclass(frozen=True)
class Item:
    """One signature waiting for its batch, and the future its request awaits."""

    campaign: Campaign
    data: signing.SignatureIn
    future: Future[signing.Signed] | asyncio.Future[signing.Signed]
    loop: asyncio.AbstractEventLoop | None = None  # a request handler's future, settled on its own loop


@dataclass
class Totals:
    """What the writer has done since it started (for benchmarks and tests)."""

    batches: int = 0
    signed: int = 0
    failed: int = 0
    largest_batch: int = 0


class WriterGone(RuntimeError):
    """The writer process ended before it answered: the signature was never acknowledged."""


_STOP = object()


class Committer:
    """Signs one batch in one transaction: the work both kinds of writer do."""

    def __init__(self, db: Database, *, keyring: Keyring, composer: mail.Composer, settings: Settings,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.db, self.keyring, self.composer, self.settings, self.clock = db, keyring, composer, settings, clock

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
        return signing.sign_many(session, batch, keyring=self.keyring, composer=self.composer,
                                 settings=self.settings, now=self.clock())


class Intake:
    """The way in to the writer: `sign` (request handlers) and `submit` (any thread), both answered after commit."""

    def __init__(
        self,
        db: Database,
        *,
        keyring: Keyring,
        composer: mail.Composer,
        settings: Settings,
        batch_size: int = 128,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.committer = Committer(db, keyring=keyring, composer=composer, settings=settings, clock=clock)
        self.settings = settings
        self.batch_size = batch_size
        self.totals = Totals()
        self.writer: _ThreadWriter | intake_process.ProcessWriter | None = None
        self._lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer. In process mode, started from a running event loop (the app's lifespan), answers
        are read on that loop; started elsewhere, by a thread."""
        with self._lock:
            self._writer()

    def _writer(self) -> _ThreadWriter | intake_process.ProcessWriter:
        writer = self.writer
        if writer is None or not writer.alive:
            if writer is not None:  # its writer process died; it has failed what it held
                # Starting another holds up this caller (the event loop) for the child's start-up, about a second:
                # a crash path, logged as an error.
                log.error("sign intake: the writer ended; starting another")
                writer.stop()
            if self.settings.sign_writer == "process":
                writer = self.writer = intake_process.ProcessWriter(self)
            else:
                writer = self.writer = _ThreadWriter(self)
        return writer

    def stop(self, timeout: float = 30) -> None:
        """Finish (commit and answer) every item already handed over, then end the writer."""
        with self._lock:
            writer, self.writer = self.writer, None
        if writer is not None:
            writer.stop(timeout)

    @property
    def running(self) -> bool:
        return self.writer is not None and self.writer.alive

    # --- the two ways in -----------------------------------------------------------------------------------

    def submit(self, campaign: Campaign, data: signing.SignatureIn) -> Future[signing.Signed]:
        future: Future[signing.Signed] = Future()
        with self._lock:
            self._writer().put(Item(campaign, data, future))  # an app served without its lifespan still signs
        return future

    async def sign(self, campaign: Campaign, data: signing.SignatureIn) -> signing.Signed:
        """Sign from a request handler; returns after the signature is committed, raises what signing raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[signing.Signed] = loop.create_future()
        with self._lock:
            self._writer().put(Item(campaign, data, future, loop))
        return await future

    def settle(self, outcomes: list[tuple[Item, Outcome]], committed: bool) -> None:
        """Answer a batch. Futures of the loop this runs on are set here; other loops are woken once each."""
        here = running_loop()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Outcome]]] = {}
        signed = 0
        for item, outcome in outcomes:
            signed += isinstance(outcome, signing.Signed)
            if item.loop is None or item.loop is here:
                _settle(item.future, outcome)
            else:
                by_loop.setdefault(item.loop, []).append((item.future, outcome))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle_all, pairs)
        totals = self.totals
        totals.signed += signed
        totals.failed += len(outcomes) - signed
        if committed:
            totals.batches += 1
            totals.largest_batch = max(totals.largest_batch, len(outcomes))


def _settle(future: Future | asyncio.Future, outcome: Outcome) -> None:
    if future.done():  # a request handler's future cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _settle_all(pairs: list[tuple[asyncio.Future, Outcome]]) -> None:
    for future, outcome in pairs:
        _settle(future, outcome)


class _ThreadWriter:
    """A thread of this process takes up to a batch of what is waiting, signs it, commits, then answers."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.queue: queue.SimpleQueue[Item | object] = queue.SimpleQueue()
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
            live = [item for item in batch if (not item.future.cancelled() if item.loop
                                               else item.future.set_running_or_notify_cancel())]
            if live:
                outcomes, committed = self.intake.committer.write([(item.campaign, item.data) for item in live])
                self.intake.settle(list(zip(live, outcomes, strict=True)), committed)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


from app import intake_process  # noqa: E402 - it builds on the classes above (Committer, WriterGone)
