"""What every bench script shares: a real server in a subprocess on a free loopback port with its own var dir,
load from a separate process (wrk with a Lua script, or the open-loop generator), memory readings from /proc,
and the summary printed with its ratio and written to bench/results/<name>.json.

Every loop here is bounded in count and time, and only loopback addresses are ever contacted.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"
BIN = Path(sys.executable).parent
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_HOST_PORT = ("127.0.0.1", 6379)
BENCH_DATA_KEY = "b1:" + base64.urlsafe_b64encode(b"b" * 32).decode()
BENCH_SECRET = "bench-secret-0123456789abcdef0123456789"


# --- environment -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def app_env(var_dir: Path, database_url: str = "", **extra: str) -> dict[str, str]:
    """The server's environment as shipped, except: no rate limit, fixed bench keys, no in-process mail sender
    (sending is measured on its own in bench/mail.py; each signature still writes its notice, the mail to be, in
    the signing transaction)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    env.update(
        CAMPAIGN_ENV="development",
        CAMPAIGN_VAR_DIR=str(var_dir),
        CAMPAIGN_DATABASE_URL=database_url,
        CAMPAIGN_DATA_KEY=BENCH_DATA_KEY,
        CAMPAIGN_SECRET_KEY=BENCH_SECRET,
        CAMPAIGN_SIGN_RATE_LIMIT="off",
        CAMPAIGN_OUTBOX_IN_PROCESS="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def campaign_cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "python"), "-m", "app.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=True,
    )


