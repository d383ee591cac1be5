"""`llmctl pull` throughput against a local hub (tests/fakes/hub.py) beside a plain `curl`
of the same file from the same server, in one run.

    .venv/bin/python tests/perf/bench_pull.py [--mib 512] [--rounds 3] [--rate-mib N] [--json]

Both write the file to disk; pull also checks its sha256 against the hub's and links it
into the Hugging Face cache. Each round fetches it afresh (an empty store); the figure is
the median over rounds, and the ratio pull ÷ curl in MiB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "tests" / "fakes" / "hub.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rate-mib", type=int, default=0,
                    help="serve at this many MiB/s, like a real link (default: as fast as it can)")
    args = ap.parse_args()
    size = args.mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "config.json").write_text('{"num_hidden_layers": 1, "num_attention_heads": 1, '
                                          '"hidden_size": 64}')
        header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
        with open(repo / "model.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header.encode())
            for _ in range(args.mib):
                f.write(os.urandom(1024 * 1024))
        port = free_port()
        hub = subprocess.Popen([sys.executable, str(HUB), "--port", str(port),
                                "--repo", f"org/big={repo}",
                                "--slow", str(args.rate_mib * 1024 * 1024)])
        url = f"http://127.0.0.1:{port}"
        time.sleep(1.0)
        pull_s, curl_s = [], []
        try:
            for i in range(args.rounds):
                out = Path(tmp) / f"curl-{i}"
                t0 = time.perf_counter()
                subprocess.run(["curl", "-sf", "-o", str(out),
                                f"{url}/org/big/resolve/main/model.safetensors"], check=True)
                curl_s.append(time.perf_counter() - t0)
                out.unlink()
                home = Path(tmp) / f"home-{i}"
                env = {**os.environ, "LLMCTL_HOME": str(home), "HF_ENDPOINT": url,
                       "HF_HOME": str(home / "hf")}
                env.pop("HF_TOKEN", None)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "llmctl", "pull", "org/big", "--quiet"],
                               env=env, check=True, cwd=ROOT)
                pull_s.append(time.perf_counter() - t0)
                shutil.rmtree(home)
        finally:
            hub.kill()
    total_mib = (size + len(header) + 100) / 1024 / 1024
    res = {"mib": args.mib, "rounds": args.rounds, "rate_mib": args.rate_mib or None,
           "curl_mib_per_s": round(total_mib / statistics.median(curl_s), 1),
           "pull_mib_per_s": round(total_mib / statistics.median(pull_s), 1)}
    res["pull_vs_curl"] = round(res["pull_mib_per_s"] / res["curl_mib_per_s"], 3)
    if args.json:
        print(json.dumps(res))
    else:
        link = f" over a {args.rate_mib} MiB/s link" if args.rate_mib else " (localhost, no limit)"
        print(f"{args.mib} MiB{link}, median of {args.rounds}: curl {res['curl_mib_per_s']} MiB/s, "
              f"llmctl pull {res['pull_mib_per_s']} MiB/s ({res['pull_vs_curl']:.0%} of curl; "
              "pull includes its start-up, the hub metadata call and the sha256 check)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
