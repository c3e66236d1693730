"""Untrusted archives: nothing lost silently, no crash or stall, and what GNU tar accepts, accepted.

The archives here are built block by block (the script's own header codec, then
edits with the checksum recomputed), so each test says exactly which bytes are odd.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from conftest import (
    EOF_MARKER,
    Job,
    assert_refused,
    compiled_script,
    extended_entry,
    files_of,
    find_pythons,
    make_archive,
    pad,
    tar_member,
    with_checksum,
    write_tree,
)

import mims_package
from mims_package import BLOCK_SIZE, _pax_record, _ustar_block, member_header


def file_entry(name: str, data: bytes, mtime: int = 1_600_000_000) -> bytes:
    return member_header(name, False, len(data), 0o644, mtime) + data + pad(len(data))


def edited(header: bytes, offset: int, value: bytes, fix_checksum: bool = True) -> bytes:
    block = bytearray(header[:BLOCK_SIZE])
    block[offset : offset + len(value)] = value
    return with_checksum(block) if fix_checksum else bytes(block)


THREE = [("model.bin", b"m" * 700), ("second.bin", b"s" * 10), ("third.bin", b"t" * 10)]


def three_files(second_header_edit=None) -> bytes:  # type: ignore[no-untyped-def]
    entries = [file_entry(name, data) for name, data in THREE]
    if second_header_edit is not None:
        header = bytearray(entries[1][:BLOCK_SIZE])
        second_header_edit(header)
        entries[1] = bytes(header) + entries[1][BLOCK_SIZE:]
    return b"".join(entries) + EOF_MARKER


def put(job: Job, tar: bytes, compress: str = "gz") -> None:
    data = {"gz": lambda d: gzip.compress(d, mtime=0), "": lambda d: d}[compress](tar)
    write_tree(job.model, {"model.tar.gz": data})


def refused(job: Job, *needles: str) -> str:
    result = job.cli()
    assert_refused(result, job, *needles)
    return result.stdout


# Silent data loss: a bad header after the first was taken for the end of the archive.


def flip_checksum(header: bytearray) -> None:
    header[150] ^= 0x01


def bad_octal_mtime(header: bytearray) -> None:
    header[136:148] = b"zzzzzzzzzzz\0"
    with_checksum(header)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (flip_checksum, "its header is damaged (the checksum does not match)"),
        (bad_octal_mtime, "its mtime field is not an octal number"),
    ],
    ids=["checksum-bit", "octal-mtime"],
)
def test_a_damaged_header_after_the_first_is_an_error_not_an_end(
    job: Job, edit, needle: str
) -> None:  # type: ignore[no-untyped-def]
    put(job, three_files(edit))
    refused(job, "model archive", "the member at byte 1536 ('second.bin')", needle)


def test_a_zero_length_pax_record_mid_archive_is_an_error(job: Job) -> None:
    entries = [file_entry(name, data) for name, data in THREE]
    entries.insert(1, extended_entry(b"0 path=x\n"))
    put(job, b"".join(entries) + EOF_MARKER)
    refused(job, "extended header at byte 1536", "malformed")


# Crashes: every malformed value ends in one clean ERROR.

NOT_A_NUMBER = "record is not a number"
REFUSED_NEEDLES = {"sparse members are refused", "is not valid UTF-8", "over 4096 (PATH_MAX)"}
CORRUPT = "is corrupt or truncated"
REFUSED = "holds what is refused"
PAX_BAD = [  # keyword, value, what the message must say
    (b"mtime", b"nan", NOT_A_NUMBER),
    (b"mtime", b"1e400", NOT_A_NUMBER),
    (b"mtime", b"", NOT_A_NUMBER),
    (b"atime", b"x", NOT_A_NUMBER),
    (b"size", b"-1", "its PAX size record is not a number"),
    (b"uid", b"-1", "its PAX uid record is not a number"),
    (b"gid", b"-1", "its PAX gid record is not a number"),
    (b"size", b"12x", NOT_A_NUMBER),
    (b"uid", b"x", NOT_A_NUMBER),
    (b"gid", b"1.5", NOT_A_NUMBER),
    (b"GNU.sparse.map", b"0,1,x", "sparse members are refused"),
    (b"GNU.sparse.size", b"12", "sparse members are refused"),
    (b"path", b"a\x00b", "its name holds a NUL byte"),
    (b"linkpath", b"a\x00b", "its link target holds a NUL byte"),
    (b"path", b"\xff\xfe", "is not valid UTF-8"),
    (b"path", b"a/" * 2100, "over 4096 (PATH_MAX)"),
]


@pytest.mark.parametrize(
    ("keyword", "value", "needle"), PAX_BAD, ids=[f"{k!r}={v[:8]!r}" for k, v, _ in PAX_BAD]
)
def test_every_bad_pax_value_is_one_clean_error(
    job: Job, keyword: bytes, value: bytes, needle: str
) -> None:
    entry = extended_entry(_pax_record(keyword, value)) + file_entry("model.bin", b"m")
    put(job, entry + EOF_MARKER)
    kind = REFUSED if needle in REFUSED_NEEDLES else CORRUPT
    with pytest.raises(mims_package.PackagingError, match=r"model archive .*") as caught:
        job.main()
    assert kind in str(caught.value) and needle in str(caught.value), str(caught.value)
    assert not job.output.exists()


HEADER_FIELDS = {  # field: (offset, bad values)
    "name": (0, [b"\xff\xfe\0", b"\0"]),
    "mode": (100, [b"zzzzzzz\0", b"\xff" * 8, b"12 34\0"]),
    "uid": (108, [b"-000001\0", b"abc\0"]),
    "gid": (116, [b"9999999\0", b"\xfe" * 8]),
    "size": (124, [b"zzzzzzzzzzz\0", b"77777777777\0", b"\xff" * 12]),
    "mtime": (136, [b"zzzzzzzzzzz\0", b"-0000000001\0"]),
    "chksum": (148, [b"zzzzzz\0 ", b"0000000\0"]),
    "typeflag": (156, [b"?", b"9", b"\x01", b"S", b"M", b"3", b"6"]),
}


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, (_, values) in HEADER_FIELDS.items() for value in values],
)
def test_every_bad_header_value_is_one_clean_error(job: Job, field: str, value: bytes) -> None:
    offset = HEADER_FIELDS[field][0]
    first = file_entry("model.bin", b"m" * 10)
    odd = edited(file_entry("odd.bin", b"x"), offset, value, fix_checksum=field != "chksum")
    put(job, first + odd + bytes(BLOCK_SIZE) + EOF_MARKER)
    with pytest.raises(mims_package.PackagingError, match="archive"):
        job.main()
    assert not job.output.exists()


def test_a_bad_value_through_the_cli_is_one_error_line_without_traceback(job: Job) -> None:
    put(
        job,
        extended_entry(_pax_record(b"mtime", b"nan")) + file_entry("model.bin", b"m") + EOF_MARKER,
    )
    out = refused(job, "its PAX mtime record is not a number")
    assert "Traceback" not in out


# Stalls: bounded work before anything is parsed.


def cve_2024_6232_archive() -> bytes:
    """A PAX header of 200,000 digits: tarfile's regex takes about a minute on it, unpatched."""
    body = b"2" * 200_000 + b" path=x\n"
    return gzip.compress(extended_entry(body) + file_entry("model.bin", b"m") + EOF_MARKER, 9)


