"""Read as GNU tar and bsdtar read it, or refused: the package beside what each tool extracts.

Each archive here is one a red team built to make the package differ from what the
tools show, or one the script used to refuse although both tools extract it. For
every archive the script accepts, the package's members and bytes are exactly the
tree that each tool which accepts it extracts.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import pytest
from conftest import (
    EOF_MARKER,
    Job,
    extended_entry,
    files_of,
    pad,
    read_package,
    run_cli,
    with_checksum,
    write_tree,
)

import mims_package
from mims_package import BLOCK_SIZE, _pax_record, _ustar_block, member_header

TOOLS = {"gnu-tar": ["tar", "-xf"], "bsdtar": ["bsdtar", "-xf"]}


def header(
    name: str, size: int = 0, edits: dict[int, bytes] | None = None, kind: bytes = b"0"
) -> bytes:
    """A ustar header for a member, with byte edits (offset: bytes) and the checksum redone."""
    block = bytearray(_ustar_block(name.encode(), kind, size, 0o644, 1_600_000_000))
    for offset, value in (edits or {}).items():
        block[offset : offset + len(value)] = value
    return with_checksum(block)


def file_entry(name: str, data: bytes, **edits: bytes) -> bytes:
    return (
        header(name, len(data), {int(k[1:]): v for k, v in edits.items()}) + data + pad(len(data))
    )


def prefixed_with_old_version() -> bytes:
    # The "ustar\0" magic with a version other than "00": both tools still apply the prefix.
    entry = file_entry("inference.py", b"print('benign')\n", o263=b"  ", o345=b"code\0")
    return entry + EOF_MARKER


def two_pax_headers() -> bytes:
    # Merged, the first's path would stand; the tools keep only the second header.
    first = extended_entry(kind=b"x", body=_pax_record(b"path", b"evil.py"))
    second = extended_entry(kind=b"x", body=_pax_record(b"mtime", b"1600000000"))
    return first + second + file_entry("plain.py", b"x = 1\n") + EOF_MARKER


def solaris_x_header() -> bytes:
    named = extended_entry(kind=b"X", body=_pax_record(b"path", b"named/by/x.bin"))
    return named + file_entry("fallback.bin", b"weights") + EOF_MARKER


def old_style_directories() -> bytes:
    # As bsdtar --format v7 writes them: regular-file types whose names end in "/".
    return (
        header("d/", kind=b"0")
        + header("d/e/", kind=b"\0")
        + file_entry("d/e/f.bin", b"f")
        + header("empty/", kind=b"0")
        + EOF_MARKER
    )


def negative_mtime() -> bytes:
    base256 = b"\xff" * 8 + (-86_400).to_bytes(4, "big", signed=True)  # 1969-12-31
    return file_entry("old.bin", b"from before 1970", o136=base256) + EOF_MARKER


def base256_size() -> bytes:
    data = b"hello"
    return file_entry("sized.bin", data, o124=b"\x80" + len(data).to_bytes(11, "big")) + EOF_MARKER


def gnu_long_name_and_link() -> bytes:
    long = "dir/" + "n" * 150 + ".bin"
    name = _ustar_block(b"././@LongLink", b"L", len(long) + 1, 0o644, 0)
    body = long.encode() + b"\0"
    return name + body + pad(len(body)) + file_entry("short", b"long-named") + EOF_MARKER


ARCHIVES: dict[str, Callable[[], bytes]] = {
    "prefix-with-old-version": prefixed_with_old_version,
    "two-pax-headers": two_pax_headers,
    "solaris-x-header": solaris_x_header,
    "old-style-directories": old_style_directories,
    "negative-mtime": negative_mtime,
    "base-256-size": base256_size,
    "gnu-long-name": gnu_long_name_and_link,
}
# What the script used to refuse although both tools extract it: it must accept these.
MUST_ACCEPT = {"old-style-directories", "negative-mtime", "base-256-size"}


def tree(root: Path) -> dict[str, bytes | None]:
    """{name: bytes, or None for a directory} for everything below root."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        found[name] = None if path.is_dir() else path.read_bytes()
    return found


def extracted_by(tool: str, archive: Path, dest: Path) -> dict[str, bytes | None] | None:
    """The tree the tool extracts from archive, or None if it refuses it."""
    dest.mkdir()
    result = subprocess.run([*TOOLS[tool], str(archive), "-C", str(dest)], capture_output=True)
    return tree(dest) if result.returncode == 0 else None


