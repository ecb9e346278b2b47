"""Batch letters for organisers: each confirmed signer's letter to each of their targets as txt, mbox, eml or PDF
(one file per target and language), and the appeal pack of one target (app/pack.py).

Signatures stream from the database in id order and are opened one at a time, so memory stays flat however many
there are. The work is split into id ranges rendered by separate processes and joined in id order, and nothing
in the output depends on the clock: the same data always gives the same bytes. A batch leaves out the letters
the delivery ledger holds already (sent for the signer, opened in their mail program, downloaded, an earlier
batch) unless asked, and records what it wrote there: one INSERT … SELECT per target over the same selection.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import counters, files, ledger, letters, mail
from app.campaigns import Campaign, Target
from app.db import Database, utcnow
from app.encryption import Keyring, load_keyring
from app.models import CONFIRMED, Signature, TargetOptIn
from app.settings import Settings

FORMATS = ("txt", "mbox", "eml", "pdf", "pack")
# Signatures per range. PDFs: one file per target and language, split into numbered parts (a range each) only
# when the batch has more signers than one range.
CHUNK = {"txt": 5000, "mbox": 5000, "eml": 5000, "pdf": 500}
MBOX_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


class BatchError(Exception):
    """The request cannot be met (unknown campaign or target, a format that needs --target, ...)."""


@dataclass(frozen=True)
class Batch:
    slug: str
    fmt: str
    lang: str | None = None  # None: each signer's own language
    target: str | None = None  # None: every target of each signer
    since: datetime | None = None
    include_delivered: bool = False  # also the letters the ledger holds already

    day: date | None = None  # the date PDFs carry (None: today, UTC); a pack counts confirmations up to its end


@dataclass(frozen=True)
class Plan:
    total: int  # signatures selected
    ranges: tuple[tuple[int, int], ...]  # inclusive id ranges, in order
    public: frozenset[str]  # countries an anonymous letter may name
    dated: datetime | None  # latest confirmation in the selection: the one date the output carries
    last: int | None = None  # the selection's last id: a signer confirmed later is in neither output nor ledger
    ledger_upto: int = 0  # ledger rows up to this id count as delivered; later ones do not change this batch
    left_out: int = 0  # letters left out as delivered already


class Renderer:
    """Everything one process needs to render letters: built once per process."""

    def __init__(self, settings: Settings, *, db: Database, keyring: Keyring, campaign: Campaign) -> None:
        self.settings, self.db, self.keyring, self.campaign = settings, db, keyring, campaign
        self.secret = letters.variation_secret(settings.secret_key)
        self.domain = mail.campaign_sender(settings, campaign, campaign.languages[0])[1].rpartition("@")[2]
        self._heads: dict[tuple[str, str, str], bytes] = {}
        self._stamps: dict[datetime | None, bytes] = {}

    @classmethod
    def from_settings(cls, settings: Settings, slug: str) -> Renderer:
        from app.campaigns import load_campaigns

        return cls(settings, db=Database(settings.sqlalchemy_url), keyring=load_keyring(settings),
                   campaign=load_campaigns(settings.letters_dir)[slug])

    def targets(self, batch: Batch) -> list[Target]:
        if batch.target is None:
            return list(self.campaign.targets)
        target = self.campaign.target(batch.target)
        if target is None:
            known = ", ".join(t.key for t in self.campaign.targets)
            raise BatchError(f"no target {batch.target!r} in {self.campaign.slug}; known: {known}")
        return [target]

    def batch_targets(self, batch: Batch) -> list[Target]:
        """The targets this batch writes to: for mail formats, those with an address."""
        targets = self.targets(batch)
        return [t for t in targets if t.email] if batch.fmt in ("mbox", "eml") else targets

    def selection(self, batch: Batch, *, own_country: bool = True, erased: bool = False, in_range: bool = False
                  ) -> list:
        """Confirmed signatures of the batch; `erased` ones (kept as anonymous units) only where counted.

        `in_range`: the query also bounds the id, and must walk the primary key. Written plainly, SQLite takes the
        (campaign, status) index instead and scans every confirmed row for each range; `|| ''` rules that out."""
        campaign, status = (Signature.campaign + "", Signature.status + "") if in_range else (
            Signature.campaign, Signature.status)
        where = [campaign == batch.slug, status == CONFIRMED]
        if not erased:
            where.append(Signature.email_key.is_not(None))
        if batch.since is not None:
            where.append(Signature.confirmed_at >= batch.since)
        targets = self.targets(batch)
        if own_country and all(t.kind == "embassy" for t in targets):  # an embassy: letters from its country only
            where.append(Signature.country.in_(sorted({t.country for t in targets if t.country})))
        return where

    def plan(self, session: Session, batch: Batch, *, size: int) -> Plan:
        where = self.selection(batch)
        total, dated = session.execute(select(func.count(), func.max(Signature.confirmed_at)).where(*where)).one()
        numbered = select(Signature.id, func.row_number().over(order_by=Signature.id).label("n")).where(*where)
        sub = numbered.subquery()
        starts = list(session.scalars(select(sub.c.id).where((sub.c.n - 1) % size == 0).order_by(sub.c.id)))
        last = session.scalar(select(func.max(Signature.id)).where(*where))
        ranges = tuple(zip(starts, [s - 1 for s in starts[1:]] + [last], strict=True)) if starts else ()
        by_country, _ = counters.exact_counts(session, batch.slug)
        upto = ledger.high_water(session)
        left_out = 0
        if not batch.include_delivered and last is not None:
            for target in self.batch_targets(batch):
                left_out += ledger.delivered_count(session, campaign=batch.slug, target=target.key, upto=upto,
                                                   where=self.for_target(batch, target, last=last))
        return Plan(total, ranges, counters.letter_countries(by_country, self.settings.min_cell), dated, last, upto,
                    left_out)

    def for_target(self, batch: Batch, target: Target, *, last: int) -> list:
        """The signatures whose letter to `target` this batch selects (delivered ones included)."""
        where = [*self.selection(batch), Signature.id <= last]
        if target.kind == "embassy":
            where.append(Signature.country == target.country)
        return where

    def record(self, session: Session, batch: Batch, plan: Plan, *, now: datetime) -> int:
        """Write a BATCH row for every letter the batch wrote: per target one INSERT … SELECT over the plan's
        selection, less what the ledger held when it was planned (unless those were included). Returns new rows."""
        if plan.last is None:
            return 0
        added = 0
        for target in self.batch_targets(batch):
            where = self.for_target(batch, target, last=plan.last)
            if not batch.include_delivered:
                where.append(~ledger.delivered(target.key, upto=plan.ledger_upto))
            added += ledger.record_selected(session, select(Signature.id).where(*where), campaign=batch.slug,
                                            target=target.key, now=now)
        return added

    # --- one id range ---------------------------------------------------------------------------------

    def letters_in(self, batch: Batch, plan: Plan, lo: int, hi: int) -> Iterator[tuple[int, letters.Letter]]:
        """(signature id, letter) for every selected signer in [lo, hi] and each of their targets, in order."""
        targets = self.batch_targets(batch)
        naming = [t.key for t in targets if t.allows_names()]
        with self.db.read() as session:
            delivered = set() if batch.include_delivered else ledger.delivered_pairs(
                session, lo, hi, targets=[t.key for t in targets], upto=plan.ledger_upto)
            named = set()
            if naming:
                named = {(sig, key) for sig, key in session.execute(
                    select(TargetOptIn.signature_id, TargetOptIn.target).where(
                        TargetOptIn.signature_id.between(lo, hi), TargetOptIn.target.in_(naming))
                )}
            rows = session.execute(
                select(Signature.id, Signature.key_id, Signature.name_enc, Signature.city_enc,
                       Signature.message_enc, Signature.country, Signature.language,
                       Signature.paragraph_to_authorities)
                .where(*self.selection(batch, in_range=True), Signature.id.between(lo, hi))
                .order_by(Signature.id)
                .execution_options(yield_per=1000)
            )
            open_ = self.keyring.open
            for sig_id, key_id, name_enc, city_enc, message_enc, country, language, to_state in rows:
                message = open_(message_enc, "message", key_id) or ""
                lang = self.campaign.lang(batch.lang or language)
                for target in targets:
                    if target.kind == "embassy" and target.country != country or (sig_id, target.key) in delivered:
                        continue
                    opted = (sig_id, target.key) in named
                    # Names are opened only for a letter that will carry them.
                    view = letters.view_for(
                        target, variant_key=letters.signer_key(sig_id),
                        name=open_(name_enc, "name", key_id) if opted else None,
                        city=open_(city_enc, "city", key_id) if opted else None,
                        country=country, message=message, opted_in=opted, public_countries=plan.public,
                        message_to_authorities=to_state,
                    )
                    yield sig_id, letters.render_letter(self.campaign, target, lang, view, secret=self.secret,
                                                        html=False)

    def render_range(self, batch: Batch, plan: Plan, index: int, lo: int, hi: int, out: Path) -> int:
        """Render one range into `out` (a file; for eml and pdf a folder). Returns the letters written."""
        found = self.letters_in(batch, plan, lo, hi)
        count = 0
        if batch.fmt == "eml":
            for sig_id, letter in found:
                (out / f"{sig_id:09d}-{letter.target}.eml").write_bytes(self.message(plan, sig_id, letter))
                count += 1
        elif batch.fmt == "pdf":
            count = self.pdf_files(batch, plan, index, found, out)
        else:
            with out.open("wb") as fh:
                for sig_id, letter in found:
                    fh.write(self.mbox_entry(plan, sig_id, letter) if batch.fmt == "mbox" else txt_entry(letter))
                    count += 1
        return count

    def pdf_files(self, batch: Batch, plan: Plan, index: int, found: Iterator[tuple[int, letters.Letter]],
                  out: Path) -> int:
        """One PDF per target and language (`mamay-president-ru.pdf`; `...-part002.pdf` when the batch has several
        ranges), its letters numbered in id order under the file's name, all dated the batch's day."""
        from app import pdf  # only this format needs the PDF library in the workers

        day = batch.day or pdf.today()
        open_files: dict[tuple[str, str], pdf.LetterFile] = {}
        count = 0
        for _, letter in found:
            file = open_files.get((letter.target, letter.lang))
            if file is None:
                label = f"{self.campaign.slug}-{letter.target}-{letter.lang}"
                if len(plan.ranges) > 1:
                    label += f"-part{index + 1:03d}"
                file = open_files[(letter.target, letter.lang)] = pdf.LetterFile(
                    lang=letter.lang, title=letter.subject, day=day, label=label)
            file.add(letter)
            count += 1
        for file in open_files.values():
            with files.open_private(out / f"{file.label}.pdf") as fh:
                fh.write(file.output())
        return count

    # --- formats --------------------------------------------------------------------------------------

    def head(self, plan: Plan, target: Target, lang: str) -> bytes:
        """The header block shared by every mail to one target in one language, made once (mail.py makes it)."""
        key = (target.key, lang, str(plan.dated))
        if key not in self._heads:
            self._heads[key] = mail.letter_head(
                self.settings, campaign=self.campaign, lang=lang,
                to_name=letters.header_name(target.name[lang]), to_addr=target.email or "",
                subject=self.campaign.subject[lang], dated=plan.dated,
            )
        return self._heads[key]

    def message(self, plan: Plan, sig_id: int, letter: letters.Letter) -> bytes:
        target = self.campaign.target(letter.target)
        assert target is not None
        message_id = mail.letter_message_id(self.secret, f"{self.campaign.slug}:{sig_id}:{letter.target}", self.domain)
        return mail.with_body(self.head(plan, target, letter.lang), message_id, letter.text)

    def mbox_entry(self, plan: Plan, sig_id: int, letter: letters.Letter) -> bytes:
        stamp = self._stamps.get(plan.dated)
        if stamp is None:
            stamp = (plan.dated or datetime(2000, 1, 1)).strftime("%a %b %d %H:%M:%S %Y").encode()
            self._stamps[plan.dated] = stamp
        message = self.message(plan, sig_id, letter)
        if b"From " in message:  # rare (a base64 body never has it): quote mbox separators (mboxrd)
            message = MBOX_FROM_LINE.sub(rb">\1", message)
        return b"From MAILER-DAEMON %s\n%s\n" % (stamp, message)


def _append(part: Path, out) -> None:
    """Copy a rendered range onto the end of the output, inside the kernel where it can."""
    out.flush()
    with part.open("rb") as fh:
        left = os.fstat(fh.fileno()).st_size
        try:
            while left > 0:
                copied = os.copy_file_range(fh.fileno(), out.fileno(), left)
                if copied == 0:
                    break
                left -= copied
        except (AttributeError, OSError):  # no copy_file_range here: copy through user space
            fh.seek(os.fstat(fh.fileno()).st_size - left)
            shutil.copyfileobj(fh, out, 1024 * 1024)


def txt_entry(letter: letters.Letter) -> bytes:
    """Address block, subject and letter; a form feed starts the next letter on a new page when printed."""
    return ("\n".join(letter.recipient) + f"\n\n{letter.subject}\n\n{letter.text}\n\f\n").encode()


# --- running a batch ---------------------------------------------------------------------------------------

_WORKER: Renderer | None = None


def _start_worker(settings: Settings, slug: str) -> None:
    global _WORKER
    _WORKER = Renderer.from_settings(settings, slug)


def _work(batch: Batch, plan: Plan, index: int, lo: int, hi: int, out: str) -> int:
    assert _WORKER is not None
    return _WORKER.render_range(batch, plan, index, lo, hi, Path(out))


def _check(renderer: Renderer, batch: Batch) -> None:
    """Refuse a batch that cannot be made, before anything is read or written."""
    if batch.fmt not in FORMATS:
        raise BatchError(f"--format must be one of {', '.join(FORMATS)}")
    if batch.lang is not None and batch.lang not in renderer.campaign.languages:
        raise BatchError(f"--lang must be one of {', '.join(renderer.campaign.languages)}")
    if batch.fmt in ("mbox", "eml") and not any(t.email for t in renderer.targets(batch)):
        raise BatchError(f"target {batch.target} has no email address: use --format pdf or txt")


def run(
    renderer: Renderer, batch: Batch, output: Path, *, workers: int = 0, chunk: int | None = None,
    on_plan: Callable[[int], None] | None = None, on_progress: Callable[[int], None] | None = None,
    on_left_out: Callable[[int], None] | None = None, now: datetime | None = None,
) -> int:
    """Write the batch to `output`, record its letters in the ledger, and return how many letters (or, for a pack,
    named supporters) it holds. `on_left_out` hears how many letters were left out as delivered already.

    `chunk` signatures make one id range (and one PDF file); the output does not depend on `workers`."""
    _check(renderer, batch)
    if batch.fmt == "pack":
        return write_pack(renderer, batch, output, on_plan=on_plan, on_progress=on_progress)
    size = chunk or CHUNK.get(batch.fmt, 5000)
    with renderer.db.read() as session:
        plan = renderer.plan(session, batch, size=size)
    if on_plan:
        on_plan(plan.total)
    if on_left_out:
        on_left_out(plan.left_out)
    folder = batch.fmt in ("eml", "pdf")
    # Letters may carry names: what we write is readable by its owner only.
    if folder:
        output.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
    sizes = [min(size, plan.total - i * size) for i in range(len(plan.ranges))]
    with tempfile.TemporaryDirectory(prefix="letters-", dir=output.parent) as tmp, contextlib.ExitStack() as stack:
        parts = [output if folder else Path(tmp) / f"{i:06d}" for i in range(len(plan.ranges))]
        out = None if folder else stack.enter_context(files.open_private(output))
        written = 0
        for i, letters_written in _rendered(renderer, batch, plan, parts, workers=workers):
            # Range i is rendered: append it to the output now (ranges finish about in order), then drop it.
            written += letters_written
            if out is not None:
                _append(parts[i], out)
                parts[i].unlink()
            if on_progress:
                on_progress(sizes[i])
    with renderer.db.write.begin() as session:  # written in full: now recorded, in one transaction
        renderer.record(session, batch, plan, now=now or utcnow())
    return written


def _rendered(renderer: Renderer, batch: Batch, plan: Plan, parts: list[Path], *, workers: int
              ) -> Iterator[tuple[int, int]]:
    """(range, letters written) for each range, in order: here, or by forked worker processes."""
    workers = min(workers or os.cpu_count() or 1, len(plan.ranges))
    if workers <= 1:
        for i, (lo, hi) in enumerate(plan.ranges):
            yield i, renderer.render_range(batch, plan, i, lo, hi, parts[i])
        return
    # Workers are forked: they share this process's loaded code instead of importing it again (less memory,
    # faster start). Nothing here may hold a connection across the fork, and the caller must not run threads that
    # the workers could need (the CLI's progress bar refreshes without one).
    renderer.db.engine.dispose()
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_start_worker,
                             initargs=(renderer.settings, batch.slug)) as pool:
        futures = [pool.submit(_work, batch, plan, i, lo, hi, str(parts[i])) for i, (lo, hi) in enumerate(plan.ranges)]
        for i, future in enumerate(futures):
            yield i, future.result()


def write_pack(
    renderer: Renderer, batch: Batch, output: Path, *, on_plan: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """The appeal pack of one target (app/pack.py), in its appeal language unless `batch.lang` says otherwise,
    dated `batch.day` (today if None). Returns how many supporters it names."""
    from app import pack, pdf

    if batch.target is None:
        raise BatchError("--format pack needs --target: a pack is made for one recipient")
    [target] = renderer.targets(batch)
    campaign = renderer.campaign
    if campaign.organisation is None or campaign.appeal is None:
        raise BatchError(f"campaign {campaign.slug} names no [organisation] and [appeal] in campaign.toml: an appeal "
                         "without its applicant is not considered")
    lang = campaign.lang(batch.lang) if batch.lang else campaign.appeal_lang(target)
    output.parent.mkdir(parents=True, exist_ok=True)
    with renderer.db.read() as session, files.open_private(output) as out:
        count = pack.write(session, renderer.keyring, campaign, target, out, lang=lang, day=batch.day or pdf.today(),
                           since=batch.since, k=renderer.settings.min_cell, on_plan=on_plan, on_progress=on_progress)
    return count
