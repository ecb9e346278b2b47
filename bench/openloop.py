"""Open-loop load at a fixed rate (what wrk2 does; Debian's wrk has no constant-rate mode).

Request i is due at start + i/rate and leaves then whether or not earlier requests were answered (a pool of
keep-alive connections grows up to --connections; past that it waits for a free one). Its latency counts from
the time it was *due*, so a stalled server shows as latency instead of hiding as a lower send rate
("coordinated omission"). Bounded: rate x seconds requests, and a hard stop 30 s after the last one is due.

    python -m bench.openloop --url http://127.0.0.1:8000/api/v1/ping --rate 1000 --seconds 10
Prints one JSON line: rps, p50/p90/p99/max ms, ok (2xx), bad (other status), errors (socket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

LANGS = ("en", "ru", "kk")  # {lang} in a body cycles through these, as bench/sign.lua does


class Pool:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: asyncio.Queue = asyncio.Queue()
        self.opened = 0

    async def get(self):
        if self.idle.empty() and self.opened < self.limit:
            self.opened += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.opened -= 1
                raise
        return await self.idle.get()

    def put(self, conn) -> None:
        self.idle.put_nowait(conn)

    def drop(self, conn) -> None:
        self.opened -= 1
        conn[1].close()


async def one(pool: Pool, payload: bytes, due: float, out: dict) -> None:
    try:
        conn = await pool.get()
    except OSError:
        out["errors"] += 1
        return
    reader, writer = conn
    try:
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        if length:
            await reader.readexactly(length)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        out["errors"] += 1
        pool.drop(conn)
        return
    out["latencies"].append((time.perf_counter() - due) * 1000)
    if 200 <= status < 300:
        out["ok"] += 1
    else:
        out["bad"] += 1
    pool.put(conn)


def request_bytes(method: str, host: str, path: str, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def run(url: str, rate: float, seconds: float, body: str | None, tag: str, connections: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    pool = Pool(host, port, connections)
    total = int(rate * seconds)
    out: dict = {"latencies": [], "ok": 0, "bad": 0, "errors": 0}
    tasks: set[asyncio.Task] = set()
    late = 0
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1  # the generator itself fell behind (its latency still counts from `due`)
        payload = request_bytes(
            "POST" if body else "GET", host, path,
            body.replace("{n}", str(i)).replace("{tag}", tag).replace("{lang}", LANGS[i % 3]).encode()
            if body else None,
        )
        task = asyncio.create_task(one(pool, payload, due, out))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    elapsed = time.perf_counter() - start
    lat = sorted(out["latencies"])

    def at(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else 0.0

    unanswered = total - out["ok"] - out["bad"] - out["errors"]
    return {
        "requests": total, "rps": round((out["ok"] + out["bad"]) / elapsed, 1), "duration_s": round(elapsed, 2),
        "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": round(lat[-1], 2) if lat else 0.0,
        "ok": out["ok"], "bad": out["bad"], "errors": out["errors"] + unanswered, "late_starts": late,
        "connections_opened": pool.opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--body", help="JSON body to POST; {n} becomes the request number, {tag} the tag, "
                        "{lang} en/ru/kk in turn")
    parser.add_argument("--tag", default="ol")
    parser.add_argument("--connections", type=int, default=256)
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("open-loop load goes to loopback only")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(args.url, args.rate, args.seconds, args.body, args.tag, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
