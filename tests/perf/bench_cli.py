"""How fast the CLI answers: `llmctl --help` and `llmctl status` wall times, beside
`python -c pass` (the floor for any Python CLI) measured in the same run.

    .venv/bin/python tests/perf/bench_cli.py [--runs 10] [--json]

Each figure is the median of `--runs` runs of a fresh process, in an empty
LLMCTL_HOME (no stack: `status` reads the state folder and finds nothing). The goal
(issue 7) is <= 0.25 s for both; Ollama answers in about 0.02 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wall(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    llmctl = str(BIN / "llmctl")
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LLMCTL_HOME": home, "NO_COLOR": "1"}
        res = {
            "python_pass_s": wall([sys.executable, "-c", "pass"], env, args.runs),
            "help_s": wall([llmctl, "--help"], env, args.runs),
            "status_s": wall([llmctl, "status"], env, args.runs),
            "status_json_s": wall([llmctl, "status", "--json"], env, args.runs),
        }
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in res.items()}))
    else:
        print(f"median of {args.runs} runs each")
        for k, v in res.items():
            print(f"  {k:<16} {v * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
