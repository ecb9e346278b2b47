"""What bench/pages.py sends: a file of paths asked for in turn (the open-loop generator's --paths-file, with its
headers), and each run over the signers' pages starting where the last one stopped."""

from __future__ import annotations

import argparse

import pytest

from bench import openloop
from bench.pages import Page


def test_a_paths_file_is_asked_for_in_turn_with_its_headers_each_expecting_200(tmp_path):
    file = tmp_path / "paths.txt"
    file.write_text("/s/aaa\n\n/s/bbb\n/s/ccc\n")
    paths = openloop.read_paths(str(file))
    assert paths == ["/s/aaa", "/s/bbb", "/s/ccc"]
    plan = openloop.cycling("http://127.0.0.1:8123", paths, {"Cookie": "ticket=x.y"})
    sent = [plan(i) for i in range(7)]
    assert [r.payload.split(b" ")[1] for r in sent] == [b"/s/aaa", b"/s/bbb", b"/s/ccc"] * 2 + [b"/s/aaa"]
    assert all(r.expect == b"200" for r in sent)
    assert sent[0].payload == b"GET /s/aaa HTTP/1.1\r\nHost: 127.0.0.1:8123\r\nCookie: ticket=x.y\r\n\r\n"


def test_an_empty_paths_file_and_a_header_without_a_name_are_refused(tmp_path):
    file = tmp_path / "paths.txt"
    file.write_text("\n\n")
    with pytest.raises(SystemExit):
        openloop.read_paths(str(file))
    assert openloop.header("Cookie: a=b; c=d") == ("Cookie", "a=b; c=d")
    for wrong in ("Cookie a=b", ": a=b"):
        with pytest.raises(argparse.ArgumentTypeError):
            openloop.header(wrong)


def test_each_run_over_many_paths_starts_where_the_last_one_stopped(tmp_path):
    page = Page("signer page", [f"/s/{c}" for c in "abcde"])
    assert page.file(tmp_path).read_text().split() == ["/s/a", "/s/b", "/s/c", "/s/d", "/s/e"]
    page.asked += 7  # a run of 7 requests: the next begins at the 8th path, wrapping round
    assert page.file(tmp_path).read_text().split() == ["/s/c", "/s/d", "/s/e", "/s/a", "/s/b"]
