"""Names and metadata: long, unicode and spaced names, empty files and dirs, modes, mtimes."""

from __future__ import annotations

import inspect
import os
import struct
import sys
import zlib

import pytest
from conftest import (
    Job,
    archive_tree,
    assert_refused,
    files_of,
    make_archive,
    read_package,
    tar_member,
    write_tree,
)

LONG_DIR = "/".join(["a-fairly-long-directory-name-" + str(i) for i in range(8)])
NAMES = {
    f"{LONG_DIR}/weights.bin": b"long path",
    "x" * 200 + ".bin": b"long name",
    "modèle/权重/données.pkl": b"unicode",
    "with space/file name.json": b"spaces",
    "empty.txt": b"",
}


@pytest.mark.parametrize("as_archive", [False, True], ids=["loose", "archive"])
def test_long_unicode_and_spaced_names_round_trip(job: Job, as_archive: bool) -> None:
    source = write_tree(job.tmp / "trained" if as_archive else job.model, NAMES)
    if as_archive:
        archive_tree(source, job.model / "model.tar.gz")
    job.main()
    assert files_of(job.package) == NAMES
    assert len(f"{LONG_DIR}/weights.bin") > 255


def test_pax_format_headers_for_long_and_unicode_names(job: Job) -> None:
    write_tree(job.model, NAMES)
    job.main()
    raw = zlib.decompress(job.package.read_bytes(), 31)
    assert b"././@PaxHeader" in raw
    assert "path=modèle/权重/données.pkl\n".encode() in raw
    assert b"././@LongLink" not in raw  # GNU extensions are not used


def test_empty_files_and_dirs_are_kept(job: Job) -> None:
    write_tree(job.model, {"model.bin": b"m", "empty.bin": b"", "empty-dir": None, "a/b/c": None})
    write_tree(job.script, {"inference.py": "", "unused": None})
    job.main()
    entries = read_package(job.package)
    assert entries["empty.bin"].type == "file" and entries["empty.bin"].data == b""
    assert entries["code/inference.py"].data == b""
    for name in ("empty-dir", "a", "a/b", "a/b/c", "code/unused"):
        assert entries[name].type == "dir"


def test_modes_are_normalized(job: Job) -> None:
    write_tree(
        job.model,
        {"model.bin": b"m", "run.sh": b"#!/bin/sh", "group-exec": b"g", "private": b"p", "d": None},
    )
    os.chmod(job.model / "run.sh", 0o700)
    os.chmod(job.model / "group-exec", 0o610)
    os.chmod(job.model / "private", 0o600)
    os.chmod(job.model / "d", 0o700)
    job.main()
    entries = read_package(job.package)
    assert {n: e.mode for n, e in entries.items()} == {
        "d": 0o755,
        "group-exec": 0o755,
        "model.bin": 0o644,
        "private": 0o644,
        "run.sh": 0o755,
    }
    for entry in entries.values():
        assert (entry.info.uid, entry.info.gid, entry.info.uname, entry.info.gname) == (
            0,
            0,
            "",
            "",
        )


def test_archive_modes_are_normalized_too(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {"model.bin": b"m", "tool": b"t"})
    os.chmod(trained / "tool", 0o4711)
    os.chmod(trained / "model.bin", 0o666)
    archive_tree(trained, job.model / "model.tar.gz")
    job.main()
    entries = read_package(job.package)
    assert (entries["tool"].mode, entries["model.bin"].mode) == (0o755, 0o644)


def test_members_are_sorted_by_name(job: Job) -> None:
    write_tree(job.model, {"b": b"", "a-b/x": b"", "a/z": b"", "A": b"", "a.txt": b"", "é": b""})
    write_tree(job.script, {"z.py": "", "a.py": ""})
    job.main()
    names = list(read_package(job.package))
    assert names == sorted(names)
    assert names.index("a") < names.index("a/z")


