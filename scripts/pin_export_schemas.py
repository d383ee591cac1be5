"""Copy the upstream schemas and examples that `llmctl export`'s tests validate against into
tests/fixtures/export/, and record where each came from (SOURCES.md). Nothing is written by
hand: the files are the upstream repositories' own, at the commit named.

    .venv/bin/python scripts/pin_export_schemas.py PRODUCTION_STACK_GIT KSERVE_GIT

Each argument is a clone (or a bare git directory) of github.com/vllm-project/production-stack
and github.com/kserve/kserve; the files are read from its HEAD with `git show`. KServe's
`LLMInferenceService` schema is the `openAPIV3Schema` of the CRD version marked
`storage: true`, written as JSON (the CRD itself is 2.7 MB of YAML).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "export"

PS_SCHEMA = "helm/values.schema.json"
PS_DEFAULTS = "helm/values.yaml"
# Upstream values files that exercise what the export writes: several models, an API key
# from a Secret, tensor parallelism with extraArgs, sleep mode, and the tool-calling one
# (whose keys the chart's templates read but its schema does not list).
PS_EXAMPLES = (
    "tutorials/assets/values-01-minimal-example.yaml",
    "tutorials/assets/values-04-multiple-models.yaml",
    "tutorials/assets/values-11-secure-vllm.yaml",
    "tutorials/assets/values-13-tool-enabled.yaml",
    "tutorials/assets/values-19-sleep-mode-aware.yaml",
    "tutorials/assets/values-25-v100-multi-gpu-tp2.yaml",
)
KS_CRD = "config/crd/full/llmisvc/serving.kserve.io_llminferenceservices.yaml"
KS_EXAMPLES = (
    "docs/samples/llmisvc/single-node-gpu/llm-inference-service-qwen2-7b-gpu.yaml",
    "docs/samples/llmisvc/agentic-tool-calling/llmisvc-single-gpu.yaml",
    "docs/samples/llmisvc/opt-125m-cpu/llm-inference-service-facebook-opt-125m-cpu.yaml",
    "docs/samples/llmisvc/multi-gpu-vendor/llm-inference-service-qwen2-7b-nvidia-with-scheduler.yaml",
    "docs/samples/llmisvc/dp-ep/deepseek-r1-gpu-rdma-roce/"
    "llm-inference-service-dp-ep-deepseek-r1-gpu-naive.yaml",
)


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir(repo)}", *args], check=True,
                          capture_output=True, text=True).stdout


def git_dir(repo: str) -> str:
    p = Path(repo)
    return str(p / ".git") if (p / ".git").exists() else str(p)


def show(repo: str, path: str) -> str:
    return git(repo, "show", f"HEAD:{path}")


def main(ps: str, ks: str) -> None:
    ps_commit = git(ps, "rev-parse", "HEAD").strip()
    ks_commit = git(ks, "rev-parse", "HEAD").strip()
    (OUT / "production-stack" / "examples").mkdir(parents=True, exist_ok=True)
    (OUT / "kserve" / "examples").mkdir(parents=True, exist_ok=True)

    rows = []
    for src, dest in [(PS_SCHEMA, "production-stack/values.schema.json"),
                      (PS_DEFAULTS, "production-stack/values.yaml"),
                      *((p, f"production-stack/examples/{Path(p).name}") for p in PS_EXAMPLES)]:
        (OUT / dest).write_text(show(ps, src))
        rows.append(("vllm-project/production-stack", ps_commit, src, dest))

    crd = yaml.load(show(ks, KS_CRD), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    stored = [v for v in crd["spec"]["versions"] if v.get("storage")]
    assert len(stored) == 1, "a CRD has exactly one storage version"
    version = stored[0]["name"]
    schema = stored[0]["schema"]["openAPIV3Schema"]
    dest = f"kserve/llminferenceservice-{version}.schema.json"
    # Compact: 0.5 MB instead of 1.1 MB indented.
    (OUT / dest).write_text(json.dumps(schema, separators=(",", ":")) + "\n")
    rows.append(("kserve/kserve", ks_commit,
                 f"{KS_CRD} (spec.versions[name={version}, storage: true]"
                 ".schema.openAPIV3Schema)", dest))
    for p in KS_EXAMPLES:
        dest = f"kserve/examples/{Path(p).name}"
        (OUT / dest).write_text(show(ks, p))
        rows.append(("kserve/kserve", ks_commit, p, dest))

    lines = ["# Where the export fixtures come from", "",
             "Written by `scripts/pin_export_schemas.py` from the upstream repositories; not "
             "edited by hand. Run it again (with newer clones) to move the pins.", "",
             "| file | repository | commit | upstream path |", "|---|---|---|---|"]
    lines += [f"| `{dest}` | {repo} | `{commit}` | `{src}` |" for repo, commit, src, dest in rows]
    (OUT / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print(f"production-stack {ps_commit}, kserve {ks_commit} (LLMInferenceService storage "
          f"version {version}) → {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
