import os
import re
import stat
from pathlib import Path

import pytest

from llmctl import config
from llmctl.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file_follow_the_device(tmp_path):
    cpu = config.parse({}, device="cpu")
    assert [m.key for m in cpu.models] == ["coder", "general"]
    assert {m.source for m in cpu.models} == {config.DEMO_SOURCE}
    gpu = config.parse({}, device="cuda")
    assert "AWQ" in gpu.model("coder").source and "Instruct" in gpu.model("general").source


def test_device_probe_is_called_only_when_models_are_not_given(tmp_path):
    calls = []

    def probe():
        calls.append(1)
        return "cpu"

    config.parse({"models": {"a": {"name": "a", "url": "http://127.0.0.1:9"}}}, device=probe)
    assert calls == []
    config.parse({}, device=probe)
    assert calls == [1]


def test_full_file_round_trip(tmp_path):
    p = write(tmp_path, """
[proxy]
port = 9090
api_keys = ["sk-one", "sk-two"]
[engine]
device = "cpu"
[models.coder]
name = "c"
source = "org/repo"
port = 9000
memory = 0.45
aliases = ["code"]
args = ["--enforce-eager"]
[models.remote]
name = "r"
url = "http://10.0.0.9:8000/"
""")
    cfg = config.load(p, env={})
    assert cfg.proxy.port == 9090 and cfg.proxy.api_keys == ("sk-one", "sk-two")
    c = cfg.model("coder")
    assert c.memory == 0.45 and c.args == ("--enforce-eager",) and c.names == ("c", "code", "coder")
    r = cfg.model("remote")
    assert not r.managed and r.upstream == "http://10.0.0.9:8000"
    again = config.parse(__import__("tomllib").loads(config.to_toml(cfg, masked=False)))
    assert again.models == cfg.models and again.proxy == cfg.proxy


def test_env_key_is_added(tmp_path):
    p = write(tmp_path, '[proxy]\napi_keys = ["sk-a"]\n')
    cfg = config.load(p, env={"LLMCTL_API_KEY": "sk-env"})
    assert cfg.proxy.api_keys == ("sk-a", "sk-env")


@pytest.mark.parametrize("text, needle", [
    ("[proxy\nport = 1", "TOML syntax error"),
    ("[proxy]\nprot = 8080\n", "unknown key 'prot'"),
    ("[proxy]\nport = \"8080\"\n", "'proxy.port' must be an integer"),
    ("[proxy]\nport = true\n", "'proxy.port' must be an integer"),
    ("[proxy]\nport = 70000\n", "port number"),
    ("[engine]\ndevice = \"tpu\"\n", "'engine.device' must be one of"),
    ("[modles.x]\nname = \"x\"\n", "unknown section [modles]"),
    ("[models.a]\nname = \"a\"\nsource = \"x/y\"\nport = 8080\n", "duplicate port 8080"),
    ("[models.a]\nname = \"a\"\nsource = \"x/y\"\nport = 9000\n"
     "[models.b]\nname = \"b\"\nsource = \"x/y\"\nport = 9000\n", "duplicate port 9000"),
    ("[models.a]\nname = \"same\"\nsource = \"x/y\"\nport = 9000\n"
     "[models.b]\nname = \"same\"\nsource = \"x/y\"\nport = 9001\n", "used by both"),
    ("[models.a]\nname = \"a\"\n", "exactly one of 'source'"),
    ("[models.a]\nname = \"a\"\nsource = \"x/y\"\n", "needs a 'port'"),
    ("[models.a]\nname = \"a\"\nsource = \"x/y\"\nport = 9000\nmemory = 1.5\n", "fraction"),
    ("[models.a]\nname = \"a\"\nsource = \"x/y\"\nport = 9000\nargs = [1]\n", "list of strings"),
    ("[models.a]\nname = \"a\"\nurl = \"ftp://x\"\n", "http(s) URL"),
])
def test_bad_files_give_one_clear_error_naming_the_file(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p, env={})
    assert needle in e.value.message
    assert e.value.message.startswith(str(p))


def test_unknown_key_names_the_line_and_suggests(tmp_path):
    p = write(tmp_path, "[proxy]\nhost = \"127.0.0.1\"\n\n[models.coder]\nname = \"c\"\n"
                        "source = \"a/b\"\nprot = 9000\n")
    with pytest.raises(ConfigError) as e:
        config.load(p, env={})
    assert e.value.message.startswith(f"{p}:7:")
    assert e.value.hint == "did you mean 'port'?"


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.toml")


def test_init_writes_0600_with_a_fresh_key_and_refuses_to_overwrite(tmp_path):
    p = tmp_path / "sub" / "config.toml"
    key = config.init(p, "cpu")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    cfg = config.load(p, env={})
    assert cfg.proxy.api_keys == (key,) and key.startswith("sk-local-") and len(key) > 30
    assert [m.name for m in cfg.models] == ["smollm2-coder", "smollm2-general"]
    with pytest.raises(ConfigError, match="already exists"):
        config.init(p, "cpu")
    assert config.load(p, env={}).proxy.api_keys == (key,)  # nothing lost
    key2 = config.init(p, "cpu", force=True)
    assert key2 != key


def test_show_masks_keys():
    cfg = config.parse({"proxy": {"api_keys": ["sk-local-abcdefghijklmnopqrstuvwxyz"]}})
    text = config.to_toml(cfg)
    assert "abcdefghijklmnop" not in text and "sk-local-…wxyz" in text


