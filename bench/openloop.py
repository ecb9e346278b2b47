"""Open-loop load at a fixed rate (what wrk2 does; Debian's wrk has no constant-rate mode).

Request i is due at start + i/rate and leaves then whether or not earlier requests were answered (a pool of
keep-alive connections grows up to --connections; past that it waits for a free one). Its latency counts from
the time it was *due*, so a stalled server shows as latency instead of hiding as a lower send rate
("coordinated omission"). Bounded: rate x seconds requests, and a hard stop 30 s after the last one is due.

The generator shares this machine's two cores with the server it measures, so it is kept light: one protocol
object per connection parses answers as bytes arrive (no task or stream per request), about a third of the CPU
per request of an asyncio-streams client.

    python -m bench.openloop --url http://127.0.0.1:8000/api/v1/ping --rate 1000 --seconds 10
Prints one JSON line: rps, p50/p90/p99/max ms, ok (2xx), bad (other status), errors (socket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from urllib.parse import urlsplit

LANGS = ("en", "ru", "kk")  # {lang} in a body cycles through these, as bench/sign.lua does


class Results:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok = self.bad = self.errors = 0


class Client(asyncio.Protocol):
    """One keep-alive connection: sends a request, reads its answer, then takes the next waiting one."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.generator.ready(self)

    def send(self, payload: bytes, due: float) -> None:
        self.busy, self.due, self.buffer = True, due, b""
        self.transport.write(payload)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:].strip())
        if len(self.buffer) < end + 4 + length:
            return
        results = self.generator.results
        results.latencies.append((time.perf_counter() - self.due) * 1000)
        if head[8:10] == b" 2":  # "HTTP/1.1 2xx"
            results.ok += 1
        else:
            results.bad += 1
        self.busy = False
        self.generator.answered(self)

    def connection_lost(self, exc) -> None:
        self.generator.lost(self)


class Generator:
    def __init__(self, loop, host: str, port: int, limit: int, payload_for) -> None:
        self.loop, self.host, self.port, self.limit, self.payload_for = loop, host, port, limit, payload_for
        self.results = Results()
        self.idle: list[Client] = []
        self.backlog: deque[tuple[bytes, float]] = deque()  # due but no free connection yet
        self.opened = self.opening = 0
        self.outstanding = 0

    def dispatch(self, i: int, due: float) -> None:
        self.outstanding += 1
        payload = self.payload_for(i)
        if self.idle:
            self.idle.pop().send(payload, due)
            return
        self.backlog.append((payload, due))
        if self.opened + self.opening < self.limit:
            self.opening += 1
            self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            await self.loop.create_connection(lambda: Client(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.backlog:  # nothing else may come to take it
                self.backlog.popleft()
                self.outstanding -= 1
                self.results.errors += 1
            return
        self.opening -= 1
        self.opened += 1

    def answered(self, client: Client) -> None:
        self.outstanding -= 1
        self.ready(client)

    def ready(self, client: Client) -> None:
        if self.backlog:
            client.send(*self.backlog.popleft())
        else:
            self.idle.append(client)

    def lost(self, client: Client) -> None:
        self.opened -= 1
        if client in self.idle:
            self.idle.remove(client)
        if client.busy:
            self.outstanding -= 1
            self.results.errors += 1


def request_bytes(method: str, host: str, path: str, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def run(url: str, rate: float, seconds: float, body: str | None, tag: str, connections: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")

    def payload_for(i: int) -> bytes:
        if body is None:
            return request_bytes("GET", host, path, None)
        text = body.replace("{n}", str(i)).replace("{tag}", tag).replace("{lang}", LANGS[i % 3])
        return request_bytes("POST", host, path, text.encode())

    loop = asyncio.get_running_loop()
    gen = Generator(loop, host, port, connections, payload_for)
    total = int(rate * seconds)
    late = 0
    start = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        # Everything due by now leaves now, each with its own due time.
        while i < total and start + i / rate <= now:
            due = start + i / rate
            if now - due > 0.005:
                late += 1  # the generator itself fell behind (its latency still counts from `due`)
            gen.dispatch(i, due)
            i += 1
        if i < total:
            # Sleep at least a millisecond (uvloop's timer resolution; dispatching what fell due meanwhile together).
            await asyncio.sleep(max(0.001, start + i / rate - time.perf_counter()))
    deadline = time.perf_counter() + 30
    while gen.outstanding > 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    res = gen.results
    lat = sorted(res.latencies)

    def at(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else 0.0

    unanswered = total - res.ok - res.bad - res.errors
    return {
        "requests": total, "rps": round((res.ok + res.bad) / elapsed, 1), "duration_s": round(elapsed, 2),
        "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": round(lat[-1], 2) if lat else 0.0,
        "ok": res.ok, "bad": res.bad, "errors": res.errors + unanswered, "late_starts": late,
        "connections_opened": gen.opened,
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
