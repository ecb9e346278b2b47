"""Debian's Chromium for the tests that need a real browser: launched with the flags that keep it from calling home,
and kept on this machine (any request to another host is aborted and recorded, and fails the test)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-quic"]
LOOPBACK = {"127.0.0.1", "localhost"}  # localhost: a second loopback origin for the framing tests


def executable() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.skip("Debian's chromium is not installed (make system-deps)")
    return path


@contextmanager
def chromium() -> Iterator[object]:
    """A browser, or the test is skipped where Chromium cannot run; afterwards, fails if any request left the host."""
    sync_api = pytest.importorskip("playwright.sync_api")
    path = executable()
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=path, args=ARGS)
        except Exception as exc:  # a machine without the libraries Chromium needs
            pytest.skip(f"Chromium does not start here: {exc}")
        aborted: list[str] = []
        context = browser.new_context()

        def only_local(route) -> None:
            if urlsplit(route.request.url).hostname in LOOPBACK:
                route.continue_()
            else:
                aborted.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        try:
            yield context
        finally:
            browser.close()
        assert not aborted, f"requests to other hosts: {aborted}"
