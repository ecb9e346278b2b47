"""A loopback SMTP sink in its own process (aiosmtpd) that counts what it receives by Message-ID.

    python -m bench.smtpsink --port 2525 --out counts.json
Runs until SIGTERM (or --seconds), then writes {"messages": n, "unique_ids": n, "duplicates": {...}} to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
import time
from collections import Counter

from aiosmtpd.controller import Controller

MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


class Counting:
    def __init__(self) -> None:
        self.ids: Counter[bytes] = Counter()
        self.messages = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        head = envelope.original_content or envelope.content
        found = MESSAGE_ID.search(head[: head.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in head else head)
        with self.lock:
            self.messages += 1
            self.ids[found.group(1) if found else b"<none>"] += 1
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=1800, help="stop by itself after this long")
    args = parser.parse_args()
    handler = Counting()
    controller = Controller(handler, hostname="127.0.0.1", port=args.port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.2)
    controller.stop()
    with handler.lock:
        duplicates = {k.decode(errors="replace"): n for k, n in handler.ids.items() if n > 1}
        out = {"messages": handler.messages, "unique_ids": len(handler.ids), "duplicates": duplicates}
    with open(args.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
