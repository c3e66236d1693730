"""Integrity: corrupt inputs fail; packages are verified from disk and replaced atomically."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

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

import mims_package


def gzip_model(job: Job, data: bytes, level: int = 6) -> Path:
    """A model.tar.gz holding one file, compressed at level (0 stores the bytes as they are)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = job.model / "model.tar.gz"
    job.model.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw.getvalue(), level, mtime=0))
    return path


def corrupt(path: Path, offset: int, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = (data[offset] ^ 0x01) if value is None else value
    path.write_bytes(bytes(data))


def test_truncated_input(job: Job) -> None:
    path = gzip_model(job, os.urandom(100_000))
    path.write_bytes(path.read_bytes()[:-2000])
    assert_refused(job.cli(), job, "corrupt or truncated")


def test_truncated_only_in_the_trailer(job: Job) -> None:
    path = gzip_model(job, os.urandom(10_000))
    path.write_bytes(path.read_bytes()[:-4])
    assert_refused(job.cli(), job, "corrupt or truncated")


def test_corrupted_crc(job: Job) -> None:
    path = gzip_model(job, os.urandom(10_000))
    corrupt(path, len(path.read_bytes()) - 6)
    assert_refused(job.cli(), job, "corrupt or truncated")


def test_corrupted_length(job: Job) -> None:
    path = gzip_model(job, os.urandom(10_000))
    corrupt(path, len(path.read_bytes()) - 2)
    assert_refused(job.cli(), job, "corrupt or truncated")


def test_flipped_byte_in_a_stored_block_is_caught_by_the_crc(job: Job) -> None:
    data = os.urandom(50_000)
    path = gzip_model(job, data, level=0)
    offset = path.read_bytes().index(data[20_000:20_016]) + 8
    corrupt(path, offset)
    assert_refused(job.cli(), job, "corrupt or truncated")


def test_trailing_garbage_after_the_gzip_stream(job: Job) -> None:
    path = gzip_model(job, os.urandom(1000))
    path.write_bytes(path.read_bytes() + b"garbage!")
    assert_refused(job.cli(), job, "corrupt or truncated")


def test_concatenated_gzip_members_are_a_valid_input(job: Job) -> None:
    path = gzip_model(job, b"w" * 5000)
    whole = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(whole[:3000]) + gzip.compress(whole[3000:]))
    job.main()
    assert files_of(job.package) == {"weights.bin": b"w" * 5000}


def test_zero_padding_after_the_gzip_stream_is_accepted(job: Job) -> None:
    path = gzip_model(job, b"w" * 5000)
    path.write_bytes(path.read_bytes() + b"\0" * 3000)
    job.main()
    assert files_of(job.package) == {"weights.bin": b"w" * 5000}


def test_a_second_member_cut_inside_its_header(job: Job) -> None:
    path = gzip_model(job, b"w" * 5000)
    path.write_bytes(path.read_bytes() + gzip.compress(b"more")[:5])
    assert_refused(job.cli(), job, "corrupt or truncated")


@pytest.mark.parametrize("compression", ["bz2", "xz"])
def test_corrupted_bzip2_and_xz(job: Job, compression: str) -> None:
    trained = write_tree(job.tmp / "trained", {"w.bin": os.urandom(20_000)})
    path = archive_tree(trained, job.model / "model.tar.gz", compression)
    corrupt(path, len(path.read_bytes()) // 2)
    assert_refused(job.cli(), job, "corrupt or truncated")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty (0 bytes)"),
        (
            b"this is not an archive at all" * 40,
            "is not a tar archive (it starts with b'this is ')",
        ),
        (b"PK\x03\x04" + bytes(600), "is a zip archive, not a tar archive"),
        (b"7z\xbc\xaf\x27\x1c" + bytes(600), "is a 7z archive, not a tar archive"),
        (
            gzip.compress(b"a single weights file" * 100),
            "gzip-compressed, but what it holds is not",
        ),
    ],
    ids=["empty", "text", "zip", "7z", "gzipped-file"],
)
def test_not_a_tar_archive_says_what_it_is(job: Job, content: bytes, needle: str) -> None:
    job.model.mkdir()
    (job.model / "model.tar.gz").write_bytes(content)
    result = job.cli()
    assert_refused(result, job, needle)
    assert "upload it again" not in result.stdout  # the advice fits what the file is
    assert not job.output.exists()  # nothing is created before the inputs pass their checks


def test_existing_package_is_replaced_on_success(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"new"})
    write_tree(job.output, {"model.tar.gz": b"old package"})
    assert job.cli().returncode == 0
    assert files_of(job.package) == {"m.bin": b"new"}


