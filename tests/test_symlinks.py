"""Symlinks in every input: inside the input they become real files or dirs; anything else fails."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from conftest import (
    Job,
    assert_refused,
    files_of,
    make_archive,
    read_package,
    tar_member,
    write_tree,
)

import mims_package

INPUTS = ["model-dir", "script-dir", "archive"]


def build(job: Job, where: str, files: dict[str, bytes], links: dict[str, str]) -> str:
    """Put files and symlinks (name -> target) into one input; return the package prefix."""
    if where == "archive":
        members = [tar_member(name, data) for name, data in files.items()]
        members += [
            tar_member(name, type=tarfile.SYMTYPE, linkname=target)
            for name, target in links.items()
        ]
        make_archive(job.model / "model.tar.gz", members)
        return ""
    root = job.model if where == "model-dir" else job.script
    write_tree(root, files)
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    if where == "script-dir":
        write_tree(job.model, {"model.bin": b"m"})
        return "code/"
    return ""


@pytest.mark.parametrize("where", INPUTS)
def test_symlinks_inside_are_materialized(job: Job, where: str) -> None:
    prefix = build(
        job,
        where,
        {"real/weights.bin": b"W", "real/sub/vocab.json": b"V", "top.txt": b"T"},
        {
            "link-to-file": "real/weights.bin",
            "nested/up": "../top.txt",
            "link-to-dir": "real",
            "chain": "link-to-file",
            "via-dir-link": "link-to-dir/sub/vocab.json",
        },
    )
    job.main()
    entries = read_package(job.package)
    files = {n: e.data for n, e in entries.items() if e.type == "file"}
    assert files[prefix + "link-to-file"] == b"W"
    assert files[prefix + "chain"] == b"W"
    assert files[prefix + "nested/up"] == b"T"
    assert files[prefix + "via-dir-link"] == b"V"
    assert files[prefix + "link-to-dir/weights.bin"] == b"W"
    assert files[prefix + "link-to-dir/sub/vocab.json"] == b"V"
    assert entries[prefix + "link-to-dir"].type == "dir"
    assert {e.type for e in entries.values()} <= {"file", "dir"}


@pytest.mark.parametrize("where", INPUTS)
@pytest.mark.parametrize(
    ("target", "needle"),
    [("../../../../../etc/passwd", "outside"), ("missing.bin", "dangles"), ("self-loop", "loops")],
    ids=["escaping", "dangling", "looping"],
)
def test_bad_symlinks_are_refused(job: Job, where: str, target: str, needle: str) -> None:
    name = "self-loop" if target == "self-loop" else "bad-link"
    build(job, where, {"model.bin": b"m"}, {name: target})
    assert_refused(job.cli(), job, name, needle)


@pytest.mark.parametrize("where", ["model-dir", "script-dir"])
def test_absolute_symlink_out_of_a_loose_input_is_refused(job: Job, where: str) -> None:
    secret = job.tmp / "credentials"
    secret.write_text("aws_secret_access_key=...")
    build(job, where, {"model.bin": b"m"}, {"creds": str(secret)})
    assert_refused(job.cli(), job, "creds", "outside")


def test_absolute_symlink_within_a_loose_input_is_materialized(job: Job) -> None:
    write_tree(job.model, {"v2/model.bin": b"m2"})
    os.symlink(job.model / "v2" / "model.bin", job.model / "model.bin")
    job.main()
    assert files_of(job.package) == {"model.bin": b"m2", "v2/model.bin": b"m2"}


@pytest.mark.parametrize("where", INPUTS)
def test_directory_symlink_to_its_own_ancestor_is_refused(job: Job, where: str) -> None:
    build(job, where, {"model.bin": b"m", "d/f": b"f"}, {"d/up": ".."})
    assert_refused(job.cli(), job, "loops back")


def test_symlinked_model_archive_inside_the_model_dir_is_followed(job: Job) -> None:
    make_archive(job.model / "versions" / "v1.tar.gz", [tar_member("m.bin", b"v1")])
    os.symlink("versions/v1.tar.gz", job.model / "model.tar.gz")
    job.main()
    assert files_of(job.package) == {"m.bin": b"v1"}


def test_symlinked_model_archive_outside_the_model_dir_is_refused(job: Job) -> None:
    make_archive(job.tmp / "elsewhere.tar.gz", [tar_member("m.bin", b"x")])
    job.model.mkdir()
    os.symlink(job.tmp / "elsewhere.tar.gz", job.model / "model.tar.gz")
    assert_refused(job.cli(), job, "outside")


@pytest.mark.parametrize("links", [40, 41])
def test_a_link_chain_is_followed_up_to_the_limit_and_refused_past_it(job: Job, links: int) -> None:
    """MAX_SYMLINK_HOPS: as the kernel's ELOOP, 40 links in a chain resolve, 41 do not."""
    write_tree(job.model, {"model.bin": b"m"})
    previous = "model.bin"
    for index in range(links):
        os.symlink(previous, job.model / f"link{index:02}")
        previous = f"link{index:02}"
    if links > mims_package.MAX_SYMLINK_HOPS:
        assert_refused(job.cli(), job, "more than 40 links")
        return
    assert job.cli().returncode == 0
    assert files_of(job.package)[previous] == b"m"


def test_symlink_root_entry_types_in_package_are_only_files_and_dirs(
    job: Job, tmp_path: Path
) -> None:
    write_tree(job.model, {"a/model.bin": b"m"})
    os.symlink("a", job.model / "b")
    job.main()
    with tarfile.open(job.package, "r:gz") as tar:
        assert {m.name: m.type for m in tar.getmembers()} == {
            "a": tarfile.DIRTYPE,
            "a/model.bin": tarfile.REGTYPE,
            "b": tarfile.DIRTYPE,
            "b/model.bin": tarfile.REGTYPE,
        }
