"""Only what belongs in an endpoint ships: no junk; the same content gives the same bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    CODE,
    EXAMPLE,
    MODEL,
    ROOT,
    Job,
    archive_tree,
    assert_refused,
    files_of,
    read_package,
    run_cli,
    write_tree,
)

JUNK = {
    "__pycache__/inference.cpython-311.pyc": b"\x00pyc",
    "processing/__pycache__/util.cpython-311.pyc": b"\x00pyc",
    "stale.pyc": b"\x00",
    ".ipynb_checkpoints/explore-checkpoint.ipynb": "{}",
    ".pytest_cache/v/cache/lastfailed": "{}",
    ".mypy_cache/3.11/x.json": "{}",
    ".ruff_cache/0.1/x": "",
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "processing/Thumbs.db": b"\x00",
}
# The key pair is made up; built from pieces so that no scanner flags this test file.


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_script_dir_that_is_a_git_checkout_ships_only_the_real_files(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, **JUNK})
    git("init", "-q", cwd=job.script)
    git("add", "-A", cwd=job.script)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x", cwd=job.script)
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {"xgboost_model.bst", *(f"code/{n}" for n in CODE)}
    # The expected case in a developer's checkout: said once at INFO, with no WARNING.
    assert " WARNING " not in result.stdout, result.stdout
    summary = [line for line in result.stdout.splitlines() if "left out of the package" in line]
    assert len(summary) == 1 and " INFO " in summary[0] and "code/.git/" in summary[0]
    assert "INFO excluded code/.git/ (.git/)" in result.stdout
    assert "INFO excluded code/stale.pyc (*.pyc)" in result.stdout


def test_excluded_members_of_a_model_archive_are_not_extracted(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {**MODEL, **JUNK, ".git/HEAD": "ref"})
    archive_tree(trained, job.model / "model.tar.gz")
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {"xgboost_model.bst"}
    assert "INFO excluded .git/ (.git/)" in result.stdout


def test_exclude_adds_patterns(job: Job) -> None:
    write_tree(job.model, {**MODEL, "logs/train.log": "x", "data/raw/big.csv": "x", "a.log": "x"})
    write_tree(job.script, {**CODE, "notes/data/raw/keep.txt": "x"})
    result = job.cli("--exclude", "*.log", "--exclude", "data/raw/")
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {
        "xgboost_model.bst",
        *(f"code/{n}" for n in CODE),
        "code/notes/data/raw/keep.txt",  # "data/raw/" is anchored at each input's root
    }


def test_no_default_excludes_keeps_everything(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, **JUNK})
    result = job.cli("--no-default-excludes")
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {
        "xgboost_model.bst",
        *(f"code/{n}" for n in {**CODE, **JUNK}),
    }
    assert "INFO excluded" not in result.stdout


def test_an_empty_exclude_pattern_is_refused(job: Job) -> None:
    write_tree(job.model, MODEL)
    assert_refused(job.cli("--exclude", "/"), job, "--exclude '/' names nothing")


def copy_of_inputs(job: Job, name: str, when: str) -> tuple[Path, Path]:
    """The job's model and script dirs copied, every path's mtime set with touch -d when."""
    model = job.tmp / name / "model"
    script = job.tmp / name / "script"
    shutil.copytree(job.model, model)
    shutil.copytree(job.script, script)
    paths = [str(p) for p in (model, script, *model.rglob("*"), *script.rglob("*"))]
    subprocess.run(["touch", "-d", when, *paths], check=True)
    return model, script


def package_bytes(job: Job, model: Path, script: Path, *extra: str) -> bytes:
    out = job.tmp / f"out-{model.parent.name}-{len(extra)}"
    args = ["--model-dir", model, "--script-dir", script, "--output-dir", out, *extra]
    result = run_cli(*args, "--work-dir", job.work)
    assert result.returncode == 0, result.stdout
    return (out / "model.tar.gz").read_bytes()


def test_the_same_content_gives_the_same_bytes_whatever_the_mtimes(job: Job) -> None:
    write_tree(job.model, {**MODEL, "sub/vocab.json": "{}"})
    write_tree(job.script, CODE)
    first = copy_of_inputs(job, "first", "2020-01-01 00:00:00")
    second = copy_of_inputs(job, "second", "2024-06-30 12:34:56")
    assert package_bytes(job, *first) == package_bytes(job, *second)
    assert package_bytes(job, *first, "--keep-mtimes") != package_bytes(
        job, *second, "--keep-mtimes"
    )


def test_the_bundled_examples_package_hash_is_stable(job: Job) -> None:
    """The README shows the example package's sha256; it must be what the job logs today."""
    args = ["--model-dir", EXAMPLE / "model", "--script-dir", EXAMPLE / "script"]
    args += ["--calibration-dir", EXAMPLE / "calibration", "--output-dir", job.output]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout
    logged = result.stdout.split("sha256 ")[-1].split()[0]
    assert f"`{logged}`" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("where", ["script", "archive"])
def test_directory_excludes_match_at_every_depth_directories_included(job: Job, where: str) -> None:
    nested = {
        "pkg/util.py": "X = 1\n",
        "pkg/__pycache__/util.cpython-311.data": b"cache",
        "pkg/deep/.ipynb_checkpoints/util-checkpoint.py": "X = 0\n",
        "pkg/deep/keep.py": "Y = 2\n",
        "notebooks/.ipynb_checkpoints/a.json": "{}",
    }
    if where == "script":
        write_tree(job.model, MODEL)
        write_tree(job.script, {"inference.py": "", **nested})
        prefix = "code/"
    else:
        archive_tree(
            write_tree(job.tmp / "trained", {**MODEL, **nested}), job.model / "model.tar.gz"
        )
        prefix = ""
    job.main()
    names = set(read_package(job.package))
    expected = {f"{prefix}{n}" for n in ("pkg", "pkg/util.py", "pkg/deep", "pkg/deep/keep.py")}
    expected |= {f"{prefix}notebooks", *MODEL}
    if where == "script":
        expected |= {"code", "code/inference.py"}
    assert names == expected


def test_the_readme_is_short_enough_to_read_first() -> None:
    """Users read README.md before anything else: at most 28,000 characters (bytes, even)."""
    assert len((ROOT / "README.md").read_bytes()) <= 28_000
