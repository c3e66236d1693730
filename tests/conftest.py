"""Shared fixtures: input trees, hostile archives, and ways to run the job and read its package."""

from __future__ import annotations

import atexit
import functools
import io
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pytest
from script_server import ScriptServer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "mims_package.py"
EXAMPLE = ROOT / "tests" / "fixtures" / "example"
sys.path.insert(0, str(ROOT))

import mims_package  # noqa: E402

Content = Union[bytes, str, None]


# A small model, its code and its calibration, as most tests need them.
MODEL = {"xgboost_model.bst": b"booster"}
CODE = {"inference.py": "def model_fn(d): pass\n", "processing/__init__.py": ""}
CALIBRATION = {"calibration_model.pkl": b"calibrator", "calibration_summary.json": "{}"}


def write_tree(root: Path, spec: dict[str, Content]) -> Path:
    """Create files (bytes or str) and empty directories (None) from {relative path: content}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in spec.items():
        path = root / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def tar_member(name: str, data: bytes = b"", **attrs: Any) -> tuple[tarfile.TarInfo, bytes]:
    """A (TarInfo, data) pair for make_archive; attrs set type, linkname, mode and so on."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    if info.type != tarfile.REGTYPE:
        info.size = 0
    return info, data


def make_archive(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes]], compression: str = "gz"
) -> Path:
    """Write members, in order and unchecked, as a tar archive (gz, bz2, xz or plain '')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def archive_tree(source: Path, archive: Path, compression: str = "gz") -> Path:
    """Archive a directory's contents with relative names, as a training job would."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(archive, mode, format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(walk(source)):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
    return archive


def walk(root: Path) -> list[Path]:
    """Everything below root, without recursion (rglob recurses, and trees can be deep)."""
    found, stack = [], [root]
    while stack:
        for entry in os.scandir(stack.pop()):
            found.append(Path(entry.path))
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return found


@dataclass
class Entry:
    type: str
    mode: int
    data: bytes = b""
    mtime: int = 0
    info: Any = field(default=None, repr=False)


def read_package(path: Path) -> dict[str, Entry]:
    """Every member of a package, read with tarfile's strict stream mode, in archive order."""
    entries: dict[str, Entry] = {}
    with tarfile.open(path, "r|gz") as tar:
        for info in tar:
            kind = "dir" if info.isdir() else "file" if info.isreg() else "other"
            stream = tar.extractfile(info) if info.isreg() else None
            data = stream.read() if stream is not None else b""
            entries[info.name] = Entry(kind, info.mode, data, int(info.mtime), info)
    return entries


def files_of(path: Path) -> dict[str, bytes]:
    """The package's regular files and their bytes."""
    return {name: e.data for name, e in read_package(path).items() if e.type == "file"}


EOF_MARKER = bytes(2 * mims_package.BLOCK_SIZE)  # two zero blocks end a tar archive


def pad(size: int) -> bytes:
    """The NUL bytes that fill size up to a whole tar block."""
    return bytes(-size % mims_package.BLOCK_SIZE)


def with_checksum(block: bytearray) -> bytes:
    """Recompute a header block's checksum in place, as a valid header has it; its bytes."""
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def extended_entry(body: bytes, kind: bytes = b"x") -> bytes:
    """An extended header (PAX "x" unless kind says otherwise) holding exactly body."""
    header = mims_package._ustar_block(b"././@PaxHeader", kind, len(body), 0o644, 0)
    return header + body + pad(len(body))


# What the README's SageMaker snippets must give SageMaker, in SDK v3 as in v2: the
# package's own URI, the two variables that point the serving container at code/, and
# in a pipeline the Join of the packaging step's output and the report's SHA-256.
PACKAGE_URI = "s3://my-bucket/packages/model.tar.gz"
SERVING_ENV = {
    "SAGEMAKER_PROGRAM": "inference.py",
    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
}
PACKAGE_JOIN = {
    "Std:Join": {
        "On": "/",
        "Values": [
            {
                "Get": "Steps.MimsPackage.ProcessingOutputConfig"
                ".Outputs['packaged_model'].S3Output.S3Uri"
            },
            "model.tar.gz",
        ],
    }
}
SMOKE_ARGUMENTS = ["--smoke-test", "--sample", "/opt/ml/processing/input/sample/payload.csv"]
PACKAGE_SHA256_METADATA = {
    "package_sha256": {
        "Std:JsonGet": {
            "PropertyFile": {"Get": "Steps.MimsPackage.PropertyFiles.PackageReport"},
            "Path": "sha256",
        }
    }
}


