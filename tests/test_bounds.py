"""What an input may make the job hold or copy is bounded, and refused past the bound with
the bound named: members and their names, copies through hard links and sparse holes in
loose inputs, and the findings --verify lists."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import CODE, MODEL, Job, make_archive, run_cli, tar_member, write_tree

import mims_package


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mims_package, "MAX_MEMBERS", 50)
    monkeypatch.setattr(mims_package, "MAX_NAME_CHARACTERS", 4000)


@pytest.mark.parametrize("past", ["members", "name-characters"])
@pytest.mark.parametrize("where", ["model-archive", "loose-model", "script"])
def test_an_input_past_the_bound_on_names_is_refused_naming_it(
    job: Job, small_bounds: None, past: str, where: str
) -> None:
    count, length = (51, 5) if past == "members" else (10, 200)
    files = {f"d/{'n' * length}/{'m' * length}{i}.bin": b"x" for i in range(count)}
    if where == "model-archive":
        make_archive(job.model / "model.tar.gz", [tar_member(n, d) for n, d in files.items()])
    else:
        write_tree(job.model, MODEL)
        write_tree(job.model if where == "loose-model" else job.script, files)
    said = "more than 50 members" if past == "members" else "more than 4,000 characters"
    for dry_run in (False, True):
        with pytest.raises(mims_package.PackagingError, match=said) as caught:
            mims_package.package(
                job.model, job.script, job.output, work_dir=job.work, dry_run=dry_run
            )
        assert "the bound on what one package may name" in str(caught.value)
        assert job.leftovers() == [] and not job.output.exists()


def test_verify_refuses_a_package_past_the_bound(tmp_path: Path, small_bounds: None) -> None:
    package = make_archive(tmp_path / "p.tar.gz", [tar_member(f"f{i}", b"x") for i in range(60)])
    checked = mims_package.check_package(package)
    (failure,) = [f for f in checked.findings if f.level == "FAIL"]
    assert failure.check == "integrity" and "more than 50 members" in failure.message


def test_verify_lists_at_most_a_hundred_findings_of_a_kind(tmp_path: Path) -> None:
    links = [tar_member(f"l{i}", type=tarfile.SYMTYPE, linkname="m.bin") for i in range(150)]
    package = make_archive(tmp_path / "p.tar.gz", [tar_member("m.bin", b"m"), *links])
    result = run_cli("--verify", package)
    safety = [line for line in result.stdout.splitlines() if line.startswith("FAIL safety")]
    assert len(safety) == 101 and "and 50 more (only the first 100" in safety[-1]


def test_hard_links_in_a_loose_model_count_against_the_copy_budget(job: Job) -> None:
    """One 1 MB file with 120 more names would package 121 MB from 1 MB."""
    job.model.mkdir()
    (job.model / "weights.bin").write_bytes(os.urandom(1 << 20))
    for i in range(5):
        os.link(job.model / "weights.bin", job.model / f"copy{i}.bin")
    job.main()  # a few links are well within the budget
    assert len([n for n in os.listdir(job.model)]) == 6
    for i in range(5, 120):
        os.link(job.model / "weights.bin", job.model / f"copy{i}.bin")
    job.package.unlink()
    with pytest.raises(mims_package.PackagingError) as caught:
        job.main()
    assert "hard links and sparse files' holes in" in str(caught.value)
    assert "from 1.0 MB of files, more than 10-fold" in str(caught.value)
    assert job.leftovers() == []


def sparse_file(path: Path, size: int) -> bool:
    """A file of size bytes with no data on disk; False where the filesystem stores zeros."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
    return os.stat(path).st_blocks * 512 < size


def test_a_sparse_file_counts_its_holes_against_the_copy_budget(job: Job) -> None:
    if not sparse_file(job.model / "weights.bin", 1 << 30):  # zeros for 10 x 0 B + 100 MB
        pytest.skip("this filesystem has no sparse files")
    for dry_run in (False, True):
        with pytest.raises(mims_package.PackagingError) as caught:
            mims_package.package(
                job.model, job.script, job.output, work_dir=job.work, dry_run=dry_run
            )
        assert "would copy 1.1 GB from 0 B of files" in str(caught.value)


def test_a_small_sparse_file_packages_as_its_zeros(job: Job) -> None:
    if not sparse_file(job.model / "weights.bin", 8 << 20):
        pytest.skip("this filesystem has no sparse files")
    write_tree(job.script, CODE)
    job.main()
    listed = subprocess.run(["tar", "-tvzf", str(job.package)], capture_output=True, text=True)
    assert " 8388608 " in listed.stdout
