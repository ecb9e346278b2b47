"""Open-loop load at a fixed rate (what wrk2 does; Debian's wrk has no constant-rate mode).

Request i is due at start + i/rate and leaves then whether or not earlier requests were answered (a pool of
keep-alive connections grows up to --connections; past that it waits for a free one). Its latency counts from
the time it was *due*, so a stalled server shows as latency instead of hiding as a lower send rate
("coordinated omission"). Bounded: rate x seconds requests, and a hard stop 30 s after the last one is due.

The generator shares this machine's two cores with the server it measures, so it is kept light: one protocol
object per connection parses answers as bytes arrive (no task or stream per request), about a third of the CPU
per request of an asyncio-streams client.

    python -m bench.openloop --url http://127.0.0.1:8000/api/v1/ping --rate 1000 --seconds 10
    python -m bench.openloop --url http://127.0.0.1:8000 --mix --rate 1889 --seconds 20   (bench/mix.py)
    python -m bench.openloop --url http://127.0.0.1:8000 --paths-file paths.txt --rate 500 --header "Cookie: a=b"
Prints one JSON line: rps, p50/p90/p99/max ms, ok (the expected status: 2xx, or the kind's own), bad (another
status), errors (socket, or never answered); and the same under "kinds" for each kind of request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from urllib.parse import urlsplit

LANGS = ("en", "ru", "kk")  # {lang} in a body cycles through these, as bench/sign.lua does
STALE_S = 4.0  # a keep-alive connection idle this long is not reused (uvicorn closes them after 5 s)


class Results:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok = self.bad = self.errors = 0


class Request:
    """One planned request: its bytes, its kind (what the figures are kept by) and the status it must get."""

    __slots__ = ("kind", "payload", "expect")

    def __init__(self, kind: str, payload: bytes, expect: bytes = b"2") -> None:
        self.kind, self.payload, self.expect = kind, payload, expect  # expect: a prefix of the status code


class Client(asyncio.Protocol):
    """One keep-alive connection: sends a request, reads its answer, then takes the next waiting one."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0
        self.busy = False
        self.request: Request | None = None
        self.idle_since = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.generator.ready(self)

    def send(self, request: Request, due: float) -> None:
        self.busy, self.due, self.buffer, self.request = True, due, b"", request
        self.transport.write(request.payload)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length, chunked, closing = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name = line[:18].lower()
            if name.startswith(b"content-length:"):
                length = int(line[15:].strip())
            elif name.startswith(b"transfer-encoding:"):
                chunked = b"chunked" in line.lower()
            elif name.startswith(b"connection:"):
                closing = b"close" in line.lower()
        if chunked:  # a proxy may stream an answer: it ends with the empty last chunk
            if not self.buffer.endswith(b"0\r\n\r\n"):
                return
        elif len(self.buffer) < end + 4 + length:
            return
        request = self.request
        results = self.generator.results_for(request.kind)  # type: ignore[union-attr]
        results.latencies.append((time.perf_counter() - self.due) * 1000)
        if head[9:9 + len(request.expect)] == request.expect:  # type: ignore[union-attr]  "HTTP/1.1 202"
            results.ok += 1
        else:
            results.bad += 1
        self.busy = False
        if closing:  # the server ends this connection (nginx after keepalive_requests): never send on it again
            self.generator.outstanding -= 1
            self.transport.close()  # type: ignore[union-attr]
            self.generator.replace()
            return
        self.generator.answered(self)

    def connection_lost(self, exc) -> None:
        self.generator.lost(self)


