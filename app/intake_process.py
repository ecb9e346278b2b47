"""The sign intake's writer process (`CAMPAIGN_SIGN_WRITER=process`, what `campaign serve` runs): one child per
server process signs the batches, so sealing and SQL never hold the server's interpreter lock.

Requests go to it over one pipe, batched per turn of the event loop; its answers come back over another, each
batch's only after its commit, and are read on the event loop the intake was started from. A writer that dies fails
what it had not answered (never acknowledged); the intake then starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import itertools
import multiprocessing
import os
import pickle
import select
import signal
from collections import deque

from app import intake, signing
from app.campaigns import Campaign
from app.db import Database
from app.encryption import load_keyring
from app.settings import Settings

WRITER_NICENESS = 5  # the writer process's scheduling priority below the server's (see _writer_main)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python 3.11 names it only on some builds


class ProcessIntake(intake.Intake):
    """The batches are signed by a child process (`CAMPAIGN_SIGN_WRITER=process`), which builds its own database
    connections and keys from `settings`."""

    def __init__(self, settings: Settings, *, batch_size: int = 128) -> None:
        super().__init__(batch_size=batch_size)
        self.settings = settings

    def _new_writer(self) -> ProcessWriter:
        return ProcessWriter(self)


class ProcessWriter:
    """One child process signs the batches. Requests go to it over one pipe, batched per turn of the event loop;
    its answers come back over another and are read on the event loop it was started from (no thread of this
    process ever waits for the GIL on the sign path)."""

    def __init__(self, owner: ProcessIntake) -> None:
        self.intake = owner
        self.loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads and a loop
        child_requests, self.requests = context.Pipe(duplex=False)
        self.answers, child_answers = context.Pipe(duplex=False)
        with contextlib.suppress(OSError):  # room for a few thousand requests before a send would wait
            fcntl.fcntl(self.requests.fileno(), F_SETPIPE_SZ, 1 << 20)
        self.process = context.Process(
            target=_writer_main, args=(child_requests, child_answers, owner.settings, owner.batch_size),
            name="sign-writer", daemon=True,
        )
        self.process.start()
        child_requests.close()  # so that the child's death reads as EOF here, and ours as EOF there
        child_answers.close()
        try:
            ready = self.answers.poll(60) and self.answers.recv()
        except EOFError:  # it died starting up (its traceback is in the server's log)
            ready = None
        if ready != "ready":
            self.process.kill()
            self.process.join(5)
            raise intake.WriterGone(f"the sign writer did not start (exit code {self.process.exitcode})")
        self.pending: dict[int, intake.Item] = {}
        self.sent: dict[int, Campaign] = {}  # id() -> campaign, those the child holds (a campaign is frozen)
        self.numbers = itertools.count()
        self.outgoing: list[tuple] = []  # this turn's requests, sent together at its end
        self.ended = False
        self.loop.add_reader(self.answers.fileno(), self._readable)

    @property
    def alive(self) -> bool:
        return not self.ended

    def put(self, item: intake.Item) -> None:
        number, key = next(self.numbers), id(item.campaign)
        first = key not in self.sent
        if first:
            self.sent[key] = item.campaign
        self.pending[number] = item
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append((number, key, item.data, item.campaign if first else None))

    def _flush(self) -> None:
        requests, self.outgoing = self.outgoing, []
        if not requests:  # stop() has sent them already
            return
        try:
            self.requests.send(requests)
        except OSError:  # the child is gone (and the answers' reader may have failed `pending` already)
            self._fail([number for number, *_ in requests])

    def _fail(self, numbers: list[int]) -> None:
        """Fail these if still pending: whoever pops an item answers it, so each is answered once."""
        gone = [item for item in map(self.pending.pop, numbers, itertools.repeat(None)) if item is not None]
        gone_error = intake.WriterGone("the sign writer ended before answering")
        self.intake.settle([(item, gone_error) for item in gone], False)

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

    def _end(self) -> None:
        """The child has answered all it will: what it had not answered was never acknowledged."""
        if self.ended:
            return
        if not self.loop.is_closed():
            self.loop.remove_reader(self.answers.fileno())
        self.ended = True
        self._fail(list(self.pending))

    def stop(self, timeout: float = 30) -> None:
        """The child commits and answers what it holds, says "done" and exits. Called on the intake's loop,
        which it holds up meanwhile: the last answers are read here."""
        self._flush()
        with contextlib.suppress(OSError):
            self.requests.send("stop")
        if not self.ended:
            with contextlib.suppress(EOFError, OSError):
                while self.answers.poll(timeout) and self._answered(self.answers.recv()):
                    pass
            self._end()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
        self.requests.close()
        self.answers.close()


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
    committer = intake.Committer(db, keyring=load_keyring(settings), settings=settings)
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


def _portable(outcome: intake.Outcome) -> tuple[int, bool] | Exception:
    """What the server can unpickle: a Signed as a plain tuple, an error as itself if it pickles (a driver's
    exception may not)."""
    if not isinstance(outcome, Exception):
        return outcome.signature_id, outcome.created
    try:
        pickle.loads(pickle.dumps(outcome))  # noqa: S301 - our own bytes, made on the line above
    except Exception:
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")
    return outcome
