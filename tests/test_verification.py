"""Verification compares every field it promises, reads the file itself, and only after fsync."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import Job, write_tree

import mims_package
from mims_package import GzipWriter, Member


@pytest.fixture
def members(tmp_path: Path) -> list[Member]:
    files = write_tree(tmp_path / "files", {"a.bin": b"alpha", "b.bin": b"bravo", "c": None})
    base = str(files) + "/"  # each member is read from base + its name (see Member)
    return [
        Member("a.bin", base, 0, False, 5, 0o644, 1_700_000_000, stamp(files / "a.bin")),
        Member("b.bin", base, 0, False, 5, 0o755, 1_700_000_000, stamp(files / "b.bin")),
        Member("c", base, 0, True, 0, 0o755, 1_700_000_000, 0),
    ]


def stamp(path: Path) -> int:
    """The stamp a file is planned with, as staging takes it."""
    return mims_package._stamp(os.stat(path))


def test_what_was_written_counts_only_the_members_written(members: list[Member]) -> None:
    written = mims_package.Written(members)
    written.crcs.extend([1, 2])  # two of the three planned members written so far
    assert len(written) == 2
    assert [record.name for record in written] == ["a.bin", "b.bin"]
    assert written[-1] == written[1] == ("b.bin", b"0", 5, 0o755, 1_700_000_000, 2)
    with pytest.raises(IndexError):
        written[-3]
    with pytest.raises(IndexError):
        written[2]


CHANGED = {
    "name": "z.bin",
    "type": b"5",
    "size": 4,
    "mode": 0o755,
    "mtime": 1_700_000_001,
    "crc32": 0,
}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_a_member_read_back_with_one_field_changed_is_caught(
    job: Job, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """As if a disk or memory fault changed one field of one member, where the job reads it."""
    assert set(CHANGED) == set(mims_package.Record._fields)  # every field verification compares
    write_tree(job.model, {"a.bin": b"alpha", "b.bin": b"bravo", "c": None})
    real_visit = mims_package._visit_members

    def visit_changed(stream: Any, visit: Any) -> None:
        def changed(record: mims_package.Record) -> None:
            if record.name == "b.bin":
                record = record._replace(**{field: CHANGED[field]})
            visit(record)

        real_visit(stream, changed)

    monkeypatch.setattr(mims_package, "_visit_members", visit_changed)
    with pytest.raises(mims_package.PackagingError, match=r"verification of .* failed at member"):
        job.main()
    assert not job.package.exists() and job.leftovers() == []


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

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
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
    real_pread = mims_package._pread_exactly

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".partial"):
            events.append("fsync")
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        events.append("rename")
        real_replace(source, target)

    def pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        if len(data) < size:  # a read that reached the end of the file
            events.append("read-end")
        return data

    monkeypatch.setattr(mims_package.os, "fsync", fsync)
    monkeypatch.setattr(mims_package.os, "replace", replace)
    monkeypatch.setattr(mims_package, "_pread_exactly", pread)
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
        ("grows", "changed since it was planned"),
        ("shrinks", "changed since it was planned"),
        ("removed", r"changed \(it was removed\) while being packaged"),
        ("a symlink", r"changed \(it was replaced by a symlink\) while being packaged"),
        ("a FIFO", r"changed \(it is no longer a regular file\) since it was planned"),
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


# --- The file itself: every byte of it, piece by piece ------------------------------------


PIECES_MODEL = {  # two full pieces and a short one: random weights (Huffman) and text
    "a.bin": random.Random(5).randbytes(1 << 20),
    "b.txt": b"def f(x):\n    return x\n" * 50_000,
}


@pytest.fixture
def pieces(job: Job, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The job's package of PIECES_MODEL as its writes reach the file: header, pieces, end."""
    write_tree(job.model, PIECES_MODEL)
    parts: list[bytes] = []
    real_write = mims_package._ReadBack.write

    def write(self: mims_package._ReadBack, data: bytes) -> None:
        parts.append(bytes(data))
        real_write(self, data)

    with monkeypatch.context() as patch:
        patch.setattr(mims_package._ReadBack, "write", write)
        job.main()
    assert len(parts) == 5  # the header, three pieces, the end
    assert b"".join(parts) == job.package.read_bytes()
    return parts