def quadratic_name_archive() -> bytes:
    name = b"a/" * 100_000 + b"../" * 100_000 + b"model.bin"
    entry = extended_entry(_pax_record(b"path", name)) + file_entry("x", b"m")
    return gzip.compress(entry + EOF_MARKER, 9)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (cve_2024_6232_archive, "its extended header is 200008 bytes, over 65536"),
        (quadratic_name_archive, "over 65536"),
    ],
    ids=["cve-2024-6232", "quadratic-name"],
)
@pytest.mark.parametrize("version", ["3.7", "3.8", "current"])
def test_hostile_headers_are_refused_before_parsing(
    tmp_path: Path, make, needle: str, version: str
) -> None:  # type: ignore[no-untyped-def]
    """On the old, unpatched interpreters too (the timeout only guards against a hang)."""
    python = sys.executable if version == "current" else find_pythons().get(version)
    if python is None:
        pytest.skip(f"Python {version} not found (pyenv, python{version} on PATH, MIMS_PYTHONS)")
    write_tree(tmp_path / "model", {"model.tar.gz": make()})
    (tmp_path / "script").mkdir()
    dirs = ["--model-dir", tmp_path / "model", "--script-dir", tmp_path / "script"]
    result = subprocess.run(
        [python, compiled_script(python), *map(str, dirs), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout
    assert needle in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_names_over_path_max_are_refused(job: Job) -> None:
    put(job, file_entry("a/" * 2100 + "x", b"m") + EOF_MARKER)
    refused(job, "its name is 4201 bytes long, over 4096 (PATH_MAX)")


# Amplification: what hard links multiply is bounded.


def test_hard_links_that_multiply_the_files_are_refused(job: Job) -> None:
    members = [tar_member("weights.bin", bytes(1 << 20))]
    members += [
        tar_member(f"copy{i}.bin", type=tarfile.LNKTYPE, linkname="weights.bin") for i in range(120)
    ]
    make_archive(job.model / "model.tar.gz", members)
    refused(
        job,
        "symlinks, hard links and sparse files' holes in",
        "model.tar.gz would copy 125.8 MB from 1.0 MB",
        "10-fold",
    )


def test_a_few_hard_links_are_fine(job: Job) -> None:
    members = [tar_member("weights.bin", b"w" * 1000)]
    members += [
        tar_member(f"copy{i}.bin", type=tarfile.LNKTYPE, linkname="weights.bin") for i in range(3)
    ]
    make_archive(job.model / "model.tar.gz", members)
    assert job.cli().returncode == 0
    assert set(files_of(job.package).values()) == {b"w" * 1000}


# Not refused where it should be.


@pytest.mark.parametrize(
    "compress", [bz2.compress, lzma.compress, lambda d: gzip.compress(d, mtime=0)]
)
def test_trailing_garbage_after_any_compression_is_refused(job: Job, compress) -> None:  # type: ignore[no-untyped-def]
    data = compress(file_entry("model.bin", b"m") + EOF_MARKER) + b"garbage"
    write_tree(job.model, {"model.tar.gz": data})
    refused(job, "data follows the compressed stream")


COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}
# Tails shorter than the next stream's magic would be (gzip 2 bytes, bzip2 3, xz 6): a
# reader that waits for a whole magic before judging must still refuse them at the end.
SHORT_TAILS = [
    ("gzip", b"g"),
    ("gzip", b"\x1f"),  # the magic's first byte
    ("bzip2", b"B"),
    ("bzip2", b"BZ"),
    *(("xz", b"\xfd7zXZ"[:n]) for n in range(1, 6)),  # the magic's first 1-5 bytes
    ("xz", b"x"),
    ("xz", b"\0\0\0x"),  # padding's zeros, then data
]


@pytest.mark.parametrize(("kind", "tail"), SHORT_TAILS)
def test_a_tail_shorter_than_any_magic_is_refused(job: Job, kind: str, tail: bytes) -> None:
    data = COMPRESSORS[kind](file_entry("model.bin", b"m") + EOF_MARKER) + tail
    write_tree(job.model, {"model.tar.gz": data})
    refused(job, "data follows the compressed stream")


@pytest.mark.parametrize(
    "compress", [bz2.compress, lzma.compress, lambda d: gzip.compress(d, mtime=0)]
)
def test_concatenated_streams_and_zero_padding_are_accepted(job: Job, compress) -> None:  # type: ignore[no-untyped-def]
    tar = file_entry("model.bin", b"m" * 5000) + EOF_MARKER
    data = compress(tar[: BLOCK_SIZE * 3]) + compress(tar[BLOCK_SIZE * 3 :]) + bytes(4096)
    write_tree(job.model, {"model.tar.gz": data})
    assert job.cli().returncode == 0
    assert files_of(job.package) == {"model.bin": b"m" * 5000}


@pytest.mark.parametrize("cut", ["member-boundary", "one-zero-block"])
def test_a_plain_tar_without_its_end_marker_is_truncated(job: Job, cut: str) -> None:
    tar = file_entry("model.bin", b"m" * 10) + file_entry("b.bin", b"b")
    if cut == "one-zero-block":
        tar += bytes(BLOCK_SIZE)
    put(job, tar, compress="")
    refused(job, "truncated")


def test_data_after_the_end_marker_is_refused(job: Job) -> None:
    put(job, file_entry("model.bin", b"m") + EOF_MARKER + file_entry("late.bin", b"x"))
    refused(job, "data follows the end-of-archive marker")


# Log forgery: control characters from the input are escaped in the log and the message.


def test_control_characters_in_names_cannot_forge_log_lines(
    job: Job, no_sagemaker_paths: Path
) -> None:
    evil = "a\n2026-11-26 00:00:00,000 ERROR injected line\x1b[2K"
    members = [
        tar_member("model.bin", b"m"),
        tar_member(evil, type=tarfile.SYMTYPE, linkname="/etc"),
    ]
    make_archive(job.model / "model.tar.gz", members)
    (no_sagemaker_paths / "config").mkdir(parents=True)
    (no_sagemaker_paths / "config" / "processingjobconfig.json").write_text("{}")
    with pytest.raises(mims_package.PackagingError):
        job.main()
    message = (no_sagemaker_paths / "output" / "message").read_text()
    assert "\n" not in message and "\x1b" not in message
    assert "a\\n2026-11-26 00:00:00,000 ERROR injected line\\x1b[2K" in message
    result = job.cli()
    assert [line for line in result.stdout.splitlines() if "injected" in line] == [
        line for line in result.stdout.splitlines() if " ERROR " in line
    ]
    assert not any(
        line.startswith("2026-11-26 00:00:00,000") for line in result.stdout.splitlines()
    )


# What GNU tar accepts harmlessly is accepted.


def typed_entry(name: str, typeflag: bytes, data: bytes = b"") -> bytes:
    header = member_header(name, False, len(data), 0o644, 1_600_000_000)
    return edited(header, 156, typeflag) + data + pad(len(data))


def test_a_volume_label_is_skipped(job: Job) -> None:
    put(job, typed_entry("MY LABEL", b"V") + file_entry("model.bin", b"m") + EOF_MARKER)
    assert job.cli().returncode == 0
    assert files_of(job.package) == {"model.bin": b"m"}


def test_an_incremental_dump_directory_is_a_directory(job: Job) -> None:
    listing = b"Ymodel.bin\0\0"
    put(job, typed_entry("sub", b"D", listing) + file_entry("sub/model.bin", b"m") + EOF_MARKER)
    assert job.cli().returncode == 0
    assert files_of(job.package) == {"sub/model.bin": b"m"}


def test_unknown_type_letters_are_files_with_a_warning(job: Job) -> None:
    put(job, typed_entry("model.bin", b"Q", b"data") + EOF_MARKER)
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert (
        "WARNING archive member 'model.bin' has type 'Q', which tar does not define"
        in result.stdout
    )
    assert files_of(job.package) == {"model.bin": b"data"}


def test_a_plain_tar_whose_first_name_starts_with_bzh_is_tar(job: Job) -> None:
    put(job, file_entry("BZh91AY&SY.bin", b"not bzip2") + EOF_MARKER, compress="")
    assert job.cli().returncode == 0
    assert files_of(job.package) == {"BZh91AY&SY.bin": b"not bzip2"}


def test_a_hard_link_to_a_symlink_resolves_as_the_symlink(job: Job) -> None:
    members = [
        tar_member("weights.bin", b"w"),
        tar_member("current", type=tarfile.SYMTYPE, linkname="weights.bin"),
        tar_member("also-current", type=tarfile.LNKTYPE, linkname="current"),
    ]
    make_archive(job.model / "model.tar.gz", members)
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert files_of(job.package) == {"weights.bin": b"w", "current": b"w", "also-current": b"w"}


def test_a_hard_link_to_an_escaping_symlink_is_refused(job: Job) -> None:
    members = [
        tar_member("model.bin", b"m"),
        tar_member("sub/up", type=tarfile.SYMTYPE, linkname=".."),
        tar_member("top", type=tarfile.LNKTYPE, linkname="sub/up"),
    ]
    make_archive(job.model / "model.tar.gz", members)
    refused(job, "'top'", "outside")


def test_gnu_long_names_and_links_are_read(job: Job) -> None:
    long_name = "d" * 150 + "/model.bin"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(long_name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"m"))
        link = tarfile.TarInfo("l" * 120)
        link.type, link.linkname = tarfile.SYMTYPE, long_name
        tar.addfile(link)
    put(job, raw.getvalue())
    assert job.cli().returncode == 0
    assert files_of(job.package) == {long_name: b"m", "l" * 120: b"m"}


