"""Demo data: fills a campaign with realistic fake signers (Latin, Cyrillic and Kazakh names, real cities, a
country mix, signing days spread over weeks), fast enough to make a million rows for the benchmarks.

Rows are sealed with the real keyring, like any signature, and the per-country-per-day counters grow by exactly
the confirmed rows written, in the same transaction, so `counters.recount` always equals the stored counter.
Every address is under example.org (reserved by RFC 2606: never a real person's inbox).
"""

from __future__ import annotations

import gc
import os
import random
import secrets
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from app import counters
from app.db import Database
from app.encryption import Keyring
from app.models import CONFIRMED, PENDING

# (first names, last names, languages they sign in)
NAME_POOLS = {
    "kazakh": (
        ["Айгерім", "Әлия", "Ерлан", "Нұрлан", "Дәурен", "Гүлнар", "Асқар", "Жанар", "Қайрат", "Бауыржан",
         "Сәуле", "Ержан", "Мақсат", "Динара", "Әсет", "Ботагөз"],
        ["Сейітқали", "Жұмабаев", "Нұрмағамбетова", "Әбілқайыров", "Қасымов", "Төлеуова", "Мұхамеджанов",
         "Оспанова", "Бекмұхамбетов", "Ғабдуллина"],
        ["kk", "kk", "kk", "ru", "en"],
    ),
    "cyrillic": (
        ["Анна", "Дмитрий", "Ольга", "Сергей", "Марина", "Алексей", "Елена", "Игорь", "Наталья", "Павел",
         "Тимур", "Светлана", "Руслан", "Ирина"],
        ["Иванова", "Ким", "Петров", "Смирнова", "Ли", "Кузнецов", "Попова", "Цой", "Волков", "Морозова"],
        ["ru", "ru", "ru", "kk", "en"],
    ),
    "latin": (
        ["Anna", "Lukas", "Sophie", "James", "Maria", "Jan", "Emma", "Aigerim", "Daniyar", "Chloé", "Mateusz",
         "Zeynep", "Olivia", "Jonas", "Ines", "Aliya"],
        ["Müller", "Smith", "Kowalska", "Dubois", "Nurlanovna", "Yılmaz", "García", "Jensen", "Novák", "Rossi",
         "Tulegenova", "O'Brien"],
        ["en", "en", "en", "ru"],
    ),
}

# country: (share in the mix, in percent; name pool, cities)
COUNTRIES: dict[str, tuple[int, str, list[str]]] = {
    "KZ": (38, "kazakh", ["Алматы", "Астана", "Шымкент", "Қарағанды", "Ақтөбе", "Павлодар", "Атырау", "Almaty"]),
    "RU": (10, "cyrillic", ["Москва", "Санкт-Петербург", "Новосибирск", "Омск", "Казань"]),
    "DE": (9, "latin", ["Berlin", "München", "Hamburg", "Köln", "Leipzig"]),
    "KG": (5, "cyrillic", ["Бишкек", "Ош"]),
    "US": (6, "latin", ["New York", "Washington", "Chicago", "San Francisco"]),
    "GB": (5, "latin", ["London", "Manchester", "Edinburgh"]),
    "PL": (4, "latin", ["Warszawa", "Kraków", "Gdańsk"]),
    "FR": (4, "latin", ["Paris", "Lyon", "Marseille"]),
    "TR": (3, "latin", ["İstanbul", "Ankara"]),
    "UA": (3, "cyrillic", ["Київ", "Харків", "Одеса"]),
    "UZ": (3, "cyrillic", ["Ташкент", "Самарканд"]),
    "GE": (2, "latin", ["Tbilisi", "Batumi"]),
    "NL": (2, "latin", ["Amsterdam", "Utrecht"]),
    "CZ": (2, "latin", ["Praha", "Brno"]),
    "SE": (1, "latin", ["Stockholm"]),
    "IS": (1, "latin", ["Reykjavík"]),
    "MN": (1, "cyrillic", ["Улаанбаатар"]),
    "NZ": (1, "latin", ["Wellington"]),
}
MESSAGES = [
    "Free Zhanbolat Mamay now.",
    "Журналистика — не преступление.",
    "Жанболат Мамайды босатыңыз!",
    "Thinking of you and your family. Stay strong.",
    "Освободите политзаключённых.",
    "Solidarity from Berlin.",
]
TRANSLIT = str.maketrans({
    "а": "a", "ә": "a", "б": "b", "в": "v", "г": "g", "ғ": "g", "д": "d", "е": "e", "ж": "zh", "з": "z",
    "и": "i", "й": "i", "к": "k", "қ": "q", "л": "l", "м": "m", "н": "n", "ң": "n", "о": "o", "ө": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ұ": "u", "ү": "u", "ф": "f", "х": "kh", "һ": "h",
    "ц": "ts", "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "", "ы": "y", "і": "i", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "ё": "yo", "є": "ye", "ї": "yi", "ü": "u", "ö": "o", "é": "e", "ı": "i", "ç": "c", "ś": "s",
    "ń": "n", "ą": "a", "ę": "e", "ł": "l", "ó": "o", "ż": "z", "ź": "z", "á": "a", "í": "i", "ý": "y",
    "'": "",
})