@contextmanager
def var_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def postgres_database(prefix: str) -> Iterator[str | None]:
    """A fresh database on the local PostgreSQL server (None when there is none), dropped afterwards."""
    if not reachable("127.0.0.1", 5432):
        yield None
        return
    from sqlalchemy import create_engine, text

    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- the server --------------------------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server process and its children (uvicorn's workers)."""
        return process_tree(self.process.pid)

    def rss_mb(self) -> float:
        return sum(rss_mb(pid) for pid in self.pids())

    def peak_rss_mb(self) -> float:
        return sum(rss_mb(pid, "VmHWM") for pid in self.pids())


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            found.extend(int(c) for c in task.read_text().split())
    return found


def server_roles(srv: Server) -> dict[str, int]:
    """The processes that do the work, by role: the serving process (uvicorn's master with one worker, else each
    worker it started) and the sign-writer process each one starts; resource trackers and a multi-worker master,
    which serve nothing, are left out."""
    def useful(pid: int) -> list[int]:
        return [c for c in children(pid) if "resource_tracker" not in process_cmdline(c)]

    master = srv.process.pid
    below = useful(master)
    servers = [master] if all(not useful(c) for c in below) else below  # with one worker, its writer is below
    roles: dict[str, int] = {}
    for n, pid in enumerate(servers):
        suffix = f" {n + 1}" if len(servers) > 1 else ""
        roles[f"server{suffix}"] = pid
        for m, writer in enumerate(useful(pid)):
            roles[f"sign writer{suffix}{'.' + str(m + 1) if m else ''}"] = writer
    return roles


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            with suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return found


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextmanager
def server(env: dict[str, str], *, workers: int = 1, log_dir: Path) -> Iterator[Server]:
    """`campaign serve` as shipped, on a free loopback port; stopped with SIGTERM (a clean shutdown commits
    whatever the intake still holds) and, after 20 s, SIGKILL."""
    port = free_port()
    if workers > 1 and not env.get("CAMPAIGN_REDIS_URL"):
        # `serve` refuses several workers without Redis (they would keep separate limits); the sign path does not
        # touch it while the limit is off, so this changes no figure.
        env = {**env, "CAMPAIGN_REDIS_URL": f"redis://{REDIS_HOST_PORT[0]}:{REDIS_HOST_PORT[1]}/15"}
    log = log_dir / f"server-{port}.log"
    with log.open("w") as fh:
        process = subprocess.Popen(
            [str(BIN / "python"), "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers)],
            env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    srv = Server(port, process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{srv.base}/api/v1/ping", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        if workers > 1:
            time.sleep(1.5)  # let every worker finish starting before load arrives
        yield srv
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


# --- load ----------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """One load run: requests/s, latency percentiles (ms), answers by kind."""

    method: str
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    ok: int
    bad: int
    errors: int
    duration_s: float
    extra: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.rps:9.0f} req/s  p50 {self.p50_ms:6.1f} ms  p90 {self.p90_ms:6.1f} ms  "
                f"p99 {self.p99_ms:6.1f} ms  ok {self.ok}  non-2xx {self.bad}  socket errors {self.errors}")


def wrk(url: str, *, script: str, args: list[str] | None = None, threads: int = 2, connections: int = 32,
        seconds: int = 8, timeout_s: int = 10) -> Load:
    """wrk (closed loop: each connection sends its next request when the last is answered)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `make system-deps` (Debian package wrk)")
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", f"{timeout_s}s",
           "-s", str(BENCH_DIR / script), url]
    if args:
        cmd += ["--", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    summary = None
    for line in done.stdout.splitlines():
        if line.startswith("JSON "):
            summary = json.loads(line[5:])
    if summary is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    errors = sum(summary["errors"].values())
    return Load(
        method=f"wrk -t{threads} -c{connections} -d{seconds}s (closed loop)",
        rps=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000, p90_ms=summary["p90_us"] / 1000, p99_ms=summary["p99_us"] / 1000,
        requests=summary["requests"], ok=summary["ok"], bad=summary["bad"], errors=errors,
        duration_s=summary["duration_us"] / 1e6, extra={"socket_errors": summary["errors"]},
    )


def open_loop(url: str, *, rate: float, seconds: float, body: str | None = None, tag: str = "ol",
              connections: int = 256, paths_file: Path | None = None, headers: dict[str, str] | None = None) -> Load:
    """The open-loop generator (bench/openloop.py) in its own process: requests leave on a fixed schedule,
    whether or not earlier ones were answered, and latency counts from the scheduled time (no coordinated
    omission), as wrk2 would measure. Up to 256 connections, as many people signing at once would open: with 64,
    any latency above 64/rate (15 ms at 4,300 req/s) became waiting for a free connection inside the generator.
    With `paths_file`: GETs of its paths in turn on `url`'s server, each carrying `headers`, each expected 200."""
    cmd = [str(BIN / "python"), "-m", "bench.openloop", "--url", url, "--rate", str(rate),
           "--seconds", str(seconds), "--tag", tag, "--connections", str(connections)]
    if body:
        cmd += ["--body", body]
    if paths_file is not None:
        cmd += ["--paths-file", str(paths_file)]
        for name, value in (headers or {}).items():
            cmd += ["--header", f"{name}: {value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, cwd=ROOT, check=True)
    s = json.loads(done.stdout.strip().splitlines()[-1])
    return Load(
        method=f"open loop at {rate:.0f} req/s for {seconds:.0f} s, up to {connections} connections",
        rps=s["rps"], p50_ms=s["p50_ms"], p90_ms=s["p90_ms"], p99_ms=s["p99_ms"], requests=s["requests"],
        ok=s["ok"], bad=s["bad"], errors=s["errors"], duration_s=s["duration_s"],
        extra={"max_ms": s["max_ms"], "late_starts": s["late_starts"]},
    )


# --- results -------------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure against its baseline from the same run; `goal` is the ratio it must reach."""

    name: str
    value: float
    unit: str
    baseline: float
    baseline_name: str
    goal: float | None = None
    higher_is_better: bool = True
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if not self.baseline:
            return 0.0
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio >= self.goal


@dataclass
class Check:
    """A goal that is not a ratio (latency bound, exactness, memory): its measured value and whether it holds."""

    name: str
    value: object
    goal: str
    met: bool


@dataclass
class Report:
    name: str
    figures: list[Figure] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def figure(self, *args, **kwargs) -> Figure:
        fig = Figure(*args, **kwargs)
        self.figures.append(fig)
        goal = f"  goal >= {fig.goal:.2f}x {'MET' if fig.met else 'NOT MET'}" if fig.goal is not None else ""
        print(f"  {fig.name}: {fig.value:,.1f} {fig.unit} vs {fig.baseline_name} {fig.baseline:,.1f} {fig.unit}"
              f" -> ratio {fig.ratio:.2f}x{goal}", flush=True)
        return fig

    def check(self, name: str, value: object, goal: str, met: bool) -> Check:
        chk = Check(name, value, goal, met)
        self.checks.append(chk)
        print(f"  {name}: {value}  (goal {goal}) {'MET' if met else 'NOT MET'}", flush=True)
        return chk

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        out = {
            "bench": self.name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "figures": [
                {"name": f.name, "value": round(f.value, 3), "unit": f.unit, "baseline": round(f.baseline, 3),
                 "baseline_name": f.baseline_name, "ratio": round(f.ratio, 3), "goal_ratio": f.goal,
                 "met": f.met, **({"notes": f.notes} if f.notes else {})}
                for f in self.figures
            ],
            "checks": [{"name": c.name, "value": c.value, "goal": c.goal, "met": c.met} for c in self.checks],
            "details": self.details,
        }
        path.write_text(json.dumps(out, indent=2, ensure_ascii=False, default=str) + "\n")
        print(f"  -> {path.relative_to(ROOT)}", flush=True)
        return path


def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
