"""hub.py's arithmetic before a pull: what the disk must still take."""

from __future__ import annotations

from llmctl import fetch, hub

MiB = fetch.MiB


def _want(tmp_path, name, blob, size):
    return fetch.Want(name, f"http://127.0.0.1:9/{name}", tmp_path / "blobs" / blob, size,
                      blob * 64 if len(blob) == 1 else None)


def test_the_disk_check_counts_each_missing_blob_once(tmp_path):
    (tmp_path / "blobs").mkdir()
    big = _want(tmp_path, "model.safetensors", "a", 900 * MiB)
    big.dest.write_bytes(b"")  # here already: a revision before this one had it
    new = _want(tmp_path, "tokenizer.json", "b", 3 * MiB)
    copy = _want(tmp_path, "tokenizer-copy.json", "b", 3 * MiB)  # the same bytes
    shard = _want(tmp_path, "model-2.safetensors", "c", 40 * MiB)
    assert hub.disk_need([big, new, copy, shard]) == 43 * MiB
    # What a killed pull left of a blob is not asked for again.
    legacy = fetch.Want(shard.name, shard.url, shard.dest, shard.size, shard.sha256,
                        legacy=tmp_path / "blobs" / "c.incomplete")
    legacy.legacy.write_bytes(b"x" * MiB)
    assert hub.disk_need([big, new, legacy]) == 42 * MiB

