"""What a new user gets wrong, and what the job says: inputs, work and output dirs, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    MODEL,
    SCRIPT,
    Job,
    archive_tree,
    assert_refused,
    compiled_script,
    files_of,
    find_pythons,
    in_namespace,
    needs_unshare,
    run_cli,
    write_tree,
)

import mims_package


def test_an_explicit_script_dir_that_does_not_exist_is_an_error(job: Job) -> None:
    write_tree(job.model, MODEL)
    missing = job.tmp / "scripts-typo"
    result = job.cli("--script-dir", missing)
    assert_refused(result, job, f"script input {missing} does not exist", "--script-dir")
    assert not job.output.exists()


def test_the_default_script_dir_missing_is_a_warning(
    job: Job, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, MODEL)
    mims_package.main({"model_input": str(job.model)}, {"package_output": str(job.output)}, {})
    warning = (
        f"no --script-dir was given (and the default, {mims_package.DEFAULT_SCRIPT_PATH}, does "
        "not exist here): the package has no code/ unless the model brings one"
    )
    assert [r.levelname for r in caplog.records if warning == r.getMessage()] == ["WARNING"]
    monkeypatch.setattr(mims_package, "DEFAULT_SCRIPT_PATH", str(job.script))  # there, empty
    job.package.unlink()
    mims_package.main({"model_input": str(job.model)}, {"package_output": str(job.output)}, {})
    empty = f"no inference code in {job.script}: the package has no code/"
    assert any(r.getMessage().startswith(empty) for r in caplog.records)
    assert set(files_of(job.package)) == {"xgboost_model.bst"}


def test_model_dir_may_name_the_archive_itself(job: Job) -> None:
    archive = archive_tree(write_tree(job.tmp / "trained", MODEL), job.tmp / "s3" / "model.tar.gz")
    result = job.cli("--model-dir", archive)
    assert result.returncode == 0, result.stdout
    assert files_of(job.package) == {"xgboost_model.bst": b"booster"}


@pytest.mark.parametrize("name", ["model.tgz", "output/model.tar.gz"])
def test_an_archive_under_another_name_is_packaged_as_a_file_with_a_warning(
    job: Job, name: str
) -> None:
    archive = archive_tree(write_tree(job.tmp / "trained", MODEL), job.tmp / "a.tar.gz")
    write_tree(job.model, {name: archive.read_bytes(), "weights.bin": b"w"})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    warnings = [line for line in lines if "like an archive" in line and " WARNING " in line]
    assert len(warnings) == 1
    assert f"holds {name}, which looks like an archive" in warnings[0]
    assert "packaged as a file, not extracted" in warnings[0]
    assert set(files_of(job.package)) == {name, "weights.bin"}


def test_model_archive_in_the_script_dir_asks_whether_they_are_swapped(job: Job) -> None:
    archive = archive_tree(write_tree(job.tmp / "trained", MODEL), job.script / "model.tar.gz")
    write_tree(job.model, {"inference.py": "code"})
    assert archive.exists()
    assert_refused(job.cli(), job, "holds model.tar.gz", "--model-dir and --script-dir swapped")


@pytest.mark.parametrize("same_as", ["script", "model"])
def test_a_calibration_dir_that_is_another_input_is_refused(job: Job, same_as: str) -> None:
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n"})
    other = job.script if same_as == "script" else job.model
    assert_refused(job.cli("--calibration-dir", other), job, "is also the model or script input")


def test_one_dir_for_model_and_code_asks_whether_they_are_swapped(job: Job) -> None:
    write_tree(job.model, MODEL)
    assert_refused(
        job.cli("--script-dir", job.model), job, "the same directory", "swapped? The model"
    )


def test_output_dir_dot_keeps_staging_outside_it(
    job: Job, staging_parents: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, MODEL)
    job.output.mkdir()
    monkeypatch.chdir(job.output)
    mims_package.main({"model_input": str(job.model)}, {"package_output": "."}, {})
    assert staging_parents == [job.tmp]
    assert sorted(os.listdir(job.output)) == ["model.tar.gz"]


def test_an_explicit_work_dir_inside_the_output_is_refused(job: Job) -> None:
    write_tree(job.model, MODEL)
    result = job.cli("--work-dir", job.output / "scratch")
    assert_refused(result, job, "is inside the output directory", "SageMaker uploads")


def test_a_work_dir_that_is_a_file_gets_its_own_message(job: Job) -> None:
    write_tree(job.model, MODEL)
    (job.tmp / "work-file").write_text("x")
    result = job.cli("--work-dir", job.tmp / "work-file")
    assert_refused(result, job, "work directory", "exists and is not a directory")


def test_a_missing_work_dir_is_created_with_its_parents(job: Job) -> None:
    write_tree(job.model, MODEL)
    work = job.tmp / "new" / "work"
    assert job.cli("--work-dir", work).returncode == 0
    assert work.is_dir() and list(work.iterdir()) == []


def test_a_failed_run_leaves_no_output_dir_it_made(job: Job) -> None:
    """The archive starts well (so the job gets as far as making the output) and then breaks."""
    trained = write_tree(job.tmp / "trained", {"a.bin": os.urandom(300_000), "b.bin": b"b"})
    archive = archive_tree(trained, job.model / "model.tar.gz").read_bytes()
    (job.model / "model.tar.gz").write_bytes(archive[: len(archive) // 2])
    output = job.tmp / "build" / "package"
    result = job.cli("--output-dir", output)
    assert_refused(result, job, "corrupt or truncated")
    assert "free space: staging" in result.stdout  # it did get past the input checks
    assert not (job.tmp / "build").exists()


@needs_unshare
def test_no_arguments_on_a_laptop_creates_nothing(tmp_path: Path) -> None:
    """The SageMaker paths do not exist here: one ERROR, and no /opt/ml/processing/output."""
    result = in_namespace(
        'mount -t tmpfs tmpfs /opt && "$@" 2>&1; echo "exit $?"; find /opt', sys.executable, SCRIPT
    )
    lines = result.stdout.splitlines()
    assert [line for line in lines if " ERROR " in line] == [
        next(line for line in lines if " ERROR " in line)
    ]
    assert "model input /opt/ml/processing/input/model does not exist" in result.stdout
    assert lines[-2:] == ["exit 1", "/opt"]  # nothing was created under /opt


def test_help_shows_only_real_defaults() -> None:
    result = run_cli("--help")
    text = " ".join(result.stdout.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: /opt/ml/processing/input/calibration)" in text
    assert "--calibration-dir" in text


def test_threads_that_is_not_a_number_says_so() -> None:
    result = run_cli("--threads", "abc", merged=False)
    assert result.returncode == 2
    assert "argument --threads: must be a whole number, not 'abc'" in result.stderr


def test_log_level_in_any_case(job: Job) -> None:
    write_tree(job.model, MODEL)
    result = job.cli("--log-level", "debug")
    assert result.returncode == 0, result.stderr
    assert " DEBUG   xgboost_model.bst (7 bytes, mode 644)" in result.stdout


@pytest.mark.parametrize("where", ["model", "script", "calibration"])
def test_a_fifo_in_a_loose_input_is_refused_not_skipped(job: Job, where: str) -> None:
    write_tree(job.model, MODEL)
    calibration = write_tree(job.tmp / "calibration", {"calibration_model.pkl": b"c"})
    root = {"model": job.model, "script": job.script, "calibration": calibration}[where]
    write_tree(root, {"real.txt": "x"})
    os.mkfifo(root / "pipe")
    result = job.cli("--calibration-dir", calibration)
    assert_refused(result, job, f"{root / 'pipe'} is not a regular file, directory or symlink")


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_report_dir_inside_an_input_is_refused(job: Job, dry_run: bool) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n", "package.json": "{}"})
    result = job.cli("--report-dir", job.script, *(["--dry-run"] if dry_run else []))
    assert_refused(result, job, f"the report directory {job.script} is inside the input")
    assert (job.script / "package.json").read_text() == "{}"


PATH_OPTIONS = ["--model-dir", "--script-dir", "--calibration-dir", "--output-dir", "--work-dir"]


@pytest.mark.parametrize("option", [*PATH_OPTIONS, "--report-dir"])
def test_a_path_too_long_for_the_system_is_one_error(job: Job, option: str) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    result = job.cli(option, job.tmp / ("n" * 300) / "x")
    assert_refused(result, job, f"{option} ", "is too long (a name over 255 bytes")


@pytest.mark.parametrize("option", ["--output-dir", "--work-dir", "--report-dir"])
@pytest.mark.parametrize("version", ["3.7", "3.11", "this"])
def test_a_symlink_loop_as_a_directory_to_write_in_is_one_error(
    job: Job, option: str, version: str
) -> None:
    python = sys.executable if version == "this" else find_pythons().get(version)
    if python is None:
        pytest.skip(f"Python {version} is not on this machine")
    write_tree(job.model, {"w.bin": b"w"})
    os.symlink(job.tmp / "loop-b", job.tmp / "loop-a")
    os.symlink(job.tmp / "loop-a", job.tmp / "loop-b")
    result = subprocess.run(
        [python, compiled_script(python), *map(str, job.args(option, job.tmp / "loop-a" / "out"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    result.stderr = ""  # in stdout
    assert_refused(result, job, f"{option} ", "cannot be resolved")


@pytest.mark.parametrize("option", ["--output-dir", "--work-dir", "--report-dir"])
@pytest.mark.parametrize("where", ["a-file", "under-a-file", "proc"])
def test_a_dry_run_refuses_a_directory_to_write_in_as_the_real_run_does(
    job: Job, option: str, where: str
) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    blocker = job.tmp / "blocker"
    blocker.write_text("x")
    path = {"a-file": blocker, "under-a-file": blocker / "d", "proc": Path("/proc/mims-x")}[where]
    real, dry = job.cli(option, path), job.cli(option, path, "--dry-run")
    assert real.returncode == dry.returncode == 1
    said = [
        [line.split(" ERROR ")[1] for line in result.stdout.splitlines() if " ERROR " in line]
        for result in (real, dry)
    ]
    assert said[0] == said[1] and len(said[0]) == 1, said
    assert not job.output.exists() or option != "--output-dir"
    assert job.leftovers() == [] and blocker.read_text() == "x"