COLUMNS = (
    "campaign", "email_key", "key_id", "name_enc", "email_enc", "city_enc", "message_enc", "country", "language",
    "status", "discreet", "created_at", "confirmed_at", "confirm_token_hash", "confirm_code_hash", "code_attempts",
    "confirm_expires_at", "manage_token_hash",
)
CHUNK_TABLE = "demo_chunk.rows"  # a made chunk, attached to the loading connection (SQLite)
# In a chunk table 0 stands for NULL in these columns: sqlite3 binds None through its adapter lookup (slow), 0 not.
NULLABLE = ("city_enc", "message_enc", "confirmed_at", "confirm_code_hash", "manage_token_hash")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400_000_000
_CLOCKS = [hm + s for hm in (f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
           for s in (f"{s:02d}" for s in range(60))]  # "HH:MM:SS" by second of the day


def _local_part(first: str, last: str) -> str:
    local = f"{first}.{last}".lower().translate(TRANSLIT)
    return "".join(ch for ch in local if ch.isascii() and (ch.isalnum() or ch == ".")) or "signer"


@dataclass(frozen=True)
class Persona:
    country: str
    name: bytes  # "First Last", encoded
    local: str  # the address's local part, transliterated
    cities: tuple[bytes, ...]
    languages: tuple[str, ...]


def _people() -> tuple[list[Persona], list[tuple[int, int]]]:
    """Every first/last name pair of every country, and one (first, how many) range of them per percent of the
    country mix."""
    people: list[Persona] = []
    slots: list[tuple[int, int]] = []
    for country, (share, pool, cities) in COUNTRIES.items():
        firsts, lasts, langs = NAME_POOLS[pool]
        slots.extend([(len(people), len(firsts) * len(lasts))] * share)
        people.extend(Persona(country, f"{f} {la}".encode(), _local_part(f, la), tuple(c.encode() for c in cities),
                              tuple(langs)) for f in firsts for la in lasts)
    assert len(slots) == 100
    return people, slots


PEOPLE, SLOTS = _people()
MESSAGES_ENCODED = [m.encode() for m in MESSAGES]


@dataclass(frozen=True)
class Run:
    """One fill: `count` rows in `parts` partitions of the email_key space, made from one seed."""

    campaign: str
    tag: str  # in every address of the run, so two runs never make the same address
    count: int
    parts: int
    confirmed_share: float
    now: datetime
    days: int
    seed: int
    dialect: str = "sqlite"


@dataclass
class Chunk:
    """One partition, made: a serialized SQLite database holding table `rows` (SQLite), or the rows themselves."""

    counts: Counter  # confirmed rows added per (country, day)
    image: bytes | None = None
    values: list[tuple] | None = None


@dataclass
class Filled:
    rows: int
    confirmed: int
    seconds: float
    processes: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _sealer(keyring: Keyring) -> Callable[[bytes, bytes, bytes], bytes]:
    """seal(nonce, plain, field) -> what `keyring.seal` makes, with the nonce taken from a bulk draw of the OS's
    randomness instead of one system call per field. Checked by opening a probe with the keyring; if the keyring
    seals differently, its own `seal` is used (and the given nonce ignored)."""
    aead = keyring.keys[keyring.primary]

    def seal(nonce: bytes, plain: bytes, field: bytes) -> bytes:
        return nonce + aead.encrypt(nonce, plain, field)

    if type(keyring).seal is Keyring.seal and _opens(keyring, seal(os.urandom(12), b"probe", b"name")):
        return seal
    return lambda nonce, plain, field: keyring.seal(plain.decode(), field.decode())


def _opens(keyring: Keyring, sealed: bytes) -> bool:
    try:
        return keyring.open(sealed, "name", keyring.primary) == "probe"
    except Exception:  # a different sealed format: not ours to make
        return False


class Maker:
    """Makes the rows of a run; one in each worker process (inherited by fork: keys never travel through a pipe).

    Phase 1 draws who each row is (country, name, address) and computes its email_key, sorted into partitions of
    the key space. Phase 2 makes a partition's rows in email_key order, and each partition takes its own slice of
    the confirmation and manage-token hashes and of the signing times: every index of `signatures` then grows in
    ascending order over the whole load (appends at its end) instead of at random places."""

    def __init__(self, run: Run, keyring: Keyring) -> None:
        self.run, self.keyring = run, keyring
        self.email_key = lambda address: keyring.email_key(address.decode())
        self.seal = _sealer(keyring)
        self.now_us = (run.now - _EPOCH) // timedelta(microseconds=1)
        self.spread_us = run.days * _DAY_US
        # Every day a stored time of this run can fall on: the spread up to now, and a week on for the expiry.
        first, last = (self.now_us - self.spread_us) // _DAY_US, self.now_us // _DAY_US + 7
        self.days = {d: (_EPOCH + timedelta(days=d)).date() for d in range(first, last + 1)}
        self.day_texts = {d: day.isoformat() for d, day in self.days.items()}

    def identities(self, start: int, stop: int) -> list[tuple[bytes, bytes, bytes]]:
        """Phase 1, for rows [start, stop): who they are (index into PEOPLE), their address and its email_key,
        sorted into partitions of the email_key space: per partition (people as array 'H' bytes, the addresses
        joined by newlines, the keys joined)."""
        run, email_key = self.run, self.email_key
        parts, tag, slots, people = run.parts, run.tag, SLOTS, PEOPLE
        rng = random.Random(f"{run.seed}:{start}")
        picks = rng.randbytes(4 * (stop - start))
        who: list[list[int]] = [[] for _ in range(parts)]
        emails: list[list[bytes]] = [[] for _ in range(parts)]
        keys: list[list[bytes]] = [[] for _ in range(parts)]
        for i, n in enumerate(range(start, stop)):
            pick = picks[4 * i:4 * i + 4]
            first, size = slots[(pick[0] << 8 | pick[1]) % 100]
            person = first + (pick[2] << 8 | pick[3]) % size
            # Already in normalised form (lower-case ASCII, no +tag), so it is its own dedupe key.
            email = f"{people[person].local}.{tag}{n}@example.org".encode()
            key = email_key(email)
            p = (key[0] << 8 | key[1]) * parts >> 16
            who[p].append(person)
            emails[p].append(email)
            keys[p].append(key)
        return [(array("H", who[p]).tobytes(), b"\n".join(emails[p]), b"".join(keys[p])) for p in range(parts)]

    def hashes(self, part: int, count: int) -> list[bytearray]:
        """`count` random 32-byte values in this partition's slice of the value space, in ascending order of their
        first two bytes (spread evenly over the slice; the other 30 bytes are the OS's randomness)."""
        parts = self.run.parts
        low = part * 65536 // parts
        width = max((part + 1) * 65536 // parts - low, 1)
        values = bytearray(os.urandom(32 * count))
        prefixes = [low + i * width // count for i in range(count)]
        values[0::32] = bytes([p >> 8 for p in prefixes])
        values[1::32] = bytes([p & 0xFF for p in prefixes])
        return [values[32 * i:32 * i + 32] for i in range(count)]

    def rows(self, part: int, who: bytes, emails: bytes, keys: bytes, *, null: object = None
             ) -> tuple[list[tuple], Counter]:
        """Phase 2: the rows of one partition in email_key order, as tuples in COLUMNS order ready for the driver
        (`null` in the NULLABLE columns when empty), and the confirmed count they add per (country, day)."""
        run = self.run
        people = array("H")
        people.frombytes(who)
        m = len(people)
        addresses = emails.split(b"\n") if m else []
        key_list = [keys[32 * i:32 * i + 32] for i in range(m)]
        order = sorted(range(m), key=key_list.__getitem__)
        rng = random.Random(f"{run.seed}/{part}")
        # This partition's slice of the signing times, ascending. Most signatures come in the first days after
        # the launch, a tail follows (a viral spike).
        low, scale = part / run.parts, 1 / run.parts
        now_us, spread_us = self.now_us, self.spread_us
        created_us = sorted([now_us - int(spread_us * (1 - (low + rng.random() * scale) ** 0.35)) for _ in range(m)])
        share = run.confirmed_share
        confirmed = [rng.random() < share for _ in range(m)]
        n_confirmed = sum(confirmed)
        delays = [int(rng.expovariate(1 / 900) * 1_000_000) for _ in range(n_confirmed)]
        picks = rng.randbytes(4 * m)  # city, message, language, discreet
        # Random hashes: nobody holds the matching link, code or private page of a demo signer.
        token_hashes = self.hashes(part, m)
        manage_hashes = self.hashes(part, n_confirmed)
        # bytearray, not bytes, for every blob (the slices of a bytearray are bytearrays, and so is a nonce plus
        # a ciphertext): sqlite3 binds a bytearray directly but passes bytes through its adapter lookup.
        noise = bytearray(os.urandom(32 * (m - n_confirmed) + 48 * m))  # code hashes, then 4 nonces a row
        nonce_at = 32 * (m - n_confirmed)
        on_sqlite = run.dialect == "sqlite"
        yes, no = (1, 0) if on_sqlite else (True, False)
        suffix = "" if on_sqlite else "+00:00"  # SQLAlchemy's SQLite form; explicit UTC for PostgreSQL
        campaign, primary = run.campaign, self.keyring.primary
        seal, everyone, day_texts, clocks = self.seal, PEOPLE, self.day_texts, _CLOCKS
        messages = MESSAGES_ENCODED
        rows: list[tuple] = []
        append = rows.append
        confirmations: list[tuple[str, int]] = []  # (country, day number) of each confirmed row
        add_confirmation = confirmations.append
        code_at = managed = 0
        created_format = "%s %s.%06d" + suffix  # a stored time; %-formatting is the cheapest way to it here
        for i in range(m):
            j = order[i]
            person = everyone[people[j]]
            moment = created_us[i]
            day, moment = divmod(moment, _DAY_US)
            second, micro = divmod(moment, 1_000_000)
            clock = clocks[second]
            k = 4 * i
            o = nonce_at + 12 * k
            if confirmed[i]:
                confirmed_day, moment = divmod(min(created_us[i] + delays[managed], now_us), _DAY_US)
                second, micro2 = divmod(moment, 1_000_000)
                confirmed_at = created_format % (day_texts[confirmed_day], clocks[second], micro2)
                add_confirmation((person.country, confirmed_day))
                code_hash = null
                manage_hash = manage_hashes[managed]
                managed += 1
                status = CONFIRMED
            else:
                confirmed_at = null
                code_hash = noise[code_at:code_at + 32]
                code_at += 32
                manage_hash = null
                status = PENDING
            pick = picks[k]
            cities = person.cities
            city = seal(noise[o + 24:o + 36], cities[pick % len(cities)], b"city") if pick < 218 else null
            pick = picks[k + 1]
            message = seal(noise[o + 36:o + 48], messages[pick % 6], b"message") if pick < 51 else null
            languages = person.languages
            append((
                campaign,
                bytearray(key_list[j]),
                primary,
                seal(noise[o:o + 12], person.name, b"name"),
                seal(noise[o + 12:o + 24], addresses[j], b"email"),
                city,
                message,
                person.country,
                languages[picks[k + 2] % len(languages)],
                status,
                yes if picks[k + 3] < 26 else no,
                created_format % (day_texts[day], clock, micro),
                confirmed_at,
                token_hashes[i],
                code_hash,
                0,
                created_format % (day_texts[day + 7], clock, micro),
                manage_hash,
            ))
        counts = Counter({(country, self.days[day]): n for (country, day), n in Counter(confirmations).items()})
        return rows, counts

    def chunk(self, part: int, who: bytes, emails: bytes, keys: bytes) -> Chunk:
        import sqlite3

        if self.run.dialect != "sqlite" or not hasattr(sqlite3.Connection, "serialize"):
            rows, counts = self.rows(part, who, emails, keys)
            return Chunk(counts, values=rows)
        rows, counts = self.rows(part, who, emails, keys, null=0)

        # The driver's binding work happens here, in the worker: the loading process only copies a finished
        # table into `signatures` (INSERT ... SELECT, no Python object per row).
        memory = sqlite3.connect(":memory:", isolation_level=None)
        try:
            memory.execute(f"CREATE TABLE rows ({', '.join(COLUMNS)})")
            memory.execute("BEGIN")
            memory.executemany(f"INSERT INTO rows VALUES ({', '.join(['?'] * len(COLUMNS))})", rows)
            memory.execute("COMMIT")
            return Chunk(counts, image=memory.serialize())
        finally:
            memory.close()


def insert_sql(dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return f"INSERT INTO signatures ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"


def add_counts(session, campaign: str, counts: Counter) -> None:
    """Advance signature_counts by exactly these confirmed rows (same upsert as a real confirmation)."""
    if not counts:
        return
    counters.add_many(session, [
        {"campaign": campaign, "country": country, "day": day, "confirmed": n}
        for (country, day), n in sorted(counts.items())
    ])


def plan(campaign: str, count: int, *, now: datetime, confirmed_share: float = 0.8, days: int = 30,
         chunk: int = 20_000, seed: int | None = None, dialect: str = "sqlite") -> Run:
    if not 0 <= confirmed_share <= 1:
        raise ValueError("confirmed_share must be between 0 and 1")
    if count < 0 or days < 1 or chunk < 1:
        raise ValueError("count, days and chunk must be positive")
    return Run(campaign, secrets.token_hex(3), count, max(1, min(4096, -(-count // chunk))), confirmed_share,
               now.astimezone(UTC), days, seed if seed is not None else secrets.randbits(32), dialect)


def _ranges(count: int, pieces: int) -> list[tuple[int, int]]:
    step = max(-(-count // pieces), 1)
    return [(start, min(start + step, count)) for start in range(0, count, step)]


Identities = tuple[bytes, bytes, bytes]


def _merge(found: list[list[Identities]], parts: int) -> Iterator[tuple[int, bytes, bytes, bytes]]:
    """The phase-1 answers of every range, joined per partition, in partition order."""
    for p in range(parts):
        pieces = [f[p] for f in found]
        yield (p, b"".join(w for w, _, _ in pieces), b"\n".join(e for _, e, _ in pieces if e),
               b"".join(k for _, _, k in pieces))


@contextmanager
def _no_gc() -> Iterator[None]:
    """Hundreds of thousands of new tuples and no reference cycles: the cyclic collector would only rescan them
    (it cost a third of the time of making a row)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _in_process(run: Run, keyring: Keyring) -> tuple[Maker, Iterator[tuple[int, bytes, bytes, bytes]]]:
    maker = Maker(run, keyring)
    with _no_gc():
        found = [maker.identities(0, run.count)]
    return maker, _merge(found, run.parts)


def chunks(run: Run, keyring: Keyring) -> Iterator[Chunk]:
    """The run's chunks, made in this process (a single process; benchmarks)."""
    maker, tasks = _in_process(run, keyring)
    for task in tasks:
        with _no_gc():
            made = maker.chunk(*task)
        yield made


def made_rows(run: Run, keyring: Keyring) -> Iterator[tuple[list[tuple], Counter]]:
    """The run's rows and counts, partition by partition, as the driver takes them (benchmarks)."""
    maker, tasks = _in_process(run, keyring)
    for task in tasks:
        with _no_gc():
            made = maker.rows(*task)
        yield made


_MAKER: Maker | None = None


def _worker_identities(span: tuple[int, int]) -> list[Identities]:
    assert _MAKER is not None
    with _no_gc():
        return _MAKER.identities(*span)


def _worker_chunk(task: tuple[int, bytes, bytes, bytes]) -> Chunk:
    assert _MAKER is not None
    with _no_gc():
        return _MAKER.chunk(*task)


def _made(run: Run, keyring: Keyring, processes: int) -> Iterator[Chunk]:
    """The run's chunks in partition order, made by `processes` forked workers, at most a few ahead of the
    consumer (memory is bounded by that window, not by the run)."""
    import multiprocessing

    global _MAKER
    _MAKER = Maker(run, keyring)
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            found = pool.map(_worker_identities, _ranges(run.count, 4 * processes))
            tasks = _merge(found, run.parts)
            window = [pool.apply_async(_worker_chunk, (task,)) for task in _take(tasks, 2 * processes)]
            while window:
                done = window.pop(0)
                for task in _take(tasks, 1):
                    window.append(pool.apply_async(_worker_chunk, (task,)))
                yield done.get()
    finally:
        _MAKER = None


def _take(items: Iterator, n: int) -> list:
    return [item for _, item in zip(range(n), items, strict=False)]


def fill(
    db: Database,
    *,
    campaign: str,
    count: int,
    keyring: Keyring,
    now: datetime,
    confirmed_share: float = 0.8,
    days: int = 30,
    chunk: int = 20_000,
    processes: int | None = None,
    seed: int | None = None,
) -> Filled:
    """Write `count` demo signers. Rows are made (and sealed) in `processes` worker processes while this one
    writes; each partition (about `chunk` rows) is one transaction holding its rows and its counter increments."""
    run = plan(campaign, count, now=now, confirmed_share=confirmed_share, days=days, chunk=chunk, seed=seed,
               dialect=db.dialect)
    processes = processes if processes is not None else min(os.cpu_count() or 1, 4)
    started = time.perf_counter()
    made = chunks(run, keyring) if processes <= 1 else _made(run, keyring, processes)
    confirmed = 0
    with closing(made), db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        try:
            if db.dialect == "sqlite":
                # This connection only, closed (not pooled) afterwards: no fsync at its checkpoints. The rows are
                # demo data, refused outside development and test databases; a crash of this process loses nothing
                # committed, only a power cut during the load could.
                raw.execute("PRAGMA synchronous=OFF")
                raw.execute("ATTACH DATABASE ':memory:' AS demo_chunk")
            for part in made:
                if part.image is not None:
                    raw.deserialize(part.image, name="demo_chunk")  # outside any transaction
                with db.write(bind=conn) as session, session.begin():
                    _insert(session, part)
                    add_counts(session, campaign, part.counts)
                confirmed += sum(part.counts.values())
        finally:
            conn.invalidate()
    # Planner statistics after a bulk load, as after any: without them SQLite walks a campaign's rows through
    # the (campaign, status, confirmed_at) index and sorts them for a keyset page by id.
    with db.write.begin() as session:
        session.execute(text("ANALYZE signatures") if db.dialect == "postgresql" else text("ANALYZE"))
    return Filled(rows=count, confirmed=confirmed, seconds=time.perf_counter() - started, processes=processes)


def _insert(session, part: Chunk) -> None:
    connection = session.connection()
    columns = ", ".join(COLUMNS)
    if part.image is not None:
        values = ", ".join(f"NULLIF({c}, 0)" if c in NULLABLE else c for c in COLUMNS)
        connection.exec_driver_sql(f"INSERT INTO signatures ({columns}) SELECT {values} FROM {CHUNK_TABLE}"
                                   " ORDER BY rowid")
    elif connection.dialect.name == "postgresql":
        with (connection.connection.dbapi_connection.cursor() as cursor,
              cursor.copy(f"COPY signatures ({columns}) FROM STDIN") as copy):
            for row in part.values or ():
                copy.write_row(row)
    else:
        connection.exec_driver_sql(insert_sql(connection.dialect.name), part.values or [])
