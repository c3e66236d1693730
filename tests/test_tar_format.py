"""The package's own tar header codec: what tarfile reads back, and the bytes it must be."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

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


@pytest.mark.parametrize(
    ("name_length", "record_length", "blocks"),
    [(501, 511, 3), (502, 512, 3), (503, 513, 4), (1013, 1024, 4)],
)
def test_a_pax_header_is_padded_to_whole_blocks_exactly(
    name_length: int, record_length: int, blocks: int
) -> None:
    """The PAX header block, its records padded to a block (none when they fill one), then
    the ustar block: a padding block too many or too few shifts every member after it."""
    name = "p" * name_length
    header = mims_package.member_header(name, False, 1, 0o644, 0)
    assert len(mims_package._pax_record(b"path", name.encode())) == record_length
    assert len(header) == blocks * 512
    with tarfile.open(fileobj=io.BytesIO(header + b"x" + bytes(511)), mode="r|") as tar:
        info = tar.next()
        assert info is not None and info.name == name and tar.extractfile(info).read() == b"x"  # type: ignore[union-attr]


@pytest.mark.parametrize(("size", "padding"), [(0, 0), (1, 511), (511, 1), (512, 0), (513, 511)])
def test_file_data_is_padded_to_whole_blocks_exactly(size: int, padding: int) -> None:
    assert mims_package._padding(size) == bytes(padding)


class ListSink:
    """Takes what write_tar writes, as the gzip writer would, uncompressed."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))
        self.size += len(data)


def test_the_end_marker_is_two_zero_blocks_even_where_one_would_end_a_record(
    tmp_path: Path,
) -> None:
    """A header and 18 blocks of data end 512 bytes short of a 10 KiB record: one zero block
    would end the record there, and its padding would not make up the second."""
    data = b"d" * (18 * 512)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    member = mims_package.Member(
        "f.bin",
        str(tmp_path) + "/",
        0,
        False,
        len(data),
        0o644,
        0,
        mims_package._stamp(os.stat(path)),
    )
    sink = ListSink()
    mims_package.write_tar([member], sink)  # type: ignore[arg-type]
    stream = b"".join(sink.parts)
    members_end = 512 + len(data)
    assert members_end + 512 == mims_package.RECORD_SIZE
    assert stream[members_end:] == bytes(2 * 512 + mims_package.RECORD_SIZE - 512)
    assert len(stream) % mims_package.RECORD_SIZE == 0
    records = []
    mims_package._visit_members(io.BytesIO(stream), records.append)  # the strict reader
    assert [record.name for record in records] == ["f.bin"]
