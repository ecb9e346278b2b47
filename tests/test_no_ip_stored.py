"""No IP address is stored: a real `campaign serve` process, as shipped, takes signatures, confirmations, errors
and rate-limited requests from a marked client address; afterwards no table, log file, mail or Redis key holds
that address."""

from __future__ import annotations

import email
import email.policy
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from app.settings import ROOT
from tests.servers import CAMPAIGN_BIN, server_env, upgrade
from tests.support import SIGNER, free_port


def marker_ip() -> str:
    """An address from TEST-NET-3 (never a real client), new per run so shared Redis limits start fresh."""
    import secrets

    return f"203.0.113.{secrets.randbelow(250) + 2}"


def redis_reachable() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping())
    except Exception:
        return False


def mail_text(raw: bytes) -> str:
    """A mail as a reader sees it: headers and every text part decoded (bodies are base64 on the wire)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = [str(value) for value in msg.values()]
    parts += [part.get_content() for part in msg.walk() if part.get_content_maintype() == "text"]
    return "\n".join(parts)


def everything_stored(var_dir: Path, db_path: Path) -> str:
    texts = []
    for path in var_dir.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            if path.suffix == ".eml":
                texts.append(mail_text(path.read_bytes()))
    con = sqlite3.connect(db_path)
    texts.append("\n".join(con.iterdump()))
    con.close()
    return "\n".join(texts)


@pytest.mark.parametrize("with_redis", [False, True], ids=["memory-limits", "redis-limits"])
def test_a_marked_client_address_is_found_nowhere(tmp_path, with_redis):
    if with_redis and not redis_reachable():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    marker = marker_ip()
    var_dir = tmp_path / "var"
    db_path = tmp_path / "campaign.db"
    port = free_port()
    overrides = {"sign_rate_limit": "3/minute", "outbox_in_process": "1", "base_url": f"http://127.0.0.1:{port}"}
    if with_redis:
        overrides["redis_url"] = "redis://127.0.0.1:6379/0"
    env = server_env(var_dir=var_dir, database_url=f"sqlite:///{db_path}", **overrides)
    upgrade(env)
    log_path = var_dir / "server.log"
    var_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # The shipped command, with its shipped logging: exactly what an operator runs.
        proc = subprocess.Popen([str(CAMPAIGN_BIN), "serve", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    headers = {"X-Forwarded-For": marker}
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            codes = [
                c.post("/api/v1/campaigns/mamay/signatures",
                       json={**SIGNER, "email": f"ip{i}@example.org", "consent": True}).status_code
                for i in range(4)
            ]
            assert codes == [202, 202, 202, 429], "the limit applies to the marked address"
            assert c.get("/c/mamay").status_code == 200
            c.post("/c/mamay/sign", data={**SIGNER, "email": "x"})  # 422 path
            c.get("/c/nope")  # 404 path
            c.post("/confirm/not-a-token", data={"csrf_token": "forged"})  # 403 path
            # Confirm one signature from its mail (written as .eml under var/mail by the in-process outbox).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not list((var_dir / "mail").glob("*.eml")):
                time.sleep(0.1)
            mail = mail_text(next((var_dir / "mail").glob("*.eml")).read_bytes())
            link = re.search(r"/confirm/[\w.-]+", mail).group(0)
            page = c.get(link)
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            assert c.post(link, data={"csrf_token": token}).status_code == 303  # to the signer's page
    finally:
        proc.terminate()
        proc.wait(15)

    stored = everything_stored(var_dir, db_path)
    assert marker not in stored, "the client address was written somewhere under var/ or into the database"
    assert marker.replace(".", "") not in stored
    assert log_path.read_text(), "the server did log (start-up lines), so the check above means something"
    if with_redis:
        import redis

        r = redis.Redis(host="127.0.0.1", port=6379)
        for key in r.scan_iter(count=1000):
            assert marker.encode() not in key
            if r.type(key) == b"string":
                assert marker.encode() not in (r.get(key) or b"")
