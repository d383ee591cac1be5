"""The one atomic writer: what a planted link, a wide umask or a failed write leave."""

from __future__ import annotations

import os
import stat

import pytest

from llmctl.files import write_atomic


def test_the_mode_holds_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "keys.toml", "secret")
        write_atomic(tmp_path / "chat.md", "hi", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "chat.md").stat().st_mode) == 0o644


def test_a_link_planted_at_the_old_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    # The writers before this one used `.NAME.PID.tmp`: a name anyone could plant.
    (tmp_path / f".stack.json.{os.getpid()}.tmp").symlink_to(victim)
    write_atomic(tmp_path / "stack.json", "{}")
    assert victim.read_text() == "untouched"
    assert (tmp_path / "stack.json").read_text() == "{}"


def test_a_target_that_is_a_link_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / "stack.json").symlink_to(victim)
    write_atomic(tmp_path / "stack.json", "{}")
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "stack.json").is_symlink()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "pulls.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "sub", "x")  # rename over a folder fails after the write
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulls.json", "sub"]


def test_a_missing_folder_is_made_unless_the_path_was_typed(tmp_path):
    write_atomic(tmp_path / "a" / "b.json", "{}")
    assert (tmp_path / "a" / "b.json").exists()
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "typo" / "chat.md", "x", parents=False)