def caught(job: Job, image: bytes, compare_bytes: bool = True) -> bool:
    """Whether the job fails when its read-back reads image in place of the file it wrote.

    Unless compare_bytes, the check that the file's SHA-256 is that of the bytes
    written is left out, so that only decoding can catch the change.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mims_package, "_pread_exactly", lambda fd, size, at: image[at : at + size])
        if not compare_bytes:
            patch.setattr(mims_package, "_check_same_bytes", lambda read, written: None)
        try:
            job.main()
        except mims_package.PackagingError:
            return True
    return False


def test_a_flipped_bit_anywhere_in_the_file_is_caught(job: Job, pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert not caught(job, data)  # the control passes
    ends = list(itertools.accumulate(len(part) for part in pieces))
    positions = set(range(12)) | set(range(len(data) - 12, len(data)))  # header, the end
    for end in ends[1:-1]:  # each piece's sync flush: its padding bits and marker
        positions |= set(range(end - 8, end))
    choose = random.Random(7)
    positions |= set(choose.sample(range(len(data)), 20))
    missed = []
    for position in sorted(positions):
        bit = choose.randrange(8)
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        if not caught(job, bytes(flipped)):
            missed.append((position, bit))
    assert missed == []


@pytest.mark.parametrize("fault", ["swapped pieces", "truncated piece", "piece left out"])
def test_pieces_swapped_cut_or_lost_are_caught_by_decoding_alone(
    job: Job, pieces: list[bytes], fault: str
) -> None:
    header, first, second, third, end = pieces
    assert not caught(job, b"".join(pieces), compare_bytes=False)  # the control passes
    body = {
        "swapped pieces": [second, first, third],
        "truncated piece": [first[:-1000], second, third],
        "piece left out": [first, third],
    }[fault]
    assert caught(job, b"".join([header, *body, end]), compare_bytes=False)


def test_the_job_refuses_a_file_whose_ignored_bits_changed(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Byte 4 is the gzip header's MTIME, which gunzip ignores: only the SHA-256 sees it.
    write_tree(job.model, {"m.bin": os.urandom(3 << 20)})
    real_init = mims_package._ReadBack.__init__

    class AlteringFile:
        """The package file, whose first write (the gzip header) reaches the disk altered."""

        def __init__(self, out: Any) -> None:
            self.out, self.first = out, True

        def write(self, data: bytes) -> int:
            if self.first:  # changed before the read-back can be told it is there
                data, self.first = data[:4] + b"\x01" + data[5:], False
            return self.out.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.out, name)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self._out = AlteringFile(self._out)

    monkeypatch.setattr(mims_package._ReadBack, "__init__", init)
    with pytest.raises(mims_package.PackagingError, match="bytes differ from those written"):
        job.main()
    assert not job.package.exists() and job.leftovers() == []


# --- The read-back inflates pieces in parallel: what joins them is checked ----------------


def test_a_piece_primed_with_another_window_is_caught(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the writer's copy of the input before a chunk went bad in memory: the piece
    # decodes to its chunk with that window, but gunzip decodes it after the real stream.
    write_tree(job.model, {"m.txt": b"def f(x):\n    return x\n" * 100_000})
    real_submit = GzipWriter._submit

    def submit(self: Any, chunk: bytes) -> None:
        if self._window:
            self._window = b"#" + self._window[1:]
        real_submit(self, chunk)

    monkeypatch.setattr(GzipWriter, "_submit", submit)
    with pytest.raises(mims_package.PackagingError, match="does not follow the one before it"):
        job.main()
    assert not job.package.exists() and job.leftovers() == []


def test_a_piece_that_decodes_to_other_bytes_than_its_chunk_is_caught(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A byte of tar padding changed after the chunk's CRC-32 was taken: no member's
    # content changes, so only the piece's own CRC-32 can see it.
    write_tree(job.model, {"m.bin": b"m" * 1000})  # padding at bytes 1512 to 1535
    real_deflate = mims_package._deflate_chunk

    def deflate(chunk: bytes, *args: Any) -> tuple[bytes, int, int]:
        _, crc, length = real_deflate(chunk, *args)
        piece, _, _ = real_deflate(b"".join((chunk[:1520], b"x", chunk[1521:])), *args)
        return piece, crc, length

    monkeypatch.setattr(mims_package, "_deflate_chunk", deflate)
    with pytest.raises(mims_package.PackagingError, match="does not decode to its chunk"):
        job.main()


def test_a_trailer_that_is_not_the_pieces_crc_is_caught(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"m.bin": os.urandom(3 << 20)})
    real_close = GzipWriter.close

    def close(self: Any) -> None:
        self._crc ^= 1
        real_close(self)

    monkeypatch.setattr(GzipWriter, "close", close)
    with pytest.raises(mims_package.PackagingError, match="is not the final block and a trailer"):
        job.main()