def test_reader_finds_every_member_the_packager_writes() -> None:
    """The package's own headers (ustar and PAX) read back through the same reader."""
    data = file_entry("é" * 80, b"x") + file_entry("p" * 200, b"") + EOF_MARKER
    reader = mims_package.TarReader(io.BytesIO(data))
    names = []
    for member in reader.members():
        names.append((member.name, member.size, b"".join(reader.data())))
    assert names == [("é" * 80, 1, b"x"), ("p" * 200, 0, b"")]


class _Trickle:
    """A stream that hands out at most step bytes a read, as a decompressor may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._stream = io.BytesIO(data)
        self._step = step

    def read(self, size: int) -> bytes:
        return self._stream.read(min(size, self._step))


@pytest.mark.parametrize("step", [1, 7, 500, 512, 513, 4096 + 100])
def test_reads_of_any_size_give_the_same_members(step: int) -> None:
    """Headers, data and padding cut anywhere between reads: the same members and bytes."""
    contents = [b"a", b"b" * 511, b"c" * 513, b"", b"d" * 5000, bytes(range(256)) * 9]
    data = b"".join(file_entry(f"f{i}", content) for i, content in enumerate(contents))
    reader = mims_package.TarReader(_Trickle(data + EOF_MARKER, step))
    found = []
    for i, member in enumerate(reader.members()):
        content = contents[i]
        if i % 2:  # what verification uses, and what extraction uses, in turn
            found.append((member.name, reader.data_crc32() == zlib.crc32(content)))
        else:
            found.append((member.name, b"".join(reader.data()) == content))
    assert found == [(f"f{i}", True) for i in range(len(contents))]


def test_a_signed_checksum_is_accepted_as_tar_accepts_it() -> None:
    # Old tars summed the header as signed chars: each byte over 127 counts 256 less.
    block = bytearray(_ustar_block("caf\xe9.bin".encode(), b"0", 0, 0o644, 0))
    block[148:156] = b" " * 8
    signed = sum(block) - 256 * sum(byte > 127 for byte in block)
    assert signed != sum(block)
    block[148:155] = b"%06o\0" % signed
    assert mims_package._is_tar_header(bytes(block))
    block[148:155] = b"%06o\0" % (signed - 1)
    assert not mims_package._is_tar_header(bytes(block))


# Bounds, each pinned at its edge.


def read_members(tar: bytes) -> list[mims_package.TarMember]:
    """The members the reader finds in a plain tar stream (ArchiveError if it refuses it)."""
    return list(mims_package.TarReader(io.BytesIO(tar)).members())


def long_name(size: int) -> bytes:
    """An archive of one member whose PAX path is size bytes long."""
    name = ("d/" * 2048)[: size - 1] + "x"
    return (
        extended_entry(_pax_record(b"path", name.encode())) + file_entry("short", b"s") + EOF_MARKER
    )


def extended_headers(count: int) -> bytes:
    """An archive of one member after count PAX headers in a row."""
    headers = b"".join(extended_entry(_pax_record(b"comment", b"%d" % i)) for i in range(count))
    return headers + file_entry("m.bin", b"m") + EOF_MARKER


def pax_records(count: int) -> bytes:
    """An archive of one member whose PAX header holds count records."""
    records = b"".join(_pax_record(b"k%d" % i, b"v") for i in range(count))
    return extended_entry(records) + file_entry("m.bin", b"m") + EOF_MARKER


@pytest.mark.parametrize(
    ("make", "bound", "needle"),
    [
        (long_name, 4096, "4097 bytes long"),
        (extended_headers, 8, "more than 8 in a row"),
        (pax_records, 1000, "more than 1000 PAX records"),
    ],
    ids=["name-bytes", "extended-headers-in-a-row", "pax-records"],
)
def test_a_bound_is_read_at_its_edge_and_refused_past_it(make, bound: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert len(read_members(make(bound))) == 1
    with pytest.raises(mims_package.UnsupportedArchive, match=needle):
        read_members(make(bound + 1))


def extended_header_of(size: int) -> bytes:
    """An archive of one member whose PAX header is one comment record of size bytes."""
    value_length = size - len(b" comment=\n") - len(str(size))  # the length's own digits
    record = _pax_record(b"comment", b"v" * value_length)
    assert len(record) == size
    return extended_entry(record) + file_entry("m.bin", b"m") + EOF_MARKER


def test_an_extended_header_is_read_up_to_64_kib_and_refused_past_it() -> None:
    bound = mims_package.MAX_EXTENDED_HEADER
    assert len(read_members(extended_header_of(bound))) == 1
    with pytest.raises(mims_package.ArchiveError, match=f"is {bound + 1} bytes, over {bound}"):
        read_members(extended_header_of(bound + 1))


def test_a_pax_record_that_does_not_end_in_a_newline_at_its_length_is_refused() -> None:
    tar = extended_entry(b"13 path=abcd ") + file_entry("m.bin", b"m") + EOF_MARKER
    with pytest.raises(mims_package.ArchiveError, match="is malformed"):
        read_members(tar)


def test_data_after_the_end_marker_is_found_past_the_first_read() -> None:
    tail = bytes(mims_package.IO_BLOCK_SIZE + BLOCK_SIZE) + b"garbage"
    with pytest.raises(mims_package.ArchiveError, match="data follows the end-of-archive"):
        read_members(file_entry("m.bin", b"m") + EOF_MARKER + tail)


def test_a_positive_base_256_number_is_big_endian() -> None:
    field = b"\x80" + (5 << 16 | 7).to_bytes(11, "big")
    assert mims_package._header_number(field, "size") == 5 << 16 | 7
    negative = b"\xff" * 8 + (-2).to_bytes(4, "big", signed=True)
    assert mims_package._header_number(negative, "mtime", signed=True) == -2
    with pytest.raises(mims_package.ArchiveError, match="its size field is negative"):
        mims_package._header_number(negative, "size")
