"""Faults: a full disk, permissions and stops in every phase leave nothing partial behind.

After each: no partial package, no staging dir, an older package intact, and the
exit code and the one ERROR line the packager promises.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SCRIPT,
    Job,
    archive_tree,
    in_namespace,
    make_archive,
    needs_unshare,
    tar_member,
    write_tree,
)

import mims_package

OLD = b"older package"
BIG = 6 << 20


def with_old_package(job: Job) -> None:
    write_tree(job.output, {"model.tar.gz": OLD})


def assert_clean_failure(
    job: Job, code: int, log: str, *needles: str, expected_code: int = 1
) -> None:
    assert code == expected_code, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, log
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in log
    assert job.package.read_bytes() == OLD
    assert sorted(p.name for p in job.output.iterdir()) == ["model.tar.gz"]
    assert list(job.work.iterdir()) == []


# --- A full disk, for real: a small tmpfs in a private mount namespace -------------------

SMALL_DISK = r"""
set -eu
small="$1"; shift
mount -t tmpfs -o size=2m tmpfs "$small"
if [ -n "${OLD_PACKAGE:-}" ]; then printf '%s' "$OLD_PACKAGE" > "$small/model.tar.gz"; fi
set +e
"$@"
code=$?
ls -A "$small" > "$small.left"
if [ -f "$small/model.tar.gz" ]; then cp "$small/model.tar.gz" "$small.package"; fi
exit $code
"""


def run_on_small_disk(job: Job, small: Path, *args: Any) -> tuple[int, str, list[str]]:
    small.mkdir(exist_ok=True)
    os.environ["OLD_PACKAGE"] = OLD.decode() if small == job.output else ""
    try:
        result = in_namespace(SMALL_DISK, small, sys.executable, SCRIPT, *job.args(*args))
    finally:
        del os.environ["OLD_PACKAGE"]
    left = Path(f"{small}.left").read_text().split()
    return result.returncode, result.stdout + result.stderr, left


@needs_unshare
@pytest.mark.parametrize(
    ("as_archive", "small", "doing"),
    [
        (True, "work", "extracting the model archive"),
        (False, "output", "writing the package"),
    ],
    ids=["extract", "package-write"],
)
def test_disk_full_in_each_phase(job: Job, as_archive: bool, small: str, doing: str) -> None:
    """A disk that fills up mid-phase: the space check before it cannot see this coming
    (an archive that extracts to far more than its size; loose contents whose samples,
    taken from each file's middle, compress far better than the rest)."""
    half = os.urandom(BIG // 2)
    data = half + bytes(BIG // 2) + half if not as_archive else bytes(BIG)
    if as_archive:
        make_archive(job.model / "model.tar.gz", [tar_member("w.bin", data)])
    else:
        write_tree(job.model, {"w.bin": data})
    small_dir = getattr(job, small)
    code, log, left = run_on_small_disk(job, small_dir)
    assert code == 1, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"no space left on device while {doing}" in errors[0], log
    assert "free there" in errors[0] and "Traceback" not in log
    assert list(job.work.iterdir()) == []
    if small == "output":
        assert left == ["model.tar.gz"]
        assert Path(f"{job.output}.package").read_bytes() == OLD
    else:
        assert left == []


@needs_unshare
def test_loose_inputs_take_no_space_in_the_work_dir(job: Job) -> None:
    write_tree(job.model, {"w.bin": os.urandom(BIG)})
    code, log, left = run_on_small_disk(job, job.work)
    assert code == 0, log
    assert left == [] and job.package.exists()


# --- A full disk, injected: the same paths, on any machine -------------------------------


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("target", "doing"),
    [
        ((mims_package._Extractor, "_extract_file"), "extracting the model archive"),
        ((mims_package._ReadBack, "write"), "writing the package"),
    ],
    ids=["extract", "package-write"],
)
def test_injected_disk_full_in_each_phase(
    job: Job,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: Any,
    doing: str,
) -> None:
    make_archive(job.model / "model.tar.gz", [tar_member("w.bin", os.urandom(BIG))])
    with_old_package(job)
    original = getattr(*target)
    calls = []

    def fail_once_started(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2 or target[1] != "write":
            no_space()
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, fail_once_started)
    with pytest.raises(mims_package.PackagingError, match=f"no space left on device while {doing}"):
        job.main()
    assert job.package.read_bytes() == OLD
    assert sorted(p.name for p in job.output.iterdir()) == ["model.tar.gz"]
    assert list(job.work.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith(("deflate", "read-back"))]


# --- Permission denied --------------------------------------------------------------------


@pytest.fixture
def shared_job() -> Iterator[Job]:
    """A job under a world-readable dir, so that an unprivileged user can read its inputs."""
    base = Path(tempfile.mkdtemp(prefix="mims-perm-"))
    base.chmod(0o755)
    job = Job(base, base / "model", base / "script", base / "output", base / "work")
    for path in (job.model, job.script, job.output, job.work):
        path.mkdir()
    write_tree(job.model, {"m.bin": b"model"})
    (job.model / "m.bin").chmod(0o644)
    try:
        yield job
    finally:
        shutil.rmtree(base)


UNPRIVILEGED: dict[str, Any] = {"user": 65534, "group": 65534, "extra_groups": []}


def unprivileged_python() -> str | None:
    """An interpreter that user 'nobody' can run (root's pyenv usually is not one)."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            subprocess.run(
                [candidate, "-c", "pass"], check=True, capture_output=True, **UNPRIVILEGED
            )
        except (OSError, subprocess.CalledProcessError):
            continue
        return candidate
    return None


def run_unprivileged(job: Job, *extra: str) -> Any:
    """Run the job as 'nobody' where we are root (root ignores permissions), else as ourselves."""
    python = unprivileged_python()
    if python is None:
        pytest.skip("no Python interpreter here that an unprivileged user may run")
    script = job.tmp / "mims_package.py"
    shutil.copy(SCRIPT, script)
    script.chmod(0o644)
    user = UNPRIVILEGED if os.geteuid() == 0 else {}
    return subprocess.run(
        [python, str(script), *map(str, job.args(*extra))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # the logs, as a terminal shows them
        text=True,
        timeout=60,
        **user,
    )


def test_permission_denied_on_the_output_dir(shared_job: Job) -> None:
    job = shared_job
    for path in (job.model, job.work):
        path.chmod(0o777)
    job.output.chmod(0o555)
    write_tree(job.output, {"model.tar.gz": OLD})
    result = run_unprivileged(job)
    assert_clean_failure(
        job,
        result.returncode,
        result.stdout,
        "permission denied while checking that the output directory is writable",
    )


def test_permission_denied_on_the_staging_dir(shared_job: Job) -> None:
    job = shared_job
    job.output.chmod(0o777)
    job.work.chmod(0o555)
    write_tree(job.output, {"model.tar.gz": OLD})
    (job.output / "model.tar.gz").chmod(0o666)
    result = run_unprivileged(job)
    assert_clean_failure(
        job,
        result.returncode,
        result.stdout,
        "permission denied while checking that the work directory is writable",
    )


@pytest.mark.parametrize("extra", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_unreadable_input_file(shared_job: Job, extra: tuple[str, ...]) -> None:
    job = shared_job
    for path in (job.output, job.work):
        path.chmod(0o777)
    write_tree(job.output, {"model.tar.gz": OLD})
    (job.model / "m.bin").chmod(0o000)
    result = run_unprivileged(job, *extra)
    assert_clean_failure(job, result.returncode, result.stdout, "permission denied", "m.bin")


def test_output_path_that_is_a_file(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m"})
    job.output = job.tmp / "a-file"
    job.output.write_bytes(OLD)
    result = job.cli()
    assert result.returncode == 1 and "exists and is not a directory" in result.stdout
    assert job.output.read_bytes() == OLD
    assert list(job.work.iterdir()) == []


# --- Stopped in each phase: the signal arrives inside that phase's own code ---------------


@pytest.fixture
def restore_signal_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


PHASES = {
    "extract": (mims_package._Extractor, "add"),
    "stage": (mims_package, "_check_name"),
    "compress": (mims_package.GzipWriter, "write"),
    "verify": (mims_package._ReadBack, "finish"),
}


@pytest.mark.usefixtures("restore_signal_handlers")
@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("phase", PHASES)
def test_stopped_in_each_phase(
    job: Job,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    phase: str,
    signum: int,
    expected: int,
) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [tar_member(f"w{i}.bin", os.urandom(BIG // 3)) for i in range(3)],
    )
    write_tree(job.script, {"inference.py": "x"})
    with_old_package(job)
    owner, name = PHASES[phase]
    original = getattr(owner, name)
    sent = []

    def stop_here(*args: Any, **kwargs: Any) -> Any:
        if not sent:
            sent.append(phase)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, stop_here)
    assert mims_package.cli([str(arg) for arg in job.args()]) == expected
    assert sent == [phase]
    assert f"stopped by {signal.Signals(signum).name}" in caplog.text
    assert job.package.read_bytes() == OLD
    assert sorted(p.name for p in job.output.iterdir()) == ["model.tar.gz"]
    assert list(job.work.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith(("deflate", "read-back"))]


def test_a_read_only_output_dir_fails_before_the_archive_is_extracted(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive_tree(write_tree(job.tmp / "trained", {"w.bin": b"w"}), job.model / "model.tar.gz")
    job.output.mkdir()
    real_mkstemp = mims_package.tempfile.mkstemp
    extracted = []

    def mkstemp(**kwargs: Any) -> Any:
        if Path(kwargs["dir"]) == job.output:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(**kwargs)

    monkeypatch.setattr(mims_package.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(mims_package, "extract_archive", lambda *a: extracted.append(a))
    with pytest.raises(mims_package.PackagingError, match="read-only file system while checking"):
        job.main()
    assert extracted == [] and job.leftovers() == []


@needs_unshare
@pytest.mark.parametrize("small", ["work", "output"])
@pytest.mark.parametrize("in_a_job", [False, True], ids=["laptop", "processing-job"])
def test_plainly_too_little_space_fails_at_once_naming_the_fix(
    job: Job, small: str, in_a_job: bool
) -> None:
    data = os.urandom(BIG)
    if small == "work":
        make_archive(job.model / "model.tar.gz", [tar_member("w.bin", data)], compression="")
    else:
        write_tree(job.model, {"w.bin": data})
    script = SMALL_DISK.replace(
        "set +e\n", "set +e\nmount -t tmpfs tmpfs /opt && mkdir -p /opt/ml/output\n"
    )
    small_dir = getattr(job, small)
    small_dir.mkdir(exist_ok=True)
    os.environ["OLD_PACKAGE"] = ""
    try:
        result = in_namespace(
            script if in_a_job else SMALL_DISK, small_dir, sys.executable, SCRIPT, *job.args()
        )
    finally:
        del os.environ["OLD_PACKAGE"]
    log = result.stdout + result.stderr
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert result.returncode == 1 and len(errors) == 1, log
    assert "not enough space: 2.1 MB free at" in errors[0]
    fix = "volume_size_in_gb (VolumeSizeInGB)" if in_a_job else "--work-dir and --output-dir"
    assert fix in errors[0]
    assert "compress:" not in log and "extract:" not in log  # before any of the work
