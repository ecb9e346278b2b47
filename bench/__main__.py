"""`make bench` / `python -m bench [NAME ...]`: every bench script in turn, each in its own process (so one's
memory and threads never colour the next), then one table of every figure with its ratio and goal.

Sizes come from the environment (see each script's docstring), e.g. BENCH_SECONDS=8, BENCH_STATS_ROWS=1000000;
BENCH_FULL=1 adds the 10 M-signature step of bench/growth.py (and its export and letters at 10 M).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

from bench.harness import RESULTS_DIR, ROOT

SCRIPTS = ("sign", "pages", "spike", "stats", "mail", "demo", "exports", "letters", "growth")


def main(names: list[str]) -> int:
    chosen = names or [n for n in SCRIPTS if importlib.util.find_spec(f"bench.{n}") is not None]
    failed = []
    started = time.time()
    for name in chosen:
        # Three hours: bench/growth.py at 10 M signatures (BENCH_FULL=1) takes about half an hour of it.
        done = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, timeout=3 * 3600)
        if done.returncode:
            failed.append(name)
    print(f"\n== summary ({time.time() - started:.0f} s) ==")
    for name in chosen:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists() or path.stat().st_mtime < started:
            print(f"  {name}: no result (failed: see above)")
            continue
        result = json.loads(path.read_text())
        for fig in result["figures"]:
            goal = "" if fig.get("goal_ratio") is None else f"  goal {fig['goal_ratio']}x: " + (
                "met" if fig["met"] else "NOT met")
            print(f"  {name}: {fig['name']}: {fig['value']:,} {fig['unit']} / {fig['baseline']:,} "
                  f"({fig['baseline_name']}) = {fig['ratio']}x{goal}")
        for chk in result["checks"]:
            print(f"  {name}: {chk['name']}: {chk['value']} (goal {chk['goal']}) {'met' if chk['met'] else 'NOT met'}")
    if failed:
        print(f"  scripts that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
