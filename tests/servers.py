"""Real server processes for tests where behaviour across processes matters (crash, concurrency, browser).

`AppProcess` runs `uvicorn app.main:create_app --factory` on a free loopback port, configured only through
CAMPAIGN_* environment variables (as in production), and can be stopped politely or killed with SIGKILL.
`upgrade()` migrates a database with the real `campaign db upgrade` command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.settings import ROOT, Settings
from tests.support import TEST_DATA_KEY, TEST_SECRET, free_port, settings_env

CAMPAIGN_BIN = Path(sys.executable).parent / "campaign"


def server_env(*, var_dir: Path, database_url: str, smtp_url: str = "", base_url: str = "",
               **overrides: object) -> dict[str, str]:
    """The environment of a server process: ours only (no CAMPAIGN_* leaks in from the caller's shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")}
    values: dict[str, object] = {
        "env": "test", "var_dir": var_dir, "database_url": database_url, "data_key": TEST_DATA_KEY,
        "secret_key": TEST_SECRET, "sign_rate_limit": "off", "outbox_in_process": False, "smtp_url": smtp_url,
        "mail_jitter_seconds": 0,
        "letters_dir": ROOT / "templates" / "letters", **({"base_url": base_url} if base_url else {}),
    }
    env.update(settings_env(Settings(**values)))
    env.update({f"CAMPAIGN_{key.upper()}": str(value) for key, value in overrides.items()})  # as typed in a shell
    return env


def upgrade(env: dict[str, str]) -> None:
    """`campaign db upgrade` with this environment, as an operator would run it before starting the server."""
    done = subprocess.run([str(CAMPAIGN_BIN), "db", "upgrade"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"campaign db upgrade failed:\n{done.stdout}\n{done.stderr}"


class AppProcess:
    """One uvicorn server (optionally with several worker processes) in its own process group."""

    def __init__(self, env: dict[str, str], *, port: int | None = None, workers: int = 1,
                 log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.env = {**env}
        self.env.setdefault("CAMPAIGN_BASE_URL", self.url)
        self.workers = workers
        self.log_path = log_path or Path(env["CAMPAIGN_VAR_DIR"]) / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> AppProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), "--no-access-log",
             "--no-server-header", "--timeout-graceful-shutdown", "5"],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"server did not answer /healthz within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown handler, no flush, like a power cut of the process."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), SIGKILL if it does not end within 15 s."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


ARTIFACTS = ROOT / "tests" / "artifacts"


def record_figures(name: str, **figures: object) -> None:
    """Print measured figures (shown with -s or -rP) and keep them in tests/artifacts/figures/ for the report."""
    import json

    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(f"\nFIGURES {line}")
    folder = ARTIFACTS / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(line + "\n")