def readme_blocks(section: str, subsection: str) -> list[str]:
    """The ```python blocks under the README's "## section" and its "### subsection", in order."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    body = body.split(f"\n### {subsection}\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


WITHOUT_DATA_FILTER = "MIMS_TEST_WITHOUT_DATA_FILTER"
# Runs the script as __main__ with tarfile.data_filter deleted, as on Python 3.7.
NO_FILTER_LAUNCHER = (
    "import runpy, sys, tarfile\n"
    "if hasattr(tarfile, 'data_filter'):\n"
    "    del tarfile.data_filter\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def without_data_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this test, the script runs without tarfile's data filter, in-process and in run_cli."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setenv(WITHOUT_DATA_FILTER, "1")


COMPILE = "import py_compile, sys; py_compile.compile(*sys.argv[1:], doraise=True)"


@functools.lru_cache(maxsize=None)
def compiled_script(python: str = sys.executable) -> str:
    """The script compiled once per test process by python, to run as it runs the script:
    its code names the script's source (tracebacks, inspect.getsource), and each run saves
    compiling 7,000 lines, about 65 ms."""
    directory = tempfile.mkdtemp(prefix="mims-pyc-")
    atexit.register(shutil.rmtree, directory, True)
    target = os.path.join(directory, "mims_package.pyc")
    if python == sys.executable:
        return py_compile.compile(str(SCRIPT), cfile=target, dfile=str(SCRIPT), doraise=True)
    subprocess.run([python, "-c", COMPILE, str(SCRIPT), target, str(SCRIPT)], check=True)
    return target


@functools.lru_cache(maxsize=None)
def script_server() -> ScriptServer:
    """This test process's fork server for the script (tests/script_server.py)."""
    server = ScriptServer(compiled_script())
    atexit.register(server.close)
    return server


def cli_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a run_cli run gets: this one's but the job's own variables, and env."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "WORKING_DIRECTORY")
    }
    full_env.update(env or {})
    return full_env