def packaged(job: Job) -> dict[str, bytes | None] | None:
    """The package's members as a tree, or None if the job refuses the archive."""
    try:
        job.main()
    except mims_package.PackagingError:
        return None
    entries = read_package(job.package)
    return {name: None if e.type == "dir" else e.data for name, e in entries.items()}


missing = [command[0] for command in TOOLS.values() if shutil.which(command[0]) is None]
needs_tools = pytest.mark.skipif(
    bool(missing), reason=f"{', '.join(missing)} not on PATH (GNU tar; libarchive-tools)"
)


def check_like_the_tools(job: Job, archive_bytes: bytes, name: str) -> None:
    write_tree(job.model, {"model.tar.gz": archive_bytes})
    ours = packaged(job)
    for tool in TOOLS:
        theirs = extracted_by(tool, job.model / "model.tar.gz", job.tmp / tool)
        if ours is not None and theirs is not None:
            assert ours == theirs, f"{tool} extracts another tree than the package holds"
    if name in MUST_ACCEPT:
        assert ours is not None, "refused, although GNU tar and bsdtar extract it"


@needs_tools
@pytest.mark.parametrize("name", sorted(ARCHIVES))
@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_the_package_holds_what_tar_and_bsdtar_extract(
    job: Job, name: str, compression: str
) -> None:
    data = ARCHIVES[name]()
    check_like_the_tools(job, gzip.compress(data, mtime=0) if compression == "gzip" else data, name)


@needs_tools
def test_xz_streams_with_padding_between_them_are_read_as_xz_reads_them(job: Job) -> None:
    tar = file_entry("a.bin", b"first") + file_entry("b.bin", b"second") + EOF_MARKER
    split = 2 * BLOCK_SIZE
    stream = lzma.compress(tar[:split]) + bytes(8) + lzma.compress(tar[split:]) + bytes(4)
    check_like_the_tools(job, stream, "xz-padding")
    assert (job.package).exists()


@needs_tools
@pytest.mark.parametrize("field", [b" 0o1234\0", b"+001234\0", b"00_1234\0", b"0012 34\0"])
def test_a_checksum_that_is_not_plain_octal_is_refused_as_both_tools_refuse_it(
    job: Job, field: bytes
) -> None:
    block = bytearray(member_header("m.bin", False, 1, 0o644, 0))
    block[148:156] = b" " * 8
    true_sum = sum(block)
    text = field.replace(b"1234", b"%04o" % (true_sum & 0o7777))[:8]
    block[148:156] = text.ljust(8, b"\0")
    write_tree(job.model, {"model.tar.gz": bytes(block) + b"m" + pad(1) + EOF_MARKER})
    assert packaged(job) is None
    for tool in TOOLS:
        assert extracted_by(tool, job.model / "model.tar.gz", job.tmp / tool) in (None, {})


def xz_with(edit: Callable[[bytearray], None], check: int = lzma.CHECK_CRC64) -> bytes:
    stream = bytearray(lzma.compress(file_entry("m.bin", b"m" * 100) + EOF_MARKER, check=check))
    edit(stream)
    return bytes(stream)


def dictionary(property_byte: int) -> Callable[[bytearray], None]:
    """An edit: the first block's LZMA2 property byte declares a dictionary of
    (2 | byte & 1) << (byte // 2 + 11) bytes, which decoding must allocate."""

    def edit(stream: bytearray) -> None:
        size = (stream[12] + 1) * 4  # the block header's
        stream[12 + 4] = property_byte
        crc = zlib.crc32(stream[12 : 12 + size - 4])
        stream[12 + size - 4 : 12 + size] = crc.to_bytes(4, "little")

    return edit


huge_dictionary = dictionary(40)  # 4 GiB


def reserved_check(stream: bytearray) -> None:
    # Check ID 5 is reserved: xz does not know how to verify it. Header and footer both say it.
    stream[7] = 5
    stream[8:12] = zlib.crc32(stream[6:8]).to_bytes(4, "little")
    stream[-4 + -2 + 1] = 5  # the footer's flags, before "YZ"
    stream[-12:-8] = zlib.crc32(stream[-8:-2]).to_bytes(4, "little")