def test_existing_package_is_kept_on_failure(job: Job) -> None:
    gzip_model(job, os.urandom(5000)).write_bytes(b"broken")
    write_tree(job.output, {"model.tar.gz": b"old package"})
    result = job.cli()
    assert result.returncode == 1
    assert job.package.read_bytes() == b"old package"
    assert sorted(p.name for p in job.output.iterdir()) == ["model.tar.gz"]


def test_verification_reads_the_file_back_from_disk(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk stores one wrong byte: only a check of the file's own bytes can see it."""
    write_tree(job.model, {"m.bin": os.urandom(3 << 20)})
    write_tree(job.output, {"model.tar.gz": b"old package"})
    real_write = mims_package._ReadBack.write
    faults = []

    def faulty_disk(self: mims_package._ReadBack, data: bytes) -> None:
        if len(data) > 100_000 and not faults:
            faults.append(len(data))
            data = data[:1000] + bytes([data[1000] ^ 0x10]) + data[1001:]
        real_write(self, data)

    monkeypatch.setattr(mims_package._ReadBack, "write", faulty_disk)
    with pytest.raises(mims_package.PackagingError, match=r"verification of .* failed"):
        job.main()
    assert faults
    assert job.package.read_bytes() == b"old package"
    assert job.leftovers() == []
    assert [t.name for t in threading.enumerate() if t.name == "read-back"] == []


@pytest.mark.parametrize("tamper", ["truncated", "trailing-byte", "second-member"])
def test_a_package_whose_end_changed_on_disk_is_caught(
    job: Job, monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    """The end is read after the fsync: a file cut short, or with anything after it, fails."""
    write_tree(job.model, {"m.bin": os.urandom(100_000)})
    real_finish = mims_package._ReadBack.finish

    def finish(self: mims_package._ReadBack) -> str:
        self._out.flush()
        path = self._out.name
        if tamper == "truncated":
            os.truncate(path, os.path.getsize(path) - 1)
        else:
            with open(path, "ab") as after:
                after.write(b"\0" if tamper == "trailing-byte" else gzip.compress(b"x"))
        return real_finish(self)

    monkeypatch.setattr(mims_package._ReadBack, "finish", finish)
    with pytest.raises(mims_package.PackagingError, match=r"verification of .* failed") as raised:
        job.main()
    assert "final block and a trailer" in str(raised.value)
    assert not job.package.exists() and job.leftovers() == []


def test_logged_sha256_is_the_files(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m"})
    result = job.cli()
    digest = hashlib.sha256(job.package.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in result.stdout


def test_same_inputs_give_identical_bytes(job: Job) -> None:
    trained = write_tree(
        job.tmp / "trained", {"m.bin": os.urandom(3_000_000), "d/v.json": b"{}", "e": None}
    )
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, {"inference.py": "x"})
    job.main()
    first = job.package.read_bytes()
    job.package.unlink()
    job.main()
    assert job.package.read_bytes() == first


def test_source_date_epoch_makes_rebuilds_identical(job: Job) -> None:
    write_tree(job.model, {"m.bin": os.urandom(100_000), "sub/x": b"x"})
    write_tree(job.script, {"inference.py": "x"})
    epoch = {"SOURCE_DATE_EPOCH": "1700000000"}
    job.main(environ=epoch)
    first = job.package.read_bytes()
    for path in [*job.model.rglob("*"), *job.script.rglob("*"), job.script]:
        os.utime(path, (1_800_000_000, 1_800_000_000))
    shutil.rmtree(job.output)
    assert job.cli(env=epoch).returncode == 0
    assert job.package.read_bytes() == first


def test_gnu_tar_gzip_and_strict_tarfile_read_the_package(job: Job) -> None:
    write_tree(
        job.model, {"m.bin": os.urandom(300_000), "名前 with space/x.json": b"{}", "empty": None}
    )
    write_tree(job.script, {"inference.py": "x"})
    job.main()
    subprocess.run(["gzip", "-t", str(job.package)], check=True)
    listing = subprocess.run(
        ["tar", "-tzf", str(job.package)], check=True, capture_output=True, text=True
    )
    assert listing.stdout.splitlines() == [
        "code/",
        "code/inference.py",
        "empty/",
        "m.bin",
        "名前 with space/",
        "名前 with space/x.json",
    ]
    assert list(read_package(job.package)) == [
        "code",
        "code/inference.py",
        "empty",
        "m.bin",
        "名前 with space",
        "名前 with space/x.json",
    ]
    with tarfile.open(job.package, "r:gz") as tar:
        tar.extractall(job.tmp / "extracted", filter="data")
    assert (job.tmp / "extracted" / "m.bin").read_bytes() == (job.model / "m.bin").read_bytes()


def test_archive_with_many_members_and_hard_links(job: Job) -> None:
    members = [tar_member(f"shard-{i:03}/part.bin", os.urandom(64)) for i in range(300)]
    make_archive(job.model / "model.tar.gz", members)
    job.main()
    assert len(files_of(job.package)) == 300
