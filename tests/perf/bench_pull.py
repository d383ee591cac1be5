"""`llmctl pull` against the other ways to fetch the same weights, from one local hub
(tests/fakes/hub.py), in one run:

    .venv/bin/python tests/perf/bench_pull.py [--mib 1024] [--shards 2] [--rounds 3]
        [--conn-mib 25] [--total-mib 200] [--only capped|local] [--json]

The repo: config.json and SHARDS safetensors files, MIB in all. Each tool fetches every
file into an empty folder, writes it to disk and (but hf) checks its sha256:

- llmctl pull: its ranged parts over 8 connections, the sha256 check, the cache layout;
- curl | tee | sha256sum: one stream per file, one after another (the same disk and
  hashing work);
- aria2c -x8 -s8 with each file's sha-256 to check (Debian's `aria2`; skipped when
  absent);
- hf download (huggingface_hub's CLI, 8 workers): against a fake hub it takes its plain
  HTTP path, not Xet (HF_HUB_DISABLE_XET=1 besides), and it checks no hash.

Two links: "capped", the hub pacing each connection at CONN_MIB MiB/s under a total of
TOTAL_MIB MiB/s, as CDNs do (targets: llmctl ≥ 90 % of aria2c, ≥ 4× one stream); and
"local", no cap on localhost, where the hub shares the CPUs: the figure there is CPU
seconds per GiB of each tool (its process tree, from getrusage), with the hub's own
beside it. Rates are the median over rounds, with the spread (min–max).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
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
HF = Path(sys.executable).parent / "hf"
MiB = 1024 * 1024
TOOLS = ("llmctl", "curl", "aria2c", "hf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repo(repo: Path, mib: int, shards: int) -> dict[str, str]:
    """config.json and the shards; {name: sha256}."""
    repo.mkdir()
    (repo / "config.json").write_text('{"num_hidden_layers": 1, "num_attention_heads": 1, '
                                      '"hidden_size": 64}')
    out = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        size = mib * MiB // shards
        header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
        h = hashlib.sha256()
        with open(repo / name, "wb") as f:
            for block in (struct.pack("<Q", len(header)) + header.encode(),
                          *(os.urandom(MiB) for _ in range(size // MiB))):
                f.write(block)
                h.update(block)
        out[name] = h.hexdigest()
    return out


def hub_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commands(tool: str, url: str, names: dict[str, str], out: Path) -> tuple[list[str], dict]:
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    files = [f"{url}/org/big/resolve/main/{n}" for n in ["config.json", *names]]
    if tool == "llmctl":
        env.update(LLMCTL_HOME=str(out), HF_HOME=str(out / "hf"))
        env.pop("LLMCTL_PULL_CONNECTIONS", None)
        return [sys.executable, "-m", "llmctl", "pull", "org/big", "--quiet"], env
    if tool == "curl":
        script = "set -e\n" + "".join(
            f"curl -sf '{u}' | tee '{out}/{u.rsplit('/', 1)[1]}' | sha256sum >/dev/null\n"
            for u in files)
        return ["sh", "-c", script], env
    if tool == "aria2c":
        listing = out.parent / f"{out.name}.aria2"
        listing.write_text("".join(
            f"{u}\n  out={u.rsplit('/', 1)[1]}\n"
            + (f"  checksum=sha-256={names[u.rsplit('/', 1)[1]]}\n"
               if u.rsplit("/", 1)[1] in names else "") for u in files))
        return ["aria2c", "-x8", "-s8", "-q", "--file-allocation=none", "--check-integrity=true",
                "--allow-overwrite=true", "-d", str(out), "-i", str(listing)], env
    env.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_ENABLE_HF_TRANSFER="0", HF_HOME=str(out / "hf"))
    return [str(HF), "download", "org/big", "--cache-dir", str(out / "cache"),
            "--max-workers", "8", "--quiet"], env


def run_link(label: str, tools: list[str], args: argparse.Namespace, repo: Path,
             names: dict[str, str], work: Path, total: int) -> dict:
    port = free_port()
    rate = ["--conn-rate", str(args.conn_mib * MiB), "--total-rate", str(args.total_mib * MiB)] \
        if label == "capped" else []
    hub = subprocess.Popen([sys.executable, str(HUB), "--port", str(port),
                            "--repo", f"org/big={repo}", *rate])
    url = f"http://127.0.0.1:{port}"
    results: dict[str, dict] = {}
    try:
        for _ in range(100):
            try:  # the hub hashes the files once, on the first model-info call
                subprocess.run(["curl", "-sf", "-o", "/dev/null", f"{url}/api/models/org/big"],
                               check=True)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        for tool in tools:
            walls, cpus, hubs = [], [], []
            for i in range(args.rounds):
                out = work / f"{tool}-{i}"
                out.mkdir()
                argv, env = commands(tool, url, names, out)
                before, hub0 = resource.getrusage(resource.RUSAGE_CHILDREN), hub_cpu(hub.pid)
                t0 = time.perf_counter()
                r = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                after, hub1 = resource.getrusage(resource.RUSAGE_CHILDREN), hub_cpu(hub.pid)
                if r.returncode != 0:
                    raise SystemExit(f"{tool} failed ({r.returncode}): {r.stderr[-500:]}")
                walls.append(wall)
                cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                hubs.append(hub1 - hub0)
                shutil.rmtree(out)
            rates = sorted(total / MiB / w for w in walls)
            gib = total / 1024**3
            results[tool] = {"mib_per_s": round(statistics.median(rates), 1),
                             "min": round(rates[0], 1), "max": round(rates[-1], 1),
                             "cpu_s_per_gib": round(statistics.median(cpus) / gib, 2),
                             "hub_cpu_s_per_gib": round(statistics.median(hubs) / gib, 2)}
    finally:
        hub.kill()
        hub.wait()
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024, help="the repo's weights, in all")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conn-mib", type=int, default=25, help="capped link: MiB/s a connection")
    ap.add_argument("--total-mib", type=int, default=200, help="capped link: MiB/s in all")
    ap.add_argument("--only", choices=("capped", "local"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tools = [t for t in TOOLS if t != "aria2c" or shutil.which("aria2c")]
    tools = [t for t in tools if t != "hf" or HF.exists()]
    skipped = [t for t in TOOLS if t not in tools]
    report: dict = {"mib": args.mib, "shards": args.shards, "rounds": args.rounds,
                    "skipped": skipped}
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        repo = Path(tmp) / "repo"
        names = make_repo(repo, args.mib, args.shards)
        total = sum(p.stat().st_size for p in repo.iterdir())
        for label in ("capped", "local"):
            if args.only in (None, label):
                report[label] = run_link(label, tools, args, repo, names, Path(tmp), total)
    for label in ("capped", "local"):
        res = report.get(label)
        if res and "llmctl" in res:
            me = res["llmctl"]["mib_per_s"]
            for tool, r in res.items():
                if tool != "llmctl":
                    r["llmctl_vs"] = round(me / r["mib_per_s"], 2)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for t in skipped:
        print(f"{t}: skipped: no {'aria2c' if t == 'aria2c' else 'hf CLI'}")
    print(f"{args.mib} MiB in {args.shards} shards + config.json, median of {args.rounds} "
          "(min–max); CPU: the tool's process tree, hub: the fake hub's own")
    for label in ("capped", "local"):
        res = report.get(label)
        if not res:
            continue
        print(f"\n{label}: " + (f"{args.conn_mib} MiB/s a connection, {args.total_mib} MiB/s "
                                 "in all" if label == "capped" else "localhost, no cap"))
        for tool, r in res.items():
            note = {"hf": "  (plain HTTP, not Xet; checks no hash)",
                    "curl": "  (one stream, file after file)"}.get(tool, "")
            vs = f"  llmctl ×{r['llmctl_vs']:.2f}" if "llmctl_vs" in r else ""
            print(f"  {tool:7s} {r['mib_per_s']:7.1f} MiB/s ({r['min']}–{r['max']})  "
                  f"CPU {r['cpu_s_per_gib']:.2f} s/GiB  hub {r['hub_cpu_s_per_gib']:.2f} s/GiB"
                  f"{vs}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
