"""Many small files are read ahead by a reader process: the same bytes, the same checks, the
same failures as when the job reads them itself, and nothing left running after it.

Whether the reader runs is set by READER_MIN_FILES; the hooks that change or break a file
run inside the reader (a fork keeps the test's patches), at a named member: never by luck.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import SCRIPT, Job, files_of, write_tree

import mims_package

FILES = 60  # small files in the tree (the reader is forced on for so few)
LARGE = mims_package.SMALL_FILE_SIZE + 1  # one byte over: the main process streams it
HOOKED = "m/d1/f031.txt"  # the small file the hooks act on


def tree(job: Job) -> None:
    """Small files in directories, a larger file between them by name, an empty file."""
    spec: dict[str, Any] = {
        f"m/d{i % 3}/f{i:03}.txt": f"def f{i}(x):\n    return x * {i}\n" * (i + 1)
        for i in range(FILES)
    }
    spec["m/d1/large.bin"] = bytes(range(256)) * (LARGE // 256 + 1)
    spec["m/d2/empty"] = b""
    write_tree(job.model, spec)


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The reader processes started (their pids); the reader is on for any count of files."""
    monkeypatch.setattr(mims_package, "READER_MIN_FILES", 1)
    started: list[int] = []
    real_init = mims_package._Reader.__init__

    def init(self: Any, frames: Any) -> None:
        real_init(self, frames)
        started.append(self._pid)

    monkeypatch.setattr(mims_package._Reader, "__init__", init)
    return started


def hook_read(monkeypatch: pytest.MonkeyPatch, act: Callable[[Path], None]) -> None:
    """Run act on HOOKED's path just before it is read (in whichever process reads it)."""
    real_read = mims_package._DirectoryChain.read_whole

    def read_whole(self: Any, member: Any) -> bytes:
        if member.name == HOOKED:
            act(Path(member.path))
        return real_read(self, member)  # type: ignore[no-any-return]

    monkeypatch.setattr(mims_package._DirectoryChain, "read_whole", read_whole)


def package(job: Job, out: str, **options: Any) -> tuple[bytes, dict[str, Any]]:
    report = job.tmp / f"report-{out}"
    mims_package.package(
        job.model,
        job.script,
        job.tmp / out,
        work_dir=job.work,
        report_dir=report,
        **options,
    )
    return (job.tmp / out / "model.tar.gz").read_bytes(), json.loads(
        (report / "package.json").read_text()
    )


def assert_reaped(pids: list[int]) -> None:
    """Each reader has ended and been waited for: none left, not even a zombie."""
    assert pids
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_the_reader_writes_the_bytes_and_report_the_job_writes_alone(
    job: Job, request: pytest.FixtureRequest
) -> None:
    tree(job)
    alone, alone_report = package(job, "alone")
    started = request.getfixturevalue("readers")
    read_ahead, read_ahead_report = package(job, "read-ahead")
    assert len(started) == 1 and read_ahead == alone
    assert read_ahead_report["members"] == alone_report["members"]
    files = files_of(job.tmp / "alone" / "model.tar.gz")
    assert files["m/d1/large.bin"] == (job.model / "m/d1/large.bin").read_bytes()
    assert files["m/d2/empty"] == b"" and len(files) == FILES + 2
    assert_reaped(started)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_file_changed_before_the_reader_reads_it_is_refused(
    job: Job, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, read_ahead: bool
) -> None:
    tree(job)
    started = request.getfixturevalue("readers") if read_ahead else []
    hook_read(monkeypatch, lambda path: path.write_text("rewritten, at the same size? no\n"))
    with pytest.raises(mims_package.PackagingError, match=f"{HOOKED} changed since it was planned"):
        package(job, "out")
    assert not (job.tmp / "out" / "model.tar.gz").exists() and job.leftovers() == []
    assert len(started) == read_ahead
    if read_ahead:
        assert_reaped(started)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_read_error_in_the_reader_is_the_jobs_error(
    job: Job, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, read_ahead: bool
) -> None:
    tree(job)
    if read_ahead:
        request.getfixturevalue("readers")

    def fail(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    hook_read(monkeypatch, fail)
    with pytest.raises(mims_package.PackagingError) as failure:
        package(job, "out")
    assert "Input/output error" in str(failure.value) and HOOKED in str(failure.value)
    assert job.leftovers() == []


@pytest.mark.parametrize("allow", [False, True])
def test_a_credential_the_reader_finds_fails_or_warns_as_ever(
    job: Job, readers: list[int], allow: bool
) -> None:
    tree(job)
    (job.model / HOOKED).write_text('token = "ghp_' + "a1B2c3D4" * 4 + 'e5F6"\n')
    (job.model / "m/d0/lfs.bin").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 9\n"
    )
    if not allow:
        with pytest.raises(mims_package.PackagingError, match=f"{HOOKED}: it holds a GitHub"):
            package(job, "out")
        assert job.leftovers() == [] and readers
        return
    _, report = package(job, "out", allow_secrets=True)
    warned = {(w["check"], w["path"]) for w in report["warnings"]}
    assert ("credentials", HOOKED) in warned and ("model files", "m/d0/lfs.bin") in warned
    assert_reaped(readers)


