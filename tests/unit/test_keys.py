"""The key file: digests only, 0600, add / revoke / rotate, clear errors."""

import stat

import pytest

from llmctl import keys
from llmctl.errors import ConfigError, ConflictError, UsageError


def test_add_stores_only_a_digest_in_a_private_file(tmp_path):
    p = tmp_path / "keys.toml"
    key, rec = keys.add("alice", models=("coder",), rpm=10, expires="30d", p=p)
    assert key.startswith("sk-llmctl-") and len(key) > 40
    text = p.read_text()
    assert key not in text and keys.digest(key) in text
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    back = keys.load(p)["alice"]
    assert back == rec and back.models == ("coder",) and back.rpm == 10
    assert 29.9 * 86400 < back.expires - back.created <= 30 * 86400
    assert not back.expired() and back.expired(back.expires + 1)


def test_rotate_changes_the_secret_and_keeps_the_rest(tmp_path):
    p = tmp_path / "keys.toml"
    old, rec = keys.add("ci", tpm=1000, p=p)
    new, rot = keys.rotate("ci", p=p)
    assert new != old and rot.digest == keys.digest(new) != rec.digest
    assert (rot.tpm, rot.created) == (rec.tpm, rec.created)
    keys.revoke("ci", p=p)
    assert keys.load(p) == {}


@pytest.mark.parametrize("call, needle", [
    (lambda p: keys.add("bad name", p=p), "not a valid name"),
    (lambda p: keys.add("x", rpm=-1, p=p), "--rpm must not be negative"),
    (lambda p: keys.add("x", expires="soon", p=p), "--expires must be a duration"),
    (lambda p: keys.revoke("nobody", p=p), "no key named 'nobody'"),
    (lambda p: keys.rotate("nobody", p=p), "no key named 'nobody'"),
])
def test_bad_input_is_a_usage_error(tmp_path, call, needle):
    with pytest.raises(UsageError, match=needle):
        call(tmp_path / "keys.toml")
    assert not (tmp_path / "keys.toml").exists()  # nothing half-written


def test_a_second_key_with_the_same_name_is_refused(tmp_path):
    p = tmp_path / "keys.toml"
    keys.add("alice", p=p)
    with pytest.raises(ConflictError, match="exists"):
        keys.add("alice", p=p)


def test_a_broken_file_is_one_clear_error(tmp_path):
    p = tmp_path / "keys.toml"
    p.write_text("[keys.x\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        keys.load(p)
    p.write_text('[keys.x]\nsecret = "plain"\n')
    with pytest.raises(ConfigError, match="not a key llmctl wrote"):
        keys.load(p)
