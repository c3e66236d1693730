"""The package's own tar header codec: what tarfile reads back, and the bytes it must be."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

import mims_package

# name, is_dir, size, mode, mtime: the cases where ustar alone is not enough, and the edges.
CASES = [
    ("model.bin", False, 5, 0o644, 1_600_000_000),
    ("code", True, 0, 0o755, 1),
    ("modèle/données.bin", False, 0, 0o755, 5),
    ("x" * 150, False, 1, 0o644, 3),
    ("y" * 99, True, 0, 0o755, 3),  # 100 bytes with the "/": still ustar
    ("z" * 100, True, 0, 0o755, 3),  # 101 bytes with the "/": PAX path
    ("q" * 100, False, 0, 0o644, 8**11 - 1),
    ("huge.bin", False, 9 << 30, 0o644, 1_700_000_000),
    ("w" * 101, False, 8**11 - 1, 0o644, 0),
    ("日本" * 60, False, 8**11, 0o755, 7),
    ("a/" * 150 + "leaf", False, 3, 0o644, 2),  # a path over 255 bytes
]


@pytest.mark.parametrize(("name", "is_dir", "size", "mode", "mtime"), CASES)
def test_tarfile_reads_back_every_field(
    name: str, is_dir: bool, size: int, mode: int, mtime: int
) -> None:
    header = mims_package.member_header(name, is_dir, size, mode, mtime)
    assert len(header) % 512 == 0
    stream = io.BytesIO(header + bytes(size if size < 4096 else 0))
    with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8") as tar:
        info = tar.next()
        assert info is not None
        assert (info.name, info.isdir(), info.size, info.mode, info.mtime) == (
            name,
            is_dir,
            size,
            mode,
            mtime,
        )
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")


@pytest.mark.parametrize(("name", "is_dir", "size", "mode", "mtime"), CASES)
def test_bytes_equal_what_tarfile_writes_since_python_3_9(
    name: str, is_dir: bool, size: int, mode: int, mtime: int
) -> None:
    """The layout is tarfile's PAX format as 3.9+ writes it (the test runs on the dev Python)."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size, info.mode, info.mtime = size, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    assert mims_package.member_header(name, is_dir, size, mode, mtime) == expected


def test_files_over_8_gib_get_a_pax_size_record_and_zero_in_ustar() -> None:
    size = 9 << 30
    header = mims_package.member_header("huge.bin", False, size, 0o644, 1_700_000_000)
    assert f"size={size}\n".encode() in header
    assert header[-512 + 124 : -512 + 136] == b"00000000000\0"


@pytest.mark.parametrize("value_length", [0, 1, 5, 6, 7, 90, 91, 92, 993, 994, 995, 996, 9990])
def test_pax_record_length_counts_its_own_digits(value_length: int) -> None:
    record = mims_package._pax_record(b"path", b"v" * value_length)
    length, _, rest = record.partition(b" ")
    assert int(length) == len(record)
    assert rest == b"path=" + b"v" * value_length + b"\n"


@pytest.mark.parametrize("length", [0, 1, 255, 256, 257, 511, 512, 513, 1024])
@pytest.mark.parametrize("fill", [0x00, 0x7F, 0xFF])
def test_byte_sum_is_the_exact_sum_of_the_bytes(length: int, fill: int) -> None:
    data = bytes([fill]) * length
    assert mims_package._byte_sum(data) == sum(data)
    noise = os.urandom(length)
    assert mims_package._byte_sum(noise) == sum(noise)