def test_paths_follow_llmctl_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path))
    monkeypatch.delenv("LLMCTL_CONFIG", raising=False)
    assert config.config_path() == tmp_path / "config.toml"
    assert config.state_dir() == tmp_path / "state"
    assert config.logs_dir() == tmp_path / "logs"
    monkeypatch.setenv("LLMCTL_CONFIG", str(tmp_path / "other.toml"))
    assert config.config_path() == tmp_path / "other.toml"


def test_the_starter_file_is_the_schema_read_back():
    """Every key of every section is in the starter file, with its meaning as a comment,
    and it reads back as the defaults for the device."""
    text = config.starter_text("cpu", "sk-local-abc")
    cfg = config.parse(__import__("tomllib").loads(text))
    assert cfg.proxy == config.ProxyConfig(api_keys=("sk-local-abc",))
    assert cfg.models == config.default_models("cpu")
    for title, cls in config.SECTIONS.items():
        for f in config.keys_of(cls):
            if title == "models.KEY" and f.name in ("url", "api_key"):
                continue  # a starter model is started by llmctl: it has a source, not a url
            # Keys that do nothing for an always-on model are there, commented out.
            assert any(line.lstrip("# ").startswith(f"{f.name} = ") and f.metadata["doc"] in line
                       for line in text.splitlines()), f.name
    assert '# idle_stop = "15m"' in text and "\nstart = \"always\"" in text


def test_durations():
    assert [config.duration(v) for v in ("90s", "15m", "2h", "1d", "0", 30, 0, "1.5m")] == \
        [90, 900, 7200, 86400, 0, 30, 0, 90]
    for bad in ("15 minutes", "m", "-1", -5, "1h30m"):
        with pytest.raises(ValueError):
            config.duration(bad)


MODEL = {"name": "a", "source": "x/y", "port": 9000}


@pytest.mark.parametrize("models, needle", [
    ({"a": {**MODEL, "start": "sometimes"}}, "'models.a.start' must be one of always, on-demand"),
    ({"a": {**MODEL, "start": "on-demand", "idle_stop": "15 minutes"}},
     "'models.a.idle_stop' must be a duration"),
    ({"a": {**MODEL, "idle_stop": "5m"}}, "applies to models started by a request"),
    ({"a": {**MODEL, "swap": "sleep"}}, "it is in no group"),
    ({"a": {"name": "a", "url": "http://h:1", "start": "on-demand"}}, "a `url` model is never"),
    ({"a": {**MODEL, "group": "big"}, "b": {**MODEL, "name": "b", "port": 9001, "group": "big"}},
     "group 'big' has two always-on members, a and b"),
    ({"a": {**MODEL, "group": "no spaces"}}, "group name 'no spaces' is not a valid name"),
])
def test_demand_keys_are_checked(models, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config.parse({"models": models})


def test_a_group_with_one_always_member_reads():
    cfg = config.parse({"models": {
        "a": {**MODEL, "group": "big"},
        "b": {**MODEL, "name": "b", "port": 9001, "group": "big", "start": "on-demand",
              "idle_stop": 0, "swap": "sleep"}}})
    a, b = cfg.models
    assert (a.on_demand, b.on_demand, b.idle_seconds, b.swap) == (False, True, 0.0, "sleep")
    assert 'idle_stop = 0' in config.to_toml(cfg) and 'swap = "sleep"' in config.to_toml(cfg)


@pytest.mark.parametrize("section, key, value, needle", [
    ("proxy", "max_body_bytes", 0, "must be at least 1"),
    ("proxy", "request_timeout", 0, "must be positive"),
    ("proxy", "drain_seconds", -1, "must not be negative"),
    ("models.a", "max_num_seqs", 0, "must be at least 1"),
    ("models.a", "port", 0, "must be a port number 1-65535, not 0"),
])
def test_bounds_come_from_the_schema(section, key, value, needle):
    raw = {"proxy": {}, "models": {"a": {"name": "a", "source": "x/y", "port": 9000}}}
    target = raw["models"]["a"] if section == "models.a" else raw[section]
    target[key] = value
    with pytest.raises(ConfigError, match=needle):
        config.parse(raw)


@pytest.mark.parametrize("value, ok", [("auto", True), ("none", True), ("qwen3_coder", True),
                                       ("granite-20b-fc", True), ("Bad Name", False),
                                       ("", False)])
def test_tools_and_reasoning_keys(value, ok):
    for key in ("tools", "reasoning"):
        raw = {"models": {"c": {"name": "c", "source": "o/r", "port": 8000, key: value}}}
        if ok:
            assert getattr(config.parse(raw).models[0], key) == value
        else:
            with pytest.raises(ConfigError, match=f"'models.c.{key}' must be"):
                config.parse(raw)


def test_the_agents_profile_is_a_tool_trained_coder_at_32k(tmp_path):
    import tomllib

    from llmctl import tools

    p = tmp_path / "config.toml"
    config.init(p, "cpu", profile="agents")
    cfg = config.parse(tomllib.loads(p.read_text()))
    (coder,) = cfg.models
    assert coder.max_model_len >= 32768 and coder.fim == "qwen"
    assert coder.tools == "qwen3_coder"
    # the name alone already says so (plan before the weights are pulled)
    assert tools.detect(tools.ModelFiles(coder.source)).tools == "qwen3_coder"
    with pytest.raises(ConfigError, match="no profile 'nope'"):
        config.init(tmp_path / "other.toml", "cpu", profile="nope")
    assert not (tmp_path / "other.toml").exists()
