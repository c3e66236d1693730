"""What leaves a run for a pipeline: the JSON summary line, and the result package() returns."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest
from conftest import Job, archive_tree, stop_during, write_tree

import mims_package

KEYS = {
    "event",
    "status",
    "error",
    "version",
    "python",
    "sha256",
    "package_bytes",
    "input_bytes",
    "ratio",
    "members",
    "excluded",
    "seconds",
    "cpu_seconds",
    "threads",
    "level",
    "adaptive",
    "free_bytes",
}


def summary_of(stdout: str) -> dict:  # type: ignore[type-arg]
    """The last line of a run's output, which must be its JSON summary and nothing else."""
    last = stdout.rstrip("\n").splitlines()[-1]
    summary = json.loads(last)
    assert set(summary) == KEYS and summary["event"] == "mims_package"
    return summary


def test_a_run_ends_with_its_summary(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {"w.bin": b"w" * 1000, "__pycache__/x.pyc": b"x"})
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, {"inference.py": "", "util.py": ""})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    summary = summary_of(result.stdout)
    data = job.package.read_bytes()
    assert summary["status"] == "ok" and summary["error"] is None
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["package_bytes"] == len(data) and summary["input_bytes"] == 1000
    assert summary["ratio"] == round(len(data) / 1000, 4)
    assert summary["members"] == {"model": 1, "code": 2, "calibration": 0}
    assert summary["excluded"] == 1
    assert summary["threads"] == mims_package.available_cpus()
    assert summary["level"] == 6 and summary["adaptive"] is True
    assert set(summary["seconds"]) == {"extract", "stage", "compress", "verify", "total"}
    assert set(summary["cpu_seconds"]) == set(summary["seconds"])
    for volume in ("work", "output"):
        free = summary["free_bytes"][volume]
        assert 0 < free["lowest"] <= free["before"]


def test_a_failed_run_ends_with_its_summary_too(job: Job) -> None:
    result = job.cli()  # no model
    summary = summary_of(result.stdout)
    error = next(line for line in result.stdout.splitlines() if " ERROR " in line)
    assert summary["status"] == "error" and summary["error"] in error
    assert summary["sha256"] is None and summary["seconds"]["total"] >= 0


def test_a_stopped_run_ends_with_its_summary(job: Job) -> None:
    write_tree(job.model, {"weights.bin": os.urandom(48 << 20)})
    code, log = stop_during(job, "compress", signal.SIGTERM)
    assert code == 143
    summary = summary_of(log)
    assert summary["status"] == "error" and summary["error"].startswith("stopped by SIGTERM")
    assert "compress" not in summary["seconds"]


def test_an_unexpected_error_ends_with_its_summary(
    job: Job, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(job.model, {"w.bin": b"w"})

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(mims_package, "_check_and_log_members", broken)
    with pytest.raises(RuntimeError):
        job.main()
    summary = summary_of(capsys.readouterr().out)
    assert summary["error"].startswith("unexpected error (RuntimeError: a bug)")


def test_the_summary_stays_one_line_whatever_the_input_names(job: Job) -> None:
    job.model = job.tmp / "model\nINFO forged line \u202e"
    result = job.cli()
    assert summary_of(result.stdout)["status"] == "error"
    assert result.stdout.rstrip("\n").splitlines()[-1].startswith('{"event"')


def test_package_returns_a_path_with_its_facts(job: Job) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    write_tree(job.script, {"inference.py": ""})
    result = mims_package.package(job.model, job.script, job.output, work_dir=job.work)
    assert result is not None
    assert os.fspath(result) == str(job.package) and result == job.package
    assert isinstance(result, Path) and result.exists() and result.path == job.package
    assert result.sha256 == hashlib.sha256(job.package.read_bytes()).hexdigest()
    assert result.size == job.package.stat().st_size
    assert result.members == {"model": 1, "code": 1, "calibration": 0}
