"""The calibration input: packaged under calibration/, optional only at its default path."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MODEL, Job, archive_tree, assert_refused, files_of, write_tree

import mims_package

CALIBRATION_TREE = {
    "calibration_model.pkl": b"calibrator",
    "calibration_summary.json": "{}",
    "calibration_models/class_1.pkl": b"per class",
}


def test_calibration_tree_goes_under_calibration(job: Job) -> None:
    write_tree(job.model, MODEL)
    calibration = write_tree(job.tmp / "calibration", CALIBRATION_TREE)
    result = job.cli("--calibration-dir", calibration)
    assert result.returncode == 0, result.stdout
    assert files_of(job.package) == {
        "xgboost_model.bst": b"booster",
        "calibration/calibration_model.pkl": b"calibrator",
        "calibration/calibration_summary.json": b"{}",
        "calibration/calibration_models/class_1.pkl": b"per class",
    }
    assert "INFO calibration files: 3, " in result.stdout


def test_the_models_own_calibration_is_replaced_with_a_warning(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {**MODEL, "calibration/old.pkl": b"stale"})
    archive_tree(trained, job.model / "model.tar.gz")
    calibration = write_tree(job.tmp / "calibration", CALIBRATION_TREE)
    result = job.cli("--calibration-dir", calibration)
    assert result.returncode == 0, result.stdout
    assert "WARNING the model's own calibration/ (1 files) is dropped and replaced" in result.stdout
    names = set(files_of(job.package))
    assert "calibration/old.pkl" not in names
    assert "calibration/calibration_model.pkl" in names


def test_without_a_calibration_input_the_models_own_is_kept(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {**MODEL, "calibration/own.pkl": b"own"})
    archive_tree(trained, job.model / "model.tar.gz")
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert files_of(job.package)["calibration/own.pkl"] == b"own"
    assert "dropped" not in result.stdout


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_default_path_missing_or_empty_is_one_info_line(
    job: Job, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_tree(job.model, MODEL)
    if state == "empty":
        Path(mims_package.DEFAULT_CALIBRATION_PATH).mkdir(parents=True)
    caplog.set_level("INFO", logger="mims_package")
    job.main()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "no calibration" in r.message]
    assert said == [
        (
            "INFO",
            f"no calibration in {mims_package.DEFAULT_CALIBRATION_PATH}: the package has no "
            "calibration/ unless the model brings one",
        )
    ]
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "calib" in r.message]
    assert not any(name.startswith("calibration/") for name in files_of(job.package))


def test_an_explicit_path_that_does_not_exist_is_an_error(job: Job) -> None:
    write_tree(job.model, MODEL)
    missing = job.tmp / "no-calibration-here"
    assert_refused(
        job.cli("--calibration-dir", missing),
        job,
        f"calibration input {missing} does not exist",
        "--calibration-dir",
    )
    assert not job.output.exists()


def test_symlinks_follow_the_script_dirs_rules(job: Job) -> None:
    write_tree(job.model, MODEL)
    calibration = write_tree(job.tmp / "calibration", CALIBRATION_TREE)
    (calibration / "current.pkl").symlink_to("calibration_model.pkl")
    assert job.cli("--calibration-dir", calibration).returncode == 0
    assert files_of(job.package)["calibration/current.pkl"] == b"calibrator"
    job.package.unlink()
    (calibration / "secret").symlink_to(job.tmp / "model" / "xgboost_model.bst")
    assert_refused(job.cli("--calibration-dir", calibration), job, "points outside")


def test_calibration_that_is_the_model_input_is_refused(job: Job) -> None:
    write_tree(job.model, MODEL)
    assert_refused(
        job.cli("--calibration-dir", job.model), job, "is also the model or script input"
    )