def test_a_reader_that_dies_fails_the_job_with_a_clear_error(
    job: Job, monkeypatch: pytest.MonkeyPatch, readers: list[int]
) -> None:
    tree(job)
    hook_read(monkeypatch, lambda path: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(
        mims_package.PackagingError, match=r"ended unexpectedly \(killed by signal 9\)"
    ):
        package(job, "out")
    assert job.leftovers() == [] and not (job.tmp / "out" / "model.tar.gz").exists()
    assert_reaped(readers)


def test_one_fstat_a_small_file(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot's stamp is checked on the descriptor read: one fstat, after the read."""
    write_tree(job.model, {f"f{i:03}.txt": f"{i}\n" for i in range(200)})
    calls: list[int] = []
    real_fstat = os.fstat
    real_read = mims_package._DirectoryChain.read_whole

    def read_whole(self: Any, member: Any) -> bytes:
        with monkeypatch.context() as patch:
            patch.setattr(os, "fstat", lambda fd: (calls.append(fd), real_fstat(fd))[1])
            return real_read(self, member)  # type: ignore[no-any-return]

    monkeypatch.setattr(mims_package._DirectoryChain, "read_whole", read_whole)
    job.main()
    assert len(calls) == 200


def test_a_stop_while_the_reader_hangs_is_answered_and_leaves_nothing(job: Job) -> None:
    """The reader stuck on a file (a hung network disk, say) does not hold the stop up."""
    tree(job)
    pid_file = job.tmp / "reader.pid"
    program = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(SCRIPT.parent)!r})
        import mims_package
        mims_package.READER_MIN_FILES = 1
        real_read = mims_package._DirectoryChain.read_whole
        def read_whole(self, member):
            if member.name == {HOOKED!r}:
                with open({str(pid_file)!r}, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getppid(), signal.SIGTERM)
                time.sleep(3600)
            return real_read(self, member)
        mims_package._DirectoryChain.read_whole = read_whole
        sys.argv[1:] = {list(map(str, job.args()))!r}
        sys.exit(mims_package.cli())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM" in result.stderr and "Traceback" not in result.stderr
    assert job.leftovers() == [] and not job.package.exists()
    assert not Path(f"/proc/{pid_file.read_text()}").exists()  # killed and waited for


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_reader_stopped_by_a_signal_stops_the_job(
    job: Job, monkeypatch: pytest.MonkeyPatch, readers: list[int], signum: int, code: int
) -> None:
    """A stop signal that reaches the reader first (^C reaches the whole group) is a stop."""
    tree(job)
    hook_read(monkeypatch, lambda path: os.kill(os.getpid(), signum))
    with pytest.raises(SystemExit) as stopped:
        package(job, "out")
    assert stopped.value.code == code
    assert job.leftovers() == [] and not (job.tmp / "out" / "model.tar.gz").exists()
    assert_reaped(readers)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_frames_that_end_early_never_publish_a_part(
    job: Job, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, read_ahead: bool
) -> None:
    write_tree(job.model, {f"f{i:02}.bin": bytes([i]) * 200_000 for i in range(10)})  # 2 frames
    if read_ahead:
        request.getfixturevalue("readers")
    real_frames = mims_package._frames

    def first_frame_only(*args: Any) -> Iterator[Any]:
        frames = real_frames(*args)
        yield next(frames)
        frames.close()

    monkeypatch.setattr(mims_package, "_frames", first_frame_only)
    with pytest.raises(mims_package.PackagingError, match=r"only [1-9] of 10 members were read"):
        package(job, "out")
    assert job.leftovers() == [] and not (job.tmp / "out" / "model.tar.gz").exists()
