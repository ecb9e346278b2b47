"""Sign intake: one writer thread per process commits many signatures per transaction (group commit).

Request handlers enqueue (campaign, validated data) and await a future; the writer takes up to `batch_size`
waiting items, signs them together (`signing.sign_many`; if that fails, again with each item in its own SAVEPOINT,
so one bad item never sinks the batch), commits once, and only then resolves the futures. So a request is never
answered before its signature and mail are durable, and the database sees one write transaction where it would
have seen hundreds competing for the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

from app import mail, signing
from app.campaigns import Campaign
from app.db import Database, utcnow
from app.encryption import Keyring
from app.settings import Settings

log = logging.getLogger(__name__)


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


_STOP = object()


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
        self.db, self.keyring, self.composer, self.settings = db, keyring, composer, settings
        self.batch_size = batch_size
        self.clock = clock
        self.totals = Totals()
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None:
            # Each writer has its own queue, so a writer being stopped never takes a newer writer's items.
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, args=(self._queue,), name="sign-intake", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Finish (commit and answer) every item already queued, then end the writer thread."""
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

    # --- the writer ----------------------------------------------------------------------------------------

    def _run(self, waiting: queue.SimpleQueue) -> None:
        stopping = False
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
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        # A request that went away before its turn is dropped unanswered: it was never acknowledged.
        live = [item for item in batch if (not item.future.cancelled() if item.loop
                                           else item.future.set_running_or_notify_cancel())]
        if not live:
            return
        try:
            try:
                # A database error is rare, so first try the batch without a savepoint per item; if anything
                # fails, nothing of it is kept and the batch runs again with each item isolated.
                outcomes = self._commit(live, isolate=False)
            except Exception:
                outcomes = self._commit(live, isolate=True)
        except Exception as exc:  # the transaction itself failed: nothing of this batch is durable
            log.exception("sign intake: batch of %d not committed", len(live))
            self._answer([(item, exc) for item in live])
            self.totals.failed += len(live)
            return
        # Committed: only now may anyone hear "accepted".
        self._answer(outcomes)
        signed = sum(isinstance(outcome, signing.Signed) for _, outcome in outcomes)
        self.totals.signed += signed
        self.totals.failed += len(outcomes) - signed
        self.totals.batches += 1
        self.totals.largest_batch = max(self.totals.largest_batch, len(live))

    @staticmethod
    def _answer(outcomes: list[tuple[_Item, signing.Signed | Exception]]) -> None:
        """Settle every future of a batch: each event loop is woken once for the lot, not once per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, signing.Signed | Exception]]] = {}
        for item, outcome in outcomes:
            if item.loop is None:
                _settle(item.future, outcome)
            else:
                by_loop.setdefault(item.loop, []).append((item.future, outcome))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle_all, pairs)

    def _commit(self, items: list[_Item], *, isolate: bool) -> list[tuple[_Item, signing.Signed | Exception]]:
        """One transaction for every item; with `isolate`, each in its own SAVEPOINT so a failure (rolled back
        to its savepoint) leaves the others in place."""
        with self.db.write.begin() as session:
            if not isolate:
                return list(zip(items, self._sign(session, items), strict=True))
            outcomes: list[tuple[_Item, signing.Signed | Exception]] = []
            for item in items:
                try:
                    with session.begin_nested():
                        outcomes.append((item, self._sign(session, [item])[0]))
                except Exception as exc:
                    outcomes.append((item, exc))
            return outcomes

    def _sign(self, session, items: list[_Item]) -> list[signing.Signed | signing.SigningError]:
        return signing.sign_many(
            session, [(item.campaign, item.data) for item in items], keyring=self.keyring,
            composer=self.composer, settings=self.settings, now=self.clock(),
        )


def _settle(future: Future | asyncio.Future, outcome: signing.Signed | Exception) -> None:
    if future.done():  # a request handler's future cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _settle_all(pairs: list[tuple[asyncio.Future, signing.Signed | Exception]]) -> None:
    for future, outcome in pairs:
        _settle(future, outcome)
