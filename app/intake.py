"""Sign intake: one writer per server process commits many signatures per transaction (group commit).

Request handlers enqueue (campaign, validated data) and await a future; a forwarding thread takes up to
`batch_size` waiting items and has them signed together (`signing.sign_many`; if that fails, again with each item
in its own SAVEPOINT, so one bad item never sinks the batch) in one transaction, and only after the commit are the
futures resolved. So a request is never answered before its signature and mail are durable, and the database sees
one write transaction where it would have seen hundreds competing for the lock.

Where the batches are signed:
- "process" (`campaign serve`): in a child process with its own interpreter. Sealing, the mail and the SQL of a
  batch would otherwise hold this process's GIL for as long as the request handling does, halving the requests one
  event loop can take (bench/sign.py). The batch goes over a pipe; a receiving thread settles the futures when the
  child reports the commit. A child that dies fails what it had not answered (never acknowledged) and the next
  batch starts a new one.
- "thread": the forwarding thread signs the batches itself (tests that inject a clock; embedding without a child).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from app import mail, signing
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.encryption import Keyring, load_keyring
from app.settings import Settings

log = logging.getLogger(__name__)

Outcome = signing.Signed | Exception


@dataclass(frozen=True)
class _Item:
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
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._process = settings.sign_writer == "process"
        self.child: _Child | None = None  # the current writer process, as the forwarding thread last saw it

    # --- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None:
            # Each writer has its own queue, so a writer being stopped never takes a newer writer's items.
            self._queue = queue.SimpleQueue()
            # The child starts here, so a server is ready (or fails to start) before its first request.
            child = self.child = self._new_child() if self._process else None
            self._thread = threading.Thread(target=self._run, args=(self._queue, child), name="sign-intake",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Finish (commit and answer) every item already queued, then end the writer."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(_STOP)
        thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the two ways in -----------------------------------------------------------------------------------

    def submit(self, campaign: Campaign, data: signing.SignatureIn) -> Future[signing.Signed]:
        future: Future[signing.Signed] = Future()
        with self._lock:
            self._start_locked()  # an app served without its lifespan (a bare TestClient) still signs
            self._queue.put(_Item(campaign, data, future))
        return future

    async def sign(self, campaign: Campaign, data: signing.SignatureIn) -> signing.Signed:
        """Sign from a request handler; returns after the signature is committed, raises what signing raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[signing.Signed] = loop.create_future()
        with self._lock:
            self._start_locked()
            self._queue.put(_Item(campaign, data, future, loop))
        return await future

    # --- the forwarding thread -----------------------------------------------------------------------------

    def _run(self, waiting: queue.SimpleQueue, child: _Child | None) -> None:
        stopping = False
        try:
            while not stopping:
                first = waiting.get()
                batch: list[_Item] = []
                if first is _STOP:
                    stopping = True
                else:
                    batch.append(first)  # type: ignore[arg-type]
                # Take whatever else is already waiting, up to the batch size; never wait for more to arrive.
                while len(batch) < self.batch_size:
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
                if not live:
                    continue
                if not self._process:
                    outcomes, committed = self.committer.write([(item.campaign, item.data) for item in live])
                    self._settle(list(zip(live, outcomes, strict=True)), committed)
                    continue
                if child is None or not child.alive:
                    if child is not None:
                        log.error("sign intake: the writer process ended (exit code %s); starting another",
                                  child.process.exitcode)
                        child.stop()
                    child = self.child = self._new_child()
                if child is None:
                    self._settle([(item, WriterGone("the sign writer could not start")) for item in live], False)
                else:
                    child.ship(live)
        finally:
            if child is not None:
                child.stop()

    def _new_child(self) -> _Child | None:
        try:
            return _Child(self.settings, self.batch_size, self._settle)
        except Exception:
            log.exception("sign intake: the writer process did not start")
            return None

    def _settle(self, outcomes: list[tuple[_Item, Outcome]], committed: bool) -> None:
        """Answer a batch: each event loop is woken once for the lot, not once per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Outcome]]] = {}
        signed = 0
        for item, outcome in outcomes:
            signed += isinstance(outcome, signing.Signed)
            if item.loop is None:
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


# --- the writer process --------------------------------------------------------------------------------------


class _Child:
    """The writer process seen from the server: `ship` sends a batch (from the forwarding thread only) and a
    receiving thread settles each answer. A campaign travels once, then by its id (campaigns are frozen)."""

    def __init__(self, settings: Settings, batch_size: int,
                 settle: Callable[[list[tuple[_Item, Outcome]], bool], None]) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads and a loop
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_writer_main, args=(child_end, settings, batch_size),
                                       name="sign-writer", daemon=True)
        self.process.start()
        child_end.close()  # so that the child's death reads as EOF here
        if not self.conn.poll(60) or self.conn.recv() != "ready":
            self.process.kill()
            raise WriterGone("the sign writer did not start within 60 s")
        self.settle = settle
        self.pending: dict[int, _Item] = {}
        self.sent: dict[int, Campaign] = {}  # id() -> campaign, for those the child holds (and to keep the id)
        self.ids = itertools.count()
        self.receiver = threading.Thread(target=self._receive, name="sign-answers", daemon=True)
        self.receiver.start()

    @property
    def alive(self) -> bool:
        return self.receiver.is_alive()

    def ship(self, items: list[_Item]) -> None:
        message = []
        for item in items:
            number, key = next(self.ids), id(item.campaign)
            first = key not in self.sent
            if first:
                self.sent[key] = item.campaign
            message.append((number, key, item.data, item.campaign if first else None))
            self.pending[number] = item
        try:
            self.conn.send(message)
        except OSError:  # the child is gone (and its receiving thread may have swept `pending` already)
            self._fail([number for number, *_ in message])

    def _fail(self, numbers: list[int]) -> None:
        """Fail these if still pending: whoever pops an item answers it, so each is answered once."""
        gone = [item for item in map(self.pending.pop, numbers, itertools.repeat(None)) if item is not None]
        self.settle([(item, WriterGone("the sign writer ended before answering")) for item in gone], False)

    def stop(self, timeout: float = 30) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")  # the child commits and answers what it holds, then says "done"
        self.receiver.join(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()

    def _receive(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            if message == "done":
                break
            answers, committed = message
            self.settle([(self.pending.pop(number), outcome) for number, outcome in answers], committed)
        # Whatever the child had not answered was never acknowledged; it may or may not have been committed.
        self._fail(list(self.pending))


def _writer_main(conn, settings: Settings, batch_size: int) -> None:
    """The child: sign what arrives in batches of up to `batch_size`, answering each batch after its commit."""
    # The server decides when this ends ("stop", or EOF when it died): a Ctrl-C or SIGTERM to the process group
    # must not kill the writer before the server has drained its queue into it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    db = Database(settings.sqlalchemy_url)
    db.start_checkpoints()
    committer = Committer(db, keyring=load_keyring(settings), composer=mail.Composer(settings), settings=settings)
    campaigns: dict[int, Campaign] = {}
    waiting: deque[tuple[int, Campaign, signing.SignatureIn]] = deque()
    conn.send("ready")
    stopping = False
    try:
        while True:
            # Block only when nothing waits; else take what has already arrived, up to a batch.
            while not stopping and (not waiting or (len(waiting) < batch_size and conn.poll())):
                try:
                    message = conn.recv()
                except EOFError:  # the server died: commit what came, though nobody hears of it
                    stopping = True
                    break
                if message == "stop":
                    stopping = True
                    break
                for number, key, data, campaign in message:
                    if campaign is not None:
                        campaigns[key] = campaign
                    waiting.append((number, campaigns[key], data))
            if not waiting:
                break
            batch = [waiting.popleft() for _ in range(min(batch_size, len(waiting)))]
            outcomes, committed = committer.write([(campaign, data) for _, campaign, data in batch])
            answers = [(number, _portable(outcome)) for (number, _, _), outcome in zip(batch, outcomes, strict=True)]
            with contextlib.suppress(OSError):
                conn.send((answers, committed))
        with contextlib.suppress(OSError):
            conn.send("done")
    finally:
        db.stop_checkpoints()
        db.dispose()


def _portable(outcome: Outcome) -> Outcome:
    """An error as the server can unpickle it (a driver's exception may not be)."""
    if isinstance(outcome, Exception):
        try:
            pickle.loads(pickle.dumps(outcome))
        except Exception:
            return RuntimeError(f"{type(outcome).__name__}: {outcome}")
    return outcome
