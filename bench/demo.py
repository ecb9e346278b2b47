"""Demo data and the price of encryption.

1. `campaign demo-data SLUG --count N` (a real CLI process) against the floor measured in the same run: the
   same number of ready rows inserted with sqlite3's own executemany into a fresh migrated file (no Python
   object per row, no sealing), i.e. what SQLite itself allows for this schema and its five indexes.
2. Encryption cost per signature (issue 9 item 3): making demo rows with the real keyring against a plaintext
   stand-in (same code, `seal` only encodes), and the seals one sign request does (name, email, city, message,
   the queued mail's recipient and body) against encoding the same values.

Goal (issue 6): demo-data >= 100,000 rows/s.

    python -m bench.demo            BENCH_DEMO_ROWS=200000
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass

from app import demo
from app.db import utcnow
from app.encryption import Keyring
from bench import harness
from bench.harness import Report

SLUG = "mamay"
ROWS = int(os.environ.get("BENCH_DEMO_ROWS", "200000"))


@dataclass(frozen=True)
class PlainKeyring(Keyring):
    """The same interface, no encryption: the baseline that shows what sealing adds."""

    def seal(self, plain: str | None, field: str) -> bytes | None:
        return None if plain is None else plain.encode()

    def seal_bytes(self, plain: bytes, field: str) -> bytes:
        return bytes(plain)


def per_row_us(keyring: Keyring, n: int) -> float:
    plan = demo.Plan(SLUG, "enc", 0, n, 0.8, utcnow(), 30, 1)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        demo.make_rows(plan, keyring)
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def sign_seals_us(keyring: Keyring, n: int = 20000) -> float:
    """The seals of one sign request, with a typical confirmation mail (~1.6 kB) as the body."""
    body = ("Пожалуйста, подтвердите вашу подпись. " * 40).encode()
    started = time.perf_counter()
    for i in range(n):
        keyring.seal("Айгерім Сейітқали", "name")
        keyring.seal(f"signer{i}@example.org", "email")
        keyring.seal("Алматы", "city")
        keyring.seal("Free Zhanbolat Mamay now.", "message")
        keyring.seal(f"signer{i}@example.org", "recipient")
        keyring.seal_bytes(body, "message")
        keyring.email_key(f"signer{i}@example.org")
    return (time.perf_counter() - started) / n * 1e6


def raw_insert_rows_per_s(var_dir, n: int, keyring: Keyring) -> float:
    env = harness.app_env(var_dir)
    harness.campaign_cli("db", "upgrade", env=env)
    rows: list[tuple] = []
    for start in range(0, n, 20000):
        made, _ = demo.make_rows(demo.Plan(SLUG, "raw", start, min(20000, n - start), 0.8, utcnow(), 30, start),
                                 keyring)
        rows.extend(made)
    conn = sqlite3.connect(var_dir / "campaign.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    for start in range(0, n, 20000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(demo.insert_sql("sqlite"), rows[start:start + 20000])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return n / seconds


def main() -> Report:
    harness.header(f"demo-data ({ROWS:,} signers) and the cost of encryption")
    report = Report("demo")
    keyring = Keyring.parse(harness.BENCH_DATA_KEY)
    with harness.var_dir("demo") as var_dir:
        env = harness.app_env(var_dir)
        harness.campaign_cli("db", "upgrade", env=env)
        started = time.perf_counter()
        done = harness.campaign_cli("demo-data", SLUG, "--count", str(ROWS), env=env, timeout=1800)
        wall = time.perf_counter() - started
        found = re.search(r"\(([\d,]+)\s+rows/s,\s+(\d+)\s+processes\)", done.stderr + done.stdout)
        inside = float(found.group(1).replace(",", "")) if found else ROWS / wall
        print(f"  demo-data: {ROWS:,} rows in {wall:.1f} s wall ({inside:,.0f} rows/s inside the command, "
              f"{found.group(2) if found else '?'} processes)", flush=True)
    with harness.var_dir("demo-raw") as var_dir:
        floor = raw_insert_rows_per_s(var_dir, min(ROWS, 200_000), keyring)
    report.figure("demo-data rows/s (inside the command)", inside, "rows/s", floor,
                  "sqlite3 executemany of ready rows (insert only)", notes={"wall_rows_per_s": ROWS / wall})
    report.check("demo-data rows/s", f"{inside:,.0f} rows/s", ">= 100,000 rows/s", inside >= 100_000)

    sealed = per_row_us(keyring, 20000)
    plain = per_row_us(PlainKeyring(keyring.keys, keyring.primary, keyring.index_keys), 20000)
    report.figure("making a demo row, sealed", sealed, "us/row", plain, "the same rows in plaintext",
                  higher_is_better=False)
    print(f"  encryption adds {sealed - plain:.1f} us per demo row (4 fields sealed + email HMAC)", flush=True)
    seals = sign_seals_us(keyring)
    print(f"  the seals of one sign request (4 fields, mail recipient and ~1.6 kB body, email HMAC): "
          f"{seals:.1f} us", flush=True)
    report.details.update(
        demo_rows=ROWS, demo_wall_seconds=round(wall, 2), raw_insert_rows_per_s=round(floor),
        sealed_row_us=round(sealed, 2), plain_row_us=round(plain, 2),
        encryption_us_per_demo_row=round(sealed - plain, 2), sign_request_seals_us=round(seals, 2),
    )
    report.write()
    return report


if __name__ == "__main__":
    main()
