import pytest

from llmctl import config, engine
from llmctl.plan import BackendPlan
from llmctl.tools import Abilities


def model(**kw):
    base = dict(key="coder", name="c", source="org/r", port=8000, max_model_len=2048,
                max_num_seqs=16)
    return config.ModelConfig(**{**base, **kw})


CFG = config.Config(engine=config.EngineConfig(python="/opt/py/bin/python"))


def test_cpu_backend_argv_and_env():
    p = BackendPlan("coder", "cpu", kv_cache_gib=3, cores=(1,))
    cmd = engine.command(CFG, model(), p, "/models/x")
    assert cmd.argv == ("/opt/py/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                        "--model", "/models/x", "--served-model-name", "c",
                        "--host", "127.0.0.1", "--port", "8000",
                        "--max-model-len", "2048", "--max-num-seqs", "16", "-O0")
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert cmd.env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert cmd.env["HF_HUB_OFFLINE"] == "1"
    assert "--gpu-memory-utilization" not in cmd.argv


def test_gpu_backend_gets_its_share_and_extra_args_last():
    p = BackendPlan("coder", "cuda", gpu_memory_utilization=0.453, devices=(1,),
                    max_num_batched_tokens=8192)
    cmd = engine.command(CFG, model(args=("--enforce-eager", "--dtype", "half")), p, "/m")
    i = cmd.argv.index("--gpu-memory-utilization")
    assert cmd.argv[i + 1] == "0.453"
    assert cmd.argv[cmd.argv.index("--max-num-batched-tokens") + 1] == "8192"
    assert "--tensor-parallel-size" not in cmd.argv
    assert cmd.argv[-3:] == ("--enforce-eager", "--dtype", "half")
    assert "VLLM_CPU_KVCACHE_SPACE" not in cmd.env
    # NVML's card numbers, in NVML's (PCI bus) order.
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "1" and cmd.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_tensor_parallel_backend_sees_its_cards():
    p = BackendPlan("coder", "cuda", gpu_memory_utilization=0.9, devices=(2, 3),
                    tensor_parallel=2)
    cmd = engine.command(CFG, model(), p, "/m")
    assert cmd.argv[cmd.argv.index("--tensor-parallel-size") + 1] == "2"
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_default_python_is_this_interpreter():
    import sys

    cmd = engine.command(config.Config(), model(), BackendPlan("coder", "cpu", kv_cache_gib=1),
                         "/m")
    assert cmd.argv[0] == sys.executable


def test_cores_spec():
    assert BackendPlan("a", "cpu", cores=(0, 1, 2, 3)).cores_spec == "0-3"
    assert BackendPlan("a", "cpu", cores=(0, 2)).cores_spec == "0,2"
    assert BackendPlan("a", "cpu", cores=(5,)).cores_spec == "5"


def test_cpu_compile_level_from_args_wins():
    p = BackendPlan("coder", "cpu", kv_cache_gib=1)
    for args in (("-O3",), ("--compilation-config", "{}"), ("--enforce-eager",)):
        cmd = engine.command(CFG, model(args=args), p, "/m")
        assert "-O0" not in cmd.argv and cmd.argv[-len(args):] == args
    gpu = engine.command(CFG, model(), BackendPlan("coder", "cuda", gpu_memory_utilization=0.4),
                         "/m")
    assert "-O0" not in gpu.argv


def test_sleep_mode_only_for_members_of_a_sleep_group():
    p = BackendPlan("coder", "cuda", gpu_memory_utilization=0.5, devices=(0,))
    cmd = engine.command(CFG, model(group="g", swap="sleep"), p, "/m")
    assert "--enable-sleep-mode" in cmd.argv and cmd.env["VLLM_SERVER_DEV_MODE"] == "1"
    for m in (model(group="g"), model()):
        cmd = engine.command(CFG, m, p, "/m")
        assert "--enable-sleep-mode" not in cmd.argv and "VLLM_SERVER_DEV_MODE" not in cmd.env


@pytest.mark.parametrize("able, args, tail", [
    # Every started model gets a parser: vLLM 0.32 refuses any request with tools without.
    (Abilities("hermes", False, None), (), ("--enable-auto-tool-choice", "--tool-call-parser",
                                            "hermes")),
    (Abilities("qwen3_coder", True, "qwen3"), (),
     ("--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder",
      "--reasoning-parser", "qwen3")),
    (Abilities(None, None, None), (), ()),  # tools = "none"
    # The model's own args win.
    (Abilities("hermes", True, "qwen3"), ("--tool-call-parser", "pythonic"),
     ("--reasoning-parser", "qwen3", "--tool-call-parser", "pythonic")),
])
def test_tool_and_reasoning_parsers(able, args, tail):
    p = BackendPlan("coder", "cpu", kv_cache_gib=1)
    argv = engine.command(CFG, model(args=args), p, "/m", abilities=able).argv
    assert argv[argv.index("-O0") + 1:] == tail


def test_responses_are_stored_only_for_a_model_that_opts_in():
    p = BackendPlan("coder", "cpu", kv_cache_gib=3, cores=(1,))
    assert "VLLM_ENABLE_RESPONSES_API_STORE" not in engine.command(CFG, model(), p, "/m").env
    cmd = engine.command(CFG, model(store_responses=True), p, "/m")
    assert cmd.env["VLLM_ENABLE_RESPONSES_API_STORE"] == "1"
    # And a config file says so in TOML.
    cfg = config.parse({"models": {"coder": {"name": "c", "source": "org/r", "port": 8000,
                                             "store_responses": True}}})
    assert cfg.models[0].store_responses is True
