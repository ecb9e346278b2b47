"""Sampling profiles of running server processes with py-spy (PyPI; `make bench` installs it), for the note on
what limits the sign path's latency (issue 16 item 5).

`attached(pids, seconds, name)` samples each process for `seconds` while the caller drives load, keeps the
collapsed stacks as bench/results/<name>-<role>.txt (one line per stack: frames separated by ';', then the sample
count), and returns for each role its top functions by own time and by time inside (the function and what it
called). Sampling is `--nonblocking` (the process is never paused), at 250 Hz, with idle frames left out, so the
shares are of the time the process was running Python or native code, not waiting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from bench.harness import BIN, RESULTS_DIR


def pyspy() -> str | None:
    found = os.environ.get("BENCH_PYSPY") or shutil.which("py-spy")
    if found:
        return found
    local = BIN / "py-spy"
    return str(local) if local.exists() else None


def frame_name(frame: str) -> str:
    """'encrypt (cryptography/.../aead.py:123)' -> 'encrypt (cryptography/.../aead.py)': one name per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise(raw: Path, top: int = 15) -> dict:
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inside[name] += n
    share = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total,
            "own_percent": [[name, share(n)] for name, n in own.most_common(top)],
            "inside_percent": [[name, share(n)] for name, n in inside.most_common(top * 2)]}


@contextmanager
def attached(pids: dict[str, int], seconds: float, name: str):
    """py-spy on each process for `seconds` (load is the caller's); yields a dict filled with the summaries."""
    binary = pyspy()
    found: dict[str, object] = {}
    if binary is None:
        found["skipped"] = "py-spy is not installed (pip install py-spy)"
        yield found
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    running = {}
    for role, pid in pids.items():
        out = RESULTS_DIR / f"{name}-{role.replace(' ', '-')}.txt"
        running[role] = (out, subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250", "--nonblocking",
             "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        yield found
    finally:
        for role, (out, process) in running.items():
            try:
                _, err = process.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                err = "timed out"
            found[role] = summarise(out) if out.exists() else {"error": err.strip()[-500:]}
            if out.exists():
                found[role]["collapsed_stacks"] = str(out.relative_to(RESULTS_DIR.parent.parent))


def show(profiles: dict, lines: int = 8) -> None:
    for role, prof in profiles.items():
        if not isinstance(prof, dict) or "own_percent" not in prof:
            print(f"    profile {role}: {prof}", flush=True)
            continue
        print(f"    profile of the {role} ({prof['samples']} samples), own time:", flush=True)
        for fn, pct in prof["own_percent"][:lines]:
            print(f"      {pct:5.1f} %  {fn}", flush=True)
