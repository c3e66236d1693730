"""Inputs are read as a snapshot: whatever changes while the job reads it is refused, not shipped.

Each race here is run at a hook, at the moment the red team found: never by luck.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Job, archive_tree, files_of, write_tree

import mims_package

SECRET = b"root:x:0:0:the host's own file\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside every input, holding a file named like one in the model."""
    return write_tree(tmp_path / "outside", {"weights.bin": SECRET})


def swap_for_symlink(directory: Path, target: Path) -> None:
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


def test_a_parent_directory_swapped_for_a_symlink_after_staging_is_refused(
    job: Job, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"sub/weights.bin": b"real weights"})
    real_stage = mims_package._stage_inputs

    def stage_then_swap(*args: Any) -> Any:
        planned = real_stage(*args)
        swap_for_symlink(job.model / "sub", outside)
        return planned

    monkeypatch.setattr(mims_package, "_stage_inputs", stage_then_swap)
    with pytest.raises(mims_package.PackagingError, match="changed"):
        job.main()
    assert not job.package.exists() and job.leftovers() == []


def test_a_directory_swapped_for_a_symlink_during_the_walk_is_refused(
    job: Job, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"sub/weights.bin": b"real weights", "top.bin": b"t"})
    real_listing = mims_package._DirectoryChain.listing

    def listing(self: Any, path: str, key: Any) -> Any:
        if path.endswith("/sub") and not os.path.islink(path):
            swap_for_symlink(Path(path), outside)  # found as a directory, listed as a link
        return real_listing(self, path, key)

    monkeypatch.setattr(mims_package._DirectoryChain, "listing", listing)
    with pytest.raises(mims_package.PackagingError, match="changed"):
        job.main()
    assert not job.package.exists()


def test_a_file_rewritten_in_place_at_the_same_size_while_read_is_refused(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tree(job.model, {"weights.bin": b"a" * (3 << 20)}) / "weights.bin"
    os.utime(path, (1_000_000_000, 1_000_000_000))  # so that a rewrite's mtime differs
    real_read_block = mims_package._read_block

    def read_block(fd: int, member: Any, copied: int) -> Any:
        block = real_read_block(fd, member, copied)
        if member.name == "weights.bin" and copied == 0:
            with open(path, "r+b") as rewrite:  # same size, other bytes: neither version ships
                rewrite.write(b"b" * (3 << 20))
        return block

    monkeypatch.setattr(mims_package, "_read_block", read_block)
    with pytest.raises(mims_package.PackagingError, match=r"weights\.bin changed while being read"):
        job.main()
    assert not job.package.exists() and job.leftovers() == []


@pytest.mark.parametrize("size", [1000, 3 << 20], ids=["small", "larger"])
def test_a_same_size_rewrite_with_its_mtime_put_back_is_refused(
    job: Job, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Size and mtime as planned, other bytes: only the ctime, which no one can set back,
    tells. A small file is rewritten before its one read, a larger one during its reads."""
    path = write_tree(job.model, {"weights.bin": b"a" * size}) / "weights.bin"
    planned = os.stat(path)

    def rewrite() -> None:
        with open(path, "r+b") as rewritten:
            rewritten.write(b"b" * size)
        os.utime(path, ns=(planned.st_atime_ns, planned.st_mtime_ns))

    if size > mims_package.SMALL_FILE_SIZE:
        real_read_block = mims_package._read_block

        def read_block(fd: int, member: Any, copied: int) -> Any:
            block = real_read_block(fd, member, copied)
            if member.name == "weights.bin" and copied == 0:
                rewrite()
            return block

        monkeypatch.setattr(mims_package, "_read_block", read_block)
        message = r"weights\.bin changed while being read"
    else:
        real_read_whole = mims_package._DirectoryChain.read_whole

        def read_whole(self: Any, member: Any) -> Any:
            if member.name == "weights.bin":
                rewrite()
            return real_read_whole(self, member)

        monkeypatch.setattr(mims_package._DirectoryChain, "read_whole", read_whole)
        message = r"weights\.bin changed since it was planned"
    with pytest.raises(mims_package.PackagingError, match=message):
        job.main()
    assert os.stat(path).st_mtime_ns == planned.st_mtime_ns  # as the test meant
    assert not job.package.exists() and job.leftovers() == []


def test_a_fifo_swapped_in_for_the_model_archive_is_refused_without_blocking(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = write_tree(job.tmp / "trained", {"weights.bin": b"w"})
    archive = archive_tree(trained, job.model / "model.tar.gz")
    real_check = mims_package.check_is_tar

    def check_then_swap(path: Path) -> int:
        stamp = real_check(path)
        archive.unlink()
        os.mkfifo(archive)  # opened for reading, it would block until a writer came
        return stamp

    monkeypatch.setattr(mims_package, "check_is_tar", check_then_swap)
    with pytest.raises(mims_package.PackagingError, match="no longer a regular file"):
        job.main()
    assert job.leftovers() == []


def test_a_model_archive_replaced_after_its_check_is_refused(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = write_tree(job.tmp / "trained", {"weights.bin": b"w"})
    archive = archive_tree(trained, job.model / "model.tar.gz")
    other = archive_tree(write_tree(job.tmp / "other", {"evil.bin": b"e"}), job.tmp / "o.tar.gz")
    real_check = mims_package.check_is_tar

    def check_then_replace(path: Path) -> int:
        stamp = real_check(path)
        os.replace(other, archive)
        return stamp

    monkeypatch.setattr(mims_package, "check_is_tar", check_then_replace)
    with pytest.raises(mims_package.PackagingError, match="changed since it was planned"):
        job.main()


def test_an_unchanged_snapshot_packages_as_before(job: Job) -> None:
    write_tree(job.model, {"sub/weights.bin": b"w", "top.bin": b"t"})
    job.main()
    assert files_of(job.package) == {"sub/weights.bin": b"w", "top.bin": b"t"}


def test_a_directory_reached_through_a_symlink_to_itself_is_still_refused(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same directory, same inode, same files: but now through a link, which is refused.
    write_tree(job.model, {"sub/weights.bin": b"real weights"})
    real_stage = mims_package._stage_inputs

    def stage_then_relink(*args: Any) -> Any:
        planned = real_stage(*args)
        swap_for_symlink(job.model / "sub", job.model / "sub.moved")
        return planned

    monkeypatch.setattr(mims_package, "_stage_inputs", stage_then_relink)
    with pytest.raises(mims_package.PackagingError, match="a directory on its path was replaced"):
        job.main()


def test_a_directory_swapped_for_another_directory_during_the_walk_is_refused(
    job: Job, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"sub/weights.bin": b"real weights"})
    real_listing = mims_package._DirectoryChain.listing

    def listing(self: Any, path: str, key: Any) -> Any:
        if path.endswith("/sub") and not (job.model / "sub.moved").exists():
            (job.model / "sub").rename(job.model / "sub.moved")
            outside.rename(job.model / "sub")  # a real directory, but not the one found
        return real_listing(self, path, key)

    monkeypatch.setattr(mims_package._DirectoryChain, "listing", listing)
    with pytest.raises(mims_package.PackagingError, match="sub changed while being read"):
        job.main()