def run_cli(
    *args: Any, env: dict[str, str] | None = None, timeout: float = 120, merged: bool = True
) -> Any:
    """Run the script as a new process (forked by the script server, or a new Python when env
    changes what Python reads as it starts); return the CompletedProcess (text output). Logs
    go to standard error: merged (the default), they are in stdout with the rest, as a
    terminal shows them; not merged, stdout holds only what a program reads."""
    full_env = cli_environ(env)
    without_filter = bool(os.environ.get(WITHOUT_DATA_FILTER))
    server = script_server()
    if server.can_run(full_env):
        with tempfile.TemporaryDirectory(prefix="mims-run-") as scratch:
            return server.run(
                list(map(str, args)),
                full_env,
                merged=merged,
                timeout=timeout,
                scratch=Path(scratch),
                without_data_filter=without_filter,
            )
    launcher = ["-c", NO_FILTER_LAUNCHER] if without_filter else []
    result = subprocess.run(
        [sys.executable, *launcher, compiled_script(), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    result.stderr = result.stderr or ""  # merged: all of it is in stdout
    return result


@dataclass
class Job:
    """One packaging job's directories under tmp_path."""

    tmp: Path
    model: Path
    script: Path
    output: Path
    work: Path

    @property
    def package(self) -> Path:
        return self.output / "model.tar.gz"

    def args(self, *extra: Any) -> list[Any]:
        return [
            "--model-dir",
            self.model,
            "--script-dir",
            self.script,
            "--output-dir",
            self.output,
            "--work-dir",
            self.work,
            *extra,
        ]

    def cli(self, *extra: Any, env: dict[str, str] | None = None) -> Any:
        return run_cli(*self.args(*extra), env=env)

    def main(self, environ: dict[str, str] | None = None, **job_args: Any) -> Path:
        import argparse

        return mims_package.main(
            {"model_input": str(self.model), "script_input": str(self.script)},
            {"package_output": str(self.output)},
            environ or {},
            argparse.Namespace(work_dir=str(self.work), **job_args),
        )

    def leftovers(self) -> list[str]:
        """Anything but the package in the output dir, and anything in the work dir."""
        found = [p.name for p in self.work.iterdir()]
        if self.output.exists():
            found += [p.name for p in self.output.iterdir() if p.name != "model.tar.gz"]
        return found


@pytest.fixture(scope="session")
def make_example() -> Any:
    """tests/fixtures/make_example.py, imported by the tests that train (xgboost takes a
    second and a half to import); they share one worker (xdist_group "xgboost")."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import make_example

    return make_example


@pytest.fixture
def job(tmp_path: Path) -> Job:
    """A job whose work dir and (empty) script dir exist; the model and output do not yet."""
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "script"
    script.mkdir()
    return Job(tmp_path, tmp_path / "model", script, tmp_path / "output", work)


@pytest.fixture(autouse=True)
def no_sagemaker_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process runs never touch /opt/ml: job detection and optional inputs are in tmp_path."""
    fake = tmp_path / "opt-ml"
    for name, path in (("SCRIPT", "script"), ("CALIBRATION", "calibration")):
        monkeypatch.setattr(mims_package, f"DEFAULT_{name}_PATH", str(fake / "input" / path))
    monkeypatch.setattr(mims_package, "DEFAULT_REPORT_PATH", str(fake / "report"))
    monkeypatch.setattr(
        mims_package, "JOB_CONFIG_PATH", str(fake / "config" / "processingjobconfig.json")
    )
    monkeypatch.setattr(mims_package, "FAILURE_MESSAGE_PATH", str(fake / "output" / "message"))
    return fake


@pytest.fixture
def staging_parents(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories the job creates its staging dirs in, in order."""
    seen: list[Path] = []
    real_mkdtemp = mims_package.tempfile.mkdtemp

    def recording_mkdtemp(**kwargs: Any) -> str:
        seen.append(kwargs["dir"])
        return real_mkdtemp(**kwargs)

    monkeypatch.setattr(mims_package.tempfile, "mkdtemp", recording_mkdtemp)
    return seen


def assert_refused(result: Any, job: Job, *needles: str) -> None:
    """A clean refusal: exit 1, one ERROR line naming the problem, no package, nothing left over."""
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not job.package.exists()
    assert job.leftovers() == []


SUPPORTED_PYTHONS = ("3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14")


def _version_of(python: str) -> str | None:
    """The X.Y of an interpreter that really runs (a pyenv shim without one does not)."""
    try:
        probe = subprocess.run(
            [python, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return None
    return probe.stdout.strip() if probe.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def find_pythons() -> dict[str, str]:
    """{"3.7": path, ...}: MIMS_PYTHONS (comma-separated) first, then pyenv, then python3.X
    (only for a version not found yet: a pyenv shim takes a tenth of a second to answer).
    Probed once per test process."""
    candidates = [p for p in os.environ.get("MIMS_PYTHONS", "").split(",") if p.strip()]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.*/bin/python3"))
    found: dict[str, str] = {}
    for candidate in candidates + [f"python3.{minor}" for minor in range(6, 16)]:
        if candidate.startswith("python") and candidate[len("python") :] in found:
            continue
        path = shutil.which(candidate.strip())
        version = _version_of(path) if path else None
        if version is not None and version not in found:
            found[version] = path  # type: ignore[assignment]
    return found


STARTS = {"extract": "INFO model archive: ", "compress": "INFO compress: level"}


def stop_during(
    job: Job, phase: str, signum: int, python: str = sys.executable, delay: float = 0.1
) -> tuple[int, str]:
    """Start the job, send signum delay s after it logs the line before that phase.

    Returns (exit code, log); a job that does not end within 60 s fails the test.
    """
    process = subprocess.Popen(
        [python, compiled_script(python), *map(str, job.args("--compression-level", "9"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    log = []
    for line in process.stdout:
        log.append(line)
        if STARTS[phase] in line:
            time.sleep(delay)
            process.send_signal(signum)
            break
    log.extend(process.stdout)
    return process.wait(timeout=60), "".join(log)


def unshare_problem() -> str | None:
    """Why this process cannot make a private mount namespace with a tmpfs in it, or None."""
    if shutil.which("unshare") is None:
        return "unshare is not on PATH (util-linux)"
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True
    )
    if probe.returncode != 0:
        return "unshare --mount with tmpfs is not permitted here (needs root)"
    return None


UNSHARE_PROBLEM = unshare_problem()
needs_unshare = pytest.mark.skipif(UNSHARE_PROBLEM is not None, reason=str(UNSHARE_PROBLEM))


def in_namespace(script: str, *args: Any, timeout: float = 120) -> Any:
    """Run a shell script in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
