"""Verification compares every field it promises, reads the file itself, and only after fsync."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Job, write_tree

import mims_package
from mims_package import GzipWriter, Member, write_tar


def write_package(path: Path, members: list[Member]) -> mims_package.Written:
    """Write members as a package at path (as the job does, without the read-back)."""
    with open(path, "wb") as out, GzipWriter(out, 6, 1) as sink:
        return write_tar(members, sink)


@pytest.fixture
def members(tmp_path: Path) -> list[Member]:
    files = write_tree(tmp_path / "files", {"a.bin": b"alpha", "b.bin": b"bravo", "c": None})
    return [
        Member("a.bin", files / "a.bin", False, 5, 0o644, 1_700_000_000),
        Member("b.bin", files / "b.bin", False, 5, 0o755, 1_700_000_000),
        Member("c", files / "c", True, 0, 0o755, 1_700_000_000),
    ]


def different(member: Member, field: str, tmp_path: Path) -> Member:
    """member with one field changed, and nothing else."""
    if field == "content":
        other = tmp_path / "other.bin"
        other.write_bytes(b"BRAVO")  # same size, other bytes
        return member._replace(path=other)
    if field == "type":  # an empty file where a directory was
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        return member._replace(is_dir=False, path=empty, mode=0o755)
    changes: dict[str, Any] = {
        "name": {"name": "z.bin"},
        "size": {"size": 4},
        "mode": {"mode": 0o644},
        "mtime": {"mtime": 1_700_000_001},
    }[field]
    if field == "size":
        short = tmp_path / "short.bin"
        short.write_bytes(b"brav")
        changes["path"] = short
    return member._replace(**changes)


@pytest.mark.parametrize("field", ["name", "type", "size", "mode", "mtime", "content"])
def test_a_package_that_differs_in_one_field_is_caught(
    members: list[Member], field: str, tmp_path: Path
) -> None:
    expected = write_package(tmp_path / "good.tar.gz", members)
    mims_package.verify_package(tmp_path / "good.tar.gz", expected)  # the control passes
    index = 2 if field == "type" else 1
    changed = [*members]
    changed[index] = different(members[index], field, tmp_path)
    write_package(tmp_path / "bad.tar.gz", changed)
    with pytest.raises(mims_package.PackagingError, match=r"verification of .* failed at member"):
        mims_package.verify_package(tmp_path / "bad.tar.gz", expected)


class CorruptingFile:
    """The package file, but each block written reaches the disk with one bit flipped after it.

    The flip happens on disk (pwrite), after the block was handed over intact: a
    read-back that decodes what it was given, rather than what the file holds, misses it.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.flipped = 0

    def write(self, data: bytes) -> int:
        written = self._raw.write(data)
        self._raw.flush()
        if len(data) > 100_000 and not self.flipped:
            offset = self._raw.tell() - len(data) + 1000
            os.pwrite(self._raw.fileno(), bytes([data[1000] ^ 0x10]), offset)
            self.flipped += 1
        return int(written)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def test_bytes_changed_in_the_file_after_writing_are_caught(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"m.bin": os.urandom(3 << 20)})
    files: list[CorruptingFile] = []
    real_init = mims_package._ReadBack.__init__

    def init(self: Any, *args: Any) -> None:
        real_init(self, *args)
        files.append(CorruptingFile(self._out))
        self._out = files[-1]

    monkeypatch.setattr(mims_package._ReadBack, "__init__", init)
    with pytest.raises(mims_package.PackagingError, match=r"verification of .* failed"):
        job.main()
    assert files[0].flipped == 1
    assert not job.package.exists() and job.leftovers() == []


def test_order_is_write_fsync_read_the_end_rename(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"m.bin": os.urandom(2 << 20)})
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    real_read = mims_package._ReadBack.read

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".partial"):
            events.append("fsync")
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        events.append("rename")
        real_replace(source, target)

    def read(self: Any, size: int) -> bytes:
        if self._finished and "read-end" not in events:  # reading on towards the file's end
            events.append("read-end")
        return real_read(self, size)

    monkeypatch.setattr(mims_package.os, "fsync", fsync)
    monkeypatch.setattr(mims_package.os, "replace", replace)
    monkeypatch.setattr(mims_package._ReadBack, "read", read)
    job.main()
    assert events == ["fsync", "read-end", "rename"]


def change_file(path: Path, change: str) -> None:
    """Change a planned file in one of the ways a busy input might."""
    if change == "grows":
        with open(path, "ab") as f:
            f.write(b"more")
    elif change == "shrinks":
        os.truncate(path, 5_000)
    else:
        path.unlink()
        if change == "a symlink":
            path.symlink_to("/etc/passwd")
        elif change == "a FIFO":
            os.mkfifo(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("grows", "changed size while being packaged"),
        ("shrinks", "changed size while being packaged"),
        ("removed", "was removed while being packaged"),
        ("a symlink", "was replaced by a symlink while being packaged"),
        ("a FIFO", "was replaced by a non-file while being packaged"),
    ],
)
def test_a_file_that_changes_after_staging_is_refused(
    job: Job, monkeypatch: pytest.MonkeyPatch, change: str, message: str
) -> None:
    write_tree(job.model, {"m.bin": b"m" * 10_000})
    real_stage = mims_package._stage_inputs

    def stage_then_change(*args: Any) -> list[Member]:
        planned = real_stage(*args)
        change_file(job.model / "m.bin", change)
        return planned

    monkeypatch.setattr(mims_package, "_stage_inputs", stage_then_change)
    with pytest.raises(mims_package.PackagingError, match=message):
        job.main()
    assert not job.package.exists() and job.leftovers() == []
