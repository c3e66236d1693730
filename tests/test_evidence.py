"""What leaves a run for a pipeline: the JSON summary line, and the result package() returns."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import tarfile
from pathlib import Path

import pytest
from conftest import Job, archive_tree, run_cli, stop_during, write_tree

import mims_package

KEYS = {
    "event",
    "status",
    "error",
    "version",
    "python",
    "sha256",
    "package_bytes",
    "content_bytes",
    "ratio",
    "files",
    "directories",
    "excluded",
    "seconds",
    "cpu_seconds",
    "threads",
    "level",
    "adaptive",
    "free_bytes",
    "warnings",
    "warning_count",
    "smoke_test",
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
    assert summary["package_bytes"] == len(data) and summary["content_bytes"] == 1000
    assert summary["ratio"] == round(len(data) / 1000, 4)
    assert summary["files"] == {"model": 1, "code": 2, "calibration": 0}
    assert summary["directories"] == 1  # code/
    assert summary["excluded"] == 1
    assert summary["threads"] == mims_package.available_cpus()
    assert summary["level"] == 6 and summary["adaptive"] is True
    (warning,) = summary["warnings"]  # the empty inference.py has no model_fn
    assert warning["check"] == "handlers" and warning["path"] == "code/inference.py"
    assert warning["message"].startswith("code/inference.py defines no model_fn")
    assert summary["warning_count"] == 1
    assert summary["smoke_test"] == {"status": "skipped"}
    phases = {"extract", "stage", "code check", "compress", "verify", "total"}
    assert set(summary["seconds"]) == phases
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


# The report: package.json and an in-toto statement, in an output of their own.


def packaged_with_report(job: Job, *extra: object) -> tuple[dict, dict]:  # type: ignore[type-arg]
    # big.bin spans three read blocks: its digest is of them all, not of the first or last
    big = bytes(range(256)) * 10_000
    trained = write_tree(
        job.tmp / "trained", {"w.bin": b"weights", "sub/v.json": "{}", "big.bin": big}
    )
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n"})
    result = job.cli("--report-dir", job.tmp / "report", *extra)
    assert result.returncode == 0, result.stdout
    report = json.loads((job.tmp / "report" / "package.json").read_text())
    statement = json.loads((job.tmp / "report" / "package.intoto.json").read_text())
    return report, statement


def test_the_report_equals_the_package_digest_by_digest(job: Job) -> None:
    report, _ = packaged_with_report(job)
    data = job.package.read_bytes()
    assert report["sha256"] == hashlib.sha256(data).hexdigest() and report["size"] == len(data)
    assert report["summary"]["event"] == "mims_package"
    with tarfile.open(job.package) as tar:
        found = {
            info.name: {
                "name": info.name,
                "type": "dir" if info.isdir() else "file",
                "size": info.size,
                "mode": f"{info.mode:04o}",
                "sha256": None
                if info.isdir()
                else hashlib.sha256(tar.extractfile(info).read()).hexdigest(),  # type: ignore[union-attr]
            }
            for info in tar
        }
    assert report["members"] == [found[name] for name in found]
    archive = hashlib.sha256((job.model / "model.tar.gz").read_bytes()).hexdigest()
    inference = found["code/inference.py"]["sha256"]
    assert report["inputs"] == [
        {"name": "model_input/model.tar.gz", "digest": {"sha256": archive}},
        {"name": "script_input/inference.py", "digest": {"sha256": inference}},
    ]


def test_the_statement_is_in_toto_v1_with_slsa_provenance(job: Job) -> None:
    report, statement = packaged_with_report(job, "--compression-level", "9")
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [
        {"name": "model.tar.gz", "digest": {"sha256": report["sha256"]}}
    ]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == f"urn:mims-package:{mims_package.__version__}"
    assert definition["externalParameters"]["compression_level"] == 9
    assert definition["resolvedDependencies"] == report["inputs"]
    details = statement["predicate"]["runDetails"]
    assert details["builder"]["id"] == definition["buildType"]
    assert details["metadata"]["startedOn"] <= details["metadata"]["finishedOn"]


def test_package_called_directly_writes_the_same_statement(job: Job) -> None:
    """The library call, not only the command line: the subject is the package it returns."""
    write_tree(job.model, {"w.bin": b"weights"})
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n"})
    result = mims_package.package(
        job.model, job.script, job.output, work_dir=job.work, report_dir=job.tmp / "report"
    )
    assert result is not None
    digest = hashlib.sha256(job.package.read_bytes()).hexdigest()
    assert result.sha256 == digest
    statement = json.loads((job.tmp / "report" / "package.intoto.json").read_text())
    assert statement["subject"] == [{"name": "model.tar.gz", "digest": {"sha256": digest}}]
    report = json.loads((job.tmp / "report" / "package.json").read_text())
    assert report["sha256"] == digest and report["size"] == job.package.stat().st_size


def test_the_job_name_is_the_invocation_id(job: Job, no_sagemaker_paths: Path) -> None:
    write_tree(
        no_sagemaker_paths / "config",
        {"processingjobconfig.json": '{"ProcessingJobName": "pkg-1"}'},
    )
    write_tree(job.model, {"w.bin": b"w"})
    mims_package.package(
        job.model, job.script, job.output, work_dir=job.work, report_dir=job.tmp / "r"
    )
    statement = json.loads((job.tmp / "r" / "package.intoto.json").read_text())
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == "pkg-1"


def test_with_the_default_report_dir_absent_nothing_is_created(
    job: Job, no_sagemaker_paths: Path
) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    job.main()
    assert not (no_sagemaker_paths / "report").exists()
    (no_sagemaker_paths / "report").mkdir(parents=True)  # as a ProcessingOutput maps it
    job.main()
    assert sorted(p.name for p in (no_sagemaker_paths / "report").iterdir()) == [
        "package.intoto.json",
        "package.json",
    ]


def test_a_report_dir_inside_the_output_is_refused(job: Job) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    result = job.cli("--report-dir", job.output / "report")
    assert result.returncode == 1 and "inside the output directory" in result.stdout
    assert not job.package.exists()


def test_expect_report_names_a_tampered_member(job: Job) -> None:
    packaged_with_report(job)
    report_path = job.tmp / "report" / "package.json"
    result = run_cli("--verify", job.package, "--expect-report", report_path)
    assert result.returncode == 0
    members = len(json.loads(report_path.read_text())["members"])
    assert f"PASS report: all {members} members match the report" in result.stdout
    report = json.loads(report_path.read_text())
    for member in report["members"]:
        if member["name"] == "w.bin":
            member["sha256"] = "0" * 64
    report_path.write_text(json.dumps(report))
    result = run_cli("--verify", job.package, "--expect-report", report_path)
    assert result.returncode == 1
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed.startswith("FAIL report: w.bin: differs from the report: sha256 0000")


def test_expect_report_names_a_member_the_package_lacks(job: Job) -> None:
    packaged_with_report(job)
    report_path = job.tmp / "report" / "package.json"
    report = json.loads(report_path.read_text())
    extra = {"name": "extra.bin", "type": "file", "size": 1, "mode": "0644", "sha256": "0" * 64}
    report["members"].append(extra)
    report_path.write_text(json.dumps(report))
    result = run_cli("--verify", job.package, "--expect-report", report_path)
    assert result.returncode == 1
    assert "FAIL report: extra.bin: is in the report but not in the package" in result.stdout


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_report_dir_that_cannot_be_one_fails_before_anything(job: Job, dry_run: bool) -> None:
    write_tree(job.model, {"w.bin": b"w"})
    blocker = job.tmp / "report"
    blocker.write_text("a file where the report dir should be")
    for report in (blocker, blocker / "sub"):
        result = job.cli("--report-dir", report, *(["--dry-run"] if dry_run else []))
        assert result.returncode == 1
        error = next(line for line in result.stdout.splitlines() if " ERROR " in line)
        assert f"the report directory {report} exists and is not a directory" in error
        assert not job.output.exists() and job.leftovers() == []


def test_a_report_that_cannot_be_written_fails_and_says_the_package_stands(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"w.bin": b"w"})

    def full_disk(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(mims_package, "_write_atomically", full_disk)
    with pytest.raises(mims_package.PackagingError) as caught:
        mims_package.package(
            job.model, job.script, job.output, work_dir=job.work, report_dir=job.tmp / "r"
        )
    assert "while writing the report" in str(caught.value)
    assert "is published and verified, but has no report" in str(caught.value)
    assert job.package.exists() and job.leftovers() == []


def test_the_report_lists_the_warnings_and_the_code_checks_findings(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {"w.bin": b"weights", "empty.bin": b""})
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, {"inference.py": "import not_installed_x\n"})
    result = job.cli("--report-dir", job.tmp / "report")
    assert result.returncode == 0, result.stdout
    report = json.loads((job.tmp / "report" / "package.json").read_text())
    checks = sorted((w["check"], w["path"]) for w in report["warnings"])
    assert checks == [
        ("handlers", "code/inference.py"),
        ("imports", "code/inference.py"),
        ("model files", "empty.bin"),
    ]
    assert report["warning_count"] == 3 and report["warnings"] == report["summary"]["warnings"]
    assert sorted((w["check"], w["path"]) for w in report["code_check"]) == checks
    assert report["smoke_test"] == {"status": "skipped"}
    assert not (job.tmp / "report" / "package.test-result.intoto.json").exists()


def test_a_smoke_test_leaves_an_in_toto_test_result(job: Job) -> None:
    write_tree(job.model, {"model.json": "{}"})
    entry = (
        "def model_fn(model_dir):\n    return {}\n"
        "def transform_fn(model, body, content_type, accept):\n    return body\n"
    )
    write_tree(job.script, {"inference.py": entry + "import helper_not_there_x\n"})
    sample = job.tmp / "payload.json"
    sample.write_text('{"x": 1}')
    result = job.cli("--report-dir", job.tmp / "r", "--smoke-test", "--sample", sample)
    assert result.returncode == 1  # the import fails in the smoke test: nothing published
    assert not (job.tmp / "r").exists()
    write_tree(job.script, {"inference.py": entry})
    mims_package.package(
        job.model,
        job.script,
        job.output,
        work_dir=job.work,
        report_dir=job.tmp / "r",
        smoke_test=True,
        sample=str(sample),
    )
    report = json.loads((job.tmp / "r" / "package.json").read_text())
    assert report["smoke_test"]["status"] == "pass"
    assert report["smoke_test"]["response_bytes"] == len(sample.read_bytes())
    statement = json.loads((job.tmp / "r" / "package.test-result.intoto.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    assert statement["subject"] == [
        {"name": "model.tar.gz", "digest": {"sha256": report["sha256"]}}
    ]
    predicate = statement["predicate"]
    assert predicate["result"] == "PASSED" and predicate["failedTests"] == []
    assert predicate["warnedTests"] == []
    assert predicate["passedTests"] == [
        "code parses",
        "handlers",
        "imports",
        "requirements",
        "model files",
        "model_fn",
        "sample request",
    ]
    entry_digest = hashlib.sha256(entry.encode()).hexdigest()
    sample_digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    assert predicate["configuration"] == [
        {"name": "code/inference.py", "digest": {"sha256": entry_digest}},
        {"name": "sample", "digest": {"sha256": sample_digest}},
    ]


def test_a_warned_check_is_a_warned_test(job: Job) -> None:
    write_tree(job.model, {"model.json": "{}", "empty.pt": b""})
    write_tree(job.script, {"inference.py": "import json\n"})  # no model_fn
    mims_package.package(
        job.model, job.script, job.output, work_dir=job.work, report_dir=job.tmp / "r",
        options=mims_package.Options(smoke_test=True),
    )  # fmt: skip
    statement = json.loads((job.tmp / "r" / "package.test-result.intoto.json").read_text())
    predicate = statement["predicate"]
    assert predicate["result"] == "WARNED"
    assert predicate["warnedTests"] == ["handlers", "model files", "model_fn"]
    assert predicate["passedTests"] == ["code parses", "imports", "requirements"]
    assert predicate["configuration"][0]["name"] == "code/inference.py"
