"""Demo data: fills a campaign with realistic fake signers (Latin, Cyrillic and Kazakh names, real cities, a
country mix, signing days spread over weeks), fast enough to make a million rows for the benchmarks.

Rows are sealed with the real keyring, like any signature, and the per-country-per-day counters grow by exactly
the confirmed rows written, in the same transaction, so `signing.recount` always equals the stored counter.
Every address is under example.org (reserved by RFC 2606: never a real person's inbox).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite

from app.db import Database
from app.encryption import Keyring
from app.models import CONFIRMED, PENDING, SignatureCount

# (first names, last names, transliteration of both for the address, languages they sign in)
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

# country: (share in the mix, name pool, cities)
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


@dataclass(frozen=True)
class Plan:
    """What one chunk makes: rows [start, start + count) of a run, all from one seed."""

    campaign: str
    run: str
    start: int
    count: int
    confirmed_share: float
    now: datetime
    days: int
    seed: int
    dialect: str = "sqlite"


@dataclass
class Filled:
    rows: int
    confirmed: int
    seconds: float
    processes: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _local_part(first: str, last: str) -> str:
    local = f"{first}.{last}".lower().translate(TRANSLIT)
    return "".join(ch for ch in local if ch.isascii() and (ch.isalnum() or ch == ".")) or "signer"


COLUMNS = (
    "campaign", "email_key", "key_id", "name_enc", "email_enc", "city_enc", "message_enc", "country", "language",
    "status", "discreet", "created_at", "confirmed_at", "confirm_token_hash", "confirm_code_hash", "code_attempts",
    "confirm_expires_at", "manage_token_hash",
)


def make_rows(plan: Plan, keyring: Keyring) -> tuple[list[tuple], Counter]:
    """The rows of one chunk as tuples in COLUMNS order, sealed and ready for the driver, and the confirmed
    count they add per (country, day). Sorted by email_key, so the index inserts of a chunk land close together."""
    rng = random.Random(plan.seed)
    countries = list(COUNTRIES)
    cum_weights = list(itertools.accumulate(COUNTRIES[c][0] for c in countries))
    spread = timedelta(days=plan.days).total_seconds()
    rows: list[tuple] = []
    counts: Counter = Counter()
    seal, primary, email_key = keyring.seal, keyring.primary, keyring.email_key
    randbytes = os.urandom(plan.count * 96)
    on_sqlite = plan.dialect == "sqlite"
    now = plan.now.astimezone(UTC)
    locals_: dict[tuple[str, str], str] = {}

    def stored(moment: datetime | None):
        if moment is None or not on_sqlite:
            return moment
        return moment.replace(tzinfo=None).isoformat(" ", "microseconds")  # SQLAlchemy's SQLite form

    for i in range(plan.count):
        n = plan.start + i
        country = rng.choices(countries, cum_weights=cum_weights)[0]
        _, pool_name, cities = COUNTRIES[country]
        firsts, lasts, langs = NAME_POOLS[pool_name]
        first, last = rng.choice(firsts), rng.choice(lasts)
        local = locals_.get((first, last)) or locals_.setdefault((first, last), _local_part(first, last))
        # Already in normalised form (lower-case ASCII, no +tag), so it is its own dedupe key.
        email = f"{local}.{plan.run}{n}@example.org"
        # Most signatures come in the first days after the launch, a tail follows (a viral spike).
        created = now - timedelta(seconds=spread * (1 - rng.random() ** 0.35))
        confirmed = rng.random() < plan.confirmed_share
        confirmed_at = min(created + timedelta(seconds=rng.expovariate(1 / 900)), now) if confirmed else None
        city = rng.choice(cities) if rng.random() < 0.85 else ""
        message = rng.choice(MESSAGES) if rng.random() < 0.2 else ""
        noise = randbytes[i * 96:(i + 1) * 96]
        rows.append((
            plan.campaign,
            email_key(email),
            primary,
            seal(f"{first} {last}", "name"),
            seal(email, "email"),
            seal(city, "city") if city else None,
            seal(message, "message") if message else None,
            country,
            rng.choice(langs),
            CONFIRMED if confirmed else PENDING,
            rng.random() < 0.1,
            stored(created),
            stored(confirmed_at),
            # Random hashes: nobody holds the matching link, code or private page of a demo signer.
            noise[:32],
            None if confirmed else noise[32:64],
            0,
            stored(created + timedelta(days=7)),
            noise[64:] if confirmed else None,
        ))
        if confirmed_at is not None:
            counts[(country, confirmed_at.date())] += 1
    rows.sort(key=lambda row: row[1])
    return rows, counts


def insert_sql(dialect: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return f"INSERT INTO signatures ({', '.join(COLUMNS)}) VALUES ({', '.join([mark] * len(COLUMNS))})"


_WORKER_KEYRING: Keyring | None = None


def _worker_rows(plan: Plan) -> tuple[list[tuple], Counter]:
    assert _WORKER_KEYRING is not None
    return make_rows(plan, _WORKER_KEYRING)


def _plans(campaign: str, count: int, *, confirmed_share: float, now: datetime, days: int, chunk: int,
           seed: int, dialect: str) -> Iterator[Plan]:
    run = secrets.token_hex(3)
    for start in range(0, count, chunk):
        yield Plan(campaign, run, start, min(chunk, count - start), confirmed_share, now, days, seed + start,
                   dialect)


def add_counts(session, campaign: str, counts: Counter) -> None:
    """Advance signature_counts by exactly these confirmed rows (same upsert as a real confirmation)."""
    if not counts:
        return
    dialect = session.get_bind().dialect.name
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert_(SignatureCount)
    stmt = stmt.on_conflict_do_update(
        index_elements=["campaign", "country", "day"],
        set_={"confirmed": SignatureCount.confirmed + stmt.excluded.confirmed},
    )
    session.execute(stmt, [
        {"campaign": campaign, "country": country, "day": day, "confirmed": n}
        for (country, day), n in sorted(counts.items())
    ])


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
    inserts; each chunk is one transaction holding its rows and its counter increments."""
    if not 0 <= confirmed_share <= 1:
        raise ValueError("confirmed_share must be between 0 and 1")
    processes = processes if processes is not None else min(os.cpu_count() or 1, 4)
    seed = seed if seed is not None else secrets.randbits(32)
    plans = _plans(campaign, count, confirmed_share=confirmed_share, now=now, days=days, chunk=chunk, seed=seed,
                   dialect=db.dialect)
    # The driver's own executemany with values already in its form: SQLAlchemy's per-value bind processing
    # would cost more than making and sealing the row.
    statement = insert_sql(db.dialect)
    confirmed = 0
    started = time.perf_counter()

    def write(rows: list[tuple], counts: Counter) -> None:
        nonlocal confirmed
        with db.write.begin() as session:
            session.connection().exec_driver_sql(statement, rows)
            add_counts(session, campaign, counts)
        confirmed += sum(counts.values())

    if processes <= 1:
        for plan in plans:
            write(*make_rows(plan, keyring))
    else:
        global _WORKER_KEYRING
        _WORKER_KEYRING = keyring  # inherited by the forked workers; keys never travel through a pipe
        try:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                for rows, counts in pool.imap(_worker_rows, plans):
                    write(rows, counts)
        finally:
            _WORKER_KEYRING = None
    # Planner statistics after a bulk load, as after any: without them SQLite walks a campaign's rows through
    # the (campaign, status, confirmed_at) index and sorts them for a keyset page by id.
    with db.write.begin() as session:
        session.execute(text("ANALYZE signatures") if db.dialect == "postgresql" else text("ANALYZE"))
    return Filled(rows=count, confirmed=confirmed, seconds=time.perf_counter() - started, processes=processes)