def test_every_mtime_is_one_fixed_time_by_default(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m", "d/f": b"f"})
    os.utime(job.model / "m.bin", (1_500_000_000.7, 1_500_000_000.7))
    job.main()
    assert {e.mtime for e in read_package(job.package).values()} == {946_684_800}  # 2000-01-01
    job.package.unlink()
    job.main(environ={"SOURCE_DATE_EPOCH": "1234567890"})
    assert {e.mtime for e in read_package(job.package).values()} == {1_234_567_890}


def test_keep_mtimes_takes_them_from_the_sources(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m", "d/f": b"f"})
    os.utime(job.model / "m.bin", (1_500_000_000.7, 1_500_000_000.7))
    os.utime(job.model / "d", (1_400_000_000, 1_400_000_000))
    job.main(keep_mtimes=True)
    entries = read_package(job.package)
    assert entries["m.bin"].mtime == 1_500_000_000
    assert entries["d"].mtime == 1_400_000_000


def test_kept_mtimes_are_clamped_to_source_date_epoch(job: Job) -> None:
    write_tree(job.model, {"new.bin": b"n", "old.bin": b"o"})
    os.utime(job.model / "old.bin", (1_000_000_000, 1_000_000_000))
    job.main(environ={"SOURCE_DATE_EPOCH": "1234567890"}, keep_mtimes=True)
    entries = read_package(job.package)
    assert entries["new.bin"].mtime == 1_234_567_890
    assert entries["old.bin"].mtime == 1_000_000_000


def test_gzip_header_has_no_name_and_no_time_and_one_member(job: Job) -> None:
    write_tree(job.model, {"m.bin": os.urandom(3000)})
    job.main()
    data = job.package.read_bytes()
    magic, method, flags, mtime = struct.unpack("<HBBI", data[:8])
    assert (magic, method, flags, mtime) == (0x8B1F, 8, 0, 0)
    inflate = zlib.decompressobj(31)
    inflate.decompress(data)
    assert inflate.eof and inflate.unused_data == b""


def test_non_utf8_file_name_is_refused(job: Job) -> None:
    write_tree(job.model, {"ok.bin": b"x"})
    with open(os.path.join(os.fsencode(job.model), b"bad-\xff.bin"), "wb") as f:
        f.write(b"x")
    assert_refused(job.cli(), job, "not valid UTF-8")


def test_package_mode_is_world_readable(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m"})
    job.main()
    assert job.package.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("as_archive", [False, True], ids=["loose", "archive"])
def test_trees_deeper_than_the_recursion_limit(job: Job, as_archive: bool) -> None:
    """Nothing recurses per directory level (os.walk and shutil.rmtree did before 3.12).

    The recursion limit is set just above the current stack depth, so a tree of
    300 levels proves it as well as one deeper than the default limit would.
    """
    source = job.tmp / "trained" if as_archive else job.model
    leaf = source
    for _ in range(300):
        leaf = leaf / "d"
        leaf.mkdir(parents=leaf.parent == source)
    (leaf / "leaf.bin").write_bytes(b"x")
    (source / "m.bin").write_bytes(b"m")
    if as_archive:
        archive_tree(source, job.model / "model.tar.gz")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 120)
    try:
        job.main()
    finally:
        sys.setrecursionlimit(limit)
    assert files_of(job.package) == {"/".join(["d"] * 300) + "/leaf.bin": b"x", "m.bin": b"m"}
    assert list(job.work.iterdir()) == []


@pytest.mark.parametrize("length", [255, 256])
def test_a_name_component_may_hold_255_bytes_not_256(job: Job, length: int) -> None:
    """MAX_NAME_BYTES, in bytes of UTF-8: a two-byte character counts twice."""
    component = "é" * (length // 2) + "n" * (length % 2)
    assert len(component.encode()) == length
    members = [tar_member("w.bin", b"w"), tar_member(f"d/{component}", b"x")]
    make_archive(job.model / "model.tar.gz", members)
    if length <= 255:
        job.main()
        assert files_of(job.package)[f"d/{component}"] == b"x"
        return
    assert_refused(job.cli(), job, "has a path component over 255 bytes")
