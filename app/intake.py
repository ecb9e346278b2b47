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
import fcntl
import gc
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import select
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

WRITER_NICENESS = 5  # the writer process's scheduling priority below the server's (see _writer_main)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python 3.11 names it only on some builds

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
        self.writer: _ThreadWriter | _ProcessWriter | None = None
        self._lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer. In process mode, started from a running event loop (the app's lifespan), answers
        are read on that loop; started elsewhere, by a thread."""
        with self._lock:
            self._writer()

    def _writer(self) -> _ThreadWriter | _ProcessWriter:
        writer = self.writer
        if writer is None or not writer.alive:
            if writer is not None:  # its writer process died; it has failed what it held
                log.error("sign intake: the writer ended; starting another")
                writer.stop()
            writer = self.writer = (_ProcessWriter if self.settings.sign_writer == "process" else _ThreadWriter)(self)
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
            self._writer().put(_Item(campaign, data, future))  # an app served without its lifespan still signs
        return future

    async def sign(self, campaign: Campaign, data: signing.SignatureIn) -> signing.Signed:
        """Sign from a request handler; returns after the signature is committed, raises what signing raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[signing.Signed] = loop.create_future()
        with self._lock:
            self._writer().put(_Item(campaign, data, future, loop))
        return await future

    def settle(self, outcomes: list[tuple[_Item, Outcome]], committed: bool) -> None:
        """Answer a batch. Futures of the loop this runs on are set here; other loops are woken once each."""
        here = _running_loop()
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
        self.queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="sign-intake", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def put(self, item: _Item) -> None:
        self.queue.put(item)

    def stop(self, timeout: float = 30) -> None:
        self.queue.put(_STOP)
        self.thread.join(timeout)

    def _run(self) -> None:
        batch_size, waiting = self.intake.batch_size, self.queue
        stopping = False
        while not stopping:
            first = waiting.get()
            batch: list[_Item] = []
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


class _ProcessWriter:
    """A child process signs the batches. Requests go to it over one pipe, batched per turn of the event loop;
    its answers come back over another and are read on the event loop it was started from (no thread of this
    process ever waits for the GIL on the sign path), or by a thread when it was started outside one."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads and a loop
        child_requests, self.requests = context.Pipe(duplex=False)
        self.answers, child_answers = context.Pipe(duplex=False)
        with contextlib.suppress(OSError):  # room for a few thousand requests before a send would wait
            fcntl.fcntl(self.requests.fileno(), F_SETPIPE_SZ, 1 << 20)
        self.process = context.Process(
            target=_writer_main, args=(child_requests, child_answers, intake.settings, intake.batch_size),
            name="sign-writer", daemon=True,
        )
        self.process.start()
        child_requests.close()  # so that the child's death reads as EOF here, and ours as EOF there
        child_answers.close()
        if not self.answers.poll(60) or self.answers.recv() != "ready":
            self.process.kill()
            raise WriterGone("the sign writer did not start within 60 s")
        self.pending: dict[int, _Item] = {}
        self.sent: dict[int, Campaign] = {}  # id() -> campaign, those the child holds (a campaign is frozen)
        self.numbers = itertools.count()
        self.send_lock = threading.Lock()
        self.outgoing: list[tuple] = []  # this turn's requests from the loop, sent together at its end
        self.ended = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
            threading.Thread(target=self._receive, name="sign-answers", daemon=True).start()
        else:
            self.loop.add_reader(self.answers.fileno(), self._readable)

    @property
    def alive(self) -> bool:
        return not self.ended.is_set()

    def put(self, item: _Item) -> None:
        number, key = next(self.numbers), id(item.campaign)
        first = key not in self.sent
        if first:
            self.sent[key] = item.campaign
        request = (number, key, item.data, item.campaign if first else None)
        self.pending[number] = item
        if item.loop is not None and item.loop is self.loop:
            if not self.outgoing:
                self.loop.call_soon(self._flush)
            self.outgoing.append(request)
        else:
            self._send([request])

    def _flush(self) -> None:
        requests, self.outgoing = self.outgoing, []
        if requests:  # stop() may have sent them already
            self._send(requests)

    def _send(self, requests: list[tuple]) -> None:
        try:
            with self.send_lock:
                self.requests.send(requests)
        except OSError:  # the child is gone (and the answers' reader may have failed `pending` already)
            self._fail([number for number, *_ in requests])

    def _fail(self, numbers: list[int]) -> None:
        """Fail these if still pending: whoever pops an item answers it, so each is answered once."""
        gone = [item for item in map(self.pending.pop, numbers, itertools.repeat(None)) if item is not None]
        self.intake.settle([(item, WriterGone("the sign writer ended before answering")) for item in gone], False)

    def _answered(self, message) -> bool:
        """Settle one message of answers; False once the child has said it is done."""
        if message == "done":
            return False
        answers, committed = message
        pop, signed = self.pending.pop, signing.Signed
        self.intake.settle([(pop(number), outcome if isinstance(outcome, Exception) else signed(*outcome))
                            for number, outcome in answers], committed)
        return True

    def _readable(self) -> None:
        # One message per call: the loop calls again while more is waiting (Connection.poll() would build a
        # selector per call).
        try:
            if self._answered(self.answers.recv()):
                return
        except (EOFError, OSError):
            pass
        self._end()

    def _receive(self) -> None:
        with contextlib.suppress(EOFError, OSError):
            while self._answered(self.answers.recv()):
                pass
        self._end()

    def _end(self) -> None:
        """The child has answered all it will: what it had not answered was never acknowledged."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.remove_reader(self.answers.fileno())
        self.ended.set()
        self._fail(list(self.pending))

    def stop(self, timeout: float = 30) -> None:
        """The child commits and answers what it holds, says "done" and exits."""
        if self.outgoing:
            self._flush()
        with contextlib.suppress(OSError), self.send_lock:
            self.requests.send("stop")
        loop = self.loop
        on_loop = loop is not None and (loop.is_closed() or _running_loop() is loop)
        if on_loop and not self.ended.is_set():
            # Stopped from the loop that reads the answers (the lifespan): read the last ones here.
            with contextlib.suppress(EOFError, OSError):
                while self.answers.poll(timeout) and self._answered(self.answers.recv()):
                    pass
            self._end()
        self.ended.wait(timeout)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
        self.requests.close()
        self.answers.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _writer_main(requests, answers, settings: Settings, batch_size: int) -> None:
    """The child: sign what arrives in batches of up to `batch_size`, answering each batch after its commit."""
    # The server decides when this ends ("stop", or EOF when it died): a Ctrl-C or SIGTERM to the process group
    # must not kill the writer before the server has drained its requests into it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # When cores are short, the server's event loop goes first: it has no slack, while the writer's batches simply
    # grow (a signature costs less in a bigger batch). Measured past capacity on 2 shared cores: higher throughput
    # and a far lower median latency (docs/operations.md).
    os.nice(WRITER_NICENESS)
    db = Database(settings.sqlalchemy_url)
    db.start_checkpoints()
    committer = Committer(db, keyring=load_keyring(settings), composer=mail.Composer(settings), settings=settings)
    campaigns: dict[int, Campaign] = {}
    waiting: deque[tuple[int, Campaign, signing.SignatureIn]] = deque()
    # As in the server (main.py): what was built so far lives as long as the process; keep it out of the
    # collector's full passes, which would stall a batch, and every request in it, now and then.
    gc.collect()
    gc.freeze()
    answers.send("ready")
    stopping = False
    try:
        while True:
            # Block only when nothing waits; else take what has already arrived, up to a batch.
            while not stopping and (not waiting or (len(waiting) < batch_size and _readable(requests))):
                try:
                    message = requests.recv()
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
            reply = [(number, _portable(outcome)) for (number, _, _), outcome in zip(batch, outcomes, strict=True)]
            with contextlib.suppress(OSError):
                answers.send((reply, committed))
        with contextlib.suppress(OSError):
            answers.send("done")
    finally:
        db.stop_checkpoints()
        db.dispose()


def _readable(conn) -> bool:
    """Whether a message has (begun to) come, without the selector Connection.poll() builds per call."""
    return bool(select.select([conn], [], [], 0)[0])


def _portable(outcome: Outcome) -> tuple[int, bool] | Exception:
    """What the server can unpickle: a Signed as a plain tuple, an error as itself if it pickles (a driver's
    exception may not)."""
    if not isinstance(outcome, Exception):
        return outcome.signature_id, outcome.created
    try:
        pickle.loads(pickle.dumps(outcome))  # noqa: S301 - our own bytes, made on the line above
    except Exception:
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")
    return outcome