class Generator:
    def __init__(self, loop, host: str, port: int, limit: int, payload_for) -> None:
        self.loop, self.host, self.port, self.limit, self.payload_for = loop, host, port, limit, payload_for
        self.results: dict[str, Results] = {}
        self.sent: dict[str, int] = {}  # requests due, by kind
        self.idle: list[Client] = []
        self.backlog: deque[tuple[Request, float]] = deque()  # due but no free connection yet
        self.opened = self.opening = 0
        self.outstanding = 0

    def results_for(self, kind: str) -> Results:
        found = self.results.get(kind)
        if found is None:
            found = self.results[kind] = Results()
        return found

    def dispatch(self, i: int, due: float) -> None:
        self.outstanding += 1
        request = self.payload_for(i)
        self.sent[request.kind] = self.sent.get(request.kind, 0) + 1
        while self.idle:
            client = self.idle.pop()  # the most recently used first, so the others age out
            if time.perf_counter() - client.idle_since < STALE_S:
                client.send(request, due)
                return
            # The server may be closing it this very moment (uvicorn: after 5 s idle); a request sent then is lost
            # to a race that a browser would retry, so it is retired unused.
            client.transport.close()  # type: ignore[union-attr]
        self.backlog.append((request, due))
        if self.opened + self.opening < self.limit:
            self.opening += 1
            self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            await self.loop.create_connection(lambda: Client(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.backlog:  # nothing else may come to take it
                request, _ = self.backlog.popleft()
                self.outstanding -= 1
                self.results_for(request.kind).errors += 1
            return
        self.opening -= 1
        self.opened += 1

    def replace(self) -> None:
        """A connection the server closed after its answer: open another if requests are waiting."""
        if self.backlog and self.opened + self.opening - 1 < self.limit:
            self.opening += 1
            self.loop.create_task(self._open())

    def answered(self, client: Client) -> None:
        self.outstanding -= 1
        self.ready(client)

    def ready(self, client: Client) -> None:
        if self.backlog:
            client.send(*self.backlog.popleft())
        else:
            client.idle_since = time.perf_counter()
            self.idle.append(client)

    def lost(self, client: Client) -> None:
        self.opened -= 1
        if client in self.idle:
            self.idle.remove(client)
        if client.busy:
            self.outstanding -= 1
            self.results_for(client.request.kind).errors += 1  # type: ignore[union-attr]


def request_bytes(method: str, host: str, path: str, body: bytes | None, *,
                  content_type: str = "application/json", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def summary(results: Results, total: int, elapsed: float) -> dict:
    """One kind's figures: answered per second, latency percentiles from the due times, answers by kind."""
    lat = sorted(results.latencies)

    def at(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else 0.0

    unanswered = total - results.ok - results.bad - results.errors
    return {
        "requests": total, "rps": round((results.ok + results.bad) / elapsed, 1), "duration_s": round(elapsed, 2),
        "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": round(lat[-1], 2) if lat else 0.0,
        "ok": results.ok, "bad": results.bad, "errors": results.errors + unanswered,
    }


def merged(parts: list[Results]) -> Results:
    out = Results()
    for part in parts:
        out.latencies += part.latencies
        out.ok, out.bad, out.errors = out.ok + part.ok, out.bad + part.bad, out.errors + part.errors
    return out


def single(url: str, body: str | None, tag: str):
    """The plan of a one-URL run: GETs, or POSTs of `body` with {n}, {tag}, {lang} filled in."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "127.0.0.1"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    get = Request("request", request_bytes("GET", host, path, None))

    def payload_for(i: int) -> Request:
        if body is None:
            return get
        text = body.replace("{n}", str(i)).replace("{tag}", tag).replace("{lang}", LANGS[i % 3])
        return Request("request", request_bytes("POST", host, path, text.encode()))

    return payload_for


def read_paths(file: str) -> list[str]:
    """The paths of a --paths-file, one a line (blank lines skipped)."""
    with open(file, encoding="utf-8") as fh:
        found = [line.strip() for line in fh if line.strip()]
    if not found:
        raise SystemExit(f"no paths in {file}")
    return found


def cycling(url: str, paths: list[str], headers: dict[str, str]):
    """The plan of a run over many paths: GETs of each in turn (wrapping round), each expected to answer 200."""
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "127.0.0.1"
    requests = [Request("request", request_bytes("GET", host, path, None, headers=headers), b"200") for path in paths]
    return lambda i: requests[i % len(requests)]


def header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"not a header (Name: value): {text!r}")
    return name.strip(), value.strip()


async def run(url: str, rate: float, seconds: float, connections: int, payload_for) -> dict:
    """Send request i of `payload_for(i)` at start + i/rate; figures in all and by kind."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
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
    kinds = {kind: summary(gen.results_for(kind), n, elapsed) for kind, n in gen.sent.items()}
    return {
        **summary(merged(list(gen.results.values())), total, elapsed), "late_starts": late,
        "connections_opened": gen.opened, "kinds": kinds,
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
    parser.add_argument("--mix", action="store_true", help="the spike's mix of page views, signs and stats "
                        "(bench/mix.py) instead of one URL")
    parser.add_argument("--public-url", help="with --mix: the site's public URL, which a form sign names as its "
                        "Origin (the proxy's when one is in front)")
    parser.add_argument("--paths-file", help="GET each path of this file (one a line) in turn, instead of --url's "
                        "own path; each must answer 200")
    parser.add_argument("--header", type=header, action="append", default=[], help="with --paths-file: a header "
                        "every request carries, as 'Name: value' (repeatable)")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("open-loop load goes to loopback only")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.mix:
        from bench.mix import plan

        payload_for = plan(args.url, tag=args.tag, public_url=args.public_url or args.url)
    elif args.paths_file:
        payload_for = cycling(args.url, read_paths(args.paths_file), dict(args.header))
    else:
        payload_for = single(args.url, args.body, args.tag)
    result = asyncio.run(run(args.url, args.rate, args.seconds, args.connections, payload_for))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