@pytest.mark.parametrize(
    ("stream", "needle"),
    [
        (xz_with(huge_dictionary), "needs more than 128 MiB of memory"),
        (xz_with(reserved_check), "has check ID 5"),
        (xz_with(lambda s: None, check=lzma.CHECK_NONE), "has check ID 0"),
    ],
    ids=["4-GiB-dictionary", "reserved-check", "no-check"],
)
def test_xz_that_cannot_be_verified_or_bounded_is_refused(
    job: Job, stream: bytes, needle: str
) -> None:
    write_tree(job.model, {"model.tar.gz": stream})
    with pytest.raises(mims_package.PackagingError, match="holds what is refused") as caught:
        job.main()
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    ("property_byte", "passes"),
    [(29, True), (30, False)],
    ids=["96-MiB-dictionary", "128-MiB-dictionary"],
)
def test_the_xz_memory_limit_at_its_edge(job: Job, property_byte: int, passes: bool) -> None:
    """XZ_MEMORY_LIMIT is 128 MiB: a 96 MiB dictionary decodes, a 128 MiB one needs a little
    more than the limit (the decoder's own state besides) and is refused."""
    write_tree(job.model, {"model.tar.gz": xz_with(dictionary(property_byte))})
    if passes:
        job.main()
        assert files_of(job.package)["m.bin"] == b"m" * 100
        return
    with pytest.raises(mims_package.PackagingError, match="needs more than 128 MiB of memory"):
        job.main()


def test_xz_at_its_largest_preset_still_passes(job: Job) -> None:
    data = file_entry("m.bin", os.urandom(1000)) + EOF_MARKER
    write_tree(job.model, {"model.tar.gz": lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)})
    job.main()
    with tarfile.open(job.package) as tar:
        assert tar.getnames() == ["m.bin"]


def with_global(keyword: bytes, value: bytes) -> bytes:
    """A PAX global header with one record, before two small files."""
    records = _pax_record(keyword, value)
    return (
        extended_entry(kind=b"g", body=records)
        + file_entry("a.bin", b"A" * 10)
        + file_entry("b.bin", b"B" * 10)
        + EOF_MARKER
    )


GLOBALS = {
    "path": b"code/inference.py",
    "linkpath": b"/etc",
    "size": b"512",
    "hdrcharset": b"BINARY",
    "GNU.sparse.size": b"100",
    "GNU.dumpdir": b"Ya",
}


@pytest.mark.parametrize("keyword", GLOBALS)
def test_a_global_header_that_changes_later_members_is_refused(job: Job, keyword: str) -> None:
    data = with_global(keyword.encode(), GLOBALS[keyword])
    write_tree(job.model, {"model.tar.gz": gzip.compress(data, mtime=0)})
    with pytest.raises(mims_package.PackagingError, match="holds what is refused") as caught:
        job.main()
    said = "sparse" if keyword.startswith("GNU.sparse") else f"global header sets '{keyword}'"
    assert said in str(caught.value)
    package = job.tmp / "by-hand.tar"
    package.write_bytes(data)
    verified = run_cli("--verify", package)
    assert verified.returncode == 1 and "FAIL integrity" in verified.stdout
    assert said in verified.stdout


@needs_tools
@pytest.mark.parametrize("keyword", ["path", "size"])
def test_the_tools_disagree_on_global_headers(tmp_path: Path, keyword: str) -> None:
    """Why they are refused: GNU tar applies them to later members, bsdtar ignores them."""
    archive = tmp_path / "g.tar"
    archive.write_bytes(with_global(keyword.encode(), GLOBALS[keyword]))
    trees = [extracted_by(tool, archive, tmp_path / tool) for tool in TOOLS]
    assert trees[0] is not None and trees[1] is not None and trees[0] != trees[1]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not on PATH")
def test_git_archives_global_comment_passes(job: Job) -> None:
    """git archive writes a global header with the commit id as a comment: harmless."""
    repo = write_tree(job.tmp / "repo", {"xgboost_model.bst": b"b", "code/inference.py": "x = 1\n"})
    environ = {
        **os.environ,
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@b",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@b",
    }
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(repo), *command], check=True, env=environ)
    archive = job.model / "model.tar.gz"
    archive.parent.mkdir()
    subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar.gz", "-o", str(archive), "HEAD"],
        check=True,
    )
    with gzip.open(archive) as raw:
        assert raw.read(512)[156:157] == b"g"  # the global header comes first
    job.main()
    assert set(read_package(job.package)) >= {"xgboost_model.bst", "code/inference.py"}
    verified = run_cli("--verify", archive)
    assert verified.returncode == 0, verified.stdout
