"""Files written whole or not at all, and never through a link someone planted.

May import: nothing of the package. Every file llmctl writes (stack.json, starts.json,
the pull records, the config, keys.toml, a saved chat) goes through `write_atomic`:

- the data goes to a temporary file beside the target, under a random name, opened with
  O_CREAT|O_EXCL|O_NOFOLLOW: a symlink or file planted at a guessable name (the old
  `.NAME.PID.tmp`) makes the open fail instead of writing where the link points;
- the mode is set on the descriptor (fchmod), before any byte, so umask cannot widen it
  and a key is never readable by others, not even for a moment;
- fsync, then rename over the target: a reader sees the old file or the new one, and a
  crash leaves the old one (and at worst a stray temporary file), never half a file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

PRIVATE = 0o600  # the default: llmctl's files are its user's business (keys, pids, usage)


def private_dir(path: Path, *, files: bool = False) -> Path:
    """`path` as a folder only its owner can enter (state, logs): made so, or narrowed;
    with `files`, the files in it too (those an older llmctl left readable to others)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    if files:
        for f in path.iterdir():
            with contextlib.suppress(OSError):
                st = f.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                    os.chmod(f, st.st_mode & 0o700)
    return path


def write_atomic(path: Path, data: bytes | str, mode: int = PRIVATE, *,
                 parents: bool = True, sync: bool = True) -> None:
    """Replace `path` with `data` atomically, the new file at `mode`; the folder is made
    when missing unless `parents` is False (a path the user typed: a typo is an error).
    `sync=False` skips the fsync, for a file rewritten every second whose loss costs only
    time (a pull's map of done parts): still whole or absent after a kill."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise

