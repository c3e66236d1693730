#!/usr/bin/env python3
"""Package a trained model and its inference code as a SageMaker ``model.tar.gz``.

This is the MIMS packaging step of a SageMaker pipeline (the MIMS Package
Script Contract). It reads

* the model from ``/opt/ml/processing/input/model``: a ``model.tar.gz``
  (gzip, bzip2, xz or plain tar) or loose files,
* the inference code from ``/opt/ml/processing/input/script``, and
* optionally, calibration artifacts from ``/opt/ml/processing/input/calibration``,

lays them out, model files at the root, the code under ``code/`` and the
calibration under ``calibration/`` (a model archive is extracted to a staging
directory; loose files are read in place), and writes
``/opt/ml/processing/output/model.tar.gz``, which SageMaker hosting extracts
to ``/opt/ml/model``.

What it promises:

* The model archive is untrusted. It is read by a strict, bounded tar reader
  of our own; a damaged header, a member that is absolute, climbs out with
  ``..``, writes through a symlink, links outside, or is a device or FIFO
  fails the job, and the whole input is checked, gzip CRC-32 included.
* The package holds only regular files and directories: a symlink inside an
  input is replaced by what it points to; any other symlink fails the job.
  VCS directories and caches are left out, and credentials fail the job.
* The package is content-addressed: sorted members, owner root, modes
  0644/0755, one mtime for all (SOURCE_DATE_EPOCH or 2000-01-01), headers
  packed by our own codec, a gzip header with neither name nor time. The same
  content gives the same bytes, on every Python from 3.7 up.
* The package goes to a temporary file that is fsync'd, read back and checked
  member by member, and only then renamed into place. A failure or a stop
  leaves no partial package, no staging directory, and an older package intact.
* The code is read as the serving toolkit will run it (never run here): code
  that cannot import or be called fails the job before anything is written;
  --smoke-test runs it on the written package before it is published.
* A failure ends in one ERROR line (control characters escaped), also written
  to /opt/ml/output/message inside a processing job, which SageMaker shows as
  the job's ExitMessage.

``package()`` does the work, ``main()`` is the pipeline entry point and
``cli()`` the command line; ``check_package()`` is ``--verify``. Standard
library only; Python 3.7 or later.

The file reads in pipeline order, one section each:

* Contract and constants: default paths, excludes, the bounds, the CONTRACT, Options.
* Errors, stops and logging: PackagingError, signals, escaping, disk-error messages,
  the base classes, findings and warnings (--strict), the run's facts (for the summary
  line), phases and progress.
* Finding the inputs: tree walks, excludes, the snapshot rule (stamps, directory
  descriptors), symlink resolution, the checked inputs.
* The tar format: headers packed by hand, and the strict reader of tar streams.
* Safe extraction: the compression formats and decoders, format checks, read-ahead, the
  checks on every member.
* Staging: the package's members with normalized metadata, read in place, real files
  and directories only; the copy budget for links; the planner that --dry-run uses.
* What goes into the package: the records verification compares; no credentials; the
  layout checks (one top folder, the entry point, swapped inputs, archives alone).
* Will it serve: the code check: code/ parsed with ast (never run) as the serving
  toolkit will use it: syntax, handlers, imports, requirements.txt, model files.
* The gzip writer: parallel deterministic deflate (the pigz scheme).
* Writing the tar stream: small files read ahead by a reader process, in frames; headers,
  contents and hashes, into the gzip writer.
* Verification: the package read back from disk as it is written, pieces inflated in
  parallel, every member compared with what was written.
* Will it serve: the smoke test (--smoke-test): the written package extracted, its
  requirements installed and its code run in a child process, before publishing.
* Checking any package: --verify (and --expect-report), with the same reader, writing
  nothing.
* What a run leaves: PackageResult, and the report (package.json, in-toto statements).
* The job: work and output dirs, staging, the code check and the screen in a run,
  --dry-run, package().
* Entry points: main() for pipelines (it prints the summary line), cli() for the
  command line.
"""

import sys

if sys.version_info < (3, 7):  # checked before any import or syntax that 3.6 lacks
    sys.exit(
        "ERROR mims_package.py needs Python 3.7 or later, "
        f"this is {sys.version_info[0]}.{sys.version_info[1]}"
    )

import argparse
import array
import ast
import bisect
import bz2
import codecs
import concurrent.futures
import contextlib
import contextvars
import errno
import fcntl
import fnmatch
import functools
import gc
import hashlib
import heapq
import importlib.util
import inspect
import json
import logging
import lzma
import math
import multiprocessing
import operator
import os
import posixpath
import queue
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import sysconfig
import tarfile
import tempfile
import threading
import time
import unicodedata
import warnings
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path, PosixPath
from types import FrameType
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Collection,
    Deque,
    Dict,
    FrozenSet,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    NoReturn,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
    overload,
)

# ---------------------------------------------------------------------------
# Contract and constants

__version__ = "1.2.0"
__all__ = [
    "CONTRACT",
    "Finding",
    "PackageCheck",
    "PackageResult",
    "PackagingError",
    "check_package",
    "cli",
    "main",
    "package",
]

DEFAULT_MODEL_PATH = "/opt/ml/processing/input/model"
DEFAULT_SCRIPT_PATH = "/opt/ml/processing/input/script"
DEFAULT_CALIBRATION_PATH = "/opt/ml/processing/input/calibration"
DEFAULT_OUTPUT_PATH = "/opt/ml/processing/output"
DEFAULT_REPORT_PATH = "/opt/ml/processing/report"  # written only where it exists (an output)
JOB_CONFIG_PATH = "/opt/ml/config/processingjobconfig.json"
FAILURE_MESSAGE_PATH = "/opt/ml/output/message"
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_CPU_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_CPU_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"

PACKAGE_NAME = "model.tar.gz"
MODEL_ARCHIVE_NAME = "model.tar.gz"
CODE_DIR = "code"
CALIBRATION_DIR = "calibration"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
DEFAULT_ENTRY_POINT = "inference.py"  # what SAGEMAKER_PROGRAM names, under code/
HOSTING_MODEL_DIR = "/opt/ml/model"  # where hosting extracts the package
# What tells code from a model, for the swapped-inputs check: code by its name, a model
# file by its extension or by binary content (a NUL byte in its first block).
CODE_SUFFIXES = (".py", ".pyi", ".sh", ".ipynb")
CODE_NAMES = ("requirements.txt", "setup.cfg", "pyproject.toml", "Dockerfile")
WEIGHT_SUFFIXES = (
    ".bst", ".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".safetensors", ".onnx",
    ".h5", ".hdf5", ".keras", ".pb", ".ckpt", ".model", ".npy", ".npz", ".cbm", ".gguf",
    ".tflite", ".params", ".xgb", ".lgb",
)  # fmt: skip
# Data in code/ (every file but these kinds) that warns: the containers copy code/ at start.
CODE_TEXT_SUFFIXES = (".py", ".txt", ".json", ".yaml", ".yml")
MAX_CODE_DATA = 10_000_000  # bytes of such files in all
MAX_CODE_DATA_FILE = 5_000_000  # bytes of one such file
BINARY_PROBE_SIZE = 8 << 10
MAX_BINARY_PROBES = 64  # code files read to tell whether they are model files
DEFAULT_COMPRESSION_LEVEL = 6
IO_BLOCK_SIZE = 1 << 20
PROGRESS_INTERVAL = 5.0
STOP_CHECK_INTERVAL = 0.1  # how long a blocked main thread waits before it looks for a stop
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# Bounds: what untrusted input may make the job hold or do, each refused beyond its
# bound before the work is done. The README's table of bounds lists them in this order.
MAX_EXTENDED_HEADER = 64 << 10  # a PAX extended header or GNU long name (CVE-2024-6232)
MAX_PAX_RECORDS = 1000  # records in one PAX header, parsed in one pass
MAX_EXTENDED_IN_A_ROW = 8  # real archives use one or two (a g, then an x; or an L and a K)
XZ_MEMORY_LIMIT = 128 << 20  # xz -9 needs 65 MiB, for its 64 MiB dictionary
DECODE_RATIO_AFTER = 1 << 30  # past this much decoded, a stream may decode to at most
MAX_DECODE_RATIO = 200  # this many bytes a compressed byte (zeros: gzip 1,000, bzip2 10^6)
MAX_PATH_BYTES = 4096  # a name or link target (PATH_MAX); the steps resolving one symlink
MAX_NAME_BYTES = 255  # one component of a name
MAX_SYMLINK_HOPS = 40  # links followed resolving one symlink, as the kernel's ELOOP
LINK_EXPANSION_LIMIT = 10  # bytes links may copy, per byte of the input's own files,
LINK_EXPANSION_ALLOWANCE = 100 << 20  # plus this
EXPANSION_LIMIT = 10  # entries directory links may add, per entry of the input,
EXPANSION_ALLOWANCE = 10_000  # plus this
MAX_MEMBERS = 1_000_000  # in one input or package: each costs memory while the job runs
LISTED_LEFT_OUT = 1000  # paths the excludes leave out that a run keeps to list (all are counted)
MAX_NAME_CHARACTERS = 32 << 20  # of all names and link targets of one input or package
MAX_CODE_CHECK_BYTES = 64 << 20  # of code/ files the code check reads, in all
MAX_FINDINGS_PER_CHECK = 100  # that --verify lists, of one level and check; the rest counted
MAX_REQUIREMENT_FILES = 16  # requirements.txt and the files its -r and -c lines name
MAX_MESSAGE_BYTES = 1024  # the message file, SageMaker's limit

# What never ships from any input: version control, caches, notebook checkpoints, OS litter.
DEFAULT_EXCLUDES = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    ".ipynb_checkpoints/",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".DS_Store",
    "._*",  # macOS AppleDouble files, beside every file copied from a Mac
    "Thumbs.db",
)
# Every member's mtime, unless --keep-mtimes: SOURCE_DATE_EPOCH, else 2000-01-01T00:00:00Z,
# so that the same content gives the same bytes however the inputs were copied.
PORTABLE_MTIME = 946_684_800

OPTIONAL_ENV_VARS = {
    "SOURCE_DATE_EPOCH": "Unix time given to every member as its mtime (default: "
    "2000-01-01T00:00:00Z); with --keep-mtimes, later mtimes are clamped to it.",
    "WORKING_DIRECTORY": "Directory in which the staging directory is created, made if "
    "missing (default: the output directory's parent, else the system temp dir); "
    "--work-dir overrides it.",
    "SAGEMAKER_PROGRAM": "The entry point under code/, as the serving container reads it "
    "(default: inference.py); --entry-point overrides it.",
}

# main()'s keys: each logical path, and the names its callers use for it (cursus among them).
INPUT_KEYS = {
    "model_input": ("model_input",),
    "script_input": ("script_input", "inference_scripts_input"),
    "calibration_model": ("calibration_model",),
}
OUTPUT_KEYS = {
    "package_output": ("package_output", "output_dir", "packaged_model"),
    "package_report": ("package_report",),
}

CONTRACT: Dict[str, Any] = {
    "entry_point": "mims_package.py",
    "expected_input_paths": {
        "model_input": DEFAULT_MODEL_PATH,
        "script_input": DEFAULT_SCRIPT_PATH,
        "calibration_model": DEFAULT_CALIBRATION_PATH,
    },
    "optional_input_paths": ["calibration_model"],
    "expected_output_paths": {
        "package_output": DEFAULT_OUTPUT_PATH,
        "package_report": DEFAULT_REPORT_PATH,
    },
    "optional_output_paths": ["package_report"],
    "path_key_aliases": {name: list(keys) for name, keys in {**INPUT_KEYS, **OUTPUT_KEYS}.items()},
    "required_env_vars": [],
    "optional_env_vars": OPTIONAL_ENV_VARS,
    "framework_requirements": {"python": ">=3.7", "dependencies": "standard library only"},
    "description": "Packages model artifacts (at the archive root), inference code (under "
    "code/) and calibration artifacts (under calibration/) into one deterministic, verified "
    "model.tar.gz for SageMaker hosting.",
}

DEFAULT_SMOKE_TIMEOUT = 600.0  # seconds: the serving toolkit's own start-up timeout


class Options(NamedTuple):
    """What shapes a run, besides its paths; frozen.

    package() takes each field as a keyword, the command line as the option of
    the same name (--no-adaptive for adaptive, --exclude and
    --no-default-excludes for exclude_patterns), main() as a job_args
    attribute of the option's name; the report records them all.
    """

    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    threads: Optional[int] = None  # None: the CPUs this process may use
    source_date_epoch: Optional[int] = None
    exclude_patterns: Optional[Tuple[str, ...]] = None  # None: DEFAULT_EXCLUDES
    allow_secrets: bool = False
    keep_mtimes: bool = False
    adaptive: bool = True
    entry_point: Optional[str] = None  # None: DEFAULT_ENTRY_POINT, whose absence only warns
    strip_components: int = 0
    dry_run: bool = False
    strict: bool = False  # every warning fails the run
    serving_python: Optional[str] = None  # "X.Y": the code is also parsed with its grammar
    smoke_test: bool = False
    sample: Optional[str] = None  # a request body for the smoke test
    content_type: Optional[str] = None  # the sample's; None: guessed from its extension
    accept: Optional[str] = None
    smoke_python: Optional[str] = None  # None: this interpreter
    smoke_timeout: float = DEFAULT_SMOKE_TIMEOUT


log = logging.getLogger("mims_package")


# ---------------------------------------------------------------------------
# Errors, stops and logging


class PackagingError(Exception):
    """Packaging failed for a reason the user can act on; the text says what and what to do."""


class _Stopped(SystemExit):
    """Raised in the main thread after a stop signal, so that every cleanup runs.

    A SystemExit whose code is 128 + the signal's number: a caller that does
    not catch it exits as a shell reports a signal, with no traceback.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


class _StopRequest:
    """The stop signal received, if any: the handler records it, safe points act on it.

    The handler does not raise _Stopped itself: an exception raised at any
    bytecode could land between a lock's acquire and the with block that
    releases it, and leave a thread waiting on that lock forever. Safe points
    come at least once per file, per archive member and per 1 MiB block, and
    every blocking wait of the main thread wakes up to look, so a stop is
    answered within a fraction of a second in every phase.
    """

    signum: Optional[int] = None
    watching = False  # whether a _stop_on_signals block has the handlers in place


_STOP = _StopRequest()
# What stops a run: a stop from SageMaker or docker (SIGTERM), Ctrl-C, a closed terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _check_stop() -> None:
    """A safe point: raise _Stopped if a stop signal has arrived."""
    if _STOP.signum is not None:
        raise _Stopped(_STOP.signum)


def _request_stop(signum: int, frame: Optional[FrameType]) -> None:
    """The stop signals' handler: record the first signal, ignore any that follow."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _STOP.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP stop the job at its next safe point, within the block only.

    The handlers that were in place come back after it. Only the main thread
    takes signals: elsewhere, or within a block that already watches, this
    does nothing. cli(), main() and package() all run under it.
    """
    if _STOP.watching or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _STOP.signum, _STOP.watching = None, True
    for sig in previous:
        signal.signal(sig, _request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.signum, _STOP.watching = None, False


# Control and format characters from the inputs (names, link targets) must not reach a
# log line or the message file as they are: a name with a newline could forge a log line
# of its own, and one with a bidi override (U+202E) or a zero-width space show a name
# other than its own. Every character of the Unicode categories Cc, Cf, Cs, Zl and Zp is
# written as an escape.
_ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(text: str) -> str:
    """text with every control, format or line-separator character written as an escape."""
    if text.isprintable():  # none of them (isprintable is False for each): the common case
        return text
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char
    code = ord(char)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


class _EscapingFilter(logging.Filter):
    """Escapes control characters in every record of the module's logger, whatever the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _escape(record.getMessage()), ()
        return True


log.addFilter(_EscapingFilter())


def _human(n: float) -> str:
    """Format a byte count for logs: 12.3 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _free_space(path: Path) -> str:
    """Free space on the filesystem holding path (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return _human(shutil.disk_usage(candidate).free)
    return "unknown"


def _explain(exc: OSError, doing: str, where: Path) -> PackagingError:
    """Turn an OSError into a message that says what failed, where, and what to do."""
    path = Path(exc.filename) if exc.filename else where
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PackagingError(
            f"no space left on device while {doing}: {path} ({_free_space(path)} free there); "
            "free up space or point --work-dir / --output-dir at a larger volume"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PackagingError(
            f"permission denied while {doing}: {path}; "
            f"make it accessible to this user (uid {os.getuid()}) or choose another directory"
        )
    if exc.errno == errno.EROFS:
        return PackagingError(
            f"read-only file system while {doing}: {path}; choose a writable directory"
        )
    return PackagingError(f"failed while {doing}: {path}: {exc.strerror or exc}")


_Self = TypeVar("_Self", bound="_ContextManager")


class _ContextManager:
    """A context manager that enters as itself; subclasses define __exit__ to clean up.

    (contextlib.AbstractContextManager cannot be subscripted before Python 3.9.)
    """

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        raise NotImplementedError


if TYPE_CHECKING:  # typing.Protocol is Python 3.8+; only the type checker needs it
    from typing import Protocol

    class _Readable(Protocol):
        def read(self, size: int) -> bytes: ...


@contextlib.contextmanager
def _os_errors(doing: str, where: Path) -> Iterator[None]:
    """Re-raise any OSError in the block as a PackagingError that names the path."""
    try:
        yield
    except OSError as exc:
        raise _explain(exc, doing, where) from exc


class Finding(NamedTuple):
    """One verdict of a check: level PASS, WARN or FAIL, the check, the member if any, why."""

    level: str
    check: str
    member: str
    message: str

    def as_warning(self) -> Dict[str, str]:
        """The finding as the summary line, the report and --verify --json list a warning."""
        return {"check": self.check, "path": self.member, "message": self.message}


def _warn(check: str, member: str, message: str) -> None:
    """Log a warning, and record it for the run's summary line, report and --strict."""
    log.warning("%s", message)
    facts = _FACTS.get()
    if facts is not None:
        facts.warnings.append(Finding("WARN", check, member, message))


def _fail_if_strict(strict: bool, before: str) -> None:
    """--strict: a run that warned fails before it goes on to what `before` names."""
    facts = _FACTS.get()
    if not strict or facts is None or not facts.warnings:
        return
    count = len(facts.warnings)
    raise PackagingError(
        f"--strict: {count} warning{'s' if count > 1 else ''} before {before}, the first: "
        f"{facts.warnings[0].message}; fix {'them' if count > 1 else 'it'}, or run without "
        "--strict"
    )


class _Phase:
    """One phase of the job; the block sets `amount`, what the phase's line says it did."""

    def __init__(self) -> None:
        self.amount = ""


# The facts of one run, for the JSON summary line that ends it (see main()). A context
# variable, so that runs in two threads each keep their own; a run outside main() (a
# direct package() call) has none, and nothing records them.


class _Facts:
    """What the summary line says of a run: set as the run goes, phases and free space too."""

    def __init__(self) -> None:
        self.start, self.cpu = time.monotonic(), time.process_time()
        self.start_wall = time.time()
        self.values: Dict[str, Any] = {}
        self.seconds: Dict[str, float] = {}
        self.cpu_seconds: Dict[str, float] = {}
        self.volumes: Dict[str, Path] = {}
        self.free: Dict[str, Dict[str, int]] = {}
        self.warnings: List[Finding] = []

    def watch(self, name: str, path: Path) -> None:
        """Report the free bytes of the volume holding path, now and at their lowest."""
        self.volumes[name] = path
        self.sample()

    def sample(self) -> None:
        for name, path in self.volumes.items():
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(path).free
                seen = self.free.setdefault(name, {"before": free, "lowest": free})
                seen["lowest"] = min(seen["lowest"], free)

    def summary(self, error: Optional[str]) -> Dict[str, Any]:
        """The summary line's object: its keys are stable (the README lists them)."""
        self.sample()
        self.seconds["total"] = round(time.monotonic() - self.start, 3)
        self.cpu_seconds["total"] = round(time.process_time() - self.cpu, 3)
        return {
            "event": "mims_package",
            "status": "error" if error is not None else "ok",
            "error": error,
            "version": __version__,
            "python": sys.version.split()[0],
            **dict.fromkeys(SUMMARY_KEYS),
            "smoke_test": {"status": "skipped"},
            **self.values,
            "warnings": [finding.as_warning() for finding in self.warnings],
            "warning_count": len(self.warnings),
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "free_bytes": self.free,
        }


# What a run may not reach (a failure before it): null in the summary.
SUMMARY_KEYS = (
    "sha256",
    "package_bytes",
    "content_bytes",
    "ratio",
    "files",
    "directories",
    "excluded",
    "threads",
    "level",
    "adaptive",
)
_FACTS: "contextvars.ContextVar[Optional[_Facts]]" = contextvars.ContextVar("facts", default=None)


def _watch_volumes(**paths: Path) -> None:
    """Report the free bytes of the volumes holding these paths, if this run has a summary."""
    facts = _FACTS.get()
    if facts is not None:
        for name, path in paths.items():
            facts.watch(name, path)


def _record(**values: Any) -> None:
    """Note values for the summary line, if this run has one."""
    facts = _FACTS.get()
    if facts is not None:
        facts.values.update(values)


@contextlib.contextmanager
def _phase(name: str) -> Iterator[_Phase]:
    """Log one line when the phase is done: what it did, how long it took, the CPU it used.

    The CPU-seconds are the whole process's, on every thread: during compress
    they include the read-back, which runs beside it.
    """
    start, cpu = time.monotonic(), time.process_time()
    phase = _Phase()
    yield phase
    seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu
    log.info("%s: %s in %.2f s (%.2f CPU-s)", name, phase.amount, seconds, cpu_seconds)
    facts = _FACTS.get()
    if facts is not None:
        facts.seconds[name] = round(seconds, 3)
        facts.cpu_seconds[name] = round(cpu_seconds, 3)
        facts.sample()


class _Progress:
    """Logs bytes done of total, percent, MB/s and ETA, at most every PROGRESS_INTERVAL s.

    Done and total count the same bytes: the archive's for extraction, the
    files' (not the tar stream's) for compression and verification.
    """

    def __init__(self, phase: str, total: int) -> None:
        self.phase = phase
        self.total = total
        self.done = 0
        self.start = self.last = time.monotonic()

    def advance(self, count: int) -> None:
        """count more bytes done."""
        self.done += count
        self.update(self.done)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        percent = 100.0 * done / self.total if self.total else 100.0
        log.info(
            "%s: %s of %s (%.0f%%), %.1f MB/s, ETA %.0f s",
            self.phase,
            _human(done),
            _human(self.total),
            percent,
            rate / 1e6,
            eta,
        )


# ---------------------------------------------------------------------------
# Finding the inputs


def _walk_tree(
    root: Union[str, Path], stoppable: bool = True
) -> Iterator[Tuple[str, os.stat_result]]:
    """Every entry below root (its path, as text) with its lstat, parents before children.

    Links are not followed. Iterative, unlike os.walk and shutil.rmtree before
    Python 3.12/3.13: an archive can nest directories deeper than Python's
    recursion limit. A stoppable walk is a safe point at every entry (cleanup
    walks are not). Paths stay strings: this runs once per file.
    """
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if stoppable:
                    _check_stop()
                info = entry.stat(follow_symlinks=False)
                yield entry.path, info
                if stat.S_ISDIR(info.st_mode):
                    stack.append(entry.path)


def _has_files(directory: Path) -> bool:
    """True if anything but directories lies anywhere under directory."""
    return any(not stat.S_ISDIR(info.st_mode) for _, info in _walk_tree(directory))


def _remove_tree(root: Path) -> None:
    """Delete root and everything below it, children before parents, without recursion."""
    directories = [os.fspath(root)]
    for path, info in _walk_tree(root, stoppable=False):
        if stat.S_ISDIR(info.st_mode):
            directories.append(path)
        else:
            os.unlink(path)
    for directory in reversed(directories):
        os.rmdir(directory)


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _one_regex(globs: Iterator[str]) -> "re.Pattern[str]":
    """One compiled regex that matches what any of the globs matches (nothing, if none)."""
    alternatives = [f"(?:{fnmatch.translate(glob)})" for glob in globs]
    return re.compile("|".join(alternatives) or "(?!)")


class _ExcludeRule(NamedTuple):
    """One --exclude pattern, taken apart: the glob, and what it may match."""

    glob: str  # the pattern without its leading and trailing "/"
    dir_only: bool  # a trailing "/": directories (and symlinks) only
    anchored: bool  # a "/" inside: the whole relative path, not a name at any depth
    pattern: str  # as given


class Excludes:
    """Glob patterns for input paths that never ship; it logs what they leave out.

    A pattern is matched against a path relative to its input's root. One
    without a "/" matches a name at any depth ("*.pyc", "__pycache__/"); one
    with a "/" matches the whole relative path ("data/raw/"). A trailing "/"
    matches directories only (and symlinks: a ".git" symlink is left out as a
    ".git" directory is), and leaving a directory out leaves out all in it.
    The decision depends on names alone, so packages stay deterministic.
    """

    def __init__(self, patterns: Collection[str]) -> None:
        self.patterns = tuple(patterns)
        self._rules: List[_ExcludeRule] = []
        for pattern in patterns:
            body = pattern.strip("/")
            if not body:
                raise PackagingError(
                    f"--exclude {pattern!r} names nothing; give a glob such as '*.log' or 'data/'"
                )
            anchored = "/" in pattern.rstrip("/")  # "data/raw/" or "/build/"
            self._rules.append(_ExcludeRule(body, pattern.endswith("/"), anchored, pattern))
        self.anchored = any(rule.anchored for rule in self._rules)
        # One regex per kind of rule that has any, so that a path that matches nothing
        # (nearly every path) costs a regex match or two, not one fnmatch per pattern.
        self._screens: Dict[bool, List[Tuple[re.Pattern[str], bool]]] = {False: [], True: []}
        for dir_only in (False, True):
            for anchored in (False, True):
                globs = [
                    rule.glob
                    for rule in self._rules
                    if (rule.dir_only, rule.anchored) == (dir_only, anchored)
                ]
                if globs:
                    for is_dir in (True,) if dir_only else (False, True):
                        self._screens[is_dir].append((_one_regex(iter(globs)), anchored))
        self.left_out: List[str] = []  # the first LISTED_LEFT_OUT, for --dry-run to list
        self.count = 0

    def pattern_for(self, relative: str, is_dir: bool) -> Optional[str]:
        """The pattern that leaves this path out (relative to its input's root), if any."""
        name = relative.rsplit("/", 1)[-1]
        for regex, anchored in self._screens[is_dir]:
            if regex.match(relative if anchored else name):
                break
        else:
            return None
        for rule in self._rules:
            if (is_dir or not rule.dir_only) and fnmatch.fnmatchcase(
                relative if rule.anchored else name, rule.glob
            ):
                return rule.pattern
        return None

    def leaves_out(self, relative: str, is_dir: bool, where: str) -> bool:
        """True, logged, if a pattern leaves the path out; where says which input it is in."""
        pattern = self.pattern_for(relative, is_dir)
        if pattern is None:
            return False
        shown = f"{where}{relative}{'/' if is_dir else ''}"
        log.info("excluded %s (%s)", shown, pattern)
        self.count += 1
        if len(self.left_out) < LISTED_LEFT_OUT:
            self.left_out.append(f"{shown} ({pattern})")
        return True

    def summarize(self) -> None:
        """One line with the count and the first few, if anything was left out.

        At INFO: leaving out caches and version control is what a developer's
        checkout expects, and what the user's own patterns asked for.
        """
        if self.count:
            first = ", ".join(self.left_out[:5]) + (", ..." if self.count > 5 else "")
            log.info(
                "%d paths left out of the package by the excludes: %s (--exclude adds "
                "patterns, --no-default-excludes keeps these)",
                self.count,
                first,
            )


class _NameBudget:
    """What one input (or package) names, bounded: members, and the characters of their
    names and link targets, which the job holds while it works. Refused past either bound."""

    def __init__(self, where: Union[str, Path]) -> None:
        self.where = where
        self.members = 0
        self.characters = 0

    def add(self, name: str, link: str = "") -> None:
        self.members += 1
        self.characters += len(name) + len(link)
        if self.members > MAX_MEMBERS or self.characters > MAX_NAME_CHARACTERS:
            what = (
                f"more than {MAX_MEMBERS:,} members"
                if self.members > MAX_MEMBERS
                else f"names and link targets of more than {MAX_NAME_CHARACTERS:,} characters"
            )
            raise PackagingError(
                f"{self.where} holds {what} in all, the bound on what one package may name; "
                "package fewer files, or pack many small ones into one"
            )


# Loose inputs are read as a snapshot. Each file's identity and version (device, inode,
# size, mtime and ctime) are taken when it is planned, and must be the same when it is
# opened and after it is read, as GNU tar checks "file changed as we read it". Paths are
# opened one component at a time, each relative to its parent's descriptor and never
# through a symlink: a directory swapped for a symlink during the job is refused, where
# a path opened whole would follow it (O_NOFOLLOW guards only the last component).

_MASK_64 = (1 << 64) - 1
_DIRECTORY_FLAGS = (
    getattr(os, "O_PATH", os.O_RDONLY)  # O_PATH: a directory one may search but not list
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_LISTING_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# A file is opened without following a symlink, and without blocking on a FIFO: whatever
# replaced it since it was planned is refused, not read.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
MAX_OPEN_DIRECTORIES = 32  # of a _DirectoryChain: the deepest of the last path opened


def _stamp(info: os.stat_result) -> int:
    """A file's identity and version as one number: device, inode, size, mtime, ctime.

    Each field takes 64 bits of it, so that two stamps are equal only if every
    field is; one int a planned file, rather than five. Only the times can be
    negative (before 1970): they are masked to 64 bits, the rest fit as they are.
    """
    return (
        info.st_dev << 256
        | info.st_ino << 192
        | info.st_size << 128
        | (info.st_mtime_ns & _MASK_64) << 64
        | info.st_ctime_ns & _MASK_64
    )


def _changed(path: str, when: str) -> PackagingError:
    return PackagingError(
        f"{path} changed {when}; make sure nothing writes to the inputs during the job"
    )


def _open_unfollowed(path: str, stamp: Optional[int], dir_fd: Optional[int] = None) -> int:
    """Open path for reading (its last component relative to dir_fd, if given), not
    following a symlink there and not blocking on a FIFO; what it is, is not checked.

    stamp, if given, says the file was planned: one gone or a symlink now is refused.
    """
    try:
        return os.open(
            path if dir_fd is None else path.rpartition("/")[2], _OPEN_FLAGS, dir_fd=dir_fd
        )
    except OSError as exc:
        if stamp is None:  # not planned: the caller explains the error as it is
            raise
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise _changed(path, "(it was removed) while being packaged") from None
        if exc.errno != errno.ELOOP:
            raise
        raise _changed(path, "(it was replaced by a symlink) while being packaged") from None


def _check_regular(info: os.stat_result, path: str, stamp: Optional[int]) -> None:
    """A file opened must be a regular file; a planned one, as planned (stamp)."""
    if not stat.S_ISREG(info.st_mode):
        if stamp is not None:
            raise _changed(path, "(it is no longer a regular file) since it was planned")
        raise PackagingError(f"{path} is not a regular file; remove it from the input")
    if stamp is not None and _stamp(info) != stamp:
        raise _changed(path, "since it was planned")


def _open_regular(path: str, stamp: Optional[int], dir_fd: Optional[int] = None) -> int:
    """Open the regular file at path for reading (its last component relative to dir_fd, if given).

    stamp, if given, is the file's stamp when it was planned; the file opened
    must still have it. A symlink, FIFO or device in its place is refused.
    """
    fd = _open_unfollowed(path, stamp, dir_fd)
    try:
        _check_regular(os.fstat(fd), path, stamp)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_unchanged(fd: int, path: str, stamp: int) -> None:
    """After a file was read: it must be as it was planned (size, mtime, ctime and all)."""
    if _stamp(os.fstat(fd)) != stamp:
        raise _changed(path, "while being read")


class _DirectoryChain(_ContextManager):
    """Opens directories by their real absolute path, one component at a time, never a symlink.

    It keeps the descriptors of the last directory opened and its parents (up
    to MAX_OPEN_DIRECTORIES), so that the next directory, usually a sibling or
    a child, costs an open or two.
    """

    def __init__(self) -> None:
        self._chain: List[Tuple[str, int]] = []  # (path, descriptor), from the top down

    def open(self, path: str) -> int:
        """A descriptor of the directory at path, owned by the chain (valid until the next call)."""
        if self._chain and self._chain[-1][0] == path:  # the last one again: most files
            return self._chain[-1][1]
        while self._chain and not (
            path == self._chain[-1][0] or path.startswith(self._chain[-1][0] + "/")
        ):
            os.close(self._chain.pop()[1])
        if not self._chain:
            self._chain.append(("", os.open("/", _DIRECTORY_FLAGS)))
        base, fd = self._chain[-1]
        for piece in path[len(base) :].split("/"):
            if not piece:
                continue
            try:
                fd = os.open(piece, _DIRECTORY_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    raise
                raise _changed(path, "(a directory on its path was replaced)") from None
            base += "/" + piece
            self._chain.append((base, fd))
            if len(self._chain) > MAX_OPEN_DIRECTORIES:
                os.close(self._chain.pop(0)[1])
        return fd

    def listing(self, path: str, key: Tuple[int, int]) -> List[Tuple[str, os.stat_result]]:
        """The entries of the directory at path, with their lstat, sorted by name.

        key is the directory's (device, inode) when it was found; the one
        listed must be that directory still.
        """
        fd = os.open(".", _LISTING_FLAGS, dir_fd=self.open(path))
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != key:
                raise _changed(path, "while being read")
            with os.scandir(fd) as entries:
                found = [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]
        finally:
            os.close(fd)
        found.sort(key=_FIRST)
        return found

    def open_file(self, path: str, stamp: int) -> int:
        """Open the planned regular file at path through the chain, as _open_regular does."""
        return _open_regular(path, stamp, self.open(path.rpartition("/")[0]))

    def read_whole(self, member: "Member") -> bytes:
        """A planned file's bytes, read at once through the chain, with one fstat.

        The fstat comes after the read, and must show the regular file planned,
        unchanged: a write before or during the read would have changed its
        ctime, which no one can set back. (Only a FIFO or device in its place is
        read before it is refused: opened without blocking, for at most the
        planned size and a byte.)
        """
        path = member.path
        fd = _open_unfollowed(path, member.stamp, self.open(path.rpartition("/")[0]))
        try:
            data, ended, failed = b"", False, None
            try:
                while not ended:
                    block, ended = _read_block(fd, member, len(data))
                    data += block
            except OSError as exc:  # a FIFO's or device's, say: the fstat tells which
                failed = exc
            _check_regular(os.fstat(fd), path, member.stamp)
        finally:
            os.close(fd)
        if failed is not None:
            raise failed
        return data

    def __exit__(self, *exc_info: object) -> None:
        while self._chain:
            os.close(self._chain.pop()[1])


_FIRST = operator.itemgetter(0)


def _check_name(name: str, path: str) -> None:
    """Refuse a loose input whose name is not valid UTF-8 (tar PAX names must be)."""
    try:
        name.encode("utf-8")  # undecodable bytes are lone surrogates here
    except UnicodeEncodeError:
        raise PackagingError(
            f"file name {os.fsencode(path)!r} is not valid UTF-8; rename it"
        ) from None


def _resolve_inside(link: Path, root: Path) -> Path:
    """Follow the symlink `link` to a real path inside `root`, or fail naming it.

    Each component is looked at with lstat, so nothing is followed that was not
    checked; the walk stops at MAX_SYMLINK_HOPS, like the kernel's ELOOP.
    """
    pending = list(link.relative_to(root).parts)
    resolved: List[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                raise PackagingError(
                    f"symlink {link} points outside {root}; only links inside an input are allowed"
                )
            resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise PackagingError(
                f"symlink {link} dangles (nothing at {candidate}); fix or remove it"
            ) from None
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise PackagingError(
                f"symlink {link} loops or chains through more than {MAX_SYMLINK_HOPS} links; fix it"
            )
        target = os.readlink(candidate)
        if os.path.isabs(target):
            real = Path(target)
            if not _is_inside(real, root):
                raise PackagingError(
                    f"symlink {link} points outside {root} (to {target}); "
                    "only links inside an input are allowed"
                )
            resolved = []
            target = str(real.relative_to(root))
        pending[:0] = target.split("/")
    return root.joinpath(*resolved)


def find_model_archive(model: Path) -> Optional[Path]:
    """The model archive: model itself if it is a file, model/model.tar.gz if there, else None.

    Anything beside model.tar.gz is ignored, with a warning naming it.
    """
    if model.is_file():
        return model.resolve()  # opened without following a symlink: the file it names
    if not model.is_dir():
        what = "does not exist" if not os.path.lexists(model) else "is not a directory or a file"
        raise PackagingError(
            f"model input {model} {what}; pass --model-dir or map the model to "
            f"{DEFAULT_MODEL_PATH} (a model.tar.gz or the model files)"
        )
    root = model.resolve()
    candidate = root / MODEL_ARCHIVE_NAME
    if not os.path.lexists(candidate):
        return None
    archive = _resolve_inside(candidate, root) if candidate.is_symlink() else candidate
    if not archive.is_file():
        raise PackagingError(f"{candidate} is not a regular file; it must be the model archive")
    for other in sorted(model.iterdir()):
        if other.name != MODEL_ARCHIVE_NAME:
            _warn("inputs", other.name, f"ignoring {other}: the model is {candidate}")
    return archive


def _optional_dir(path: Path, default: str, what: str, option: str) -> Optional[Path]:
    """An input directory that may be left out: None where it is absent or holds no file.

    A path other than the contract's default was chosen on purpose, so it must exist.
    """
    if not path.exists():
        if os.path.abspath(path) != default:
            raise PackagingError(
                f"{what} {path} does not exist; fix {option}, or leave it out if there is none"
            )
        return None
    if not path.is_dir():
        raise PackagingError(f"{what} {path} is not a directory; pass a directory to {option}")
    with _os_errors(f"reading the {what}", path):
        return path if _has_files(path) else None


class Inputs:
    """The checked inputs: the model (loose files or an archive), the code, the calibration."""

    def __init__(self, model: Path, script: Path, calibration: Path) -> None:
        self.model = model
        self.given_script = script
        self.given_calibration = calibration
        self.archive = find_model_archive(model)
        # The archive as it was checked: extraction reads exactly this file, unchanged.
        self.archive_stamp = check_is_tar(self.archive) if self.archive is not None else 0
        self.archive_sha256: Optional[Any] = None  # a hash to update as it is read, if wanted
        self.planned_bytes: Dict[str, bytes] = {}  # --dry-run: the archive's code, to screen
        self.script = _optional_dir(script, DEFAULT_SCRIPT_PATH, "script input", "--script-dir")
        self.calibration = _optional_dir(
            calibration, DEFAULT_CALIBRATION_PATH, "calibration input", "--calibration-dir"
        )
        self._check_not_swapped()

    def paths(self) -> Tuple[Path, ...]:
        """Every input that is there: nothing may be written inside them."""
        found = (self.model, self.script, self.calibration)
        return tuple(path for path in found if path is not None)

    def _check_not_swapped(self) -> None:
        """Refuse the likely mix-ups: the model where the code goes, one dir for two inputs."""
        swapped = (
            "are --model-dir and --script-dir swapped? The model (model.tar.gz or its files) "
            "goes in --model-dir, the inference code in --script-dir"
        )
        model = self.model.resolve()
        others = {model}
        if self.script is not None:
            if os.path.lexists(self.script / MODEL_ARCHIVE_NAME):
                raise PackagingError(
                    f"the script input {self.script} holds {MODEL_ARCHIVE_NAME}: {swapped}"
                )
            if self.script.resolve() == model:
                raise PackagingError(
                    f"the model input and the script input are the same directory, "
                    f"{self.model}: {swapped}"
                )
            others.add(self.script.resolve())
        if self.calibration is not None and self.calibration.resolve() in others:
            raise PackagingError(
                f"the calibration input {self.calibration} is also the model or script input; "
                "give --calibration-dir a directory of its own"
            )


# ---------------------------------------------------------------------------
# The tar format: headers packed by hand, and a strict reader of tar streams
#
# tarfile's own headers change between Python versions (3.8 still writes
# device numbers 0 for a regular file, 3.9 leaves the fields empty), so the
# package's headers are packed here and depend on nothing but the member: the
# bytes are the same on 3.7 and 3.13.
# The layout is the one tarfile (3.9 and later) writes in PAX format:
#
# * a POSIX ustar block: the name in ASCII (other characters become "?", cut
#   at 100 bytes), mode, uid and gid 0, size and mtime in octal, empty owner
#   names and device numbers, and the checksum;
# * before it, only where ustar cannot hold the truth, a PAX extended header
#   ("././@PaxHeader", type "x") whose records give the UTF-8 "path" (a name
#   not ASCII, or over 100 bytes) and the "size" (over 8 GiB - 1).
#
# Directory names end in "/". Readers take the PAX records over the ustar fields.

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)  # two of them end an archive
RECORD_SIZE = 20 * BLOCK_SIZE
USTAR_NAME_BYTES = 100
USTAR_MAX_NUMBER = 8**11 - 1  # what 11 octal digits hold: sizes and mtimes
REGULAR_TYPE = b"0"
DIRECTORY_TYPE = b"5"
PAX_HEADER_TYPE = b"x"


def _byte_sum(data: bytes) -> int:
    """The sum of data's bytes (a header checksum), in C rather than a Python loop.

    The low half of an Adler-32 is 1 + the sum of the bytes modulo 65521,
    which is the exact sum for 256 bytes or fewer (256 x 255 < 65520).
    """
    total = (zlib.adler32(data[:256]) & 0xFFFF) - 1
    return total + _byte_sum(data[256:]) if len(data) > 256 else total


_ROOT_IDS = b"0000000\0" * 2  # uid, gid
_USTAR_TAIL = bytes(100) + b"ustar\x0000" + bytes(247)  # after the type: link name, magic...
_USTAR_TAIL_SUM = sum(_USTAR_TAIL)
_BLANK_CHECKSUM_SUM = 8 * ord(" ")  # while it is summed, the checksum field counts as spaces


def _ustar_block(name: bytes, kind: bytes, size: int, mode: int, mtime: int) -> bytes:
    """One 512-byte ustar header block, checksum included (uid and gid 0, no owner names)."""
    head = b"%s%07o\0%s%011o\0%011o\0" % (name.ljust(100, b"\0"), mode, _ROOT_IDS, size, mtime)
    checksum = _byte_sum(head) + _BLANK_CHECKSUM_SUM + kind[0] + _USTAR_TAIL_SUM
    return b"%s%06o\0 %s%s" % (head, checksum, kind, _USTAR_TAIL)


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """One PAX record, b"<length> <keyword>=<value>\\n", whose length counts its own digits."""
    body = b" " + keyword + b"=" + value + b"\n"
    length = len(body)
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return b"%d" % length + body


_PADDINGS = tuple(bytes(count) for count in range(BLOCK_SIZE))  # made once, not per file


def _padding(size: int) -> bytes:
    """The NUL bytes that fill size up to a whole block."""
    return _PADDINGS[-size % BLOCK_SIZE]


def member_header(name: str, is_dir: bool, size: int, mode: int, mtime: int) -> bytes:
    """The header blocks of one package member: ustar, after a PAX header where needed."""
    path = name + "/" if is_dir else name
    kind = DIRECTORY_TYPE if is_dir else REGULAR_TYPE
    ascii_fits = path.isascii() and len(path) <= USTAR_NAME_BYTES
    if ascii_fits and size <= USTAR_MAX_NUMBER:  # the common case, and the quick one
        return _ustar_block(path.encode("ascii"), kind, size, mode, mtime)
    records = b""
    if not ascii_fits:
        records += _pax_record(b"path", path.encode("utf-8"))
    if size > USTAR_MAX_NUMBER:
        records += _pax_record(b"size", b"%d" % size)
        size = 0
    ustar_name = path.encode("ascii", "replace")[:USTAR_NAME_BYTES]
    header = _ustar_block(ustar_name, kind, size, mode, mtime)
    pax = _ustar_block(b"././@PaxHeader", PAX_HEADER_TYPE, len(records), 0, 0)
    return pax + records + _padding(len(records)) + header


# Reading is strict, and bounded before any value is parsed: tarfile takes a
# damaged header for the end of the archive, crashes on odd PAX values, and
# before late-2024 patches spends minutes in a regex on a long PAX header
# (CVE-2024-6232). This reader reads ustar and old-GNU headers, PAX extended
# headers (x and Solaris X; g, whose records are checked and not applied, and
# refused where GNU tar would apply them to later members) and GNU long
# names (L, K). Every header's checksum must hold, every number must parse,
# an extended header may hold at most 64 KiB in at most 1,000 records (parsed
# in one pass), at most 8 extended headers may come in a row, a name may hold
# at most 4096 bytes, and the archive ends only at its end marker (two zero
# blocks) with nothing but zeros after it.
#
# Names are read as GNU tar and bsdtar read them: the ustar prefix applies to
# every header with the "ustar\0" magic, whatever its version; of two
# extended headers of a kind in a row the last wins; a regular file whose
# name ends in "/" is an old-style directory.

POSIX_MAGIC = b"ustar\0"  # the version after it does not matter to tar or bsdtar
PAX_GLOBAL_TYPE = b"g"
SOLARIS_PAX_TYPE = b"X"
GNU_LONG_NAME, GNU_LONG_LINK, GNU_VOLUME_LABEL, GNU_DUMPDIR = b"L", b"K", b"V", b"D"
LINK_TYPES = {"symlink": b"2", "hardlink": b"1"}  # for tarfile's data filter
MEMBER_KINDS = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",  # contiguous file: a regular file everywhere but on some old Unixes
    b"1": "hardlink",
    b"2": "symlink",
    b"5": "dir",
    GNU_DUMPDIR: "dir",  # an incremental dump's directory; its data lists names, and is skipped
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
}
REFUSED_TYPES = {
    b"S": "a GNU sparse file",
    b"M": "a multi-volume continuation",
    b"N": "an old GNU long-name record",
}
# The headers that describe the member after them, not a member of their own.
EXTENDED_TYPES = (PAX_HEADER_TYPE, SOLARIS_PAX_TYPE, PAX_GLOBAL_TYPE, GNU_LONG_NAME, GNU_LONG_LINK)
NUMERIC_PAX_KEYWORDS = (b"size", b"uid", b"gid")
# What a PAX global header may not set: GNU tar applies it to every later member (the
# name, the link, the size and so the framing, the type), bsdtar ignores it, so the two
# would extract different files. Other global records (git archive's comment) are harmless.
GLOBAL_REFUSED = (b"path", b"linkpath", b"size", b"hdrcharset", b"GNU.dumpdir")
TIME_PAX_KEYWORDS = (b"mtime", b"atime", b"ctime")


class ArchiveError(Exception):
    """The tar stream is damaged or malformed; the text says where and how."""


class UnsupportedArchive(ArchiveError):
    """The tar stream is sound but holds what is refused (sparse files, names not UTF-8...)."""


class TarMember:
    """One member as its headers describe it; kind is "file", "dir", "symlink", "hardlink"..."""

    __slots__ = ("kind", "linkname", "mode", "mtime", "name", "size", "typeflag")

    def __init__(
        self, name: str, kind: str, typeflag: bytes, size: int, mode: int, mtime: float, link: str
    ) -> None:
        self.name = name
        self.kind = kind
        self.typeflag = typeflag
        self.size = size
        self.mode = mode
        self.mtime = mtime
        self.linkname = link


def _c_string(field: bytes) -> bytes:
    """A header's text field: everything before the first NUL."""
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _header_number(field: bytes, what: str, signed: bool = False) -> int:
    """A header's number: octal digits between spaces and NULs, or GNU base-256.

    Base-256 (for values octal cannot hold) is big-endian after a first byte
    of 0x80, or two's complement over the whole field after 0xff: negative,
    as GNU tar and tarfile write mtimes before 1970. Only a signed field (the
    mtime) may be negative.
    """
    if field[:1] in _BASE_256_MARKS:
        value = int.from_bytes(field[1:], "big")
        if field[:1] == b"\x80":
            return value
        if not signed:
            raise ArchiveError(f"its {what} field is negative ({field!r})")
        return value - (1 << 8 * (len(field) - 1))
    digits = _c_string(field).strip(b" ")
    if digits.strip(b"01234567"):
        raise ArchiveError(f"its {what} field is not an octal number ({field!r})")
    return int(digits, 8) if digits else 0


_BASE_256_MARKS = (b"\x80", b"\xff")


# The numbers as this script (and most tars) writes them: octal digits, each field ended by NUL.
_PLAIN_NUMBERS = re.compile(rb"([0-7]{7})\0[0-7]{7}\0[0-7]{7}\0([0-7]{11})\0([0-7]{11})\0")


def _header_numbers(block: bytes) -> Tuple[int, int, float]:
    """A header's mode, size and mtime; its uid and gid are checked but not used."""
    plain = _PLAIN_NUMBERS.fullmatch(block, 100, 148)
    if plain:  # the common case, in one step
        return int(plain[1], 8) & 0o7777, int(plain[2], 8), int(plain[3], 8)
    _header_number(block[108:116], "uid")
    _header_number(block[116:124], "gid")
    return (
        _header_number(block[100:108], "mode") & 0o7777,
        _header_number(block[124:136], "size"),
        _header_number(block[136:148], "mtime", signed=True),
    )


def _pax_number(value: bytes, keyword: bytes, fraction: bool) -> float:
    """A PAX number: decimal digits, a leading "-" and a ".fraction" where fraction allows."""
    whole, dot, part = value.partition(b".") if fraction else (value, b"", b"")
    if whole.startswith(b"-") and fraction:
        whole = whole[1:]
    if not whole.isdigit() or len(whole) > 20 or (dot and not part.isdigit()):
        raise ArchiveError(f"its PAX {keyword.decode()} record is not a number ({value[:40]!r})")
    return float(value) if fraction else int(value)


def _pax_records(data: bytes) -> Dict[bytes, bytes]:
    """The records of a PAX extended header ("<length> <keyword>=<value>\\n" each), checked.

    One pass: each record is looked at once, so the time is linear in the size.
    """
    records: Dict[bytes, bytes] = {}
    position = count = 0
    while position < len(data):
        if data[position] == 0 and not data[position:].strip(b"\0"):
            break  # NUL padding to the end (looked at once: it ends the loop either way)
        count += 1
        if count > MAX_PAX_RECORDS:
            raise UnsupportedArchive(f"it holds more than {MAX_PAX_RECORDS} PAX records")
        space = data.find(b" ", position, position + 12)
        length_text = data[position:space] if space > position else b""
        if not length_text.isdigit():
            raise ArchiveError("a PAX record has no valid length")
        end = position + int(length_text)
        keyword, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not space < end <= len(data) or data[end - 1 : end] != b"\n" or not keyword:
            raise ArchiveError(f"the PAX record {data[position : position + 40]!r} is malformed")
        if not equals:
            raise ArchiveError(f"the PAX record {data[position : position + 40]!r} has no '='")
        if keyword.startswith(b"GNU.sparse."):
            raise UnsupportedArchive(
                "it is a sparse file (GNU.sparse PAX records); sparse members are refused"
            )
        if keyword in NUMERIC_PAX_KEYWORDS or keyword in TIME_PAX_KEYWORDS:
            _pax_number(value, keyword, keyword in TIME_PAX_KEYWORDS)
        records[keyword] = value
        position = end
    return records


def _check_global_records(records: Dict[bytes, bytes]) -> None:
    """Refuse a PAX global header that would change later members for GNU tar alone."""
    for keyword in records:
        if keyword in GLOBAL_REFUSED or keyword.startswith(b"GNU.sparse."):
            raise UnsupportedArchive(
                f"its PAX global header sets {keyword.decode('ascii', 'replace')!r} for every "
                "later member, which GNU tar applies and bsdtar ignores: the two would extract "
                "different files; repack the archive without it"
            )


def _decoded_name(raw: bytes, what: str) -> str:
    """A name or link target as text: UTF-8, no NUL, at most MAX_PATH_BYTES."""
    if len(raw) > MAX_PATH_BYTES:
        raise UnsupportedArchive(
            f"its {what} is {len(raw)} bytes long, over {MAX_PATH_BYTES} (PATH_MAX)"
        )
    if b"\0" in raw:
        raise ArchiveError(f"its {what} holds a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedArchive(
            f"its {what} {raw!r} is not valid UTF-8; rename it, or repack with UTF-8 names"
        ) from None


_HIGH_BYTES = bytes(range(128, 256))  # the bytes that a signed checksum counts as negative


def _is_tar_header(block: bytes) -> bool:
    """True if block is a tar header whose checksum holds (unsigned or signed, as tar accepts)."""
    if len(block) < BLOCK_SIZE:
        return False
    block = block[:BLOCK_SIZE] if len(block) > BLOCK_SIZE else block
    field = block[148:156]
    digits = _c_string(field).strip(b" ")
    if not digits or digits.strip(b"01234567"):  # as every numeric field: octal digits only
        return False
    stored = int(digits, 8)
    unsigned = _byte_sum(block) - sum(field) + _BLANK_CHECKSUM_SUM
    if stored == unsigned:
        return True
    high_bytes = len(block) - len(block.translate(None, _HIGH_BYTES))
    high_bytes -= len(field) - len(field.translate(None, _HIGH_BYTES))
    return stored == unsigned - 256 * high_bytes


class TarReader:
    """Reads a tar stream member by member; members() yields them, data() streams a file's bytes."""

    def __init__(self, stream: "_Readable") -> None:
        self._stream = stream
        self._buffer = b""
        self._position = 0
        self._remaining = 0  # bytes of the current member's data not yet read
        self._padding = 0  # and the padding after them
        self.offset = 0  # bytes of the stream consumed, for messages

    def _fill(self) -> bool:
        block = self._stream.read(IO_BLOCK_SIZE)
        if not block:
            return False
        self._buffer = self._buffer[self._position :] + block
        self._position = 0
        return True

    def _take(self, size: int) -> bytes:
        """Up to size bytes (fewer only at the end of the stream)."""
        while len(self._buffer) - self._position < size and self._fill():
            pass
        data = self._buffer[self._position : self._position + size]
        self._position += len(data)
        self.offset += len(data)
        return data

    def _exactly(self, size: int, what: str) -> bytes:
        data = self._take(size)
        if len(data) < size:
            raise ArchiveError(f"the archive ends inside {what} (truncated)")
        return data

    def _skip_data(self) -> None:
        """Pass over what is left of the current member's data, and its padding."""
        if self._remaining:
            for _ in self.data():
                pass
        if self._padding:
            if self._position + self._padding <= len(self._buffer):  # buffered: not copied
                self._position += self._padding
                self.offset += self._padding
            else:
                self._exactly(self._padding, "the padding after a member")
            self._padding = 0

    def _payload(self, size: int, what: str) -> bytes:
        """An extended header's data, at most MAX_EXTENDED_HEADER bytes, and its padding."""
        if size > MAX_EXTENDED_HEADER:
            raise ArchiveError(f"its {what} is {size} bytes, over {MAX_EXTENDED_HEADER}")
        data = self._exactly(size, what)
        self._exactly(-size % BLOCK_SIZE, what)
        return data

    def data(self) -> Iterator[memoryview]:
        """The current member's bytes, in pieces of at most IO_BLOCK_SIZE, not copied."""
        while self._remaining:
            if self._position == len(self._buffer) and not self._fill():
                raise ArchiveError("the archive ends inside a member's data (truncated)")
            size = min(self._remaining, len(self._buffer) - self._position, IO_BLOCK_SIZE)
            piece = memoryview(self._buffer)[self._position : self._position + size]
            self._position += size
            self.offset += size
            self._remaining -= size
            yield piece

    def data_crc32(self) -> int:
        """The CRC-32 of the current member's bytes, read to their end."""
        end = self._position + self._remaining
        if end <= len(self._buffer):  # all buffered already: the common case, in one step
            crc = zlib.crc32(memoryview(self._buffer)[self._position : end])
            self.offset += self._remaining
            self._position, self._remaining = end, 0
            return crc
        crc = 0
        for piece in self.data():
            crc = zlib.crc32(piece, crc)
        return crc

    def _finish(self, start: int) -> None:
        """After a zero block: the second must follow, and nothing but zeros after them."""
        if self._take(BLOCK_SIZE) != ZERO_BLOCK:
            raise ArchiveError(
                f"the zero block at byte {start} is not followed by a second one "
                "(a damaged or truncated archive)"
            )
        while True:
            rest = self._take(IO_BLOCK_SIZE)
            if not rest:
                return
            if rest.strip(b"\0"):
                raise ArchiveError(f"data follows the end-of-archive marker at byte {self.offset}")

    def members(self) -> Iterator[TarMember]:
        """Every member, checked; raises ArchiveError naming the member (or offset) at a fault."""
        pax: Dict[bytes, bytes] = {}
        long_name = long_link = None
        extended = 0  # extended headers in a row, before the member they describe
        while True:
            if self._remaining or self._padding:
                self._skip_data()
            start = self.offset
            block = self._take(BLOCK_SIZE)
            if len(block) < BLOCK_SIZE:
                raise ArchiveError(
                    "the archive ends without its end-of-archive marker (truncated)"
                    if not block or not extended
                    else "the archive ends after an extended header (truncated)"
                )
            if block == ZERO_BLOCK:
                self._finish(start)
                if pax or long_name is not None or long_link is not None:
                    raise ArchiveError("an extended header has no member after it")
                return
            raw_name = _c_string(block[0:100])
            if block[257:263] == POSIX_MAGIC and block[345] != 0:
                raw_name = _c_string(block[345:500]) + b"/" + raw_name
            try:
                member = self._member(block, raw_name, pax, long_name, long_link)
            except ArchiveError as exc:
                shown = raw_name.decode("utf-8", "backslashreplace")
                message = f"the member at byte {start} ({shown[:200]!r}): {exc}"
                raise type(exc)(message) from None
            if member is not None:
                pax, long_name, long_link, extended = {}, None, None, 0
                if member.kind != "label":
                    yield member
                continue
            # An extended header: it applies to the next member, and the last of a kind wins.
            extended += 1
            if extended > MAX_EXTENDED_IN_A_ROW:
                raise UnsupportedArchive(
                    f"the extended header at byte {start} is one of more than "
                    f"{MAX_EXTENDED_IN_A_ROW} in a row"
                )
            typeflag = block[156:157]
            data = self._payload(_header_number(block[124:136], "size"), "extended header")
            try:
                if typeflag in (PAX_HEADER_TYPE, SOLARIS_PAX_TYPE):
                    pax = _pax_records(data)
                elif typeflag == PAX_GLOBAL_TYPE:
                    _check_global_records(_pax_records(data))
                elif typeflag == GNU_LONG_NAME:
                    long_name = _c_string(data)
                else:
                    long_link = _c_string(data)
            except ArchiveError as exc:
                raise type(exc)(f"the extended header at byte {start}: {exc}") from None

    def _member(
        self,
        block: bytes,
        raw_name: bytes,
        pax: Dict[bytes, bytes],
        long_name: Optional[bytes],
        long_link: Optional[bytes],
    ) -> Optional[TarMember]:
        """The member this header describes, or None for an extended header (data not read)."""
        if not _is_tar_header(block):
            raise ArchiveError("its header is damaged (the checksum does not match)")
        typeflag = block[156:157]
        mode, size, mtime = _header_numbers(block)
        if typeflag in EXTENDED_TYPES:
            return None
        if typeflag in REFUSED_TYPES:
            raise UnsupportedArchive(f"it is {REFUSED_TYPES[typeflag]}, which is refused")
        kind = MEMBER_KINDS.get(typeflag)
        if typeflag == GNU_VOLUME_LABEL:
            kind = "label"
        elif kind is None:
            if not b"A" <= typeflag <= b"Z":
                raise ArchiveError(f"its type {typeflag!r} is not a tar member type")
            kind = "unknown"  # POSIX: extract as a regular file
        name = _decoded_name(pax.get(b"path", long_name or raw_name), "name")
        if kind == "file" and name.endswith("/"):
            kind = "dir"  # an old-style directory (v7 has no type for one), as tar reads it
        link = ""
        if block[157] or long_link is not None or b"linkpath" in pax:
            link = _decoded_name(
                pax.get(b"linkpath", long_link or _c_string(block[157:257])), "link target"
            )
        if b"size" in pax:
            size = int(pax[b"size"])
        if b"mtime" in pax:
            mtime = float(pax[b"mtime"])
        if kind in ("hardlink", "symlink", "dir") and typeflag != GNU_DUMPDIR and size:
            raise ArchiveError(f"it is a {kind} with {size} bytes of data")
        self._remaining = size
        self._padding = -size % BLOCK_SIZE
        if kind in ("label", "dir"):
            self._skip_data()
        return TarMember(name.rstrip("/") or name, kind, typeflag, size, mode, mtime, link)


# ---------------------------------------------------------------------------
# Safe extraction of the untrusted model archive


GZIP_MAGIC = b"\x1f\x8b"
# What bad data raises: bz2 says OSError without an errno, or EOFError.
DECODE_ERRORS = (ArchiveError, EOFError, zlib.error, lzma.LZMAError, OSError)


@contextlib.contextmanager
def _bad_data(explain: Callable[[BaseException], PackagingError]) -> Iterator[None]:
    """Turn a complaint about the bytes read into explain(it); a real I/O error passes on.

    Decoders report bad data as their own errors, or as OSError without an errno.
    """
    try:
        yield
    except DECODE_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise explain(exc) from None


# An xz stream must carry a check that xz verifies: none, or an unknown one, is refused.
XZ_CHECKS = (lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256)


def _gzip_decompressor() -> Any:
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


def _xz_decompressor() -> Any:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)


class _Compression(NamedTuple):
    """A compressed format a model archive may come in: its magic bytes, its decompressor."""

    name: str
    magic: bytes
    decompressor: Callable[[], Any]


COMPRESSIONS = {
    compression.name: compression
    for compression in (
        _Compression("gzip", GZIP_MAGIC, _gzip_decompressor),
        _Compression("bzip2", b"BZh", bz2.BZ2Decompressor),
        _Compression("xz", b"\xfd7zXZ\x00", _xz_decompressor),
    )
}


class _Decoder:
    """Decodes gzip, bzip2 or xz from raw: read(size) returns bytes, b"" only at a verified end.

    The decompressors check each stream's own checksums (CRC-32 and length,
    bzip2's and xz's; an xz stream without one is refused). An archive may be
    several streams with zero padding after them, as gzip -d, bzip2 -d and
    xz -d accept, and xz streams may have padding between them (in blocks of
    4 bytes, as xz's format says). Any other bytes after a stream are an
    error, whatever the compression. (The job's own package is read back by
    _PieceStream, which accepts exactly one gzip member.)
    """

    def __init__(self, raw: "_Readable", compression: str) -> None:
        self._raw = raw
        kind = COMPRESSIONS[compression]
        self._new, self._magic = kind.decompressor, kind.magic
        self._decompressor = self._new()
        self._is_xz = compression == "xz"
        self._check_known = not self._is_xz  # an xz stream's check, once its header is read
        self._input = b""
        self._compressed = self._decoded = 0  # bytes read and decoded, for the ratio

    def _read_raw(self) -> bytes:
        data = self._raw.read(IO_BLOCK_SIZE)
        self._compressed += len(data)
        return data

    def _check_ratio(self, decoded: int) -> None:
        """Refuse a stream that decodes to far more than an archive of real files does."""
        self._decoded += decoded
        limit = MAX_DECODE_RATIO * self._compressed
        if self._decoded > DECODE_RATIO_AFTER and self._decoded > limit:
            raise UnsupportedArchive(
                f"it decodes to more than {MAX_DECODE_RATIO} times its compressed size past "
                f"the first {_human(DECODE_RATIO_AFTER)} (a decompression bomb?); no real "
                "model archive compresses that well"
            )

    def read(self, size: int) -> bytes:
        while True:
            if self._decompressor.eof and not self._next_stream():
                return b""
            data = self._input or getattr(self._decompressor, "unconsumed_tail", b"")
            if not data and getattr(self._decompressor, "needs_input", True):
                data = self._read_raw()
                if not data:
                    raise EOFError("the compressed stream ends early")
            self._input = b""
            try:
                out: bytes = self._decompressor.decompress(data, size)
            except lzma.LZMAError as exc:
                if "Memory usage limit" not in str(exc):
                    raise
                raise UnsupportedArchive(
                    f"its xz stream needs more than {XZ_MEMORY_LIMIT >> 20} MiB of memory to "
                    "decode (a larger dictionary than xz -9's); recompress it with xz -9 or less"
                ) from None
            if not self._check_known:
                self._check_xz_check()
            if out:
                self._check_ratio(len(out))
                return out

    def _check_xz_check(self) -> None:
        """Refuse an xz stream whose check xz cannot verify (none, or a reserved ID)."""
        check = self._decompressor.check
        if check == lzma.CHECK_UNKNOWN:
            return  # the stream header is not decoded yet
        if check not in XZ_CHECKS:
            raise UnsupportedArchive(
                f"its xz stream has check ID {check}, not CRC-32, CRC-64 or SHA-256, so its "
                "integrity cannot be verified; compress it with xz's default check"
            )
        self._check_known = True

    def _next_stream(self) -> bool:
        """After a stream: start the next one and return True, or check the end and return False."""
        rest = self._decompressor.unused_data
        padding = 0
        while True:
            unpadded = rest.lstrip(b"\0")  # zeros: padding after a stream, or at the end
            padding += len(rest) - len(unpadded)
            rest = unpadded
            more = self._read_raw() if len(rest) < len(self._magic) else b""
            if not more:
                break
            rest += more
        if not rest:
            return False
        between = self._is_xz and padding % 4 == 0  # only xz has padding between streams
        if rest.startswith(self._magic) and (not padding or between):
            self._decompressor = self._new()
            self._check_known = not self._is_xz
            self._input = rest
            return True
        raise ArchiveError("data follows the compressed stream")


OTHER_FORMATS = (
    (b"PK\x03\x04", "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed (not supported)"),
)
REPACK = "make it with: tar -czf model.tar.gz -C <model dir> ."


def _compression(head: bytes) -> Optional[str]:
    """The compression that an archive's first bytes show; None for plain tar (checked first)."""
    if _is_tar_header(head):
        return None
    return next((c.name for c in COMPRESSIONS.values() if head.startswith(c.magic)), None)


class _HashingReader:
    """Passes reads through, hashing the bytes into sha256 (a new hash if none)."""

    def __init__(self, raw: "_Readable", sha256: Optional[Any] = None) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256() if sha256 is None else sha256
        self.size = 0

    def read(self, size: int) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        self.size += len(data)
        return data


def _sniffed(raw: IO[bytes]) -> Optional[str]:
    """The compression raw's first bytes show (None: plain tar); raw is left at its start."""
    compression = _compression(raw.read(BLOCK_SIZE))
    raw.seek(0)
    return compression


def _decoding(stream: "_Readable", compression: Optional[str]) -> "_Readable":
    """stream decoded as compression says; plain tar passes through."""
    return stream if compression is None else _Decoder(stream, compression)


def _read_up_to(stream: "_Readable", size: int) -> bytes:
    """Read until size bytes or the end, however little each read returns."""
    data = b""
    while len(data) < size:
        block = stream.read(size - len(data))
        if not block:
            break
        data += block
    return data


def _first_decoded_block_if_whole(raw: IO[bytes], compression: str) -> bytes:
    """The first decoded block; if it is no tar header, the whole stream is decoded first.

    A corrupt stream can decode to garbage before its checksum fails: only
    after the whole stream checks out is "this holds no tar" the right answer.
    """
    stream = _Decoder(raw, compression)
    first = _read_up_to(stream, BLOCK_SIZE)
    if not _is_tar_header(first):
        while stream.read(IO_BLOCK_SIZE):
            _check_stop()
    return first


def check_is_tar(archive: Path, noun: str = "model archive") -> int:
    """Refuse a file that is not a tar archive, plain or compressed, saying what it is instead.

    noun is what the file is to the user (a model archive; a package to --verify).
    Returns the file's stamp: extraction must find the file unchanged.
    """
    with _os_errors(f"reading the {noun}", archive), open(
        _open_regular(os.fspath(archive), None), "rb"
    ) as raw:
        stamp = _stamp(os.fstat(raw.fileno()))
        head = raw.read(BLOCK_SIZE)
        raw.seek(0)
        compression = _compression(head)
        with _bad_data(functools.partial(_corrupt, archive, noun=noun)):
            first = _first_decoded_block_if_whole(raw, compression) if compression else head
    if not head:
        raise PackagingError(
            f"{noun} {archive} is empty (0 bytes); check that it was written and uploaded in full"
        )
    if _is_tar_header(first) or (len(first) == BLOCK_SIZE and not first.strip(b"\0")):
        return stamp
    what = next((name for magic, name in OTHER_FORMATS if head.startswith(magic)), None)
    if compression is not None:
        what = f"{compression}-compressed, but what it holds is not a tar archive (one file?)"
    elif what is None and head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON file, not a tar archive"
    elif what is None:
        what = f"not a tar archive (it starts with {head[:8]!r})"
    else:
        what += ", not a tar archive"
    raise PackagingError(f"{noun} {archive} is {what}; SageMaker needs a tar.gz: {REPACK}")


class _ReadAhead(_ContextManager):
    """Reads a stream a few blocks ahead on a thread of its own.

    Decompression (zlib, bz2, lzma) releases the GIL, so the archive is
    inflated on one core while the main thread writes its members on another,
    as tar -xzf runs gzip beside tar. An error in the thread reaches read().
    """

    def __init__(self, stream: "_Readable", depth: int = 8) -> None:
        self._blocks: queue.Queue[Union[bytes, BaseException]] = queue.Queue(depth)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(stream,), name="read-ahead")
        self._thread.start()

    def _fill(self, stream: "_Readable") -> None:
        try:
            while not self._stopping.is_set():
                block = stream.read(IO_BLOCK_SIZE)
                self._put(block)
                if not block:
                    return
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: Union[bytes, BaseException]) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(queue.Full):
                self._blocks.put(item, timeout=0.1)
                return

    def read(self, size: int) -> bytes:
        """The next decoded block (the reader asks for IO_BLOCK_SIZE, so blocks are never cut)."""
        while True:
            _check_stop()
            try:
                item = self._blocks.get(timeout=STOP_CHECK_INTERVAL)
                break
            except queue.Empty:
                continue
        if isinstance(item, BaseException) or not item:
            self._put(item)  # the end, or an error, stays for any later read
        if isinstance(item, BaseException):
            raise item
        return item

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join()


def _mtime(value: float) -> int:
    """An integer mtime that every filesystem and tar header can hold (NaN counts as 0)."""
    if not value < USTAR_MAX_NUMBER:
        return USTAR_MAX_NUMBER if value == value else 0  # +inf and huge, or NaN
    return max(0, int(value))


class _Node:
    """A name in the extracted tree: its kind, children and mtime (a dir), size (a file),
    target (a symlink).

    Kind "excluded" marks a directory the excludes leave out, with all below it.
    """

    __slots__ = ("children", "kind", "link", "mode", "mtime", "size")

    def __init__(
        self, kind: str, size: int = 0, mtime: int = 0, link: str = "", mode: int = 0o755
    ) -> None:
        self.kind = kind
        self.size = size
        self.mtime = mtime
        self.link = link
        self.mode = mode  # as extracted: 0644 or 0755
        self.children: Dict[str, _Node] = {}


class Extracted(NamedTuple):
    """What extraction wrote: bytes of regular files, and bytes that hard links copy."""

    size: int
    linked: int


class _Linked(NamedTuple):
    """What a hard link in the archive copies: the file at path, of size bytes and mode."""

    path: str
    size: int
    mode: int


def _file_mode(mode: int) -> int:
    """A file's mode as extracted and packaged: 0755 if anyone may execute it, else 0644."""
    return 0o755 if mode & 0o111 else 0o644


def _points_outside(member: str, path: str) -> PackagingError:
    return PackagingError(
        f"archive member {member!r} points outside the archive ({path!r} climbs out "
        "through '..'); the archive is unsafe"
    )


class _Extractor:
    """Writes checked archive members under dest; symlinks wait until all data is out.

    Nothing on disk is a symlink while members are written, so a member can
    only land where its checked name says. A name that goes through an earlier
    symlink, or through a file, is refused. A symlink's target is resolved
    through the symlinks made before it, as the kernel would resolve it on the
    tree as it stands, and again through all of them once the archive is read;
    one that leaves the tree is refused wherever it is. Names are looked up in
    a tree of what the archive made, so each check costs time linear in the name.

    Files the excludes leave out are kept aside in held (not in the package),
    so that a hard link to one still gets its bytes, as with tar -x.
    """

    def __init__(
        self, dest: Path, excludes: Optional[Excludes], held: Path, strip_components: int
    ) -> None:
        self.dest = dest
        self.strip_components = strip_components
        self._dest = os.fspath(dest)  # paths stay strings: this runs once per member
        self.excludes = excludes
        self.held_dir = held
        self._held: Dict[str, _Linked] = {}  # by the excluded file's name
        self.root = _Node("dir")
        self.symlinks: Dict[str, str] = {}
        self.size = 0  # bytes of regular files
        self.linked = 0  # bytes that hard links will copy once the tree is staged
        self.data_filter = getattr(tarfile, "data_filter", None)
        self.names = _NameBudget("the model archive")

    def _walk(self, path: str, member: str) -> Tuple[List[str], Optional[_Node]]:
        """The parts of a name in the archive; refuse escapes, and links or files on the way.

        Returns the parts and the node already at that name, if any.
        """
        if path.startswith("/"):
            raise PackagingError(
                f"archive member {member!r} has an absolute path ({path!r}); the archive is unsafe"
            )
        parts: List[str] = []
        nodes: List[Optional[_Node]] = [self.root]
        pieces = [piece for piece in path.split("/") if piece not in ("", ".")]
        for index, piece in enumerate(pieces):
            if len(piece.encode("utf-8")) > MAX_NAME_BYTES:
                raise PackagingError(
                    f"archive member {member!r} has a path component over {MAX_NAME_BYTES} bytes"
                )
            if piece == "..":
                if not parts:
                    raise _points_outside(member, path)
                parts.pop()
                nodes.pop()
                continue
            parent = nodes[-1]
            node = parent.children.get(piece) if parent is not None else None
            parts.append(piece)
            nodes.append(node)
            kind = node.kind if node is not None else None
            if index < len(pieces) - 1 and kind in ("symlink", "file"):
                raise PackagingError(
                    f"archive member {member!r} goes through {'/'.join(parts)!r}, which is a "
                    f"{kind}; writing through links or files is refused"
                )
        return parts, nodes[-1]

    def _nodes(self, parts: List[str]) -> List[Optional[_Node]]:
        """The nodes from the root along parts (None past a name the archive has not made)."""
        nodes: List[Optional[_Node]] = [self.root]
        for piece in parts:
            parent = nodes[-1]
            nodes.append(parent.children.get(piece) if parent is not None else None)
        return nodes

    def add(self, reader: TarReader, member: TarMember) -> None:
        self.names.add(member.name, member.linkname)
        kind, link = self._kind(member), member.linkname
        stripped = self._stripped(member.name, member.name)
        if self.strip_components and not stripped:
            return  # nothing left of its name: skipped, as tar skips it (its data is read)
        parts, existing = self._walk(stripped, member.name)
        if not parts:
            if kind == "dir":
                return
            raise PackagingError(f"archive member {member.name!r} has an empty name")
        # A symlink named like an excluded directory (".git") is left out as one.
        if self._excluded(parts, kind in ("dir", "symlink")):
            if kind == "file":
                self._hold(reader, member, parts)
            return  # any other data is skipped by the reader, and still checked
        if kind == "hardlink":
            kind, link, target = self._hard_link_target(member, parts)
        elif kind == "symlink":
            self._check_symlink(member.name, link, parts)
        self._apply_data_filter(member, kind, link)
        mtime = _mtime(member.mtime)
        parent = self._make_parents(parts, mtime)
        name = "/".join(parts)
        path = os.path.join(self._dest, name)
        self._replace(name, existing, kind, path)
        if kind == "dir":
            if existing is None or existing.kind != "dir":  # new, or a file or link's place
                self._make_dir(path)
            node = parent.children.get(parts[-1])
            if node is None or node.kind != "dir":  # new, or in place of a file or link
                node = parent.children[parts[-1]] = _Node("dir")
            node.mtime = mtime
            return
        if kind == "symlink":
            self.symlinks[name] = link
            parent.children[parts[-1]] = _Node("symlink", link=link)
            return
        if kind == "hardlink":
            self._hard_link(target.path, path)
            self.linked += target.size
            size, mode = target.size, target.mode
        else:
            self._extract_file(reader, member, path, mtime)
            size, mode = member.size, _file_mode(member.mode)
        parent.children[parts[-1]] = _Node("file", size, mode=mode)

    def _stripped(self, name: str, member: str) -> str:
        """name without its first strip_components components (counted after any "./").

        What the components stripped would hide is refused as it is without the
        option: an absolute name, or a ".." that climbs out of the archive.
        """
        if not self.strip_components:
            return name
        if name.startswith("/"):
            raise PackagingError(
                f"archive member {member!r} has an absolute path ({name!r}); the archive is unsafe"
            )
        pieces = [piece for piece in name.split("/") if piece not in ("", ".")]
        depth = 0
        for piece in pieces:
            depth += -1 if piece == ".." else 1
            if depth < 0:
                raise _points_outside(member, name)
        return "/".join(pieces[self.strip_components :])

    def _hold(self, reader: TarReader, member: TarMember, parts: List[str]) -> None:
        """Keep an excluded file's bytes aside, where only a hard link to it can reach them."""
        if not self._held:
            self._make_dir(os.fspath(self.held_dir))
        path = os.path.join(self.held_dir, str(len(self._held)))
        self._extract_file(reader, member, path, 0)
        self._held["/".join(parts)] = _Linked(path, member.size, _file_mode(member.mode))

    def _kind(self, member: TarMember) -> str:
        """What the member is; devices and FIFOs are refused, unknown types become files."""
        if member.kind in ("file", "dir", "symlink", "hardlink"):
            return member.kind
        if member.kind == "unknown":
            _warn(
                "archive",
                member.name,
                f"archive member {member.name!r} has type {member.typeflag.decode('ascii')!r}, "
                "which tar does not define; it is extracted as a regular file, as POSIX asks",
            )
            return "file"
        raise PackagingError(
            f"archive member {member.name!r} is a {member.kind}; "
            "a model archive may hold only files, directories and links"
        )

    def _check_target(self, member: str, target: str) -> None:
        if not target or target.startswith("/"):
            raise PackagingError(
                f"archive member {member!r} links to {target!r}, an absolute or empty "
                "target; the archive is unsafe"
            )

    def _check_symlink(self, member: str, target: str, parts: List[str]) -> None:
        """A symlink's target must stay inside the archive, seen from where the link is."""
        self._check_target(member, target)
        self._resolve(parts[:-1], target, member)

    def _resolve(
        self, start: List[str], target: str, member: str
    ) -> Tuple[List[str], Optional[_Node]]:
        """Follow target from the directory start through the tree's symlinks; refuse an escape.

        As the kernel resolves a path: a symlink on the way gives way to its
        own target, read from the symlink's directory, and ".." then goes up
        from where that led. A name the archive has not made is taken as it
        reads. Bounded: at most MAX_SYMLINK_HOPS links and MAX_PATH_BYTES steps.
        Returns the parts it leads to, and the node there (None if none).
        """
        parts = list(start)
        nodes = self._nodes(start)
        pending = target.split("/")[::-1]  # a stack: the next piece last
        hops = steps = 0
        while pending:
            piece = pending.pop()
            steps += 1
            if piece in ("", "."):
                continue
            if piece == "..":
                if not parts:
                    raise _points_outside(member, target)
                parts.pop()
                nodes.pop()
                continue
            parent = nodes[-1]
            node = parent.children.get(piece) if parent is not None else None
            if node is not None and node.kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS or steps > MAX_PATH_BYTES:
                    raise PackagingError(
                        f"archive member {member!r} links to {target!r}, which goes through "
                        f"more than {MAX_SYMLINK_HOPS} symlinks or loops; the archive is unsafe"
                    )
                pending += node.link.split("/")[::-1]
                continue
            parts.append(piece)
            nodes.append(node)
        return parts, nodes[-1]

    def _hard_link_target(self, member: TarMember, parts: List[str]) -> Tuple[str, str, _Linked]:
        """(kind, symlink target, what it links to) for a hard link.

        A hard link to a file is a second name for it; to a file the excludes
        left out, a name for its held bytes. A hard link to a symlink is that
        symlink again (as link(2) makes it), so it becomes a symlink with the
        same target, checked from its own place.
        """
        self._check_target(member.name, member.linkname)
        target = self._stripped(member.linkname, member.name)
        target_parts, node = self._walk(target, member.name)
        target_name = "/".join(target_parts)
        if node is not None and node.kind == "symlink" and target_parts != parts:
            self._check_symlink(member.name, node.link, parts)
            return "symlink", node.link, _Linked("", 0, 0)
        if node is not None and node.kind == "file" and target_parts != parts:
            link = os.path.join(self._dest, target_name)
            return "hardlink", "", _Linked(link, node.size, node.mode)
        if node is None and target_name in self._held:
            return "hardlink", "", self._held[target_name]
        raise PackagingError(
            f"archive member {member.name!r} is a hard link to {member.linkname!r}, "
            "which is not a file extracted before it"
        )

    def _apply_data_filter(self, member: TarMember, kind: str, link: str) -> None:
        """tarfile's data filter, where this Python has it: a second net under the link checks.

        Only links get it: no symlink is on disk while members are written, so
        for a file or a directory its realpath checks (a dozen lstat calls a
        member) could find nothing that the checks above do not.
        """
        if self.data_filter is None or kind not in ("symlink", "hardlink"):
            return
        info = tarfile.TarInfo(member.name)
        info.type = LINK_TYPES[kind]
        info.linkname = link if kind == "symlink" else member.linkname
        info.mode = member.mode
        try:
            self.data_filter(info, str(self.dest))
        except tarfile.FilterError as exc:
            raise PackagingError(f"archive member {member.name!r} is unsafe: {exc}") from None

    def _excluded(self, parts: List[str], is_dir: bool) -> bool:
        """True if the excludes leave out the member or a directory it would be in.

        Directories already made were checked when they were made; a new one
        the excludes match is remembered as "excluded", with all below it.
        """
        if self.excludes is None:
            return False
        node: Optional[_Node] = self.root
        for depth, piece in enumerate(parts):
            child = node.children.get(piece) if node is not None else None
            if child is not None and child.kind == "excluded":
                return True
            if child is None:
                is_last = depth == len(parts) - 1
                as_dir = is_dir or not is_last
                relative = "/".join(parts[: depth + 1]) if self.excludes.anchored else piece
                if self.excludes.pattern_for(relative, as_dir) is not None:
                    self.excludes.leaves_out("/".join(parts[: depth + 1]), as_dir, "")
                    if as_dir and node is not None:
                        node.children[piece] = _Node("excluded")
                    return True
            node = child
        return False

    def _make_parents(self, parts: List[str], mtime: int) -> _Node:
        """Create the member's missing parent directories; return its parent's node."""
        node = self.root
        path = self._dest
        for piece in parts[:-1]:
            path = os.path.join(path, piece)
            child = node.children.get(piece)
            if child is None:
                self._make_dir(path)
                child = node.children[piece] = _Node("dir", mtime=mtime)
            node = child
        return node

    def _replace(self, name: str, existing: Optional[_Node], kind: str, path: str) -> None:
        """The later member of a name wins, as with tar; a directory is never replaced."""
        if existing is None or (existing.kind == "dir" and kind == "dir"):
            return
        if existing.kind == "dir":
            raise PackagingError(
                f"archive member {name!r} would replace a directory of the same name; "
                "the archive is inconsistent"
            )
        if existing.kind == "symlink":
            del self.symlinks[name]
        else:
            self._remove(path)

    # What the extractor does on disk; _Planner does none of it.

    def _make_dir(self, path: str) -> None:
        os.mkdir(path)

    def _remove(self, path: str) -> None:
        os.unlink(path)

    def _hard_link(self, target: str, path: str) -> None:
        os.link(target, path)

    def _extract_file(self, reader: TarReader, member: TarMember, path: str, mtime: int) -> None:
        """Write a new file (never through a link), with mode 0644 or 0755 and mtime."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            for piece in reader.data():
                _check_stop()
                while piece:
                    piece = piece[os.write(fd, piece) :]
            os.fchmod(fd, _file_mode(member.mode))
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.size += member.size

    def finish(self) -> None:
        """Check every symlink on the finished tree, create them, set directory mtimes."""
        for name, target in self.symlinks.items():
            self._resolve(name.split("/")[:-1], target, name)
        self._finish_on_disk()

    def _finish_on_disk(self) -> None:
        for name, target in self.symlinks.items():
            os.symlink(target, self.dest / name)
        directories = [(self.dest, self.root)]
        while directories:
            path, node = directories.pop()
            for name, child in node.children.items():
                if child.kind == "dir":
                    os.utime(path / name, (child.mtime, child.mtime))
                    directories.append((path / name, child))


def extract_archive(
    archive: Path,
    stamp: int,
    dest: Path,
    excludes: Optional[Excludes],
    held: Path,
    strip_components: int = 0,
    sha256: Optional[Any] = None,
) -> Extracted:
    """Extract the untrusted model archive into the empty directory dest.

    strip_components leading components of each member's name (and of a hard
    link's target) are dropped, as tar --strip-components does; a member left
    with no name is skipped.

    The archive must have stamp (as check_is_tar found it) before and after
    it is read. It is read once, start to end: its integrity checks (gzip
    CRC-32 and length, bzip2 and xz checks) run on every byte, those after the
    tar end marker included. Excluded files go to held (see _Extractor).
    """
    extractor = _Extractor(dest, excludes, held, strip_components)
    read_archive(extractor, archive, stamp, sha256)
    return Extracted(extractor.size, extractor.linked)


def read_archive(
    extractor: _Extractor, archive: Path, stamp: int, sha256: Optional[Any] = None
) -> None:
    """Hand every member of the archive (which must have stamp throughout) to extractor.

    sha256, if given, is updated with every byte of the archive file, on the
    read-ahead thread, so that a report has the archive's digest without a second read.
    """
    corrupt = _bad_data(functools.partial(_corrupt, archive))
    fd = _open_regular(os.fspath(archive), stamp)
    with open(fd, "rb", buffering=0) as raw, corrupt:
        compression = _sniffed(raw)
        source = raw if sha256 is None else _HashingReader(raw, sha256)
        with _ReadAhead(_decoding(source, compression)) as stream:
            progress = _Progress("extract", os.fstat(fd).st_size)
            reader = TarReader(stream)
            for member in reader.members():
                _check_stop()
                extractor.add(reader, member)
                progress.update(raw.tell())
        while source.read(IO_BLOCK_SIZE):  # the file to its end, as the digest must see it
            pass
        _check_unchanged(fd, os.fspath(archive), stamp)
    extractor.finish()


def _corrupt(archive: Path, exc: BaseException, noun: str = "model archive") -> PackagingError:
    """The message for an archive that cannot be read: refused, or corrupt."""
    if isinstance(exc, UnsupportedArchive):
        return PackagingError(f"{noun} {archive} holds what is refused: {exc}")
    what = str(exc) if isinstance(exc, ArchiveError) else f"{type(exc).__name__}: {exc}"
    return PackagingError(
        f"{noun} {archive} is corrupt or truncated ({what}); upload it again or rebuild it"
    )


# ---------------------------------------------------------------------------
# Staging: the package's members, real files and directories only
#
# Staging plans the package rather than building it on disk: each member names
# the real file or directory it is read from, in place. Nothing is linked or
# copied (at tens of thousands of files, links and their removal were a fifth
# of the job), and the inputs are only ever read. A file that is replaced or
# changes size after it was planned fails the job when it is written.


class Member(NamedTuple):
    """One package member and the real path it is read from (a tuple: there may be millions).

    The path is base + name[cut:]: the members of one directory share its base (its real
    path and a "/"), so that a member holds its name once, not twice. stamp is a file's
    identity and version when it was planned (see _stamp); 0 for a directory.
    """

    name: str
    base: str
    cut: int
    is_dir: bool
    size: int
    mode: int
    mtime: int
    stamp: int

    @property
    def path(self) -> str:
        return self.base + self.name[self.cut :]


class Normalized:
    """Makes members with normalized metadata: modes 0644/0755, and one mtime for all.

    Every mtime is SOURCE_DATE_EPOCH, else PORTABLE_MTIME; with keep_mtimes,
    the inputs' own, clamped to SOURCE_DATE_EPOCH when it is set.
    """

    def __init__(self, source_date_epoch: Optional[int], keep_mtimes: bool = False) -> None:
        self._fixed = PORTABLE_MTIME if source_date_epoch is None else source_date_epoch
        self._clamp = source_date_epoch
        self._keep_mtimes = keep_mtimes

    def __call__(self, name: str, base: str, cut: int, info: os.stat_result) -> Member:
        """The member of that name, read from base + name[cut:] (see Member)."""
        is_dir = stat.S_ISDIR(info.st_mode)
        mtime = self._fixed
        if self._keep_mtimes:
            mtime = _mtime(info.st_mtime_ns // 1_000_000_000)
            if self._clamp is not None:
                mtime = min(mtime, self._clamp)
        mode = 0o755 if is_dir else _file_mode(info.st_mode)
        if is_dir:
            return Member(name, base, cut, True, 0, mode, mtime, 0)
        return Member(name, base, cut, False, info.st_size, mode, mtime, _stamp(info))


_BY_NAME = operator.attrgetter("name")


class _CopyBudget:
    """What the package copies beyond the input's own bytes, bounded: in bytes, and in entries.

    A symlink is packaged as what it points to, a hard link as a second copy
    of its file, and a sparse file's holes as zeros: a small input could
    otherwise plan an enormous package. The bytes copied through symlinks and
    hard links, and the holes, may be at most LINK_EXPANSION_LIMIT times the
    input's own file bytes (each file once, as allocated on disk), plus
    LINK_EXPANSION_ALLOWANCE; the entries staged at most EXPANSION_LIMIT times
    the input's entries, plus EXPANSION_ALLOWANCE (nested directory links
    multiply empty files too). The input is measured only once a copy turns up.
    """

    def __init__(
        self,
        root: Path,
        own_bytes: Optional[int] = None,
        copied: int = 0,
        entries: Optional[int] = None,
    ) -> None:
        self._root = root
        self._own_bytes = own_bytes
        self._entries = entries
        self.copied = 0
        self.add(copied)

    def _measure(self) -> None:
        entries = own_bytes = 0
        linked: Set[Tuple[int, int]] = set()
        for _, info in _walk_tree(self._root):
            entries += 1
            if stat.S_ISREG(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if info.st_nlink < 2 or key not in linked:
                    own_bytes += info.st_size - _holes(info)
                if info.st_nlink > 1:
                    linked.add(key)
        self._entries = entries
        if self._own_bytes is None:
            self._own_bytes = own_bytes

    def add(self, size: int) -> None:
        """Count size bytes copied through a link; refuse them over the budget."""
        if not size:
            return
        self.copied += size
        if self._own_bytes is None:
            self._measure()
        own = self._own_bytes or 0
        if self.copied > LINK_EXPANSION_LIMIT * own + LINK_EXPANSION_ALLOWANCE:
            raise PackagingError(
                f"symlinks, hard links and sparse files' holes in {self._root} would copy "
                f"{_human(self.copied)} from {_human(own)} of files, more than "
                f"{LINK_EXPANSION_LIMIT}-fold; store the files once, as plain files"
            )

    def check_entries(self, staged: int) -> None:
        """Refuse a tree that directory symlinks have multiplied beyond the entry budget."""
        if self._entries is None:
            self._measure()
        if staged > EXPANSION_LIMIT * (self._entries or 0) + EXPANSION_ALLOWANCE:
            raise PackagingError(
                f"symlinks to directories in {self._root} expand it more than "
                f"{EXPANSION_LIMIT}-fold; replace nested directory links by real directories"
            )


def _holes(info: os.stat_result) -> int:
    """The bytes of a regular file that are not on disk: a sparse file's holes."""
    blocks = getattr(info, "st_blocks", None)
    return 0 if blocks is None else max(0, info.st_size - 512 * blocks)


def stage_tree(
    root: Path,
    make_member: Callable[[str, str, int, os.stat_result], Member],
    prefix: str = "",
    skip: Collection[str] = (),
    excludes: Optional[Excludes] = None,
    budget: Optional[_CopyBudget] = None,
    names: Optional["_NameBudget"] = None,
    count_hard_links: bool = True,
) -> List[Member]:
    """The members for everything under root, named prefix + their path below it (unsorted).

    Symlinks inside root are replaced by what they point to; one that leaves
    root, dangles or loops fails the job, and so does a tree whose links copy
    more than the budget allows (a 1 KB archive of nested directory links
    could otherwise stage millions of entries). Directories are opened through
    a _DirectoryChain, so none is followed through a symlink swapped in. Top-level
    names in skip, and paths the excludes match, are left out (a symlink
    named like an excluded directory too). Inputs are only read, never modified.
    """
    root = root.resolve()
    budget = _CopyBudget(root) if budget is None else budget
    names = _NameBudget(root) if names is None else names
    linked: Set[Tuple[int, int]] = set()  # the files with more than one name, once seen
    members: List[Member] = []
    top = os.stat(root)
    ancestry: Tuple[Tuple[int, int], ...] = ((top.st_dev, top.st_ino),)  # of the dir walked
    stack = [(os.fspath(root), prefix, ancestry, False)]  # ..., whether reached through a link
    with _DirectoryChain() as directories:
        while stack:
            source_dir, name_prefix, ancestors, through_link = stack.pop()
            base, cut = source_dir + "/", len(name_prefix)  # shared by the dir's members
            # Sorted, so that the first fault found is the same on every filesystem.
            for entry_name, info in directories.listing(source_dir, ancestors[-1]):
                _check_stop()
                path = base + entry_name
                if name_prefix == prefix and entry_name in skip:
                    continue
                name = name_prefix + entry_name
                is_link = stat.S_ISLNK(info.st_mode)
                is_dir = is_link or stat.S_ISDIR(info.st_mode)
                if excludes is not None and excludes.leaves_out(
                    name[len(prefix) :], is_dir, prefix
                ):
                    continue
                _check_name(entry_name, path)
                names.add(name)
                real = path
                if is_link:
                    real = os.fspath(_resolve_inside(Path(path), root))
                    info = os.lstat(real)
                if stat.S_ISDIR(info.st_mode):
                    key = (info.st_dev, info.st_ino)
                    if key in ancestors:
                        raise PackagingError(
                            f"symlink {path} loops back to {real}, a directory that holds it; "
                            "fix it"
                        )
                    stack.append((real, name + "/", (*ancestors, key), through_link or is_link))
                elif not stat.S_ISREG(info.st_mode):
                    raise PackagingError(
                        f"{path} is not a regular file, directory or symlink; remove it from the "
                        "input"
                    )
                elif through_link or is_link:
                    budget.add(info.st_size)
                else:
                    budget.add(_holes(info))
                    if count_hard_links and info.st_nlink > 1:
                        key = (info.st_dev, info.st_ino)
                        if key in linked:
                            budget.add(info.st_size)
                        linked.add(key)
                if is_link:
                    members.append(make_member(name, real, len(name), info))
                else:
                    members.append(make_member(name, base, cut, info))
                if through_link:
                    budget.check_entries(len(members))
    return members


class _Planner(_Extractor):
    """Reads the model archive as extraction does, every check included, and writes nothing.

    --dry-run plans the archive's members from the tree of what it holds, as
    staging plans them from the extracted tree: a symlink as what it points to
    (a dangling or looping one fails, as it does there), the links' copies
    counted against the same budget.
    """

    def _make_dir(self, path: str) -> None:
        pass

    def _remove(self, path: str) -> None:
        pass

    def _hard_link(self, target: str, path: str) -> None:
        pass

    def _extract_file(self, reader: TarReader, member: TarMember, path: str, mtime: int) -> None:
        """Screen the file's bytes as the real run screens them (unless an input replaces its
        top folder), and keep a code/ file's for the code check, within its budget; the
        reader checks whatever is read past."""
        name = path[len(self._dest) + 1 :]
        shipped = name.partition("/")[0] not in self.skip
        scan = self.screen.open(name) if shipped else None
        keep = shipped and name.startswith(CODE_DIR + "/") and member.size <= self.code_budget
        kept = []
        if scan is not None or keep:
            for piece in reader.data():
                if scan is not None:
                    scan.feed(piece)
                if keep:
                    kept.append(bytes(piece))
        if scan is not None:
            self.screen.close(scan)
        if keep:
            self.kept[name] = b"".join(kept)
            self.code_budget -= member.size
        self.size += member.size

    def _finish_on_disk(self) -> None:
        pass

    kept: Dict[str, bytes]  # code/ files' bytes, for the code check
    code_budget = MAX_CODE_CHECK_BYTES
    screen: "ContentScreen"
    skip: Collection[str]  # top-level names an input replaces

    def members(self, archive: Path, skip: Collection[str]) -> List[Member]:
        """The members staging would make of the tree (unsorted), but top-level names in skip."""
        entries = self.count(self.root)
        budget = _CopyBudget(archive, self.size, self.linked, entries)
        members: List[Member] = []
        stack: List[Tuple[str, List[str], _Node, Tuple[int, ...], bool]] = [
            ("", [], self.root, (id(self.root),), False)
        ]
        while stack:
            prefix, real, directory, ancestors, linked = stack.pop()
            for name in sorted(directory.children):
                node = directory.children[name]
                if (not prefix and name in skip) or node.kind == "excluded":
                    continue
                full, parts = prefix + name, [*real, name]
                is_link = node.kind == "symlink"
                if is_link:
                    parts, found = self._resolve(real, node.link, full)
                    if found is None or found.kind == "excluded":
                        raise PackagingError(
                            f"symlink {archive}/{full} dangles (nothing at "
                            f"{'/'.join((os.fspath(archive), *parts))}); fix or remove it"
                        )
                    node = found
                if node.kind == "dir":
                    if id(node) in ancestors:
                        raise PackagingError(
                            f"symlink {archive}/{full} loops back to "
                            f"{'/'.join((os.fspath(archive), *parts))}, a directory that holds "
                            "it; fix it"
                        )
                    members.append(Member(full, "", 0, True, 0, 0o755, 0, 0))
                    stack.append(
                        (full + "/", parts, node, (*ancestors, id(node)), linked or is_link)
                    )
                else:
                    if linked or is_link:
                        budget.add(node.size)
                    # path: its name in the archive's tree (no file on disk; stamp 0 says so)
                    real_name = "/".join(parts)
                    base, cut = ("", 0) if real_name == full else (real_name, len(full))
                    members.append(Member(full, base, cut, False, node.size, node.mode, 0, 0))
                if linked:
                    budget.check_entries(len(members))
        return members

    def count(self, node: _Node) -> int:
        """Entries in the tree below node (what a walk of the extracted tree would find)."""
        count, stack = 0, [node]
        while stack:
            children = [c for c in stack.pop().children.values() if c.kind != "excluded"]
            count += len(children)
            stack.extend(children)
        return count


def _count_files(directory: Path) -> int:
    return sum(not stat.S_ISDIR(info.st_mode) for _, info in _walk_tree(directory))


# ---------------------------------------------------------------------------
# What goes into the package


class Record(NamedTuple):
    """One package member as written or as read back: what verification compares."""

    name: str
    type: bytes
    size: int
    mode: int
    mtime: int
    crc32: int  # of the content (0 for a directory): it catches any corruption


# Credentials must not ship in any member of the package, whichever input it came from.
# A file is refused for its name (a credentials file), or for what it holds: every text
# file is read as it streams past, whatever its size (a binary file, told by a NUL byte
# in its first block, is passed over; UTF-16 text is decoded first). The forms are the
# documented shapes secret scanners look for, so that look-alikes pass: AWS's example
# key, a key id with no secret next to it, placeholders (xxxx, <token>, ${VAR}), hashes.
#
# A file is first screened with a few cheap searches (each a literal, then a class), and
# only a file that one of them finds is looked at with the full patterns.

SECRET_FILE_NAMES = (
    ".env", ".envrc", ".netrc", "_netrc", ".pgpass", ".git-credentials",
    "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
)  # fmt: skip
# *.env and .env.* files hold secrets too (.env.local, prod.env), but for these examples,
# which are screened by content like any other file.
ENV_FILE_EXAMPLES = ("example", "sample", "template")
# Each form: a cheap hint (a literal first), then the patterns that hint may lead to; a
# pattern's group is the secret itself, which must not be a placeholder ("" for a header).
SECRET_FORMS = tuple(
    (re.compile(hint).search, tuple((re.compile(pattern), what) for pattern, what in forms))
    for hint, forms in (
        (rb"KEY-----", (
            # with its body: the header alone is a constant in crypto libraries' code
            (rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----\s*"
             rb"(?:[\w-]+:[^\n]*\n\s*)*([A-Za-z0-9+/=]{16,})", "a private key (PEM)"),
        )),
        (rb"PuTTY-User-Key", ((rb"PuTTY-User-Key-File-\d+:()", "a PuTTY private key"),)),
        (rb"_[A-Za-z0-9]{20}", (
            (rb"\bgh[pousr]_([A-Za-z0-9]{36})\b", "a GitHub token"),
            (rb"\bgithub_pat_([A-Za-z0-9_]{82})\b", "a GitHub token"),
            (rb"\bhf_([A-Za-z0-9]{34})\b", "a Hugging Face token"),
            (rb"\b[rs]k_live_([0-9A-Za-z]{24,})\b", "a Stripe live key"),
            (rb"_authToken\s*=\s*(\S{8,})", "an npm token"),
        )),
        (rb"-[A-Za-z0-9]{20}", (
            (rb"\bxox[abposr]-((?:[0-9]+-)+[A-Za-z0-9-]{10,})", "a Slack token"),
        )),
        (rb"T3BlbkFJ", (
            (rb"\bsk-(?:proj-|svcacct-|admin-)?([\w-]*T3BlbkFJ[\w-]+)", "an OpenAI key"),
        )),
        (rb"key-data", (
            (rb"client-key-data:\s*([A-Za-z0-9+/=]{20,})", "a kubeconfig client key"),
        )),
        (rb"://", ((rb"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"<>]+:([^\s/@'\"<>]+)@[\w.\[-]",
                   "a URL with a password"),)),
    )
)  # fmt: skip
AWS_HINT = re.compile(rb"IA[A-Z0-9]{16}").search  # AWS key ids: AKIA, ASIA
SECRET_HINTS = (*(hint for hint, _ in SECRET_FORMS), AWS_HINT)
# Read only in files of these names: elsewhere the same words are too common.
NAMED_SECRET_PATTERNS = {
    ".pypirc": (re.compile(rb"(?m)^\s*password\s*[:=][ \t]*(\S+)"), "a PyPI password"),
    "config.json": (
        re.compile(rb'"auths"[\s\S]*?"auth"\s*:\s*"([A-Za-z0-9+/=]{8,})"'),
        "a Docker registry login",
    ),
}  # fmt: skip
AWS_KEY_ID = re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
# 40 characters of base64's alphabet, alone: after "=", ":", a quote or a space, as in
# KEY=value, export KEY=value, KEY: value, "KEY": "value" and KEY = value.
AWS_SECRET_KEY = re.compile(rb"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
AWS_PAIR_DISTANCE = 1024  # bytes between a key id and its secret key, at most
# An AWS secret written as JSON escapes it ("\/"), or URL-encoded: read as written plain.
AWS_UNESCAPES = ((b"\\/", b"/"), (b"%2F", b"/"), (b"%2f", b"/"), (b"%2B", b"+"), (b"%2b", b"+"))
PLACEHOLDER_WORDS = (
    b"example", b"placeholder", b"your", b"changeme", b"password", b"secret", b"token",
    b"xxxx", b"dummy", b"redacted", b"fake", b"<", b"${", b"{{", b"%(", b"*",
)  # fmt: skip
SCAN_OVERLAP = 4096  # bytes kept from one block to the next: a form across the cut is seen
TEXT_PROBE = 8 << 10  # a NUL byte in this much of a file's start makes it binary


def _is_placeholder(secret: bytes) -> bool:
    """A value that stands for a secret in documentation: repetitive, or a placeholder word."""
    lowered = secret.lower()
    return (
        len(set(secret)) < 6
        or secret.startswith((b"$", b"%"))
        or any(word in lowered for word in PLACEHOLDER_WORDS)
    )


def _credential_name(name: str) -> Optional[str]:
    """What a file's name says, if it names a credentials file."""
    base = name.rpartition("/")[2]
    if base == "credentials" and (name == ".aws/credentials" or name.endswith("/.aws/credentials")):
        return "its name marks a credentials file (.aws/credentials)"
    if base in SECRET_FILE_NAMES or base.endswith(".ppk"):
        return f"its name marks a credentials file ({base})"
    env_file = base.startswith(".env.") or base.endswith(".env")
    if env_file and not any(word in base for word in ENV_FILE_EXAMPLES):
        return f"its name marks a credentials file ({base})"
    return None


def _text_encoding(head: bytes) -> Optional[str]:
    """How a file that starts with head is screened: utf-8, utf-16-le or -be; None if binary."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16-le" if head[:2] == b"\xff\xfe" else "utf-16-be"
    if b"\0" not in head[:TEXT_PROBE]:
        return "utf-8"
    probe = head[:512]
    if len(probe) >= 8:  # UTF-16 text without a BOM: every other byte NUL
        odd, even = probe[1::2], probe[::2]
        for encoding, nuls, chars in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
            if nuls.count(0) >= 0.9 * len(nuls) and chars.count(0) == 0:
                return encoding
    return None


class _FileScan:
    """One file's bytes, screened as they stream past: for credentials, and, a model file's,
    for a Git LFS pointer. feed() each block in turn; found says what it found, if anything."""

    __slots__ = (
        "_decoder",
        "_key_at",
        "_named",
        "_secret_at",
        "_seen",
        "_tail",
        "found",
        "head",
        "name",
        "size",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.found: Optional[str] = None
        self.head = b""  # the first block's first LFS_POINTER_MAX bytes
        self.size = 0
        self._decoder: Any = None  # before the first block; then False (binary), True (UTF-8)
        # or a UTF-16 decoder
        self._named = NAMED_SECRET_PATTERNS.get(name.rpartition("/")[2])
        self._tail = b""
        self._seen = 0  # text bytes screened before the tail
        self._key_at = self._secret_at = -AWS_PAIR_DISTANCE - 1

    def feed(self, block: Union[bytes, memoryview]) -> None:
        if not self.size:
            self.head = bytes(block[:LFS_POINTER_MAX])
        self.size += len(block)
        if self.found is not None or self._decoder is False or not block:
            return
        block = bytes(block)
        if self._decoder is None:  # the first block: binary, UTF-8, or UTF-16 to decode
            encoding = _text_encoding(block)
            self._decoder = (
                False
                if encoding is None
                else True
                if encoding == "utf-8"
                else codecs.getincrementaldecoder(encoding)("replace")
            )
            if self._decoder is False:
                return
        if self._decoder is not True:
            block = self._decoder.decode(block).encode("utf-8", "replace")
        data = self._tail + block
        self._screen(data, self._seen - len(self._tail))
        self._seen += len(block)
        self._tail = data[-SCAN_OVERLAP:]

    def _screen(self, data: bytes, start: int) -> None:
        if self._named is not None:
            pattern, what = self._named
            if any(not _is_placeholder(m.group(1)) for m in pattern.finditer(data)):
                self.found = f"it holds {what}"
                return
        for hint, forms in SECRET_FORMS:
            if hint(data):
                for pattern, what in forms:
                    for match in pattern.finditer(data):
                        if not match.group(1) or not _is_placeholder(match.group(1)):
                            self.found = f"it holds {what}"
                            return
        if AWS_HINT(data) or self._key_at >= start - AWS_PAIR_DISTANCE:
            self._aws_pair(data, start)

    def _aws_pair(self, data: bytes, start: int) -> None:
        """An AWS access key id with a secret access key near it (as written, or escaped)."""
        for key in AWS_KEY_ID.finditer(data):
            if not key.group().endswith(b"EXAMPLE"):
                self._key_at = max(self._key_at, start + key.start())
        if self._key_at < start - AWS_PAIR_DISTANCE:
            return
        plain = data
        for escaped, character in AWS_UNESCAPES:
            if escaped in plain:
                plain = plain.replace(escaped, character)
        for secret in AWS_SECRET_KEY.finditer(plain):
            value = secret.group()
            if not value.endswith(b"EXAMPLEKEY") and not _is_placeholder(value):
                self._secret_at = max(self._secret_at, start + secret.start())
        if abs(self._key_at - self._secret_at) <= AWS_PAIR_DISTANCE:
            self.found = "it holds an AWS access key id with a secret access key"

    def verdict(self) -> Optional["_Verdict"]:
        """What the file's bytes showed, once all are fed: None if nothing."""
        return _verdict(self.name, self.found, self.head, self.size)


def _verdict(name: str, found: Optional[str], head: bytes, size: int) -> Optional["_Verdict"]:
    """What a file's bytes showed: found, if anything; a model file's, if a Git LFS pointer."""
    pointer = None
    if size < LFS_POINTER_MAX and not name.startswith(CODE_DIR + "/"):
        pointer = _lfs_pointer(name, head)
    return None if found is None and pointer is None else _Verdict(name, found, pointer)


def _screen_whole_files(files: Sequence[Tuple[str, bytes]]) -> List["_Verdict"]:
    """The verdicts on whole files' bytes, in order, as a _FileScan each would give them.

    Quicker for many small files: the plain text of all (UTF-8, with no name
    that NAMED_SECRET_PATTERNS reads) is searched for every form's hint at
    once, a NUL between files, which no hint spans; only if one is found are
    the files screened one by one. Other files are screened one by one anyway.
    """
    plain = [
        name.rpartition("/")[2] not in NAMED_SECRET_PATTERNS
        and _text_encoding(data[:TEXT_PROBE]) == "utf-8"
        for name, data in files
    ]
    text = b"\0".join(data for (_, data), is_plain in zip(files, plain) if is_plain)
    hinted = any(hint(text) for hint in SECRET_HINTS)
    verdicts = []
    for (name, data), is_plain in zip(files, plain):
        if hinted or not is_plain:
            scan = _FileScan(name)
            scan.feed(data)
            verdict = scan.verdict()
        else:
            verdict = _verdict(name, None, data, len(data))
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


class _Verdict(NamedTuple):
    """What screening a file's bytes found: a credential, a Git LFS pointer (a warning)."""

    name: str
    found: Optional[str]
    pointer: Optional[Finding]


class ContentScreen:
    """Screens every member of the package: its name before anything is written, its bytes
    as they stream past (written, planned or read back). Credentials fail the run, or warn
    with allow; a model file that is a Git LFS pointer warns. With record, each is a
    Finding handed to it instead (--verify)."""

    def __init__(self, allow: bool, record: Optional[Callable[[Finding], None]] = None) -> None:
        self._allow = allow
        self._record = record

    def names(self, names: Iterable[str]) -> None:
        for name in names:
            self._report(name, _credential_name(name))

    def open(self, name: str) -> _FileScan:
        return _FileScan(name)

    def close(self, scan: _FileScan) -> None:
        """What the file's bytes showed, once all are fed."""
        verdict = scan.verdict()
        if verdict is not None:
            self.report(verdict)

    def report(self, verdict: _Verdict) -> None:
        """Fail, warn or record what a file's bytes showed (screened here or by the reader)."""
        self._report(verdict.name, verdict.found)
        if verdict.pointer is None:
            pass
        elif self._record is not None:
            self._record(verdict.pointer)
        else:
            _warn(verdict.pointer.check, verdict.pointer.member, verdict.pointer.message)

    def _report(self, name: str, found: Optional[str]) -> None:
        if found is None:
            return
        if self._record is not None:
            message = (
                f"{found}; credentials must not ship in a model package: remove the file and repack"
            )
            self._record(Finding("FAIL", "credentials", name, message))
            return
        if self._allow:
            _warn("credentials", name, f"{name}: {found}; shipped because of --allow-secrets")
            return
        raise PackagingError(
            f"{name}: {found}; credentials must not ship in a model package (it goes to S3, "
            "the model registry and every endpoint): remove the file from the inputs, or pass "
            "--allow-secrets if it holds no real secret"
        )


# Layout: the mistakes that make a package no endpoint can serve, found before anything is
# written. Hosting extracts the package into /opt/ml/model and runs code/<entry point>.


def _check_entry_point(entry_point: str) -> None:
    """The entry point must be a .py at code/'s top: the module SAGEMAKER_PROGRAM names."""
    parts = entry_point.split("/")
    if (
        entry_point.startswith("/")
        or ".." in parts
        or "" in parts
        or not entry_point.endswith(".py")
    ):
        raise PackagingError(
            f"--entry-point {entry_point!r} is not a .py file at code/'s top; give one such "
            f"as {DEFAULT_ENTRY_POINT} or handler.py"
        )
    if len(parts) > 1:
        module = entry_point[:-3].replace("/", ".")
        raise PackagingError(
            f"--entry-point {entry_point!r} is in a directory under code/, and neither serving "
            f"toolkit imports SAGEMAKER_PROGRAM={entry_point} (it takes the module name "
            f"{entry_point[:-3]!r}); add a module at code/'s top that imports it, such as "
            f"code/{DEFAULT_ENTRY_POINT} holding 'from {module} import *', and name that one"
        )


def _check_layout(
    parts: Dict[str, List[Member]], inputs: "Inputs", entry_point: Optional[str]
) -> None:
    """Refuse or flag the layouts that break endpoints: see each check's message."""
    model, code = parts["model"], parts[CODE_DIR]
    if inputs.archive is None:
        _check_not_only_archives(model, inputs.model)
        _check_not_swapped_by_content(model, code, inputs)
    else:
        archives = _only_archives([member.name for member in model])
        if archives is not None:
            _warn("layout", "", f"the model {archives}; package what one of them holds instead")
    _warn_one_top_folder(model, inputs)
    data = _data_in_code({member.name: member.size for member in code})
    if data is not None:
        _warn("layout", CODE_DIR + "/", data)
    calibration = _calibration_too_deep([member.name for member in parts[CALIBRATION_DIR]])
    if calibration is not None:
        fix = f"pass --calibration-dir {inputs.calibration}/{CALIBRATION_DIR}"
        _warn("layout", f"{CALIBRATION_DIR}/{CALIBRATION_DIR}/", f"{calibration}; {fix}")
    if code:
        _check_entry_point_present(code, entry_point)


def _data_in_code(code_files: Mapping[str, int]) -> Optional[str]:
    """What is wrong when code/ holds large data (names relative to the package)."""
    data = {n: size for n, size in code_files.items() if not n.endswith(CODE_TEXT_SUFFIXES)}
    large = sorted(n for n, size in data.items() if size > MAX_CODE_DATA_FILE)
    total = sum(data.values())
    if total <= MAX_CODE_DATA and not large:
        return None
    named = large or sorted(data, key=lambda n: -data[n])
    return (
        f"code/ holds {_human(total)} of files that are not code ({', '.join(named[:5])}): the "
        "serving containers copy code/ and pip install it at every start; put data in the "
        "model (the package's root) and open it from model_fn"
    )


def _only_archives(model_names: Sequence[str]) -> Optional[str]:
    """What is wrong when every model file is an archive (model.tar.gz in model.tar.gz)."""
    if not model_names or not all(name.endswith(ARCHIVE_SUFFIXES) for name in model_names):
        return None
    return (
        f"holds only archives ({', '.join(model_names[:5])}): hosting does not unpack them, "
        "so model_fn finds no model"
    )


def _calibration_too_deep(calibration_names: Sequence[str]) -> Optional[str]:
    """What is wrong when every calibration file is in calibration/calibration/."""
    nested = f"{CALIBRATION_DIR}/{CALIBRATION_DIR}/"
    if not calibration_names or not all(n.startswith(nested) for n in calibration_names):
        return None
    return (
        f"every calibration file is under {nested}: the code looks in "
        f"{HOSTING_MODEL_DIR}/{CALIBRATION_DIR}/, finds nothing, and the endpoint serves "
        "uncalibrated scores without an error"
    )


def _check_not_only_archives(model: List[Member], model_dir: Path) -> None:
    """A loose model of archives alone (model-v1.tar.gz, model.zip) has no model to serve."""
    archives = _only_archives([member.name for member in model])
    if archives is None:
        return
    advice = f"name the one to package with --model-dir {model_dir}/NAME.tar.gz"
    if any(member.name.endswith(".zip") for member in model):
        advice += f"; a zip archive must be repacked: {REPACK}"
    raise PackagingError(
        f"the model input {model_dir} {archives}, and no {MODEL_ARCHIVE_NAME}; {advice}"
    )


def _is_code(name: str) -> bool:
    base = name.rpartition("/")[2]
    return base.endswith(CODE_SUFFIXES) or base in CODE_NAMES


def _is_model_file(member: Member) -> bool:
    """A model file by its extension, or by its content: binary bytes in its first block."""
    if member.name.endswith(WEIGHT_SUFFIXES):
        return True
    if _is_code(member.name) or not member.size:
        return False
    with open(member.path, "rb") as file:
        return b"\0" in file.read(BINARY_PROBE_SIZE)


def _check_not_swapped_by_content(
    model: List[Member], code: List[Member], inputs: "Inputs"
) -> None:
    """Refuse loose inputs that look swapped: code alone for the model, model files for code.

    A model that holds a .py beside its weights (a Hugging Face custom model)
    holds more than code, and passes.
    """
    if not code or not all(_is_code(member.name) for member in model):
        return
    probed = [member for member in code if not _is_code(member.name)][:MAX_BINARY_PROBES]
    found = next((member for member in probed if _is_model_file(member)), None)
    if found is not None:
        raise PackagingError(
            f"the model input {inputs.model} holds only code and the script input "
            f"{inputs.script} holds model files ({found.name[len(CODE_DIR) + 1 :]}): "
            "are --model-dir and --script-dir swapped? The model goes in --model-dir, the "
            "inference code in --script-dir"
        )


def _one_top_folder(model_names: Sequence[str]) -> Optional[str]:
    """The one folder every model file is under, with nothing beside it, if there is one."""
    tops = {name.partition("/")[0] for name in model_names}
    if len(tops) != 1 or any("/" not in name for name in model_names):
        return None
    return tops.pop()


def _top_folder_message(folder: str, fix: str) -> str:
    return (
        f"every model file is under one folder, {folder}/: SageMaker extracts the package "
        f"into {HOSTING_MODEL_DIR}, so they land in {HOSTING_MODEL_DIR}/{folder}/..., where "
        f"model_fn does not usually look; {fix} to put them at the package's root"
    )


def _warn_one_top_folder(model: List[Member], inputs: "Inputs") -> None:
    """Warn when every model file is under one top folder (tar -czf m.tar.gz model/ does that)."""
    folder = _one_top_folder([member.name for member in model])
    if folder is None:
        return
    fix = (
        "pass --strip-components 1"
        if inputs.archive is not None
        else f"pass --model-dir {inputs.model / folder}"
    )
    _warn("layout", folder + "/", _top_folder_message(folder, fix))


def _missing_entry_point(code_names: Sequence[str], name: str) -> Optional[str]:
    """What is wrong when code/ (names relative to it) lacks the entry point; None if not."""
    if name in code_names:
        return None
    candidates = [n for n in code_names if "/" not in n and n.endswith(".py")][:5]
    found = f" (the .py files at its top: {', '.join(candidates)})" if candidates else ""
    return (
        f"code/ has no {name}, the entry point that SAGEMAKER_PROGRAM names{found}: the "
        f"endpoint would not start"
    )


NO_CODE = (
    f"the package has no code/: the serving containers import code/{DEFAULT_ENTRY_POINT} "
    "(SAGEMAKER_PROGRAM), and without it serve a default handler or none; put the inference "
    "code in the script dir"
)


def _check_entry_point_present(code: List[Member], entry_point: Optional[str]) -> None:
    """The entry point must be in code/: an explicit one fails the job, the default warns."""
    name = entry_point or DEFAULT_ENTRY_POINT
    message = _missing_entry_point([m.name[len(CODE_DIR) + 1 :] for m in code], name)
    if message is None:
        return
    if entry_point is not None:
        raise PackagingError(f"{message}; fix --entry-point, or add {name} to the script input")
    _warn(
        "layout",
        f"{CODE_DIR}/{name}",
        f"{message}; add {name} to the script input, or pass --entry-point NAME",
    )


# ---------------------------------------------------------------------------
# Will it serve: the code check
#
# The package's code/ read as the serving toolkit will run it, statically: every .py is
# parsed with ast, and nothing of the user's code is imported or run. sagemaker-inference
# puts code/ first on the path, installs code/requirements.txt (and nothing else) at
# start-up, imports the module that SAGEMAKER_PROGRAM names, and calls model_fn, then
# input_fn, predict_fn and output_fn (or transform_fn alone) with their arguments, plus a
# context where the function has one parameter more. So:
#
# * syntax: the entry point, and every local module it imports (directly or through other
#   local modules, in functions too), must parse, with the serving Python's grammar too
#   where --serving-python names it; a module nothing imports only warns;
# * handlers: the names bound at the entry point's top level (def, assignment, import)
#   must be a set the toolkit takes, each def with a parameter count it can call;
# * imports: every module those modules import must be the standard library's, in code/,
#   named in code/requirements.txt (through IMPORT_NAMES), or importable here; imports
#   under "try: ... except ImportError" or "if TYPE_CHECKING:" are optional;
# * requirements: code/requirements.txt must be where the endpoint reads it, with what
#   pip can install from the index alone, and every -r and -c file it names;
# * model files: what model_fn joins to its model dir must be in the package, and no
#   model file may be empty or a Git LFS pointer.
#
# The check reads code/ files through a callback, so that the job (files on disk),
# --dry-run (a model archive's bytes as it was read) and --verify (the package's bytes as
# they stream past) share it.

HANDLER_ARGUMENTS = {  # what the toolkit passes each handler, before the context
    "model_fn": ("model_dir",),
    "input_fn": ("input_data", "content_type"),
    "predict_fn": ("data", "model"),
    "output_fn": ("prediction", "accept"),
    "transform_fn": ("model", "input_data", "content_type", "accept"),
}
REQUEST_HANDLERS = ("input_fn", "predict_fn", "output_fn")
# Distributions whose import name is not their own name (lowercase, "-" and "." as "_").
IMPORT_NAMES = {
    "scikit-learn": ("sklearn",),
    "scikit-image": ("skimage",),
    "pillow": ("PIL",),
    "pyyaml": ("yaml",),
    "opencv-python": ("cv2",),
    "opencv-python-headless": ("cv2",),
    "opencv-contrib-python": ("cv2",),
    "opencv-contrib-python-headless": ("cv2",),
    "beautifulsoup4": ("bs4",),
    "python-dateutil": ("dateutil",),
    "protobuf": ("google",),
    "googleapis-common-protos": ("google",),
    "attrs": ("attr", "attrs"),
    "pyjwt": ("jwt",),
    "python-dotenv": ("dotenv",),
    "pycryptodome": ("Crypto",),
    "pycryptodomex": ("Cryptodome",),
    "mysqlclient": ("MySQLdb",),
    "psycopg2-binary": ("psycopg2",),
    "grpcio": ("grpc",),
    "pyzmq": ("zmq",),
    "ipython": ("IPython",),
    "setuptools": ("setuptools", "pkg_resources", "distutils"),
    "imbalanced-learn": ("imblearn",),
    "umap-learn": ("umap",),
    "faiss-cpu": ("faiss",),
    "faiss-gpu": ("faiss",),
    "tensorflow-cpu": ("tensorflow",),
    "tensorflow-gpu": ("tensorflow",),
    "xgboost-cpu": ("xgboost",),
    "onnxruntime-gpu": ("onnxruntime",),
    "mlflow-skinny": ("mlflow",),
    "llama-cpp-python": ("llama_cpp",),
    "python-multipart": ("multipart",),
    "websocket-client": ("websocket",),
    "python-json-logger": ("pythonjsonlogger",),
    "msgpack-python": ("msgpack",),
    "pywavelets": ("pywt",),
    "pymupdf": ("fitz",),
    "python-magic": ("magic",),
    "ruamel.yaml": ("ruamel",),
    "tf-keras": ("tf_keras",),
    "sentencepiece": ("sentencepiece",),
}
# Standard modules that a serving Python may lack: added in (3, minor), or removed in it.
STDLIB_ADDED = {"zoneinfo": 9, "graphlib": 9, "tomllib": 11}
STDLIB_REMOVED = {
    **dict.fromkeys(("asynchat", "asyncore", "distutils", "imp", "smtpd"), 12),
    **dict.fromkeys((
        "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "lib2to3", "mailcap",
        "msilib", "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau",
        "telnetlib", "uu", "xdrlib",
    ), 13),
}  # fmt: skip
# requirements.txt lines that need more than the package index: the endpoint may have
# no route to a repository, a path of the machine that built it, or another index.
NEEDS_MORE_THAN_THE_INDEX = (
    (re.compile(r"(?:-e|--editable)\b"), "an editable install"),
    (re.compile(r"(?:-i|--index-url|--extra-index-url|-f|--find-links)\b"), "another index"),
    (re.compile(r"(?:git|hg|svn|bzr)\+", re.I), "a VCS checkout"),
    (re.compile(r"file:", re.I), "a local path"),
    (re.compile(r"(?:https?|ftp)://", re.I), "a direct URL"),
    (re.compile(r"\.{1,2}/|/|~|[^\s;=<>!~\[]*(?:/|\.whl\b|\.tar\.gz\b|\.zip\b)"), "a local path"),
)
DIRECT_REFERENCE = re.compile(r"[A-Za-z0-9][\w.\[\],-]*\s*@\s*")  # "name @ url"
REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
INCLUDED_REQUIREMENTS = re.compile(r"(-r|-c|--requirement|--constraint)\s*=?\s*(\S+)")
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_MAX = 1024  # Git LFS pointer files are smaller than this
HOSTING_CODE_DIR = f"{HOSTING_MODEL_DIR}/{CODE_DIR}"


def _check_serving_python(value: Optional[str]) -> Optional[Tuple[int, int]]:
    """--serving-python "X.Y" as (X, Y); None if not given."""
    if value is None:
        return None
    match = re.fullmatch(r"3\.(\d{1,2})", value)
    if not match:
        raise PackagingError(
            f"--serving-python {value!r} is not a Python 3 version: give the serving image's "
            "as X.Y, such as 3.10"
        )
    return 3, int(match[1])


def _version(version: Tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


class _Import(NamedTuple):
    """One module an import statement asks for."""

    module: str  # absolute, dotted (a relative import resolved against its package)
    names: Tuple[str, ...]  # what "from module import ..." takes (maybe submodules)
    optional: bool  # under try/except ImportError, or if TYPE_CHECKING
    line: int
    problem: str  # why it cannot resolve, whatever is installed ("" if it may)


class _Module(NamedTuple):
    """What the code check takes from one parsed module."""

    imports: List[_Import]
    bindings: Dict[str, ast.AST]  # its top-level names, each with the node that binds it
    star: bool  # a "from x import *" at its top level: its names are not all known
    dynamic: bool  # it imports by computed name or edits sys.path: anything may be imported


_IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    """Whether an except clause catches ImportError (a bare one does)."""
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        (isinstance(kind, ast.Name) and kind.id in _IMPORT_ERRORS)
        or (isinstance(kind, ast.Attribute) and kind.attr in _IMPORT_ERRORS)
        for kind in kinds
    )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_dynamic(call: ast.Call) -> bool:
    """A call that imports by a computed name, or edits the import path."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id == "__import__" or (func.id == "import_module" and not _literal(call))
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "import_module":
        return not _literal(call)
    owner = func.value
    edits_path = func.attr in ("insert", "append", "extend") and (
        isinstance(owner, ast.Attribute) and owner.attr == "path"
    )
    return edits_path or func.attr == "addsitedir"


def _literal(call: ast.Call) -> Optional[str]:
    """The call's first argument, if it is a string literal."""
    first = call.args[0] if call.args else None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


class _ModuleScanner:
    """Collects a module's imports and top-level names, visiting statements, not expressions.

    Only statements can import or bind at the top (calls are looked at for
    import_module and sys.path edits): a tenth of the nodes of a full walk.
    """

    def __init__(self, package: str) -> None:
        self.package = package  # the dotted package a relative import starts from
        self.module = _Module([], {}, False, False)

    def scan(self, body: List[ast.stmt], optional: bool, top: bool) -> None:
        for statement in body:
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    self._add(alias.name, (), optional, statement.lineno, "")
                    if top:
                        bound = alias.asname or alias.name.partition(".")[0]
                        self.module.bindings[bound] = statement
            elif isinstance(statement, ast.ImportFrom):
                self._import_from(statement, optional, top)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if top:
                    self.module.bindings[statement.name] = statement
                self.scan(statement.body, optional, False)
            elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                if top:
                    self._bind_targets(statement)
                self._look_at_calls(statement.value)
            elif isinstance(statement, ast.If) and _is_type_checking(statement.test):
                self.scan(statement.orelse, optional, top)  # the body never runs
            elif isinstance(statement, (ast.Expr, ast.Return)):
                self._look_at_calls(statement.value)
            else:
                self._scan_blocks(statement, optional, top)

    def _scan_blocks(self, statement: ast.stmt, optional: bool, top: bool) -> None:
        """The statements inside a compound statement (if, try, with, for, while, match)."""
        handlers = getattr(statement, "handlers", [])
        guarded = optional or any(_catches_import_error(h) for h in handlers)
        self.scan(getattr(statement, "body", []), guarded, top)
        for handler in handlers:
            self.scan(handler.body, optional, top)
        for field in ("orelse", "finalbody"):
            self.scan(getattr(statement, field, []), optional, top)
        for case in getattr(statement, "cases", []):
            self.scan(case.body, optional, top)

    def _import_from(self, statement: ast.ImportFrom, optional: bool, top: bool) -> None:
        names = tuple(alias.name for alias in statement.names)
        module, problem = statement.module or "", ""
        if statement.level:
            parts = self.package.split(".") if self.package else []
            if not parts:
                problem = "a relative import in a top-level module"
            elif statement.level - 1 > len(parts) - 1:
                problem = "a relative import beyond code/"
            else:
                base = parts[: len(parts) - (statement.level - 1)]
                module = ".".join([*base, module] if module else base)
        shown = "." * statement.level + (statement.module or "")
        self._add(module if not problem else shown, names, optional, statement.lineno, problem)
        if top:
            for alias in statement.names:
                if alias.name == "*":
                    self.module = self.module._replace(star=True)
                else:
                    self.module.bindings[alias.asname or alias.name] = statement

    def _add(
        self, module: str, names: Tuple[str, ...], optional: bool, line: int, why: str
    ) -> None:
        self.module.imports.append(_Import(module, names, optional, line, why))

    def _bind_targets(self, statement: Union[ast.Assign, ast.AnnAssign, ast.AugAssign]) -> None:
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Name):
                self.module.bindings[target.id] = statement
            elif isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)

    def _look_at_calls(self, value: Optional[ast.expr]) -> None:
        if isinstance(value, ast.Call) and not self.module.dynamic:
            if _is_dynamic(value):
                self.module = self.module._replace(dynamic=True)
            elif isinstance(value.func, (ast.Name, ast.Attribute)) and _literal(value):
                called = value.func.id if isinstance(value.func, ast.Name) else value.func.attr
                if called == "import_module":
                    self._add(_literal(value) or "", (), False, value.lineno, "")


class _CodeTree:
    """code/ as the check sees it: its files and directories, relative to code/."""

    def __init__(self, files: Mapping[str, int], directories: Collection[str]) -> None:
        self.files = files
        self.directories = set(directories)
        self.sources = sorted(name for name in files if name.endswith(".py"))
        # Extension modules: "fast.cpython-311-x86_64-linux-gnu.so" is module "fast".
        self.extensions = set()
        for name in files:
            if name.endswith((".so", ".pyd")):
                directory, slash, base = name.rpartition("/")
                self.extensions.add(directory + slash + base.partition(".")[0])

    def module_file(self, dotted: str) -> Optional[str]:
        """The file that defines the dotted module in code/ (a package's __init__.py, if
        any), "" for a namespace package or an extension, None if code/ has no such module."""
        path = dotted.replace(".", "/")
        if path + ".py" in self.files:
            return path + ".py"
        if path in self.directories:
            return path + "/__init__.py" if path + "/__init__.py" in self.files else ""
        return "" if path in self.extensions else None

    def top_level_anywhere(self) -> FrozenSet[str]:
        """Module names at the top of any directory in code/, for code that edits sys.path."""
        names = set()
        for name in (*self.files, *self.directories):
            base = name.rpartition("/")[2]
            names.add(base[:-3] if base.endswith(".py") else base.partition(".")[0])
        return frozenset(names)


@functools.lru_cache(maxsize=1)
def _stdlib_modules() -> FrozenSet[str]:
    """The standard library's top-level module names (sys.stdlib_module_names from 3.10)."""
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return frozenset(names)
    found = set(sys.builtin_module_names)
    stdlib = sysconfig.get_paths()["stdlib"]
    for directory in (stdlib, os.path.join(stdlib, "lib-dynload")):
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):
                if entry.endswith((".py", ".so")) or os.path.isfile(
                    os.path.join(directory, entry, "__init__.py")
                ):
                    found.add(entry.partition(".")[0])
    return frozenset(found - {"site-packages", "dist-packages"})


@functools.lru_cache(maxsize=None)
def _importable_here(top: str) -> bool:
    """Whether this Python finds the top-level module (find_spec runs no code of it)."""
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _stdlib_problem(top: str, serving: Tuple[int, int]) -> Optional[str]:
    """Why the serving Python's standard library lacks top, if it does; None if it has it
    (or it is no standard module at all)."""
    removed = STDLIB_REMOVED.get(top)
    if removed is not None and serving[1] >= removed:
        return f"removed from the standard library in Python 3.{removed}"
    added = STDLIB_ADDED.get(top)
    if added is not None and serving[1] < added:
        return f"in the standard library only from Python 3.{added}"
    return None


class _Requirements:
    """code/requirements.txt read as pip reads it: the import names it provides, and findings."""

    def __init__(self, tree: _CodeTree, read: Callable[[str], Optional[bytes]]) -> None:
        self.import_names: Set[str] = set()
        self.findings: List[Finding] = []
        self._tree, self._read = tree, read
        self._seen: Set[str] = set()
        if "requirements.txt" in tree.files:
            self._read_file("requirements.txt", -1)

    def _read_file(self, name: str, include_depth: int) -> None:
        self._seen.add(name)
        data = self._read(name)
        if data is None:
            return
        text = data.decode("utf-8", "replace")
        directory = name.rpartition("/")[0]
        for number, line in _logical_lines(text):
            self._line(name, number, line, directory, include_depth)

    def _line(self, name: str, number: int, line: str, directory: str, depth: int) -> None:
        shown = f"{CODE_DIR}/{name} line {number}"
        included = INCLUDED_REQUIREMENTS.match(line)
        if included:
            self._include(shown, included[1], included[2], directory, depth)
            return
        reference = DIRECT_REFERENCE.match(line)
        target = line[reference.end() :] if reference else line
        for pattern, what in NEEDS_MORE_THAN_THE_INDEX:
            if pattern.match(target):
                self.findings.append(
                    Finding(
                        "WARN",
                        "requirements",
                        f"{CODE_DIR}/{name}",
                        f"{shown}: {line[:120]!r} needs {what}, which the endpoint may not "
                        "reach when it installs code/requirements.txt at start-up: name a "
                        "package on the index, or put the module in code/",
                    )
                )
                return
        if line.startswith("-"):
            return  # an option pip takes (--hash, --pre, --no-binary...): nothing to install
        found = REQUIREMENT_NAME.match(line)
        if found:
            distribution = re.sub(r"[-_.]+", "-", found[0]).lower()
            names = IMPORT_NAMES.get(distribution, (distribution.replace("-", "_"),))
            self.import_names.update(name.lower() for name in names)

    def _include(self, shown: str, option: str, target: str, directory: str, depth: int) -> None:
        """A -r or -c line: the file must be in code/ (pip reads it relative to this one)."""
        if target.startswith(HOSTING_CODE_DIR + "/"):
            path = target[len(HOSTING_CODE_DIR) + 1 :]
        else:
            path = os.path.normpath(os.path.join(directory, target)) if target[:1] != "/" else ""
        if path and not path.startswith("..") and path in self._tree.files:
            if path not in self._seen and len(self._seen) < MAX_REQUIREMENT_FILES:
                self._read_file(path, depth + 1)
            return
        self.findings.append(
            Finding(
                "FAIL",
                "requirements",
                f"{CODE_DIR}/{path or target}",
                f"{shown}: {option} {target} names a file that is not in code/: pip fails "
                "on it when the endpoint starts, and the endpoint with it; add the file to "
                "the script dir, or remove the line",
            )
        )


def _logical_lines(text: str) -> Iterator[Tuple[int, str]]:
    """requirements.txt's lines as pip joins them (a trailing backslash continues a line),
    comments and blank lines dropped, each with the number of its first line."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = re.sub(r"(^|\s)#.*", "", pending + raw).strip()
        pending = ""
        if line:
            yield start, line


class _ModelPaths:
    """The paths model_fn joins to its model-dir parameter, as string literals."""

    def __init__(self, function: Union[ast.FunctionDef, ast.AsyncFunctionDef]) -> None:
        arguments = [*getattr(function.args, "posonlyargs", []), *function.args.args]
        self.parameter = arguments[0].arg if arguments else None
        self.found: List[Tuple[str, int]] = []
        if self.parameter is not None:
            for node in ast.walk(function):
                path = self._joined(node)
                if path is not None:
                    self.found.append((path, getattr(node, "lineno", function.lineno)))

    def _is_model_dir(self, node: ast.AST) -> bool:
        """The parameter, or Path(parameter)."""
        if isinstance(node, ast.Name):
            return node.id == self.parameter
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("Path", "PurePath", "PosixPath")
            and len(node.args) == 1
            and self._is_model_dir(node.args[0])
        )

    def _joined(self, node: ast.AST) -> Optional[str]:
        """The literal path node joins to the model dir, if it is such a join."""
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if called == "join" and node.args and self._is_model_dir(node.args[0]):
                return _strings(node.args[1:])
            if (
                called == "joinpath"
                and isinstance(node.func, ast.Attribute)
                and self._is_model_dir(node.func.value)
            ):
                return _strings(node.args)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Add)):
            parts: List[ast.expr] = []
            while isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Add)):
                parts.insert(0, node.right)
                node = node.left
            if self._is_model_dir(node):
                return _strings(parts)
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.FormattedValue) and self._is_model_dir(first.value):
                return _strings(node.values[1:])
        return None


def _strings(nodes: Sequence[ast.AST]) -> Optional[str]:
    """The path the nodes join to, if each is a string literal."""
    texts = [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    if not nodes or len(texts) != len(nodes):
        return None
    return "/".join(text.strip("/") for text in texts)


def _parameters(function: Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda]) -> int:
    """How many parameters inspect.signature counts: every one, defaults and * and ** too."""
    arguments = function.args
    return (
        len(getattr(arguments, "posonlyargs", []))
        + len(arguments.args)
        + len(arguments.kwonlyargs)
        + (arguments.vararg is not None)
        + (arguments.kwarg is not None)
    )


def _takes_positionally(
    function: Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda], count: int
) -> bool:
    """Whether a call with count positional arguments binds to the function."""
    arguments = function.args
    positional = len(getattr(arguments, "posonlyargs", [])) + len(arguments.args)
    if positional < count and arguments.vararg is None:
        return False
    if positional - len(arguments.defaults) > count:
        return False
    return all(default is not None for default in arguments.kw_defaults)


def _parse_module(
    name: str, source: bytes, serving: Optional[Tuple[int, int]], bindings: bool
) -> Tuple[Optional[_Module], str]:
    """One code/ file parsed and scanned, or None and why it does not parse. Its top-level
    bindings are kept only if asked for (their nodes keep the whole tree alive)."""
    tree, problem = _syntax_tree(source, f"{CODE_DIR}/{name}", serving)
    if tree is None:
        return None, problem
    package = name[: -len("/__init__.py")] if name.endswith("/__init__.py") else name
    package = package.rpartition("/")[0] if package == name else package
    scanner = _ModuleScanner(package.replace("/", "."))
    scanner.scan(tree.body, False, True)
    module = scanner.module
    return (module if bindings else module._replace(bindings={})), ""


def _syntax_tree(
    source: bytes, shown: str, serving: Optional[Tuple[int, int]]
) -> Tuple[Optional[ast.Module], str]:
    """The module's tree, or None and what is wrong, with the Python that said so."""
    here = (sys.version_info[0], sys.version_info[1])
    if serving is not None and serving < here and here >= (3, 8):
        try:
            return ast.parse(source, shown, feature_version=serving), ""
        except (SyntaxError, ValueError, RecursionError) as exc:
            tree, problem = _syntax_tree(source, shown, None)
            if tree is None:
                return None, problem
            return None, (
                f"{_where(exc)}uses syntax that Python {_version(serving)} lacks "
                f"({_reason(exc)}; --serving-python {_version(serving)})"
            )
    try:
        return ast.parse(source, shown), ""
    except (SyntaxError, ValueError, RecursionError) as exc:
        return (
            None,
            f"{_where(exc)}does not parse: {_reason(exc)} (Python {_version(here)} parsed it)",
        )


def _parse_some(
    sources: List[Tuple[str, bytes]], serving: Optional[Tuple[int, int]], entry_point: str
) -> List[Tuple[str, Optional[_Module], str]]:
    """Parse and scan each of sources (in a worker process, or here), keeping the entry
    point's bindings."""
    with _collector_paused():
        return [
            (name, *_parse_module(name, data, serving, name == entry_point))
            for name, data in sources
        ]


PARALLEL_PARSE_BYTES = 2 << 20  # less source than this is parsed here: a pool costs more


def _parse_modules(
    sources: List[Tuple[str, bytes]], serving: Optional[Tuple[int, int]], entry_point: str
) -> Dict[str, Tuple[Optional[_Module], str]]:
    """Every code/ source parsed and scanned: {name: (module or None, why it does not parse)}.

    ast holds the GIL, so a large code/ (a vendored library) is parsed in forked
    worker processes, one a CPU, in chunks of about equal size; anywhere a pool
    cannot start, here. The results do not depend on where they were parsed.
    """
    parsed: List[Tuple[str, Optional[_Module], str]] = []
    workers = available_cpus()
    if workers > 1 and sum(len(data) for _, data in sources) >= PARALLEL_PARSE_BYTES:
        with contextlib.suppress(OSError, ValueError, BrokenProcessPool):
            parsed = _parse_in_workers(sources, serving, entry_point, workers)
    if not parsed:
        parsed = _parse_some(sources, serving, entry_point)
    return {name: (module, problem) for name, module, problem in parsed}


def _parse_in_workers(
    sources: List[Tuple[str, bytes]],
    serving: Optional[Tuple[int, int]],
    entry_point: str,
    workers: int,
) -> List[Tuple[str, Optional[_Module], str]]:
    chunks: List[List[Tuple[str, bytes]]] = [[] for _ in range(4 * workers)]
    sizes = [0] * len(chunks)
    for item in sorted(sources, key=lambda item: -len(item[1])):  # the largest first
        smallest = sizes.index(min(sizes))
        chunks[smallest].append(item)
        sizes[smallest] += len(item[1])
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [
            pool.submit(_parse_some, chunk, serving, entry_point) for chunk in chunks if chunk
        ]
        try:
            while not all(future.done() for future in futures):
                _check_stop()
                concurrent.futures.wait(futures, timeout=STOP_CHECK_INTERVAL)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [item for future in futures for item in future.result()]


class CodeCheck:
    """The code check of one package's code/ (see the section's opening comment).

    files and directories are code/'s, relative to it; read(name) gives a code/
    file's bytes (None if it cannot); package_names are the package's own
    names, for what model_fn opens.
    """

    def __init__(
        self,
        files: Mapping[str, int],
        directories: Collection[str],
        read: Callable[[str], Optional[bytes]],
        entry_point: str,
        serving_python: Optional[Tuple[int, int]],
    ) -> None:
        self.tree = _CodeTree(files, directories)
        self.entry_point = entry_point
        self.serving = serving_python
        self.here = (sys.version_info[0], sys.version_info[1])
        self.findings: List[Finding] = []
        self._read = read
        self._budget = MAX_CODE_CHECK_BYTES
        self.modules: Dict[str, _Module] = {}  # parsed, by their file under code/
        self.requirements = _Requirements(self.tree, self._read_bounded)
        self.findings += self.requirements.findings

    def _read_bounded(self, name: str) -> Optional[bytes]:
        """A code/ file's bytes, within the check's budget of MAX_CODE_CHECK_BYTES."""
        size = self.tree.files.get(name, 0)
        if size > self._budget:
            self._add(
                "WARN",
                "syntax",
                name,
                f"{CODE_DIR}/{name} is not checked: the code check reads at most "
                f"{_human(MAX_CODE_CHECK_BYTES)} of code/, and this would pass it",
            )
            return None
        self._budget -= size
        return self._read(name)

    def _add(self, level: str, check: str, name: str, message: str) -> None:
        self.findings.append(Finding(level, check, f"{CODE_DIR}/{name}" if name else "", message))

    def run(self, holds: Callable[[str], bool], root: Callable[[], List[str]]) -> List[Finding]:
        """Every check; the findings, FAILs and WARNs (none: the code will serve, as far as
        a reading can tell). holds(name) says whether the package holds a name (a file or
        a directory), root() lists the names at its top."""
        if self.entry_point not in self.tree.files:
            return self.findings  # the layout checks say so
        if self.serving is not None and self.serving < self.here < (3, 8):
            self._add(
                "WARN",
                "syntax",
                "",
                f"--serving-python {_version(self.serving)}: Python {_version(self.here)}, "
                "which runs this check, cannot parse with another version's grammar; the code "
                "was parsed as it parses it: run the check on Python 3.8 or later to be sure",
            )
        if self.serving is not None and self.serving > self.here:
            self._add(
                "WARN",
                "syntax",
                "",
                f"--serving-python {_version(self.serving)} is newer than this Python "
                f"({_version(self.here)}), which parses the code: syntax that only the newer "
                f"one has is reported, not refused; run the check on Python "
                f"{_version(self.serving)} or later to be sure",
            )
        sources = [(name, self._read_bounded(name)) for name in self.tree.sources]
        readable = [(name, source) for name, source in sources if source is not None]
        parsed = _parse_modules(readable, self.serving, self.entry_point)
        self.modules = {name: module for name, (module, _) in parsed.items() if module}
        reachable = self._reachable()
        for name, (module, problem) in sorted(parsed.items()):
            if module is None:
                self._syntax_error(name, problem, name in reachable)
        entry = self.modules.get(self.entry_point)
        if entry is not None:
            self._check_handlers(entry)
            self._check_model_paths(entry, holds, root)
        self._check_imports(reachable)
        return self.findings

    def _syntax_error(self, name: str, problem: str, reachable: bool) -> None:
        """A file that does not parse: FAIL where the entry point imports it, else WARN."""
        level = "FAIL" if reachable and not self._serving_is_newer() else "WARN"
        fix = (
            "the endpoint fails to import it: fix it"
            if reachable
            else "nothing imports it from the entry point, so it cannot break the endpoint"
        )
        self._add(level, "syntax", name, f"{CODE_DIR}/{name} {problem}; {fix}")

    def _serving_is_newer(self) -> bool:
        return self.serving is not None and self.serving > self.here

    def _reachable(self) -> Set[str]:
        """The entry point and every local module it imports, through other local modules
        too (a file that does not parse counts, and imports nothing): their files."""
        reachable = {self.entry_point}
        pending = [self.entry_point]
        while pending:
            module = self.modules.get(pending.pop())
            if module is None:
                continue
            if module.dynamic:  # any module may be imported: every one counts as served
                new = set(self.tree.sources) - reachable
            else:
                new = {f for i in module.imports for f in self._local_files(i)} - reachable
            reachable |= new
            pending.extend(sorted(new))
        return reachable

    def _local_files(self, wanted: _Import) -> List[str]:
        """The code/ files an import runs: each package on the way, the module, and the
        submodules that "from ... import" names."""
        if wanted.problem:
            return []
        files: List[str] = []
        parts = wanted.module.split(".")
        for depth in range(1, len(parts) + 1):
            found = self.tree.module_file(".".join(parts[:depth]))
            if found is None:
                return files
            if found:
                files.append(found)
        for name in wanted.names:
            found = self.tree.module_file(f"{wanted.module}.{name}")
            if found:
                files.append(found)
        return files

    def _check_imports(self, reachable: Set[str]) -> None:
        """One WARN per served file whose imports resolve nowhere, naming them."""
        anywhere = None
        for name in sorted(reachable):
            module = self.modules.get(name)
            if module is None:
                continue
            if module.dynamic and anywhere is None:
                anywhere = self.tree.top_level_anywhere()
            missing = [
                (wanted, why)
                for wanted in module.imports
                if not wanted.optional
                for why in (self._unresolved(wanted, anywhere if module.dynamic else None),)
                if why is not None
            ]
            if missing:
                said = ", ".join(
                    f"{wanted.module or '.'} (line {wanted.line}{'; ' + why if why else ''})"
                    for wanted, why in missing[:10]
                )
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                self._add(
                    "WARN",
                    "imports",
                    name,
                    f"{CODE_DIR}/{name} imports {said}{more}, which neither code/, "
                    "code/requirements.txt, the standard library nor this Python has: the "
                    "endpoint fails with 'No module named ...' unless its image has them; add "
                    "them to code/requirements.txt, or the modules to code/",
                )

    def _unresolved(self, wanted: _Import, anywhere: Optional[FrozenSet[str]]) -> Optional[str]:
        """Why the import cannot resolve ("" for no reason beyond not being found), or None."""
        if wanted.problem:
            return wanted.problem
        top = wanted.module.partition(".")[0]
        if self.tree.module_file(top) is not None:
            if self.tree.module_file(wanted.module) is None:
                return f"code/{wanted.module.replace('.', '/')} is missing"
            return None
        if top.lower() in self.requirements.import_names:
            return None
        if anywhere is not None and top in anywhere:
            return None
        if top in _stdlib_modules() or top in STDLIB_ADDED:
            serving = self.serving or self.here
            return _stdlib_problem(top, serving)
        return None if _importable_here(top) else ""

    def _check_handlers(self, entry: _Module) -> None:
        """The handlers as the toolkit takes them: the set, and each one's parameters."""
        shown = f"{CODE_DIR}/{self.entry_point}"
        bound = entry.bindings
        request = [name for name in REQUEST_HANDLERS if name in bound]
        if "transform_fn" in bound and request and not entry.star:
            self._add(
                "FAIL",
                "handlers",
                self.entry_point,
                f"{shown} defines transform_fn and {', '.join(request)}: the serving toolkit "
                "refuses that with a ValueError at the first request; keep transform_fn "
                "alone, or drop it and keep input_fn, predict_fn and output_fn",
            )
        for name, arguments in HANDLER_ARGUMENTS.items():
            node = bound.get(name)
            function = node.value if isinstance(node, ast.Assign) else node
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                self._check_parameters(name, function, arguments)
        if "model_fn" not in bound and not entry.star:
            self._add(
                "WARN",
                "handlers",
                self.entry_point,
                f"{shown} defines no model_fn: the serving container's default loader is "
                "used, and some framework containers have none; define model_fn(model_dir) "
                "to load the model",
            )

    def _check_parameters(
        self,
        name: str,
        function: Union[ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda],
        arguments: Tuple[str, ...],
    ) -> None:
        if getattr(function, "decorator_list", None):
            return  # a decorator may change the signature
        count, given = _parameters(function), len(arguments)
        if count in (given, given + 1) and _takes_positionally(function, count):
            return
        calls = f"{given} ({', '.join(arguments)}) or {given + 1} (and the context)"
        what = (
            f"takes {count} parameter{'s' if count != 1 else ''}"
            if count not in (given, given + 1)
            else f"cannot take its {count} parameters as positional arguments"
        )
        self._add(
            "FAIL",
            "handlers",
            self.entry_point,
            f"{CODE_DIR}/{self.entry_point} line {function.lineno}: {name} {what}; the "
            f"serving toolkit calls it with {calls}, and fails otherwise: give it "
            f"def {name}({', '.join(arguments)})",
        )

    def _check_model_paths(
        self, entry: _Module, holds: Callable[[str], bool], root: Callable[[], List[str]]
    ) -> None:
        """WARN for a literal path that model_fn joins to its model dir, and the package lacks."""
        function = entry.bindings.get("model_fn")
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        for path, line in _ModelPaths(function).found:
            path = posixpath.normpath(path.strip("/")) if path.strip("/") else ""
            if not path or path.startswith("..") or any(c in path for c in "*?[{") or holds(path):
                continue
            held = [name for name in root() if name not in (CODE_DIR, CALIBRATION_DIR)][:5]
            self._add(
                "WARN",
                "model files",
                self.entry_point,
                f"model_fn ({CODE_DIR}/{self.entry_point} line {line}) opens {path!r} in the "
                f"model dir, which the package does not hold (at its root: "
                f"{', '.join(held) or 'nothing'}): fix the name, or add the file to the model",
            )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off in the block: parsing makes millions of objects,
    none in a cycle, and each collection they set off would walk all that are alive."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _where(exc: BaseException) -> str:
    line = getattr(exc, "lineno", None)
    return f"line {line}: " if line else ""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it nests too deeply for the compiler"
    return getattr(exc, "msg", None) or str(exc)


def _empty_model_files(files: Mapping[str, int]) -> List[Finding]:
    """WARN for each empty model file (outside code/): it cannot load."""
    return [
        Finding(
            "WARN",
            "model files",
            name,
            f"{name} is empty (0 bytes): a model file that cannot load (a failed upload or "
            "write?); package the real file",
        )
        for name, size in files.items()
        if not size
        and not name.startswith(CODE_DIR + "/")
        and not name.rpartition("/")[2].startswith((".", "_"))
    ]


def _lfs_pointer(name: str, data: bytes) -> Optional[Finding]:
    """A WARN if a model file's bytes are a Git LFS pointer, not the file."""
    if len(data) >= LFS_POINTER_MAX or not data.startswith(LFS_POINTER):
        return None
    return Finding(
        "WARN",
        "model files",
        name,
        f"{name} is a Git LFS pointer ({len(data)} bytes), not the file it stands for: run "
        "git lfs pull where the model comes from, then package again",
    )


def _requirements_elsewhere(names: Iterable[str], code_files: Collection[str]) -> List[Finding]:
    """WARN for a requirements.txt outside code/'s top while code/ has none of its own."""
    if "requirements.txt" in code_files:
        return []
    return [
        Finding(
            "WARN",
            "requirements",
            name,
            f"{name} is not installed: the endpoint installs only "
            f"{CODE_DIR}/requirements.txt, and code/ has none; move it to the script dir's top",
        )
        for name in names
        if name.rpartition("/")[2] == "requirements.txt"
    ]


def check_code(
    files: Mapping[str, int],
    directories: Collection[str],
    read: Callable[[str], Optional[bytes]],
    entry_point: str,
    serving_python: Optional[Tuple[int, int]],
) -> List[Finding]:
    """Whether the package will serve, as far as reading it can tell: its findings.

    files (each file's size) and directories are the whole package's, by name;
    read(name) gives a code/ file's bytes. entry_point is relative to code/.
    """
    prefix = CODE_DIR + "/"
    code_files = {
        name[len(prefix) :]: size for name, size in files.items() if name.startswith(prefix)
    }
    findings = _empty_model_files(files) + _requirements_elsewhere(files, code_files)
    if not code_files:
        return findings
    code_directories = [name[len(prefix) :] for name in directories if name.startswith(prefix)]
    check = CodeCheck(
        code_files,
        code_directories,
        lambda name: read(prefix + name),
        entry_point,
        serving_python,
    )
    directory_set = set(directories)
    holds = lambda name: name in files or name in directory_set  # noqa: E731

    def root() -> List[str]:
        return sorted({name.partition("/")[0] for name in files})

    return findings + check.run(holds, root)


# ---------------------------------------------------------------------------
# The gzip writer: the one seam between the tar stream and the compressed file
#
# Parallel gzip, after pigz. The tar stream is cut at fixed offsets into
# CHUNK_SIZE chunks. A worker thread deflates each chunk with a raw deflate
# stream of its own, primed with the last 32 KiB of the previous chunk as its
# dictionary, so matches reach back across the cut as in one long stream. Each
# piece ends with a sync flush (an empty stored block), which byte-aligns it,
# so the pieces concatenate into one valid deflate stream. After the last
# piece come an empty final block (0x03 0x00), then the CRC-32 and the length
# of the whole input: one standard gzip member that any gunzip reads.
#
# The bytes depend on the input and the level alone. The cuts are at fixed
# offsets, a piece depends only on its chunk and the 32 KiB before it, and the
# pieces are written in input order; one thread gives the same bytes as eight.
#
# zlib releases the GIL while it deflates, so the threads run in parallel.
# Each worker also returns its chunk's CRC-32, and the main thread combines
# them (crc32_combine, a few microseconds a chunk). At most 2 x threads chunks
# are in flight, so memory stays flat however large the model is.
#
# Adaptive coding. Dense weights (float32, float16, bfloat16) hold almost no
# repeats worth a match: deflate's match search there is wasted work, and the
# short matches it takes cost more bits than they save. So each chunk is coded
# either at the level or with Huffman codes alone (Z_HUFFMAN_ONLY, 3-4x
# faster), whichever is smaller on PROBES probes of PROBE_SIZE bytes spread
# evenly across the chunk, each coded both ways on its own; a tie goes to
# the level: probes that code alike may still repeat each other across the
# chunk, which only matching finds (a chunk of one 16 KiB run of bytes with no
# repeats inside it, 64 times over, codes to 23 KB at level 6 and to 1 MB
# with Huffman codes alone). One probe at the start is not enough: in a pickled data frame a
# chunk's start is often unlike its rest. But once the probes so far code at
# least 10% smaller at the level (text, sparse arrays), the chunk is coded at
# the level without more probes: that can cost at most Huffman's gain, never
# make the chunk larger than coding at the level, and it saves most of the
# probes' time on text. The choice depends on the chunk's bytes and the level
# alone, so the bytes still do not depend on the thread count, and both
# codings are plain deflate blocks in the same one stream.
# Level 0 stores; --no-adaptive codes every chunk at the level.
#
# Each piece is announced (its size, the window it was primed with, its chunk's
# CRC-32 and length) just before it is written, so that the read-back can
# inflate pieces in parallel too (see Verification).

CHUNK_SIZE = 1 << 20
WINDOW_SIZE = 32 << 10
GZIP_HEADER_SIZE = 10
FINAL_BLOCK = b"\x03\x00"  # an empty fixed-Huffman block with BFINAL set, then the trailer
PROBES = 4
PROBE_SIZE = 16 << 10
CLEAR_WIN = 0.9  # the level's size, relative to Huffman's, that ends the probing

Chunk = Union[bytes, memoryview]  # a chunk is a view of the joined input, not a copy


if TYPE_CHECKING:

    class _Writable(Protocol):
        def write(self, data: bytes) -> object: ...


_CRC32_POLYNOMIAL = 0xEDB88320  # bit-reflected, as zlib's


def _gf2_multiply(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial; a must not be 0 (zlib's multmodp)."""
    mask = 1 << 31
    product = 0
    while True:
        if a & mask:
            product ^= b
            if not a & (mask - 1):
                return product
        mask >>= 1
        b = (b >> 1) ^ _CRC32_POLYNOMIAL if b & 1 else b >> 1


def _x_to_the_2_to_the(count: int) -> List[int]:
    """x^(2^k) modulo the polynomial, for k in range(count)."""
    powers = [1 << 30]  # x^1
    while len(powers) < count:
        powers.append(_gf2_multiply(powers[-1], powers[-1]))
    return powers


_X_2N = _x_to_the_2_to_the(32)


@functools.lru_cache(maxsize=64)
def _shift_operator(length: int) -> int:
    """x^(8 * length) modulo the polynomial: appending length bytes, as a multiplier."""
    power, k = 1 << 31, 3  # x^0; bytes are 2^3 bits
    while length:
        if length & 1:
            power = _gf2_multiply(_X_2N[k & 31], power)
        length >>= 1
        k += 1
    return power


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A + B, from crc32(A), crc32(B) and len(B)."""
    return _gf2_multiply(_shift_operator(length2), crc1) ^ crc2


def _gzip_header(level: int) -> bytes:
    """A fixed gzip header: no file name, mtime 0, OS 'unknown', so bytes never vary."""
    extra_flags = 2 if level == 9 else 4 if level == 1 else 0
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([extra_flags, 255])


def _raw_deflate(level: int, strategy: int, window: bytes = b"") -> Any:
    """A raw deflate stream (no header) at level with strategy, primed with window if any."""
    if window:
        return zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, strategy, window)
    return zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, strategy)


def choose_strategy(chunk: Chunk, level: int) -> int:
    """Z_HUFFMAN_ONLY if the chunk's probes code smaller with it than at level, else default."""
    step = max(len(chunk) // PROBES, 1)
    sizes = {zlib.Z_DEFAULT_STRATEGY: 0, zlib.Z_HUFFMAN_ONLY: 0}
    for start in range(0, step * PROBES, step):
        probe = chunk[start : start + PROBE_SIZE]
        for strategy in sizes:
            deflate = _raw_deflate(level, strategy)
            sizes[strategy] += len(deflate.compress(probe) + deflate.flush())
        if sizes[zlib.Z_DEFAULT_STRATEGY] <= sizes[zlib.Z_HUFFMAN_ONLY] * CLEAR_WIN:
            return zlib.Z_DEFAULT_STRATEGY  # matching pays clearly: no need to look further
    huffman_wins = sizes[zlib.Z_HUFFMAN_ONLY] < sizes[zlib.Z_DEFAULT_STRATEGY]
    return zlib.Z_HUFFMAN_ONLY if huffman_wins else zlib.Z_DEFAULT_STRATEGY


def _deflate_chunk(
    chunk: Chunk, window: bytes, level: int, adaptive: bool
) -> Tuple[bytes, int, int]:
    """Deflate one chunk, primed with the window before it; end byte-aligned (sync flush)."""
    strategy = zlib.Z_DEFAULT_STRATEGY
    if adaptive and level > 0:
        strategy = choose_strategy(chunk, level)
    deflate = _raw_deflate(level, strategy, window)
    piece = deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return piece, zlib.crc32(chunk), len(chunk)


class GzipWriter(_ContextManager):
    """Compresses everything written to it into one gzip member on out, on threads.

    Use it as a context manager: a clean exit writes the end of the stream, an
    exception cancels the queued chunks; either way no worker thread outlives it.
    """

    def __init__(
        self,
        out: "_Writable",
        level: int,
        threads: int,
        adaptive: bool = True,
        announce: Optional[Callable[[int, bytes, int, int], None]] = None,
    ) -> None:
        self._out = out
        self._level = level
        self._adaptive = adaptive
        self._announce = announce
        self._max_in_flight = 2 * threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deflate")
        self._in_flight: Deque[Tuple[Future[Tuple[bytes, int, int]], bytes]] = deque()
        self._queued: List[Chunk] = []  # less than a chunk in all
        self._queued_size = 0
        self._window = b""
        self._crc = 0
        self.size = 0
        out.write(_gzip_header(level))

    def write(self, data: bytes) -> None:
        """Queue data for compression; it is kept, not copied, so it must not change."""
        self.size += len(data)
        self._queued.append(data)
        self._queued_size += len(data)
        if self._queued_size >= CHUNK_SIZE:
            self._submit_whole_chunks()

    def _submit_whole_chunks(self) -> None:
        """Join what is queued (the one copy) and submit each whole chunk as a view of it."""
        joined = memoryview(b"".join(self._queued))
        start = 0
        while len(joined) - start >= CHUNK_SIZE:
            self._submit(joined[start : start + CHUNK_SIZE])
            start += CHUNK_SIZE
        self._queued_size = len(joined) - start
        self._queued = [joined[start:]] if self._queued_size else []

    def _submit(self, chunk: Chunk) -> None:
        coding = (self._level, self._adaptive)
        future = self._pool.submit(_deflate_chunk, chunk, self._window, *coding)
        self._in_flight.append((future, self._window))
        self._window = bytes(chunk[-WINDOW_SIZE:])  # a copy: a view would keep the whole join
        if len(self._in_flight) >= self._max_in_flight:
            self._write_oldest()

    def _write_oldest(self) -> None:
        future, window = self._in_flight.popleft()
        piece, crc, length = future.result()
        self._crc = crc32_combine(self._crc, crc, length)
        if self._announce is not None:
            self._announce(len(piece), window, crc, length)
        self._out.write(piece)

    def close(self) -> None:
        """Compress what is left, write every piece, then the final block and trailer."""
        if self._queued_size:
            self._submit(b"".join(self._queued))
        self._queued, self._queued_size = [], 0
        while self._in_flight:
            self._write_oldest()
        self._out.write(FINAL_BLOCK + struct.pack("<II", self._crc, self.size & 0xFFFFFFFF))

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                self.close()
        finally:
            for future, _ in self._in_flight:  # shutdown(cancel_futures=) is Python 3.9+
                future.cancel()
            self._pool.shutdown(wait=True)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def _cgroup_cpu_quota() -> Optional[float]:
    """The cgroup's CPU limit in CPUs (v2 cpu.max, else v1 cfs quota), or None if unlimited."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        quota, period = Path(CGROUP_V2_CPU_MAX).read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int(Path(CGROUP_V1_CPU_QUOTA).read_text())
        period_us = int(Path(CGROUP_V1_CPU_PERIOD).read_text())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    return None


# ---------------------------------------------------------------------------
# Writing the tar stream
#
# Small files are many, and each costs a few system calls (open, read, fstat, close) and
# a little Python (its header, CRC-32 and screening). A system call lets go of the GIL,
# and getting it back waits while another thread runs Python (the read-back's parsing):
# measured on 50,000 small files, those waits cost more than the calls themselves. So
# where there are many small files, a child process, the reader, does all of their
# per-file work, on a core of its own:
#
# * it walks the members in order and, for each directory and each file of at most
#   SMALL_FILE_SIZE, packs its header, and a file's bytes (read whole, one fstat after
#   the read: see read_whole) and padding, into a frame of about FRAME_SIZE; with the
#   frame go the CRC-32s of the members it holds, their SHA-256s where a report asks,
#   and what screening their bytes found;
# * a larger file ends the frame, with a mark that the member after it is the main
#   process's, which streams it from disk as ever (no copy through a pipe), while the
#   reader goes on with the members after it;
# * frames go through a pipe, in member order, and the main process takes each in turn:
#   what the screen found first (a credential fails the run there, as if found here),
#   then the CRC-32s into what was written, then the bytes into the gzip writer. So the
#   stream is byte for byte the one a single process writes, and each member's record is
#   in place before the read-back can reach it.
#
# The reader is at most a frame and the pipe's capacity ahead: it blocks on a full pipe.
# It uses only system calls, zlib, hashlib and re, so that no lock another thread held
# when it was forked can stop it. A failure in it (a file changed, say) is sent as its
# exception and raised by the main process at the same member; it dies with a stop
# signal, and is killed when the main process ends first. With few small files, or
# without fork, the main process makes the same frames itself.

SMALL_FILE_SIZE = 256 << 10  # read whole by the reader; larger files stream in the main process
FRAME_SIZE = 1 << 20  # of tar bytes in a frame, about
READER_MIN_FILES = 1_000  # small files, below which a reader costs more than it saves
PIPE_SIZE = 1 << 20  # asked of Linux (F_SETPIPE_SZ) for the reader's pipe; it may give less
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, a name Python 3.10 added
_MESSAGE_HEAD = struct.Struct("<QQQ")  # a message's parts' sizes: meta, CRC-32s, data


class _Frame(NamedTuple):
    """A run of members in the tar stream (see the section's opening comment)."""

    data: bytes  # their headers, bytes and paddings
    crcs: bytes  # their CRC-32s (0 for a directory), an array of "I"
    digests: List[str]  # their SHA-256s ("" for a directory), where asked
    verdicts: List[_Verdict]  # what screening their bytes found, where asked
    content: int  # the bytes of file contents in data
    then_large: bool  # whether the member after them is a larger file, the main process's


class _FrameBuilder:
    """Gathers members into a frame; take() hands it over and starts the next."""

    def __init__(self, screened: bool, digests: bool) -> None:
        self._screened, self._digests = screened, digests
        self._start()

    def _start(self) -> None:
        self.size = 0
        self._parts: List[bytes] = []
        self._crcs = array.array("I")
        self._hexes: List[str] = []
        self._files: List[Tuple[str, bytes]] = []

    def add(self, name: str, header: bytes, data: Optional[bytes]) -> None:
        """A member: its name, header and bytes (None for a directory)."""
        if data is None:
            self._parts.append(header)
            self._crcs.append(0)
            self._hexes += ("",) if self._digests else ()
            self.size += len(header)
            return
        padding = _padding(len(data))
        self._parts += (header, data, padding)
        self._crcs.append(zlib.crc32(data))
        if self._digests:
            self._hexes.append(hashlib.sha256(data).hexdigest())
        self._files.append((name, data))
        self.size += len(header) + len(data) + len(padding)

    def take(self, then_large: bool) -> _Frame:
        verdicts = _screen_whole_files(self._files) if self._screened else []
        content = sum(len(data) for _, data in self._files)
        frame = _Frame(
            b"".join(self._parts), self._crcs.tobytes(), self._hexes, verdicts, content, then_large
        )
        self._start()
        return frame


def _frames(
    members: Sequence[Member], screened: bool, digests: bool
) -> Generator[_Frame, None, None]:
    """The tar stream of members, in frames; a larger file is left to the caller."""
    frame = _FrameBuilder(screened, digests)
    with _DirectoryChain() as directories:
        for member in members:
            _check_stop()
            name, _, _, is_dir, size, mode, mtime, _ = member
            if size > SMALL_FILE_SIZE:
                yield frame.take(then_large=True)
                continue
            header = member_header(name, is_dir, size, mode, mtime)
            frame.add(name, header, None if is_dir else directories.read_whole(member))
            if frame.size >= FRAME_SIZE:
                yield frame.take(then_large=False)
    yield frame.take(then_large=False)


class _Reader(_ContextManager):
    """The reader process (see the section's opening comment); frames() are its frames."""

    def __init__(self, frames: Iterator[_Frame]) -> None:
        read_end, write_end = os.pipe()
        try:
            if sys.platform.startswith("linux"):
                with contextlib.suppress(OSError):  # more than the default 64 KiB: fewer reads
                    fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
            with warnings.catch_warnings():  # 3.12+ warns of any thread: see the opening comment
                warnings.simplefilter("ignore", DeprecationWarning)
                self._pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        if self._pid == 0:
            os.close(read_end)
            _serve_frames(frames, write_end)
        os.close(write_end)
        self._fd = read_end

    def frames(self) -> Iterator[_Frame]:
        while True:
            sizes = _MESSAGE_HEAD.unpack(self._read(_MESSAGE_HEAD.size))
            meta, crcs, data = (self._read(size) for size in sizes)
            kind, *values = json.loads(meta)
            if kind == "end":
                return
            if kind == "error":
                raise _reader_error(*values)
            digests, verdicts, content, then_large = values
            found = [_Verdict(n, f, p and Finding(*p)) for n, f, p in verdicts]
            yield _Frame(data, crcs, digests, found, content, then_large)

    def _read(self, size: int) -> bytes:
        """size bytes from the reader; a stop is answered while it waits."""
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            if not select.select([self._fd], [], [], STOP_CHECK_INTERVAL)[0]:
                _check_stop()
                continue
            count = os.readv(self._fd, [view[got:]])
            if not count:
                raise self._ended()
            got += count
        return data  # type: ignore[return-value]  # a bytearray: bytes to every reader of it

    def _ended(self) -> PackagingError:
        """What to say when the reader ended without a word."""
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        _check_stop()
        if signum in STOP_SIGNALS:  # sent to the process group (^C), or to it alone: a stop
            raise _Stopped(signum)
        how = f"killed by signal {signum}" if signum else f"exit status {os.WEXITSTATUS(status)}"
        return PackagingError(
            f"the process reading the input files ended unexpectedly ({how}); if the job's "
            "memory ran out, use a larger instance; otherwise run the job again"
        )

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)
        if self._pid:
            os.kill(self._pid, signal.SIGKILL)  # done already, or not needed any longer
            os.waitpid(self._pid, 0)


def _serve_frames(frames: Iterator[_Frame], fd: int) -> NoReturn:
    """The reader process's life: every frame, then "end" or the exception that stopped it;
    then exit at once, running nothing of the parent's (no cleanup, no atexit)."""
    status = 1
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        gc.disable()  # it makes no cycles, and collecting would copy the parent's pages
        try:
            for frame in frames:
                verdicts = [(v.name, v.found, v.pointer) for v in frame.verdicts]
                meta = ["frame", frame.digests, verdicts, frame.content, frame.then_large]
                _send(fd, meta, frame.crcs, frame.data)
            _send(fd, ["end"])
        except Exception as exc:  # the main process raises it
            _send(fd, ["error", *_error_values(exc)])
        status = 0
    finally:
        os._exit(status)


def _send(fd: int, meta: List[Any], crcs: bytes = b"", data: bytes = b"") -> None:
    """One message: the sizes of its parts, then its meta (JSON), CRC-32s and data."""
    head = json.dumps(meta).encode()
    for piece in (_MESSAGE_HEAD.pack(len(head), len(crcs), len(data)), head, crcs, data):
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]


def _error_values(exc: Exception) -> List[Any]:
    """An exception as JSON values, for _reader_error to raise again."""
    if isinstance(exc, OSError):
        return ["OSError", exc.errno, exc.strerror, exc.filename]
    return [type(exc).__name__, str(exc)]


def _reader_error(kind: str, *values: Any) -> Exception:
    """The exception the reader sent (see _error_values)."""
    if kind == "OSError":
        return OSError(*values)
    if kind == "PackagingError":
        return PackagingError(*values)
    return RuntimeError(f"the reader process failed: {kind}: {values[0]}")


@contextlib.contextmanager
def _read_ahead(
    members: Sequence[Member], screened: bool, digests: bool
) -> Iterator[Iterator[_Frame]]:
    """The frames of members' tar stream: from a reader process where it pays, else made here."""
    small = sum(not m.is_dir and m.size <= SMALL_FILE_SIZE for m in members)
    frames = _frames(members, screened, digests)
    reader = None
    if small >= READER_MIN_FILES and hasattr(os, "fork"):
        with contextlib.suppress(OSError):  # no process or pipe to be had: read here
            reader = _Reader(frames)
    if reader is None:
        with contextlib.closing(frames):
            yield frames
        return
    with reader:
        yield reader.frames()


def _read_block(fd: int, member: Member, copied: int) -> Tuple[bytes, bool]:
    """The file's next block, of at most IO_BLOCK_SIZE bytes, and whether it ends the file.

    Each read asks for one byte more than is left, so a file that grew is
    seen. A short read at the planned size (which the file had when opened)
    is the end of a regular file (one reads short nowhere else), so a small
    file takes one read, not two.
    """
    wanted = min(IO_BLOCK_SIZE, member.size + 1 - copied)
    block = os.read(fd, wanted)
    copied += len(block)
    return block, not block or copied > member.size or (
        copied == member.size and len(block) < wanted
    )


def _write_large_file(
    member: Member,
    sink: GzipWriter,
    progress: _Progress,
    screen: Optional[ContentScreen],
    directories: _DirectoryChain,
    written: "Written",
) -> None:
    """Stream a larger file's header, bytes and padding into sink; add it to written.

    The file is opened through directories, as it was planned (see _stamp),
    and must be so still once read. screen, if given, sees every byte, as does
    a SHA-256 where written keeps them; a file that changed is refused (what was
    written of it is then discarded with the package).
    """
    name, _, _, _, size, mode, mtime, _ = member
    scan = screen.open(name) if screen is not None else None
    digest = None if written.digests is None else hashlib.sha256()
    sink.write(member_header(name, False, size, mode, mtime))
    fd = directories.open_file(member.path, member.stamp)
    try:
        crc = copied = 0
        ended = False
        while not ended:
            _check_stop()
            block, ended = _read_block(fd, member, copied)
            crc = zlib.crc32(block, crc)
            if digest is not None:
                digest.update(block)
            if scan is not None:
                scan.feed(block)
            sink.write(block)
            copied += len(block)
            progress.advance(len(block))
        _check_unchanged(fd, member.path, member.stamp)  # a change of size too
    finally:
        os.close(fd)
    if screen is not None and scan is not None:
        screen.close(scan)
    sink.write(_padding(copied))
    written.crcs.append(crc)
    if written.digests is not None and digest is not None:
        written.digests.append(digest.hexdigest())


class Written(Sequence[Record]):
    """What write_tar wrote, as records: the members, and each one's CRC-32 once written.

    The CRC-32s sit in an array of 4-byte integers and a record is made only
    when asked for, so what was written costs 4 bytes a member beyond the plan.
    Its length is the number of members written so far.
    """

    def __init__(self, members: List[Member], digests: bool = False) -> None:
        self.members = members
        self.crcs = array.array("I")
        # Each file's SHA-256 (hex; "" for a directory), only where a report asks for them.
        self.digests: Optional[List[str]] = [] if digests else None

    def __len__(self) -> int:
        return len(self.crcs)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> List[Record]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Record, List[Record]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:  # counted from the last member written, not the last planned
            index = range(len(self))[index]
        name, _, _, is_dir, size, mode, mtime, _ = self.members[index]
        kind = DIRECTORY_TYPE if is_dir else REGULAR_TYPE
        return Record(name, kind, size, mode, mtime, self.crcs[index])


def write_tar(
    members: List[Member],
    sink: GzipWriter,
    screen: Optional[ContentScreen] = None,
    written: Optional[Written] = None,
) -> Written:
    """Write members as a PAX tar stream into sink; return what was written, with CRC-32s.

    screen, if given, sees every file's name and bytes. Each member is added to
    written (a new one if none) before its end is written, so that a reader can
    check it while writing goes on.
    """
    progress = _Progress("compress", sum(member.size for member in members))
    written = Written(members) if written is None else written
    screened, digests = screen is not None, written.digests is not None
    with _read_ahead(members, screened, digests) as frames, _DirectoryChain() as directories:
        for frame in frames:
            _check_stop()
            for verdict in frame.verdicts:
                assert screen is not None
                screen.report(verdict)
            written.crcs.frombytes(frame.crcs)
            if written.digests is not None:
                written.digests += frame.digests
            sink.write(frame.data)
            progress.advance(frame.content)
            if frame.then_large:
                member = members[len(written)]
                _write_large_file(member, sink, progress, screen, directories, written)
    if len(written) != len(members):  # the reader's frames ended early: never publish a part
        raise PackagingError(
            f"only {len(written)} of {len(members)} members were read; run the job again"
        )
    sink.write(2 * ZERO_BLOCK)  # the end-of-archive marker
    sink.write(bytes(-sink.size % RECORD_SIZE))
    return written


# ---------------------------------------------------------------------------
# Verification: read the package back from disk


def _undecodable(exc: BaseException) -> PackagingError:
    return PackagingError(f"the package does not decode: {exc}")


def _visit_members(stream: "_Readable", visit: Callable[[Record], None]) -> None:
    """Parse a decoded tar stream to its end, handing each member (content as CRC-32) to visit."""
    reader = TarReader(stream)
    for member in reader.members():
        crc = reader.data_crc32()
        mtime = int(member.mtime)
        visit(Record(member.name, member.typeflag, member.size, member.mode, mtime, crc))


class _Mismatch(Exception):
    """A member read back is not the one written: the text says which and how."""


class _Expected:
    """What was meant to be written; each member read back is compared with it in turn.

    Nothing read back is kept, so verification takes no memory per member. The
    writer appends a member's record before any chunk holding that member's
    end is written to the file, so the record is always there by the time the
    reader has read the member; were it not, the check fails (safely).
    """

    def __init__(self, records: Sequence[Record], progress: Optional[_Progress] = None) -> None:
        self.records = records
        self.progress = progress
        self.seen = 0

    def __call__(self, found: Record) -> None:
        try:
            want: Optional[Record] = self.records[self.seen]
        except IndexError:
            want = None
        if found != want:
            raise _Mismatch(f"{found.name!r}: wrote {want}, read {found}")
        self.seen += 1
        if self.progress is not None:
            self.progress.advance(found.size)

    def check_all_seen(self) -> None:
        if self.seen != len(self.records):
            raise _Mismatch(f"the end: wrote {len(self.records)} members, read {self.seen}")


def _check_decoded(path: Path, decode: Callable[[], str]) -> str:
    """Run decode (which compares as it reads) and explain any failure; return the SHA-256."""
    try:
        return decode()
    except _Mismatch as exc:
        raise PackagingError(
            f"verification of {path} failed at member {exc}; nothing was published. "
            "This points to a disk or memory fault: run the job again"
        ) from None
    except PackagingError as exc:
        raise PackagingError(
            f"verification of {path} failed: {exc}; nothing was published"
        ) from None


def _check_same_bytes(read: str, written: str) -> None:
    """The file must hold exactly the bytes written, by their SHA-256s.

    Decoding alone cannot see every change: gunzip ignores the gzip header's
    time and flags, and the padding bits after each piece's sync flush.
    """
    if read != written:
        raise PackagingError(
            f"its bytes differ from those written (SHA-256 {read} read back, {written} "
            "written), which points to a disk or memory fault: run the job again"
        )


# The read-back inflates pieces in parallel, as the writer deflates them. Each
# piece ends byte-aligned on a sync flush, and was primed with the 32 KiB of
# input before it, which the writer announces with the piece (see the gzip
# writer). So a pool of threads inflates each piece on its own, read from the
# file and primed with that window, and the read-back then checks, in file
# order: that each piece decodes to exactly its chunk's length and CRC-32; that
# the window the next piece was primed with is the tail of what this one
# decoded to, so that the pieces join into one stream; that the gzip header is
# a plain one; and that the end is the final block and trailer, whose CRC-32
# and length are those of all the pieces together, with nothing after it. The
# decoded stream goes on to the tar reader in order, and the file's bytes into
# its SHA-256. At most MAX_ANNOUNCED pieces wait to be read back: beyond that
# the writer waits, so their windows take at most a few MB.

MAX_ANNOUNCED = 64


class _Cancelled(Exception):
    """The writer failed or stopped; the read-back thread ends without a verdict."""


class _Piece(NamedTuple):
    """A piece of the package file, as the writer announced it."""

    offset: int
    size: int
    window: bytes  # the input before its chunk, that it was primed with
    crc32: int  # of its chunk
    length: int  # of its chunk


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    """size bytes of the file at offset (fewer only where it ends)."""
    data = b""
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _inflate_piece(fd: int, piece: _Piece) -> Tuple[bytes, bytes]:
    """(the piece's bytes in the file, what they decode to); both checked against the piece."""
    raw = _pread_exactly(fd, piece.size, piece.offset)
    if piece.window:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS, zdict=piece.window)
    else:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    decoded = inflate.decompress(raw, piece.length + 1)
    where = f"the piece at byte {piece.offset}"
    if len(raw) < piece.size or inflate.eof or inflate.unconsumed_tail:
        raise ArchiveError(f"{where} is not one whole piece of a deflate stream")
    if len(decoded) != piece.length or zlib.crc32(decoded) != piece.crc32:
        raise ArchiveError(f"{where} does not decode to its chunk (length or CRC-32 differs)")
    return raw, decoded


def _check_gzip_header(header: bytes) -> None:
    """A plain gzip header: magic, deflate, no flags (the package has no name or comment)."""
    if header[:4] != GZIP_MAGIC + b"\x08\x00" or len(header) != GZIP_HEADER_SIZE:
        raise ArchiveError(f"the gzip header {header!r} is not one this writer writes")


class _PieceStream(_ContextManager):
    """The package's tar stream, inflated from the file piece by piece on a pool of threads.

    read() returns the decoded bytes in order, and b"" only once the end of
    the file has been checked; sha256 is then the file's.
    """

    def __init__(self, back: "_ReadBack", threads: int) -> None:
        self._back = back
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inflate")
        self._max_in_flight = 2 * threads
        self._in_flight: Deque[Tuple[_Piece, Future[Tuple[bytes, bytes]]]] = deque()
        self.sha256 = hashlib.sha256()
        header = back.wait_for_header()
        _check_gzip_header(header)
        self.sha256.update(header)
        self._offset = len(header)
        self._tail = b""
        self._crc = 0
        self._length = 0
        self._buffer = b""
        self._ended = False

    def read(self, size: int) -> bytes:
        while not self._buffer and not self._ended:
            self._next_chunk()
        if size >= len(self._buffer):  # a whole chunk, not copied
            data, self._buffer = self._buffer, b""
            return data
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _next_chunk(self) -> None:
        """Start decoding what pieces there are, then check the oldest (or, at the end, the end)."""
        while len(self._in_flight) < self._max_in_flight:
            piece = self._back.next_piece(wait=not self._in_flight)
            if piece is None:
                break
            future = self._pool.submit(_inflate_piece, self._back.fd, piece)
            self._in_flight.append((piece, future))
        if not self._in_flight:
            self._check_end()
            return
        piece, future = self._in_flight.popleft()
        raw, decoded = future.result()
        if piece.offset != self._offset or piece.window != self._tail:
            raise ArchiveError(
                f"the piece at byte {piece.offset} does not follow the one before it"
            )
        self.sha256.update(raw)
        self._offset += len(raw)
        self._tail = decoded[-WINDOW_SIZE:]
        self._crc = crc32_combine(self._crc, piece.crc32, piece.length)
        self._length += piece.length
        self._buffer = decoded

    def _check_end(self) -> None:
        """The final block and the trailer of all the pieces, and nothing after them."""
        end = self._back.read_end(self._offset)
        trailer = struct.pack("<II", self._crc, self._length & 0xFFFFFFFF)
        if end != FINAL_BLOCK + trailer:
            raise ArchiveError(
                f"the end of the package at byte {self._offset} is not the final block and a "
                "trailer with the CRC-32 and length of what it holds, alone"
            )
        self.sha256.update(end)
        self._ended = True

    def __exit__(self, *exc_info: object) -> None:
        for _, future in self._in_flight:
            future.cancel()
        self._pool.shutdown(wait=True)


class _ReadBack(_ContextManager):
    """Reads the package back from disk while it is being written, and decodes it.

    Everything the compressor produces goes through write(): to the file, then
    the read-back thread is told how far the file holds it; piece() announces
    each piece before it is written. The read-back reads the file through a
    descriptor of its own, never past what the file already holds, so each
    byte it checks came back from the file, not from memory. finish() fsyncs
    the file before the end may be read, and checks that the file's SHA-256 is
    that of the bytes written. Overlapping the read-back with compression
    hides most of its cost.
    """

    def __init__(
        self, path: Path, progress: _Progress, expected: Sequence[Record], threads: int = 1
    ) -> None:
        self._expected = _Expected(expected, progress)
        self._out = open(path, "wb")  # noqa: SIM115 - closed by __exit__
        self.fd = os.open(path, os.O_RDONLY)
        self._ready = threading.Condition()
        self._written = 0
        self._written_sha256 = hashlib.sha256()
        self._announced: Deque[_Piece] = deque()
        self._finished = False
        self._cancelled = False
        self._result: Optional[str] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._decode, args=(threads,), name="read-back")
        self._thread.start()

    def write(self, data: bytes) -> None:
        self._written_sha256.update(data)
        self._out.write(data)
        self._out.flush()
        with self._ready:
            self._written += len(data)
            self._ready.notify_all()

    def piece(self, size: int, window: bytes, crc: int, length: int) -> None:
        """Announce the piece about to be written; wait while too many are not yet read back."""
        with self._ready:
            while len(self._announced) >= MAX_ANNOUNCED and self._thread.is_alive():
                self._ready.wait(STOP_CHECK_INTERVAL)
                _check_stop()
            if self._thread.is_alive():  # a read-back that failed reads nothing more
                self._announced.append(_Piece(self._written, size, window, crc, length))
                self._ready.notify_all()

    def finish(self) -> str:
        """Fsync the file, let the reader read and check it to its end; return its SHA-256."""
        self._out.flush()
        os.fsync(self._out.fileno())
        with self._ready:
            self._finished = True
            self._ready.notify_all()
        while self._thread.is_alive():
            _check_stop()
            self._thread.join(STOP_CHECK_INTERVAL)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        self._expected.check_all_seen()
        _check_same_bytes(self._result, self._written_sha256.hexdigest())
        return self._result

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait (in the read-back thread) until ready() or the writer is done; end if it failed."""
        while not ready() and not self._finished and not self._cancelled:
            self._ready.wait()
        if self._cancelled:
            raise _Cancelled

    def wait_for_header(self) -> bytes:
        """The gzip header, once the file holds it."""
        with self._ready:
            self._wait(lambda: self._written >= GZIP_HEADER_SIZE)
        return _pread_exactly(self.fd, GZIP_HEADER_SIZE, 0)

    def next_piece(self, wait: bool) -> Optional[_Piece]:
        """The next piece once the file holds it; None at the end, or now if not wait."""
        with self._ready:
            if wait:
                self._wait(lambda: bool(self._announced) and self._on_disk(self._announced[0]))
            if not self._announced or not self._on_disk(self._announced[0]):
                return None
            self._ready.notify_all()
            return self._announced.popleft()

    def _on_disk(self, piece: _Piece) -> bool:
        return self._written >= piece.offset + piece.size

    def read_end(self, offset: int) -> bytes:
        """The file from offset to its end, at most a byte past the final block and trailer;
        only once the file is complete and fsync'd."""
        with self._ready:
            self._wait(lambda: False)
        return _pread_exactly(self.fd, len(FINAL_BLOCK) + 9, offset)

    def _decode(self, threads: int) -> None:
        try:
            with _bad_data(_undecodable), _PieceStream(self, threads) as stream:
                _visit_members(stream, self._expected)
            self._result = stream.sha256.hexdigest()
        except _Cancelled:
            pass
        except BaseException as exc:
            self._error = exc
        finally:
            with self._ready:
                self._ready.notify_all()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the reader (at once, if the writer failed) and close its descriptor."""
        with self._ready:
            self._cancelled = True
            self._ready.notify_all()
        self._thread.join()
        os.close(self.fd)
        self._out.close()


# ---------------------------------------------------------------------------
# Will it serve: the smoke test (--smoke-test)
#
# The package is run as the serving toolkit would run it, in a child process of the smoke
# Python (--smoke-python, default this one):
#
# 1. the written package (its bytes on disk, not the inputs) is extracted, by the same
#    strict reader as a model archive, into a throwaway dir under the work dir;
# 2. code/requirements.txt, if it names anything, is installed as the endpoint installs it
#    (pip install -r), into a throwaway virtual environment whose .pth file layers it over
#    the smoke Python's own packages: what is installed already satisfies a line and is
#    not fetched, and nothing of the smoke Python's is changed;
# 3. the child imports the entry point as sagemaker-inference does (code/ first on
#    PYTHONPATH, SAGEMAKER_PROGRAM set), refuses transform_fn beside the other handlers,
#    calls model_fn(model_dir), and with --sample sends one request through input_fn,
#    predict_fn and output_fn (or transform_fn), a handler with one parameter more getting
#    a context, a UTF-8 body decoded to str first. It writes what happened as JSON.
#
# The child and everything it starts form a process group of their own, ended on a
# timeout (--smoke-timeout, for steps 2 and 3 together) or a stop. Whatever the code
# does, it does to the throwaway copy, which goes with the work dir's other leftovers.

SAMPLE_CONTENT_TYPES = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".npy": "application/x-npy",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
SMOKE_OUTPUT_LINES = 5  # of the child's own output, quoted when it dies without a word


def _smoke_child() -> None:
    """The smoke test's child program; it runs from its source, as python -c.

    Its arguments: the result file, the model dir, SAGEMAKER_PROGRAM, and the
    sample, its content type and the accept type ("" for none). It uses only
    what Python 3.6 has, so that an old serving image's Python can run it;
    its annotations are strings, which the child never evaluates.
    """
    import hashlib
    import importlib
    import importlib.util
    import inspect
    import json
    import os
    import resource
    import sys
    import time
    import traceback

    result_path, model_dir, program, sample, content_type, accept = sys.argv[1:7]
    result: Dict[str, Any] = {"stage": "import"}

    class Request:
        def __init__(self, properties: "Dict[str, str]") -> None:
            self.properties = properties

        def get_request_properties(self) -> "Dict[str, str]":
            return self.properties

    class Context:
        """The request context that a handler with one parameter more gets."""

        def __init__(self) -> None:
            self.system_properties = {"model_dir": model_dir, "gpu_id": None}
            self.request_processor = [Request({"Content-Type": content_type, "Accept": accept})]
            self.content_type = ""

        def set_response_content_type(self, index: int, content_type: str) -> None:
            self.content_type = content_type

    def call(function: "Any", *arguments: "Any") -> "Any":
        """As the toolkit calls a handler: with the context if it has one parameter more."""
        count = len(inspect.signature(function).parameters)
        if count == len(arguments) + 1:
            arguments += (Context(),)
        elif count != len(arguments):
            given = len(arguments)
            raise TypeError(f"{function.__name__} takes {count} arguments but {given} were given.")
        return function(*arguments)

    try:
        name = program[:-3] if program.endswith(".py") else program
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"No module named {name!r}: code/ has no {program}")
        module = importlib.import_module(name)
        handlers = {
            handler: getattr(module, handler, None)
            for handler in ("model_fn", "transform_fn", "input_fn", "predict_fn", "output_fn")
        }
        request_handlers = [handlers[h] for h in ("input_fn", "predict_fn", "output_fn")]
        if handlers["transform_fn"] and any(request_handlers):
            raise ValueError(
                "Cannot use transform_fn implementation in conjunction with input_fn, "
                "predict_fn, and/or output_fn implementation"
            )
        result["stage"] = "model_fn"
        if handlers["model_fn"] is None:
            result["skipped"] = "model_fn is not defined: the container's default loader is used"
        else:
            started = time.time()
            model = call(handlers["model_fn"], model_dir)
            result["model_fn_seconds"] = round(time.time() - started, 3)
            result["model_type"] = f"{type(model).__module__}.{type(model).__qualname__}"
        result["stage"] = "request"
        if sample and "skipped" not in result:
            if not handlers["transform_fn"] and not all(request_handlers):
                result["skipped"] = "the handlers are not all defined: the container's are used"
            else:
                with open(sample, "rb") as sample_file:
                    body: Any = sample_file.read()
                if content_type in ("application/json", "text/csv"):
                    body = body.decode("utf-8")  # as the toolkit does for UTF-8 types
                if not accept or accept == "*/*":
                    accept = os.environ.get(
                        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/json"
                    )
                started = time.time()
                if handlers["transform_fn"]:
                    response = call(handlers["transform_fn"], model, body, content_type, accept)
                else:
                    data = call(handlers["input_fn"], body, content_type)
                    prediction = call(handlers["predict_fn"], data, model)
                    response = call(handlers["output_fn"], prediction, accept)
                result["request_seconds"] = round(time.time() - started, 3)
                response_type = accept
                if isinstance(response, tuple):
                    response, response_type = response[0], response[1]
                if isinstance(response, str):
                    response = response.encode("utf-8")
                if not isinstance(response, (bytes, bytearray)):
                    kind = type(response).__name__
                    raise TypeError(f"the response is a {kind}, not bytes or str")
                result["response_sha256"] = hashlib.sha256(response).hexdigest()
                result["response_bytes"] = len(response)
                result["content_type"] = response_type
        result["stage"] = "done"
    except BaseException as exc:  # everything the code may raise, SystemExit included
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        result["error"] = {
            "type": type(exc).__name__,
            "message": str(exc),
            "frames": [f"{frame[0]}:{frame[1]} in {frame[2]}" for frame in frames],
        }
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(result_path, "w") as result_file:
        json.dump(result, result_file)


class SmokeResult(NamedTuple):
    """What the smoke test found: status pass or skipped (a failure raises), and measures."""

    status: str
    seconds: float
    response_bytes: Optional[int] = None
    content_type: Optional[str] = None
    response_sha256: Optional[str] = None
    model_fn_seconds: Optional[float] = None
    model_type: Optional[str] = None
    request_seconds: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    note: str = ""

    def summary(self) -> Dict[str, Any]:
        """The summary line's, the report's and --verify --json's smoke_test object."""
        return {key: value for key, value in self._asdict().items() if value not in (None, "")}


class _SmokeRun:
    """One smoke test: its throwaway dir, deadline, and the child processes it starts."""

    def __init__(self, directory: Path, options: Options, entry_point: str) -> None:
        self.directory = directory
        self.options = options
        self.entry_point = entry_point
        self.deadline = time.monotonic() + options.smoke_timeout
        self.output = directory / "output.log"  # what the children print

    def run(self, package: Path) -> SmokeResult:
        started = time.monotonic()
        model_dir = self.directory / "model"
        model_dir.mkdir()
        extract_archive(package, _stamp(os.stat(package)), model_dir, None, self.directory / "held")
        python = self._environment(model_dir / CODE_DIR)
        result_path = self.directory / "result.json"
        sample = self.options.sample
        content_type = self.options.content_type or _guess_content_type(sample)
        run_dir = self.directory / "run"  # the child's working dir: empty
        run_dir.mkdir()
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, (os.fspath(model_dir / CODE_DIR), os.environ.get("PYTHONPATH")))
            ),
            "SAGEMAKER_PROGRAM": self.entry_point,
            "SAGEMAKER_BASE_DIR": os.fspath(self.directory),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        arguments = [
            os.fspath(result_path),
            os.fspath(model_dir),
            self.entry_point,
            os.path.abspath(sample) if sample else "",
            content_type if sample else "",
            self.options.accept or "",
        ]
        child = inspect.getsource(_smoke_child) + "\n_smoke_child()\n"
        code = self._child([python, "-c", child, *arguments], environ, run_dir)
        return self._verdict(result_path, code, time.monotonic() - started)

    def _environment(self, code_dir: Path) -> str:
        """The Python the child runs: the smoke Python, or a throwaway virtual environment
        layered over it with code/requirements.txt installed."""
        python = self.options.smoke_python or sys.executable
        requirements = code_dir / "requirements.txt"
        text = requirements.read_text("utf-8", "replace") if requirements.is_file() else ""
        if not any(_logical_lines(text)):
            return python
        if self._child([python, "-m", "pip", "--version"], None, self.directory) != 0:
            _warn(
                "smoke test",
                f"{CODE_DIR}/requirements.txt",
                f"the smoke Python {python} has no pip, so code/requirements.txt is not "
                "installed for the smoke test: the code runs with what that Python has",
            )
            return python
        paths = self.directory / "paths.txt"
        probe = (
            f"import sys; open({os.fspath(paths)!r}, 'w').write('\\n'.join(filter(None, sys.path)))"
        )
        environment = self.directory / "env"
        for argv in ([python, "-c", probe], [python, "-m", "venv", "--without-pip", environment]):
            if self._child(argv, None, self.directory) != 0:
                raise self._failure(f"preparing its environment ({argv[1]} {argv[2]}) failed")
        layered = environment / "bin" / "python"
        site = self.directory / "site.txt"
        locate = (
            f"import sysconfig; open({os.fspath(site)!r}, 'w')"
            ".write(sysconfig.get_paths()['purelib'])"
        )
        if self._child([os.fspath(layered), "-c", locate], None, self.directory) != 0:
            raise self._failure("its virtual environment does not start")
        Path(site.read_text(), "_mims_smoke_layer.pth").write_text(paths.read_text() + "\n")
        install = [
            os.fspath(layered), "-m", "pip", "install", "--disable-pip-version-check",
            "--no-input", "-r", os.fspath(requirements),
        ]  # fmt: skip
        log.info("smoke test: pip install -r code/requirements.txt")
        if self._child(install, None, self.directory) != 0:
            raise self._failure(
                "pip install -r code/requirements.txt failed; the endpoint installs it at "
                "start-up and would stop the same way",
                quote=True,
            )
        return os.fspath(layered)

    def _child(self, argv: Sequence[Any], environ: Optional[Mapping[str, str]], cwd: Path) -> int:
        """Run argv in a process group of its own, its output to the log; its exit code.

        Ends the group on the deadline (a PackagingError) or a stop, and after the
        child exits (anything it left running goes too).
        """
        with open(self.output, "ab") as output:
            process = subprocess.Popen(
                [os.fspath(arg) for arg in argv],
                cwd=cwd,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            while True:
                _check_stop()
                try:
                    return process.wait(STOP_CHECK_INTERVAL)
                except subprocess.TimeoutExpired:
                    if time.monotonic() > self.deadline:
                        raise self._failure(
                            f"it took more than --smoke-timeout {self.options.smoke_timeout:g} "
                            "seconds; the endpoint's start-up times out too"
                        ) from None
        finally:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _verdict(self, result_path: Path, code: int, seconds: float) -> SmokeResult:
        """The child's result, or the failure that explains it."""
        try:
            result = json.loads(result_path.read_text("utf-8"))
        except (OSError, ValueError):
            if code < 0:
                died = f"was killed by {signal.Signals(-code).name}"
                if -code == signal.SIGKILL:
                    died += " (out of memory?)"
            else:
                died = f"exited with code {code} before it could say why"
            raise self._failure(f"its child process {died}", quote=True) from None
        error = result.get("error")
        if error:
            frames = "; ".join(error.get("frames", []))
            stage = {"import": "importing", "model_fn": "in model_fn", "request": "in the request"}
            raise self._failure(
                f"{stage.get(result.get('stage'), 'in')} {self.entry_point}: "
                f"{error.get('type')}: {error.get('message')} (at {frames}); the endpoint "
                "would fail the same way"
            )
        return SmokeResult(
            "pass",
            round(seconds, 3),
            result.get("response_bytes"),
            result.get("content_type"),
            result.get("response_sha256"),
            result.get("model_fn_seconds"),
            result.get("model_type"),
            result.get("request_seconds"),
            result.get("peak_rss_bytes"),
            result.get("skipped", ""),
        )

    def _failure(self, what: str, quote: bool = False) -> PackagingError:
        said = ""
        if quote:
            with contextlib.suppress(OSError):
                lines = self.output.read_text("utf-8", "replace").splitlines()
                said = " | ".join(lines[-SMOKE_OUTPUT_LINES:])
        return PackagingError(
            f"the smoke test failed: {what}" + (f"; it said: {said}" if said else "")
        )


def _guess_content_type(sample: Optional[str]) -> str:
    """The sample's content type, by its extension (application/octet-stream if unknown)."""
    suffix = os.path.splitext(sample or "")[1].lower()
    return SAMPLE_CONTENT_TYPES.get(suffix, DEFAULT_CONTENT_TYPE)


def smoke_test(package: Path, work_dir: Path, options: Options, entry_point: str) -> SmokeResult:
    """Run the package as the serving toolkit would (see this section); raise PackagingError
    if it would not serve. Its throwaway dir goes under work_dir, and is removed after."""
    directory = Path(tempfile.mkdtemp(prefix=".mims-smoke-", dir=work_dir))
    started = time.monotonic()
    try:
        with _phase("smoke test") as phase:
            result = _SmokeRun(directory, options, entry_point).run(package)
            phase.amount = result.status
    except PackagingError:
        _record(smoke_test={"status": "fail", "seconds": round(time.monotonic() - started, 3)})
        raise
    finally:
        _remove_throwaway(directory)
    _record(smoke_test=result.summary())
    log.info("smoke test: passed: %s", _smoke_words(result))
    return result


def _smoke_words(result: SmokeResult) -> str:
    """What a passed smoke test found, said in one line."""
    said = [result.note]
    if result.model_type is not None:
        said = [f"model_fn {result.model_fn_seconds:.2f} s gave a {result.model_type}"]
    if result.response_bytes is not None:
        said.append(
            f"the request {result.request_seconds:.2f} s gave {result.response_bytes} bytes "
            f"of {result.content_type}"
        )
    elif result.note and result.model_type is not None:
        said.append(f"no request: {result.note}")
    if result.peak_memory_bytes is not None:
        said.append(f"peak memory {_human(result.peak_memory_bytes)}")
    return "; ".join(said)


def _remove_throwaway(directory: Path) -> None:
    """Remove a dir that the user's code wrote in, even where it took its own permissions
    away; what cannot be removed is a warning."""
    try:
        _remove_tree(directory)
        return
    except OSError:
        pass
    stack = [os.fspath(directory)]
    while stack:
        path = stack.pop()
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
            with os.scandir(path) as entries:
                stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    try:
        _remove_tree(directory)
    except OSError as exc:
        _warn("cleanup", "", f"could not remove the smoke test's directory {directory}: {exc}")


# ---------------------------------------------------------------------------
# Checking any package: --verify
#
# A package built by anyone (this script, GNU tar, bsdtar, tarfile, a training
# job) is read once, start to end, with the strict reader and decoder that
# extraction uses, on the read-ahead thread that extraction uses, and judged
# as SageMaker hosting will use it: whole (the compressed stream's checks,
# every header, the end marker, nothing after it), safe (only files and
# directories, no absolute or ".." names, no setuid or setgid bit, no name
# twice) and deployable (the layout checks, the junk the default excludes
# leave out, credentials in code/ and calibration/). Nothing is written.


class PackageCheck(NamedTuple):
    """What --verify found in a package: its SHA-256, its files (every member but the
    directories) and directories, its size (gzip) and its contents' bytes, and findings."""

    package: str
    sha256: str
    compression: str  # gzip, bzip2, xz, or plain tar
    files: int
    directories: int
    package_bytes: int
    content_bytes: int
    findings: List[Finding]
    smoke_test: Optional[SmokeResult] = None  # None: not asked for, or not reached

    @property
    def status(self) -> str:
        """fail if anything FAILs, else warn if anything WARNs, else pass."""
        levels = {finding.level for finding in self.findings}
        return "fail" if "FAIL" in levels else "warn" if "WARN" in levels else "pass"


SPECIAL_MODE_BITS = (  # what --verify fails in a member's mode: the job writes none of them
    (stat.S_ISUID, "setuid"),
    (stat.S_ISGID, "setgid"),
    (stat.S_ISVTX, "sticky"),
    (stat.S_IWOTH, "writable by anyone"),
)


class _PackageReview:
    """The checks --verify makes on each member, and on the layout once all are read."""

    def __init__(
        self, entry_point: Optional[str], report: Optional[Mapping[str, Mapping[str, Any]]]
    ) -> None:
        self.entry_point = entry_point
        self.report = report  # --expect-report: each member as the report has it, by name
        self.findings: List[Finding] = []
        self.names: Dict[str, bool] = {}  # each name seen: whether it was a directory
        self._parents: Set[str] = set()  # every directory a name is under
        # Each name looked at for the default excludes, as a directory or not: how many
        # members it leaves out (0 or more), or -1 if it leaves out nothing.
        self._excluded: Dict[Tuple[str, bool], int] = {}
        self.files: Dict[str, int] = {}  # each file's size
        self.code: Dict[str, bytes] = {}  # code/ files, for the code check
        self._code_budget = MAX_CODE_CHECK_BYTES
        self.screen = ContentScreen(False, record=self.record)
        self.excludes = Excludes(DEFAULT_EXCLUDES)
        self.file_count = self.directory_count = self.content_bytes = 0
        self._names = _NameBudget("the package")
        self._counts: Dict[Tuple[str, str], int] = {}  # findings of each level and check

    def add(self, level: str, check: str, member: str, message: str) -> None:
        self.record(Finding(level, check, member, message))

    def record(self, finding: Finding) -> None:
        """Keep the finding, unless MAX_FINDINGS_PER_CHECK of its level and check are kept."""
        kind = (finding.level, finding.check)
        self._counts[kind] = self._counts.get(kind, 0) + 1
        if self._counts[kind] <= MAX_FINDINGS_PER_CHECK:
            self.findings.append(finding)

    def count_dropped(self) -> None:
        """For each kind past the bound, one finding saying how many more there are."""
        for (level, check), count in self._counts.items():
            if count > MAX_FINDINGS_PER_CHECK:
                more = count - MAX_FINDINGS_PER_CHECK
                listed = f"only the first {MAX_FINDINGS_PER_CHECK} of a check are listed"
                self.findings.append(Finding(level, check, "", f"and {more} more ({listed})"))

    def member(self, reader: TarReader, member: TarMember) -> None:
        """Check one member: what it is, its name and mode, and (code, calibration) its bytes."""
        self._names.add(member.name, member.linkname)
        if member.kind == "dir":
            self.directory_count += 1
        else:
            self.file_count += 1
        self.content_bytes += member.size
        name = "/".join(piece for piece in member.name.split("/") if piece not in ("", "."))
        if member.kind not in ("file", "dir"):
            what = f"a {member.kind}" + (f" to {member.linkname!r}" if member.linkname else "")
            self.add(
                "FAIL",
                "safety",
                name,
                f"is {what}; a package may hold only files and "
                "directories: package what it points to instead",
            )
        if member.name.startswith("/") or ".." in name.split("/"):
            self.add(
                "FAIL",
                "safety",
                name,
                "has an absolute or '..' name, which extracts outside /opt/ml/model",
            )
        if any(len(piece.encode("utf-8")) > MAX_NAME_BYTES for piece in name.split("/")):
            self.add("FAIL", "safety", name, f"has a path component over {MAX_NAME_BYTES} bytes")
        special = [what for bit, what in SPECIAL_MODE_BITS if member.mode & bit]
        if special:
            self.add(
                "FAIL",
                "safety",
                name,
                f"is {' and '.join(special)} (mode {member.mode:04o}); repack it with plain "
                "modes (0644, 0755)",
            )
        is_dir = member.kind == "dir"
        self._check_name_conflicts(name, is_dir, member.kind)
        self.names[name] = is_dir
        if name:
            self._note_excluded(name, is_dir)
        digest = None
        if member.kind == "file":
            self.files[name] = member.size
            digest = self._read_file(reader, member, name)
        if self.report is not None and name:
            self._compare(name, "dir" if is_dir else "file", member.size, member.mode, digest)

    def _note_excluded(self, name: str, is_dir: bool) -> None:
        """Count a member the default excludes leave out under the topmost such name (a
        __pycache__/ and what it holds are one finding)."""
        parts = name.split("/")
        for depth in range(1, len(parts)):  # the directories it is in, cached
            prefix = "/".join(parts[:depth])
            if (prefix, True) not in self._excluded:
                left_out = self.excludes.pattern_for(prefix, True) is not None
                self._excluded[prefix, True] = 0 if left_out else -1
            if self._excluded[prefix, True] >= 0:
                self._excluded[prefix, True] += 1
                return
        if self.excludes.pattern_for(name, is_dir) is not None:
            self._excluded.setdefault((name, is_dir), 0)  # a directory: what is under it counts

    def excluded(self) -> None:
        """One WARN for each topmost name the default excludes leave out, with its count."""
        for (name, is_dir), count in self._excluded.items():
            if count >= 0:
                under = f" ({count} members under it)" if count else ""
                self.add(
                    "WARN",
                    "layout",
                    name + ("/" if is_dir else ""),
                    f"is what the default excludes leave out (VCS, caches, OS litter){under}: "
                    "repack without it",
                )

    def _check_name_conflicts(self, name: str, is_dir: bool, kind: str) -> None:
        """FAIL where tar would fail or guess: a name twice (but a directory), a file where a
        directory must be, a file with no name (".", or an empty PAX path)."""
        if not name and kind != "dir":
            self.add("FAIL", "safety", name, "is a file with no name ('.' or an empty path)")
            return
        if name in self.names and not (is_dir and self.names[name]):  # a directory again is fine
            self.add(
                "FAIL", "safety", name, "appears twice; which one extracts depends on the tool"
            )
        elif not is_dir and name in self._parents:
            self.add("FAIL", "safety", name, "is a file where the package has a directory")
        parent = name.rpartition("/")[0]
        while parent:
            if self.names.get(parent) is False:
                self.add(
                    "FAIL",
                    "safety",
                    name,
                    f"is under {parent}, which is a file; GNU tar refuses to extract it",
                )
                return
            self._parents.add(parent)
            parent = parent.rpartition("/")[0]

    def _read_file(self, reader: TarReader, member: TarMember, name: str) -> Optional[str]:
        """Read a file's bytes once: screened (its name too), its SHA-256 taken for a report,
        a code/ file's kept for the code check (within its budget)."""
        self.screen.names((name,))
        scan = self.screen.open(name)
        keep = name.startswith(CODE_DIR + "/") and member.size <= self._code_budget
        kept: List[bytes] = []
        digest = hashlib.sha256() if self.report is not None else None
        for piece in reader.data():
            scan.feed(piece)
            if digest is not None:
                digest.update(piece)
            if keep:
                kept.append(bytes(piece))
        self.screen.close(scan)
        if keep:
            self._code_budget -= member.size
            self.code[name] = b"".join(kept)
        return None if digest is None else digest.hexdigest()

    def _compare(self, name: str, kind: str, size: int, mode: int, sha256: Optional[str]) -> None:
        """--expect-report: the member must be in the report with the same type, size, mode
        and digest."""
        assert self.report is not None
        want = self.report.get(name)
        found = {
            "type": kind,
            "size": size if kind == "file" else 0,
            "mode": f"{mode:04o}",
            "sha256": sha256,
        }
        if want is None:
            self.add("FAIL", "report", name, "is in the package but not in the report")
            return
        differ = [key for key in found if want.get(key) != found[key]]
        if differ:
            said = ", ".join(
                f"{key} {want.get(key)} in the report, {found[key]} here" for key in differ
            )
            self.add("FAIL", "report", name, f"differs from the report: {said}")

    def unreported_left(self) -> None:
        """--expect-report: every member the report lists must have been in the package."""
        for name in sorted(set(self.report or ()) - set(self.names)):
            self.add("FAIL", "report", name, "is in the report but not in the package")

    def layout(self) -> None:
        """The layout checks on the package's root and code/, once every member is read."""
        code = [name[len(CODE_DIR) + 1 :] for name in self.files if name.startswith("code/")]
        model = [name for name in self.files if not name.startswith(("code/", "calibration/"))]
        archives = _only_archives(model)
        if archives is not None:
            message = f"the package {archives}; package what one of them holds instead"
            self.add("WARN", "layout", "", message)
        data = _data_in_code({n: size for n, size in self.files.items() if n.startswith("code/")})
        if data is not None:
            self.add("WARN", "layout", CODE_DIR + "/", data)
        calibration = [name for name in self.files if name.startswith(CALIBRATION_DIR + "/")]
        too_deep = _calibration_too_deep(calibration)
        if too_deep is not None:
            fix = f"repack it with {CALIBRATION_DIR}/ holding what its {CALIBRATION_DIR}/ holds"
            self.add(
                "WARN", "layout", f"{CALIBRATION_DIR}/{CALIBRATION_DIR}/", f"{too_deep}; {fix}"
            )
        folder = _one_top_folder(model) if model else None
        if folder is not None:
            fix = f"repack it with tar -czf model.tar.gz -C {folder} ."
            self.add("WARN", "layout", folder + "/", _top_folder_message(folder, fix))
        if code:
            name = self.entry_point or DEFAULT_ENTRY_POINT
            missing = _missing_entry_point(code, name)
            if missing is not None:
                level = "FAIL" if self.entry_point is not None else "WARN"
                self.add(level, "layout", f"{CODE_DIR}/{name}", missing)
        elif any(_is_code(name) and "/" not in name for name in model):
            self.add(
                "WARN",
                "layout",
                "",
                "code at the root and no code/: SageMaker's serving "
                f"containers run code/{DEFAULT_ENTRY_POINT}; put the code under code/",
            )
        else:
            self.add("WARN", "layout", "", NO_CODE)
        if not model:
            self.add("FAIL", "layout", "", "the package holds no model files")

    def serving(self, serving_python: Optional[Tuple[int, int]]) -> None:
        """The code check, on the package's code/ as it was read."""
        directories = [name for name, is_dir in self.names.items() if is_dir and name]
        entry_point = self.entry_point or DEFAULT_ENTRY_POINT
        for finding in check_code(
            self.files, directories, self.code.get, entry_point, serving_python
        ):
            self.record(finding)


_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def _report_members(report: Mapping[str, Any]) -> Dict[str, Mapping[str, Any]]:
    """A package.json's members by name, each checked to be what the job writes: a
    malformed report is a PackagingError, never a wrong verdict."""

    def malformed(what: str) -> PackagingError:
        return PackagingError(f"the report is malformed: {what}; give the job's package.json")

    if not isinstance(report.get("sha256"), str) or not _HEX_SHA256.fullmatch(report["sha256"]):
        raise malformed("it has no package sha256 of 64 hex digits")
    entries = report.get("members")
    if not isinstance(entries, list):
        raise malformed("it has no member list")
    members: Dict[str, Mapping[str, Any]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise malformed(f"member {index} is not an object")
        name, digest = entry.get("name"), entry.get("sha256")
        if not isinstance(name, str):
            raise malformed(f"member {index}'s name is not a string")
        shape = (
            entry.get("type") in ("file", "dir")
            and type(entry.get("size")) is int
            and isinstance(entry.get("mode"), str)
            and (digest is None or (isinstance(digest, str) and _HEX_SHA256.fullmatch(digest)))
        )
        if not shape:
            raise malformed(f"member {_escape(name)!r} is not a type, size, mode and sha256")
        if name in members:
            raise malformed(f"it lists {_escape(name)!r} twice")
        members[name] = entry
    return members


def check_package(
    path: Union[str, Path],
    expect_sha256: Optional[str] = None,
    entry_point: Optional[str] = None,
    expect_report: Optional[Mapping[str, Any]] = None,
    *,
    options: Optional[Options] = None,
    work_dir: Union[str, Path, None] = None,
) -> PackageCheck:
    """Check any model.tar.gz as SageMaker hosting will use it; write nothing beside it.

    expect_report, a package.json this script wrote, names the package's
    SHA-256 and every member's type, size and SHA-256; each must match.
    options may name the serving Python and ask for a smoke test, which runs in
    a throwaway dir under work_dir (default: the system temp dir), removed
    after. Raises OSError if the file cannot be read (the command line exits
    2); everything found in what it holds is a Finding.
    """
    options = options or Options()
    entry_point = entry_point or options.entry_point
    serving_python = _check_serving_python(options.serving_python)
    _check_smoke_options(options)
    members = None
    expected = {"--expect-sha256": expect_sha256} if expect_sha256 is not None else {}
    if expect_report is not None:
        members = _report_members(expect_report)
        expected["the report"] = expect_report["sha256"]
    review = _PackageReview(entry_point, members)
    real = os.path.realpath(path)  # the file a symlink names: it is opened without following
    with open(_open_regular(real, None), "rb", buffering=0) as raw:
        compression = _sniffed(raw)
        hashed = _HashingReader(raw)
        label = compression or "plain tar"
        try:
            try:
                check_is_tar(Path(real), "package")  # not tar at all: say what it is instead
            except PackagingError:
                label = "not a tar archive"
                raise
            with _bad_data(_undecodable), _ReadAhead(_decoding(hashed, compression)) as stream:
                reader = TarReader(stream)
                for member in reader.members():
                    _check_stop()
                    review.member(reader, member)
        except PackagingError as exc:
            review.add("FAIL", "integrity", "", str(exc))
        else:
            whole = f"{compression or 'plain tar'}: every header and the end marker whole"
            review.add("PASS", "integrity", "", whole)
            review.layout()
            review.excluded()
            review.serving(serving_python)
            review.unreported_left()
            has_code = any(name.startswith(CODE_DIR + "/") for name in review.files)
            checks = ["safety", "credentials", "layout"]
            checks += [*CODE_CHECK_TESTS] if has_code else ["model files"]
            for check in checks:
                if not any(finding.check == check for finding in review.findings):
                    review.add("PASS", check, "", "nothing found")
            if members and not any(finding.check == "report" for finding in review.findings):
                said = f"all {len(members)} members match the report"
                review.add("PASS", "report", "", said)
        while hashed.read(IO_BLOCK_SIZE):  # the rest, where reading stopped at a fault
            pass
    digest = hashed.sha256.hexdigest()
    for source, want in expected.items():
        same = want.lower() == digest
        found = "" if same else f", found {digest}"
        review.add("PASS" if same else "FAIL", "sha256", "", f"{source}: {want}{found}")
    smoke = None
    if options.smoke_test and not any(
        f.check == "integrity" for f in review.findings if f.level == "FAIL"
    ):
        work = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
        try:
            smoke = smoke_test(Path(real), work, options, entry_point or DEFAULT_ENTRY_POINT)
            review.add("PASS", "smoke test", "", f"{smoke.status}: {_smoke_words(smoke)}")
        except PackagingError as exc:
            review.add("FAIL", "smoke test", "", str(exc))
    review.count_dropped()
    return PackageCheck(
        os.fspath(path),
        digest,
        label,
        review.file_count,
        review.directory_count,
        hashed.size,
        review.content_bytes,
        review.findings,
        smoke,
    )


# ---------------------------------------------------------------------------
# What a run leaves: the result, and a report (package.json, an in-toto statement)
#
# A pipeline step reads JSON from a ProcessingOutput of its own (PropertyFile, JsonGet),
# never from beside model.tar.gz, whose prefix the registration step downloads whole.
# Both files are written once the package is published and verified, each atomically,
# and are deterministic but for times, measurements and the job's name.


class PackageResult(PosixPath):
    """What package() made: the package's path (os.fspath gives it), with its facts.

    sha256 and size are the file's, members the number of files of the model,
    the code and the calibration. As a Path it works wherever the path did.
    """

    sha256: str
    size: int
    members: Dict[str, int]

    @classmethod
    def of(
        cls, path: Path, sha256: str, size: int, parts: Mapping[str, List[Member]]
    ) -> "PackageResult":
        result = cls(path)
        result.sha256, result.size = sha256, size
        result.members = {name: len(files) for name, files in parts.items()}
        return result

    @property
    def path(self) -> Path:
        return Path(self)


@contextlib.contextmanager
def _temporary_file(final: Path) -> Iterator[Path]:
    """A temporary file beside final, named after it, removed unless the block renamed it."""
    with _os_errors(f"creating {final.name}", final.parent):
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


IN_TOTO_STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = f"urn:mims-package:{__version__}"
REPORT_NAME = "package.json"
STATEMENT_NAME = "package.intoto.json"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
TEST_RESULT_NAME = "package.test-result.intoto.json"  # written where a smoke test ran
# The tests a test-result statement names: the code check's, by its findings' checks, and
# the smoke test's.
CODE_CHECK_TESTS = {
    "syntax": "code parses",
    "handlers": "handlers",
    "imports": "imports",
    "requirements": "requirements",
    "model files": "model files",
}


def _report_target(report_dir: Union[str, Path, None], output: Path) -> Optional[Path]:
    """Where the report goes: an explicit dir, or the default one only if it exists."""
    if report_dir is None:
        default = Path(DEFAULT_REPORT_PATH)
        return default if default.is_dir() else None
    target = Path(report_dir)
    if _is_inside(target.resolve(), output.resolve()):
        raise PackagingError(
            f"the report directory {target} is inside the output directory {output}, whose "
            "files are all taken for the package: give the report an output of its own"
        )
    return target


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _job_name() -> Optional[str]:
    """The processing job's name, where SageMaker's job config gives one."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        name = json.loads(Path(JOB_CONFIG_PATH).read_text()).get("ProcessingJobName")
        return name if isinstance(name, str) else None
    return None


def _input_digests(written: Written, inputs: Inputs) -> List[Dict[str, Any]]:
    """The inputs with their SHA-256s: the archive or the loose model files, code, calibration."""
    found = []
    if inputs.archive is not None and inputs.archive_sha256 is not None:
        digest = inputs.archive_sha256.hexdigest()
        found.append({"name": f"model_input/{inputs.archive.name}", "digest": {"sha256": digest}})
    assert written.digests is not None
    for member, sha256 in zip(written.members, written.digests):
        if member.is_dir:
            continue
        top = member.name.partition("/")[0]
        if top == CODE_DIR and inputs.script is not None:
            name = "script_input/" + member.name[len(CODE_DIR) + 1 :]
        elif top == CALIBRATION_DIR and inputs.calibration is not None:
            name = "calibration_model/" + member.name[len(CALIBRATION_DIR) + 1 :]
        elif inputs.archive is None:
            name = "model_input/" + member.name
        else:
            continue
        found.append({"name": name, "digest": {"sha256": sha256}})
    return found


def write_report(
    report_dir: Path,
    result: PackageResult,
    written: Written,
    inputs: Inputs,
    options: Options,
) -> None:
    """Write package.json and package.intoto.json for a published package, each atomically,
    and package.test-result.intoto.json where a smoke test ran."""
    facts = _FACTS.get()
    summary = facts.summary(None) if facts is not None else {}
    assert written.digests is not None
    members = [
        {
            "name": member.name,
            "type": "dir" if member.is_dir else "file",
            "size": member.size,
            "mode": f"{member.mode:04o}",
            "sha256": sha256 or None,
        }
        for member, sha256 in zip(written.members, written.digests)
    ]
    dependencies = _input_digests(written, inputs)
    warnings = summary.get("warnings", [])
    report = {
        "package": os.path.abspath(result),
        "sha256": result.sha256,
        "size": result.size,
        "summary": summary,
        "warnings": warnings,
        "warning_count": len(warnings),
        "code_check": [w for w in warnings if w["check"] in CODE_CHECK_TESTS],
        "smoke_test": summary.get("smoke_test") or {"status": "skipped"},
        "members": members,
        "inputs": dependencies,
    }
    started = facts.start_wall if facts is not None else time.time()
    metadata: Dict[str, Any] = {"startedOn": _utc(started), "finishedOn": _utc(time.time())}
    job = _job_name()
    if job is not None:
        metadata["invocationId"] = job
    subject = [{"name": PACKAGE_NAME, "digest": {"sha256": result.sha256}}]
    statement = {
        "_type": IN_TOTO_STATEMENT,
        "subject": subject,
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": options._asdict(),
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": BUILD_TYPE}, "metadata": metadata},
        },
    }
    files = {REPORT_NAME: report, STATEMENT_NAME: statement}
    if options.smoke_test:
        entry = f"{CODE_DIR}/{options.entry_point or DEFAULT_ENTRY_POINT}"
        entry_digest = next(d for m, d in zip(written.members, written.digests) if m.name == entry)
        predicate = _test_result(report["smoke_test"], warnings, options)
        predicate["configuration"].insert(0, {"name": entry, "digest": {"sha256": entry_digest}})
        files[TEST_RESULT_NAME] = {
            "_type": IN_TOTO_STATEMENT,
            "subject": subject,
            "predicateType": TEST_RESULT,
            "predicate": predicate,
        }
    with _os_errors("writing the report", report_dir):
        report_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            _write_atomically(
                report_dir / name, json.dumps(content, indent=2, sort_keys=True) + "\n"
            )
    log.info("report: %s in %s", ", ".join(files), report_dir)


def _test_result(
    smoke: Mapping[str, Any], warnings: List[Dict[str, str]], options: Options
) -> Dict[str, Any]:
    """An in-toto test-result predicate for a package that passed its smoke test: each check
    passed, or warned (a failure publishes nothing, so none failed)."""
    warned = {CODE_CHECK_TESTS[w["check"]] for w in warnings if w["check"] in CODE_CHECK_TESTS}
    tests = [*CODE_CHECK_TESTS.values(), "model_fn"]
    if "model_type" not in smoke:
        warned.add("model_fn")
    configuration: List[Dict[str, Any]] = []
    if options.sample is not None:
        tests.append("sample request")
        if "response_bytes" not in smoke:
            warned.add("sample request")
        with open(options.sample, "rb") as sample:
            digest = hashlib.sha256(sample.read()).hexdigest()
        configuration.append({"name": "sample", "digest": {"sha256": digest}})
    return {
        "result": "WARNED" if warned else "PASSED",
        "configuration": configuration,
        "passedTests": [test for test in tests if test not in warned],
        "warnedTests": [test for test in tests if test in warned],
        "failedTests": [],
    }


def _write_atomically(path: Path, text: str) -> None:
    """Write text to path through a temporary file beside it, fsync'd and renamed into place."""
    with _temporary_file(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    _fsync_dir(path.parent)


# ---------------------------------------------------------------------------
# The job


@contextlib.contextmanager
def _staging_dir(work_dir: Path) -> Iterator[Path]:
    """A fresh staging directory under work_dir, removed however the block ends."""
    with _os_errors("creating the staging directory", work_dir):
        path = Path(tempfile.mkdtemp(prefix=".mims-staging-", dir=work_dir))
    try:
        yield path
    finally:
        try:
            _remove_tree(path)
        except OSError as exc:
            _warn("cleanup", "", f"could not remove the staging directory {path}: {exc}")


def _inside_any(path: Path, inputs: Tuple[Path, ...]) -> Optional[Path]:
    """The input that path lies in (or is), if any."""
    real = path.resolve()
    return next(
        (source for source in inputs if source.exists() and _is_inside(real, source.resolve())),
        None,
    )


def _check_outside_inputs(what: str, path: Path, inputs: Tuple[Path, ...]) -> None:
    source = _inside_any(path, inputs)
    if source is not None:
        raise PackagingError(
            f"the {what} directory {path} is inside the input {source}; inputs are never "
            "written to: choose a directory outside them"
        )


def _missing_dirs(path: Path) -> List[Path]:
    """path and those of its parents that do not exist yet, deepest first."""
    missing = []
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    return missing


@contextlib.contextmanager
def _output_dir(output_dir: Path) -> Iterator[None]:
    """Create output_dir (and its parents) if missing; if the block fails, remove what was made."""
    if output_dir.exists() and not output_dir.is_dir():
        raise PackagingError(
            f"output path {output_dir} exists and is not a directory; remove it or choose another"
        )
    created = _missing_dirs(output_dir)
    with _os_errors("creating the output directory", output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
    try:
        others = sorted(p.name for p in output_dir.iterdir() if p.name != PACKAGE_NAME)
        if others:
            _warn(
                "output",
                "",
                f"output directory {output_dir} also holds {', '.join(others)}; they are left "
                "alone",
            )
        yield
    except BaseException:
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _check_writable(directory: Path, what: str = "output") -> None:
    """Create and remove a file in directory, so that a read-only one fails before any work."""
    try:
        fd, name = tempfile.mkstemp(prefix=".mims-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:  # named by the directory, not the probe's random name
        unnamed = OSError(exc.errno, exc.strerror)
        raise _explain(
            unnamed, f"checking that the {what} directory is writable", directory
        ) from exc


def _check_destination(what: str, path: Path) -> None:
    """Refuse, before anything is read or made, a directory to write in that cannot be one:
    a file there or above it, or a place where nothing can be made (read-only, /proc). The
    probe is a file made and removed in it, or in the nearest directory above that exists."""
    missing = _missing_dirs(path)
    existing = missing[-1].parent if missing else path
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise PackagingError(
            f"the {what} directory {path} exists and is not a directory{where}; remove it or "
            "choose another"
        )
    _check_writable(existing, what)


def _check_path(option: str, value: Union[str, Path]) -> None:
    """Refuse a path option that no system call can take: too long, or a symlink loop."""
    raw = os.fsencode(value)
    if len(raw) >= MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in raw.split(b"/")):
        raise PackagingError(
            f"{option} {_shown_path(value)[:200]}... is too long (a name over "
            f"{MAX_NAME_BYTES} bytes or a path over {MAX_PATH_BYTES}); choose a shorter path"
        )
    try:
        Path(value).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PackagingError(
            f"{option} {_shown_path(value)} cannot be resolved ({reason}); is it a symlink "
            "loop? Fix the path"
        ) from None


def _work_dir(explicit: Optional[Path], output_dir: Path, inputs: Tuple[Path, ...]) -> Path:
    """Where the staging dir goes: never inside the output (SageMaker uploads it) or an input.

    An explicit work dir is created if missing; by default it is the output's
    parent (normally the large ML volume), else the system temp dir.
    """
    output = output_dir.resolve()
    if explicit is None:
        parent = output.parent
        if os.access(parent, os.W_OK | os.X_OK) and not _inside_any(parent, inputs):
            return parent
        return Path(tempfile.gettempdir())
    if _is_inside(explicit.resolve(), output):
        raise PackagingError(
            f"the work directory {explicit} is inside the output directory {output_dir}, which "
            "SageMaker uploads: choose a work directory outside it"
        )
    if os.path.lexists(explicit) and not explicit.is_dir():
        raise PackagingError(
            f"the work directory {explicit} exists and is not a directory; remove it or choose "
            "another"
        )
    with _os_errors("creating the work directory", explicit):
        explicit.mkdir(parents=True, exist_ok=True)
    return explicit


SPACE_SAMPLES = 8  # files sampled, the largest, to tell how well loose contents compress
SPACE_SAMPLE_BYTES = 64 << 10


def _smallest_package(members: List[Member], archive_size: Optional[int]) -> int:
    """A size the package will not be smaller than, so that plainly too little space fails
    at once: half the model archive's (its contents compressed already), or for loose
    contents half what samples of the largest files say once compressed."""
    if archive_size is not None:
        return archive_size // 2
    files = heapq.nlargest(SPACE_SAMPLES, (m for m in members if not m.is_dir), key=_SIZE)
    sampled = compressed = 0
    for member in files:
        with contextlib.suppress(OSError, PackagingError):
            fd = _open_regular(member.path, member.stamp)
            try:
                data = os.pread(fd, SPACE_SAMPLE_BYTES, member.size // 2)
            finally:
                os.close(fd)
            sampled += len(data)
            compressed += len(zlib.compress(data, 1))
    ratio = compressed / sampled if sampled else 1.0
    return int(sum(m.size for m in members) * ratio / 2)


_SIZE = operator.attrgetter("size")


def _check_space(directory: Path, needed: int, what: str) -> None:
    """Fail at once where the volume holding directory is plainly too small for what a step
    writes there, naming both figures and the fix where the job runs."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(directory).free
        if free >= needed:
            return
        fix = (
            "raise the processing job's volume_size_in_gb (VolumeSizeInGB)"
            if _in_processing_job()
            else "point --work-dir and --output-dir at a larger volume, or free up space"
        )
        raise PackagingError(
            f"not enough space: {_human(free)} free at {directory}, less than {what}; {fix}"
        )


def _warn_replaced(model_root: Path, name: str, source: Path) -> None:
    """Warn that the model's own code/ or calibration/ gives way to the input for it."""
    replaced = model_root / name
    if os.path.lexists(replaced):
        with _os_errors("counting the files it replaces", replaced):
            dropped = (
                1 if not replaced.is_dir() or replaced.is_symlink() else _count_files(replaced)
            )
        _say_replaced(name, dropped, source)


def _say_replaced(name: str, dropped: int, source: Path) -> None:
    _warn(
        "inputs",
        name + "/",
        f"the model's own {name}/ ({dropped} files) is dropped and replaced by {source}",
    )


def _stage_inputs(
    inputs: Inputs,
    staging: Optional[Path],
    excludes: Excludes,
    make_member: Normalized,
    strip_components: int,
    screen: Optional[ContentScreen] = None,
) -> List[Member]:
    """The package's members, sorted by name: the model at the root, code/ and calibration/.

    With no staging dir (--dry-run) a model archive is read and planned, not extracted,
    its files screened by screen as they are read.
    """
    sources = {CODE_DIR: inputs.script, CALIBRATION_DIR: inputs.calibration}
    added = {name: source for name, source in sources.items() if source is not None}
    archive = inputs.archive
    plan_model: Callable[[], List[Member]]
    if archive is None:
        log.info("model: loose files in %s", inputs.model)
        for name, source in added.items():
            _warn_replaced(inputs.model, name, source)
        plan_model = functools.partial(stage_tree, inputs.model, make_member, "", added, excludes)
    elif staging is None:
        assert screen is not None  # a dry run screens the archive as it reads it
        plan_model = _read_archive_for_plan(
            inputs, archive, excludes, strip_components, added, screen
        )
    else:
        plan_model = _extract_archive_for_plan(
            inputs, archive, staging, excludes, make_member, strip_components, added
        )
    with _phase("stage") as phase, _os_errors("staging the inputs", staging or inputs.model):
        members = plan_model()
        for name, source in added.items():
            members.append(make_member(name, os.fspath(source), len(name), os.stat(source)))
            members += stage_tree(source, make_member, f"{name}/", (), excludes)
        phase.amount = f"{sum(not m.is_dir for m in members)} files"
    excludes.summarize()
    _record(excluded=excludes.count)
    members.sort(key=_BY_NAME)
    return members


def _extract_archive_for_plan(
    inputs: Inputs,
    archive: Path,
    staging: Path,
    excludes: Excludes,
    make_member: Normalized,
    strip_components: int,
    added: Mapping[str, Path],
) -> Callable[[], List[Member]]:
    """Extract the model archive into staging; return what plans its members from there."""
    size = archive.stat().st_size
    log.info("model archive: %s (%s)", archive, _human(size))
    _check_space(
        staging, size, f"the model archive's {_human(size)}, which it extracts to at least"
    )
    model_root = staging / "extracted"
    model_root.mkdir()
    with _phase("extract") as phase, _os_errors("extracting the model archive", model_root):
        done = extract_archive(
            archive,
            inputs.archive_stamp,
            model_root,
            excludes,
            staging / "excluded",
            strip_components,
            inputs.archive_sha256,
        )
        phase.amount = _human(done.size)
    for name, source in added.items():
        _warn_replaced(model_root, name, source)

    def plan() -> List[Member]:
        try:
            # What the archive's hard links copy counts against the budget of its symlinks.
            budget = _CopyBudget(model_root.resolve(), *done)
            return stage_tree(
                model_root, make_member, "", added, None, budget, count_hard_links=False
            )
        except PackagingError as exc:
            # Name the archive's members, not the staging directory they were extracted to.
            raise PackagingError(
                str(exc).replace(str(model_root.resolve()), str(archive))
            ) from None

    return plan


def _read_archive_for_plan(
    inputs: Inputs,
    archive: Path,
    excludes: Excludes,
    strip_components: int,
    added: Mapping[str, Path],
    screen: ContentScreen,
) -> Callable[[], List[Member]]:
    """Read the model archive whole, writing nothing (--dry-run), its files screened; return
    what plans its members."""
    log.info(
        "model archive: %s (%s), read without extracting", archive, _human(archive.stat().st_size)
    )
    planner = _Planner(archive, excludes, archive, strip_components)  # paths never written
    planner.kept, planner.screen, planner.skip = inputs.planned_bytes, screen, set(added)
    with _phase("read") as phase, _os_errors("reading the model archive", archive):
        read_archive(planner, archive, inputs.archive_stamp)
        phase.amount = _human(planner.size)
    for name, source in added.items():
        replaced = planner.root.children.get(name)
        if replaced is not None:
            _say_replaced(name, planner.count(replaced) if replaced.kind == "dir" else 1, source)
    return functools.partial(planner.members, archive, added)


def _log_inputs(inputs: Inputs) -> None:
    """Say which optional inputs are absent, and what they mean for the package."""
    if inputs.script is None:
        where = os.path.abspath(inputs.given_script)
        said = f"no inference code in {where}"
        absent = not os.path.exists(where)
        if where == DEFAULT_SCRIPT_PATH and absent and not _in_processing_job():
            said = f"no --script-dir was given (and the default, {where}, does not exist here)"
        _warn("inputs", "", f"{said}: the package has no code/ unless the model brings one")
    if inputs.calibration is None:
        log.info(
            "no calibration in %s: the package has no calibration/ unless the model brings one",
            os.path.abspath(inputs.given_calibration),
        )


def _files_by_part(members: List[Member]) -> Dict[str, List[Member]]:
    """The files of the model, the code and the calibration, from members sorted by name.

    Sorted, the files under code/ are one slice: their names sort from "code/"
    up to, but not including, "code0" ("0" follows "/"). So are calibration's.
    The model's files are the rest.
    """
    files = [member for member in members if not member.is_dir]
    names = [member.name for member in files]
    spans = {
        name: (bisect.bisect_left(names, name + "/"), bisect.bisect_left(names, name + "0"))
        for name in (CODE_DIR, CALIBRATION_DIR)
    }
    model: List[Member] = []
    done = 0
    for start, end in sorted(spans.values()):
        model += files[done:start]
        done = end
    model += files[done:]
    parts = {"model": model}
    parts.update((name, files[start:end]) for name, (start, end) in spans.items())
    return parts


def _check_and_log_members(
    members: List[Member], inputs: "Inputs", entry_point: Optional[str]
) -> None:
    """Refuse a package without a model; count what goes in; check the layout."""
    parts = _files_by_part(members)
    model = parts["model"]
    if not model:
        raise PackagingError(
            "the model input holds no model files; a package without a model cannot be deployed"
        )
    for name, files in parts.items():
        log.info("%s files: %d, %s", name, len(files), _human(sum(m.size for m in files)))
    _record(
        files={name: len(files) for name, files in parts.items()},
        directories=sum(member.is_dir for member in members),
    )
    _check_layout(parts, inputs, entry_point)
    if inputs.archive is None:
        for member in model:
            if member.name.endswith(ARCHIVE_SUFFIXES):
                _warn(
                    "layout",
                    member.name,
                    f"the model input holds {member.name}, which looks like an archive: it is "
                    "packaged as a file, not extracted (only model.tar.gz at the top of the model "
                    "input is, or the file that --model-dir names)",
                )
    if log.isEnabledFor(logging.DEBUG):
        for member in members:
            log.debug("  %s (%d bytes, mode %o)", member.name, member.size, member.mode)


class _MemberReader(_DirectoryChain):
    """Reads planned members whole, as they were planned (see _stamp); a member planned
    from a model archive without extracting it (stamp 0) from the bytes kept as it was read."""

    def __init__(self, kept: Mapping[str, bytes]) -> None:
        super().__init__()
        self._kept = kept

    def read(self, member: Member) -> Optional[bytes]:
        if not member.stamp:
            return self._kept.get(member.path)
        return b"".join(self.blocks(member))

    def blocks(self, member: Member) -> Iterator[bytes]:
        """A loose member's bytes, block by block, checked unchanged at the end."""
        fd = self.open_file(member.path, member.stamp)
        try:
            copied, ended = 0, False
            while not ended:
                _check_stop()
                block, ended = _read_block(fd, member, copied)
                copied += len(block)
                yield block
            _check_unchanged(fd, member.path, member.stamp)
        finally:
            os.close(fd)


def _check_code(members: List[Member], reader: _MemberReader, options: Options) -> None:
    """The code check, before anything is written: a FAIL ends the run, a WARN is a warning."""
    files = {member.name: member.size for member in members if not member.is_dir}
    by_name = {member.name: member for member in members if member.name.startswith("code/")}
    entry_point = options.entry_point or DEFAULT_ENTRY_POINT
    with _phase("code check") as phase:
        findings = check_code(
            files,
            [member.name for member in members if member.is_dir],
            lambda name: reader.read(by_name[name]),
            entry_point,
            _check_serving_python(options.serving_python),
        )
        code_files = sum(not member.is_dir for member in by_name.values())
        phase.amount = f"{code_files} files in code/, {len(findings)} found"
    failures = [finding.message for finding in findings if finding.level == "FAIL"]
    for finding in findings:
        if finding.level == "WARN":
            _warn(finding.check, finding.member, finding.message)
    if failures:
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise PackagingError(
            f"the package would not serve: {' | '.join(failures[:3])}{more}; nothing was written"
        )
    if f"{CODE_DIR}/{entry_point}" in by_name:
        log.info(
            "entry point: %s/%s; deploy with SAGEMAKER_PROGRAM=%s and "
            "SAGEMAKER_SUBMIT_DIRECTORY=%s",
            CODE_DIR,
            entry_point,
            entry_point,
            HOSTING_CODE_DIR,
        )


def _check_smoke_options(options: Options) -> None:
    """Refuse smoke test options that cannot work, before anything is read."""
    if options.sample is None and (options.content_type or options.accept):
        raise PackagingError("--content-type and --accept go with --sample; add one, or drop them")
    if not options.smoke_test:
        given = [name for name in ("sample", "smoke_python") if getattr(options, name)]
        if given:
            option = "--" + given[0].replace("_", "-")
            raise PackagingError(f"{option} goes with --smoke-test; add it, or drop {option}")
        return
    if not options.smoke_timeout > 0:
        raise PackagingError(f"--smoke-timeout must be more than 0, not {options.smoke_timeout}")
    if options.sample is not None and not os.path.isfile(options.sample):
        raise PackagingError(f"--sample {options.sample} is not a file: give the request body")
    python = options.smoke_python or sys.executable
    if not python or shutil.which(python) is None:
        raise PackagingError(
            f"--smoke-python {python!r} is not a Python that can be run; give its path"
        )


def _write_and_verify(
    members: List[Member],
    output_dir: Path,
    staging: Path,
    options: Options,
    threads: int,
    screen: ContentScreen,
    digests: bool,
) -> Tuple[Path, str, int, Written]:
    """Write the package next to its final name, verify it, smoke-test it if asked, then
    rename it into place.

    Returns its path, SHA-256 and size, and what was written (with each file's
    SHA-256 if digests).
    """
    final = output_dir / PACKAGE_NAME
    total = sum(member.size for member in members)
    level, adaptive = options.compression_level, options.adaptive
    coding = "adaptive" if adaptive and level else "every chunk at the level"
    log.info("compress: level %d (%s), %d threads, verified while written", level, coding, threads)
    expected = Written(members, digests)  # filled by write_tar, checked by the read-back
    with _temporary_file(final) as temporary:
        progress = _Progress("verify", total)
        with _os_errors("writing the package", temporary), _ReadBack(
            temporary, progress, expected, threads=threads
        ) as back:
            with _phase("compress") as phase, GzipWriter(
                back, level, threads=threads, adaptive=adaptive, announce=back.piece
            ) as sink:
                write_tar(members, sink, screen, expected)
                phase.amount = _human(total)
            with _phase("verify") as phase:
                digest = _check_decoded(temporary, back.finish)
                phase.amount = f"{_human(temporary.stat().st_size)} read back"
        if options.smoke_test:
            written = _stamp(os.stat(temporary))
            smoke_test(temporary, staging, options, options.entry_point or DEFAULT_ENTRY_POINT)
            if _stamp(os.stat(temporary)) != written:
                raise PackagingError(
                    f"{temporary} changed during the smoke test; nothing was published"
                )
        _fail_if_strict(options.strict, "publishing")
        with _os_errors("publishing the package", final):
            os.chmod(temporary, 0o644)
            os.replace(temporary, final)
            _fsync_dir(output_dir)
    return final, digest, final.stat().st_size, expected


def _dry_run(inputs: Inputs, excludes: Excludes, make_member: Normalized, options: Options) -> None:
    """--dry-run: every check of a real run up to writing, then what would ship and what not."""
    screen = ContentScreen(options.allow_secrets)
    members = _stage_inputs(inputs, None, excludes, make_member, options.strip_components, screen)
    _check_and_log_members(members, inputs, options.entry_point)
    screen.names(member.name for member in members if not member.is_dir)
    reading = _os_errors("reading the inputs", inputs.model)
    with reading, _MemberReader(inputs.planned_bytes) as reader:
        _check_code(members, reader, options)
        for member in members:
            if member.stamp:  # a loose file (one planned from a model archive was screened)
                scan = screen.open(member.name)
                for block in reader.blocks(member):
                    scan.feed(block)
                screen.close(scan)
    sources = {
        CODE_DIR: ("script", inputs.script),
        CALIBRATION_DIR: ("calibration", inputs.calibration),
    }
    model = "model archive" if inputs.archive is not None else "model"
    for member in members:
        label, given = sources.get(member.name.partition("/")[0], (model, None))
        source = label if given is not None else model
        name = member.name + ("/" if member.is_dir else "")
        _write_out(_escape(f"ship {member.mode:04o} {member.size:>14,} {source:<13} {name}"))
    for left_out in excludes.left_out:
        _write_out(_escape(f"leave out {left_out}"))
    if excludes.count > len(excludes.left_out):
        _write_out(f"leave out ... and {excludes.count - len(excludes.left_out)} more")
    files = [member for member in members if not member.is_dir]
    _write_out(
        f"dry run: {len(files)} files, {len(members) - len(files)} directories, "
        f"{_human(sum(m.size for m in files))} would ship; {excludes.count} paths left "
        "out; nothing was written"
    )
    _fail_if_strict(options.strict, "writing")


def _check_strip_components(count: int, inputs: Inputs) -> None:
    """--strip-components is for a model archive; a loose model names its folder instead."""
    if count < 0:
        raise PackagingError(f"--strip-components must be 0 or more, not {count}")
    if count and inputs.archive is None:
        raise PackagingError(
            f"--strip-components applies to a model archive, and {inputs.model} holds loose "
            "files: to package what is inside one of its folders, pass --model-dir <folder>"
        )


def _check_local(option: str, value: Union[str, Path, None]) -> None:
    """Refuse an S3 URI where a local path goes (Path() would make s3://b/k into s3:/b/k)."""
    if isinstance(value, str) and value[:5].lower() == "s3://":
        raise PackagingError(
            f"{option} is the S3 URI {value}, but this script reads and writes local paths: "
            "map it into the job with a ProcessingInput or ProcessingOutput and pass its local "
            "path (the defaults are under /opt/ml/processing), or copy it with aws s3 cp first"
        )


def _options(options: Optional[Options], values: Mapping[str, Any]) -> Options:
    """options (the defaults if None) with the keyword values given; unknown keywords fail."""
    unknown = sorted(set(values) - set(Options._fields))
    if unknown:
        raise TypeError(f"package() got unexpected keyword arguments: {', '.join(unknown)}")
    options = (options or Options())._replace(**values)
    if options.exclude_patterns is not None:
        options = options._replace(exclude_patterns=tuple(options.exclude_patterns))
    return options


def _check_options(options: Options) -> None:
    """Refuse option values no run can use, before anything is read."""
    if not 0 <= options.compression_level <= 9:
        raise PackagingError(f"compression level must be 0-9, not {options.compression_level}")
    if options.threads is not None and options.threads < 1:
        raise PackagingError(f"threads must be at least 1, not {options.threads}")
    if options.entry_point is not None:
        _check_entry_point(options.entry_point)
    _check_serving_python(options.serving_python)
    _check_smoke_options(options)


@contextlib.contextmanager
def _run_facts() -> Iterator[_Facts]:
    """The run's facts: main()'s, or a run's own where package() is called directly."""
    facts = _FACTS.get()
    if facts is not None:
        yield facts
        return
    facts = _Facts()
    token = _FACTS.set(facts)
    try:
        yield facts
    finally:
        _FACTS.reset(token)


@_stop_on_signals()
def package(
    model_dir: Union[str, Path, None] = None,
    script_dir: Union[str, Path, None] = None,
    output_dir: Union[str, Path, None] = None,
    *,
    calibration_dir: Union[str, Path, None] = None,
    work_dir: Union[str, Path, None] = None,
    report_dir: Union[str, Path, None] = None,
    options: Optional[Options] = None,
    **option_values: Any,
) -> Optional[PackageResult]:
    """Build output_dir/model.tar.gz from the model, code and calibration; return its path.

    A path left out (None) is the contract's default. The default script and
    calibration dirs may be missing; any other path given must exist.
    report_dir gets package.json and package.intoto.json once the package is
    published (None: DEFAULT_REPORT_PATH, only if it exists). What shapes the
    run is an Options, given whole (options=), field by field as keywords
    (compression_level=9), or both (the keywords win). Raises PackagingError,
    with a message that says what to do, on any failure; nothing partial is
    left behind, and nothing is created before the inputs and the code pass
    their checks. A dry run checks everything up to writing, prints what would
    ship, creates nothing (no output, work or staging dir), and returns None.
    """
    options = _options(options, option_values)
    with _run_facts():
        return _package(
            model_dir, script_dir, output_dir, calibration_dir, work_dir, report_dir, options
        )


def _package(
    model_dir: Union[str, Path, None],
    script_dir: Union[str, Path, None],
    output_dir: Union[str, Path, None],
    calibration_dir: Union[str, Path, None],
    work_dir: Union[str, Path, None],
    report_dir: Union[str, Path, None],
    options: Options,
) -> Optional[PackageResult]:
    started = time.monotonic()
    log.info("mims_package %s on Python %s", __version__, sys.version.split()[0])
    given = {
        "--model-dir": model_dir,
        "--script-dir": script_dir,
        "--output-dir": output_dir,
        "--calibration-dir": calibration_dir,
        "--work-dir": work_dir,
        "--report-dir": report_dir,
    }
    for option, value in given.items():
        _check_local(option, value)
        if value is not None:
            _check_path(option, value)
    output = Path(output_dir if output_dir is not None else DEFAULT_OUTPUT_PATH)
    model = Path(model_dir if model_dir is not None else DEFAULT_MODEL_PATH)
    script = Path(script_dir if script_dir is not None else DEFAULT_SCRIPT_PATH)
    calibration = Path(calibration_dir if calibration_dir is not None else DEFAULT_CALIBRATION_PATH)
    log.info(
        "paths: model_input %s, script_input %s, calibration_model %s, package_output %s",
        *(os.path.abspath(path) for path in (model, script, calibration, output)),
    )
    _check_options(options)
    threads = options.threads or available_cpus()
    patterns = options.exclude_patterns
    excludes = Excludes(DEFAULT_EXCLUDES if patterns is None else patterns)
    inputs = Inputs(model, script, calibration)
    _check_strip_components(options.strip_components, inputs)
    _log_inputs(inputs)
    explicit_work = Path(work_dir) if work_dir is not None else None
    report = _report_target(report_dir, output)
    if report is not None:
        inputs.archive_sha256 = hashlib.sha256()
    destinations = {"output": output, "work": explicit_work, "report": report}
    for what, path in destinations.items():
        if path is not None:
            _check_outside_inputs(what, path, inputs.paths())
            _check_destination(what, path)
    normalized = Normalized(options.source_date_epoch, options.keep_mtimes)
    _record(threads=threads, level=options.compression_level, adaptive=options.adaptive)
    if options.dry_run:
        _dry_run(inputs, excludes, normalized, options)
        return None
    with _output_dir(output):
        work = _work_dir(explicit_work, output, inputs.paths())
        _watch_volumes(work=work, output=output)
        log.info(
            "free space: staging %s (%s), output %s (%s)",
            work.resolve(),
            _free_space(work),
            output.resolve(),
            _free_space(output),
        )
        with _staging_dir(work) as staging:
            members = _stage_inputs(inputs, staging, excludes, normalized, options.strip_components)
            _check_and_log_members(members, inputs, options.entry_point)
            screen = ContentScreen(options.allow_secrets)
            screen.names(member.name for member in members if not member.is_dir)
            with _os_errors("reading the code", inputs.model), _MemberReader({}) as reader:
                _check_code(members, reader, options)
            _fail_if_strict(options.strict, "writing")
            archive_size = inputs.archive.stat().st_size if inputs.archive is not None else None
            smallest = _smallest_package(members, archive_size)
            _check_space(output, smallest, f"the {_human(smallest)} the package takes at least")
            final, digest, size, written = _write_and_verify(
                members,
                output,
                staging,
                options,
                threads,
                screen,
                digests=report is not None,
            )
    seconds = time.monotonic() - started
    bytes_in = sum(member.size for member in members)
    files = sum(not member.is_dir for member in members)
    log.info(
        "package %s, verified: %d files, %d directories; package %s (gzip), contents %s, "
        "ratio %.3f; %.2f s, %.1f MB/s of contents; sha256 %s",
        final.resolve(),
        files,
        len(members) - files,
        _human(size),
        _human(bytes_in),
        size / bytes_in if bytes_in else 1.0,
        seconds,
        bytes_in / seconds / 1e6,
        digest,
    )
    ratio = round(size / bytes_in, 4) if bytes_in else 1.0
    _record(sha256=digest, package_bytes=size, content_bytes=bytes_in, ratio=ratio)
    result = PackageResult.of(final, digest, size, _files_by_part(members))
    if report is not None:
        try:
            write_report(report, result, written, inputs, options)
        except PackagingError as exc:
            raise PackagingError(
                f"{exc}. The package {final} is published and verified, but has no report: "
                "fix the report directory and run again"
            ) from None
    return result


# ---------------------------------------------------------------------------
# Entry points: main() for pipelines, cli() for the command line


def _in_processing_job() -> bool:
    return Path(JOB_CONFIG_PATH).exists() or Path(FAILURE_MESSAGE_PATH).parent.is_dir()


def _report_failure(reason: str) -> None:
    """Log the one ERROR line and, inside a processing job, hand it to SageMaker."""
    log.error("%s", reason)
    if not _in_processing_job():
        return
    message = _fit(_escape(reason), MAX_MESSAGE_BYTES)
    path = Path(FAILURE_MESSAGE_PATH)
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(message, encoding="utf-8")
    except OSError as exc:
        log.warning("could not write the failure reason to %s: %s", path, exc)


def _fit(text: str, limit: int) -> str:
    """text in at most limit UTF-8 bytes, its reason kept: long paths lose their middle first."""
    words = text.split(" ")
    while len(" ".join(words).encode("utf-8")) > limit:
        longest = max(range(len(words)), key=lambda i: len(words[i]) if "/" in words[i] else 0)
        word = words[longest]
        if "/" not in word or len(word) < 24:
            break
        keep = len(word) // 4
        words[longest] = word[:keep] + "..." + word[-keep:]
    return " ".join(words).encode("utf-8")[:limit].decode("utf-8", "ignore")


def _source_date_epoch(environ: Mapping[str, str]) -> Optional[int]:
    value = environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    try:
        return max(0, int(value))
    except ValueError:
        raise PackagingError(f"SOURCE_DATE_EPOCH must be an integer, not {value!r}") from None


def _paths_by_name(
    paths: Mapping[str, str], keys: Mapping[str, Tuple[str, ...]], what: str
) -> Dict[str, Optional[str]]:
    """{logical name: the path given under any of its keys, or None}; unknown keys fail."""
    name_of = {key: name for name, aliases in keys.items() for key in aliases}
    found: Dict[str, Optional[str]] = dict.fromkeys(keys)
    for key, path in paths.items():
        name = name_of.get(key)
        if name is None:
            raise PackagingError(
                f"unknown {what} key {key!r}; the accepted keys are {', '.join(name_of)}"
            )
        earlier = found[name]
        if earlier is not None and os.path.normpath(earlier) != os.path.normpath(path):
            raise PackagingError(
                f"{what} keys {' and '.join(repr(k) for k in keys[name] if k in paths)} both "
                f"name the {name}, as {earlier} and {path}; give one of them"
            )
        found[name] = path
    return found


def _options_of(job_args: Optional[argparse.Namespace], environ: Mapping[str, str]) -> Options:
    """The Options that main()'s job_args and environ_vars ask for (see main())."""
    given = {name: getattr(job_args, name, None) for name in Options._fields}
    values = {name: value for name, value in given.items() if value is not None}
    defaults = [] if getattr(job_args, "no_default_excludes", False) else list(DEFAULT_EXCLUDES)
    values["exclude_patterns"] = (*defaults, *(getattr(job_args, "exclude", None) or ()))
    values["adaptive"] = not getattr(job_args, "no_adaptive", False)
    values["source_date_epoch"] = _source_date_epoch(environ)
    if values.get("entry_point") is None and environ.get("SAGEMAKER_PROGRAM"):
        values["entry_point"] = environ["SAGEMAKER_PROGRAM"]
    return Options(**values)


def _show_logs_by_default() -> None:
    """Used as a library with no logging set up, main() still shows the job's INFO lines."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


@_stop_on_signals()
def main(
    input_paths: Mapping[str, str],
    output_paths: Mapping[str, str],
    environ_vars: Mapping[str, str],
    job_args: Optional[argparse.Namespace] = None,
) -> Optional[PackageResult]:
    """Pipeline entry point: package the model and return the package's path (None: dry run).

    input_paths has model_input, script_input (or inference_scripts_input) and
    optionally calibration_model; output_paths has package_output (or
    output_dir, or packaged_model). A key left out means the contract's path;
    an unknown key fails. environ_vars may set SOURCE_DATE_EPOCH and
    WORKING_DIRECTORY; job_args may set work_dir, compression_level, threads,
    exclude, no_default_excludes, allow_secrets, keep_mtimes, no_adaptive,
    entry_point, strip_components and dry_run, as the command line does.
    Raises PackagingError on failure, after reporting it. The last line on
    standard output, whatever happens, is one JSON object that sums the run up
    (see the README).
    """
    _show_logs_by_default()
    facts = _Facts()
    token = _FACTS.set(facts)
    error: Optional[str] = None
    try:
        return _package_for(input_paths, output_paths, environ_vars, job_args)
    except BaseException as exc:
        error = _failure_reason(exc)
        _report_failure(error)
        raise
    finally:
        _FACTS.reset(token)
        # Bare JSON on standard output, where the job's log goes: CloudWatch Logs Insights
        # and metric filters read the fields of a log event that is JSON and nothing else.
        # json.dumps escapes every control and non-ASCII character.
        _write_out(json.dumps(facts.summary(error)))


def _failure_reason(exc: BaseException) -> str:
    """The one ERROR line's text for what ended a run (an unexpected error logs its traceback)."""
    if isinstance(exc, PackagingError):
        return str(exc)
    if isinstance(exc, _Stopped):
        return f"stopped by {exc}; cleaned up, no package was written"
    log.exception("unexpected error")
    return f"unexpected error ({type(exc).__name__}: {exc}); please report this bug with the log"


def _package_for(
    input_paths: Mapping[str, str],
    output_paths: Mapping[str, str],
    environ_vars: Mapping[str, str],
    job_args: Optional[argparse.Namespace],
) -> Optional[PackageResult]:
    """package() called with what main() was given."""
    inputs = _paths_by_name(input_paths, INPUT_KEYS, "input")
    outputs = _paths_by_name(output_paths, OUTPUT_KEYS, "output")
    work_dir = getattr(job_args, "work_dir", None) or environ_vars.get("WORKING_DIRECTORY") or None
    return package(
        inputs["model_input"],
        inputs["script_input"],
        outputs["package_output"],
        calibration_dir=inputs["calibration_model"],
        work_dir=work_dir,
        report_dir=outputs["package_report"],
        options=_options_of(job_args, environ_vars),
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only where it has one worth showing (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults are read from the module constants at call time."""
    parser = argparse.ArgumentParser(
        prog="mims_package.py",
        description="Package a trained model, its inference code and its calibration into a "
        "verified, deterministic model.tar.gz for SageMaker. With no arguments it uses the "
        "SageMaker Processing paths. Needs Python 3.7 or later, nothing else.",
        epilog="Standard output carries only what a program reads: the JSON summary line "
        "that ends a run (after a dry run's list of what would ship), --verify's findings or "
        "its one JSON object, the contract. Every log line goes to standard error.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        default=DEFAULT_MODEL_PATH,
        help="model input: a directory with model.tar.gz (gzip, bzip2, xz or tar) or loose "
        "model files, or the archive file itself",
    )
    parser.add_argument(
        "--script-dir",
        default=DEFAULT_SCRIPT_PATH,
        help="inference code, packaged under code/; only the default path may be missing",
    )
    parser.add_argument(
        "--calibration-dir",
        default=DEFAULT_CALIBRATION_PATH,
        help="calibration artifacts, packaged under calibration/; only the default path may "
        "be missing",
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_PATH,
        help="where model.tar.gz is written (created if missing)",
    )
    parser.add_argument(
        "--report-dir",
        default=None,
        help="where package.json (the summary and every member's SHA-256) and "
        "package.intoto.json (an in-toto provenance statement) go, created if missing; "
        f"default: {DEFAULT_REPORT_PATH}, only if it exists (a ProcessingOutput of its own)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="where the staging directory is created (made if missing); default: "
        "$WORKING_DIRECTORY, else the output directory's parent, else the system temp dir",
    )
    parser.add_argument(
        "--compression-level",
        type=int,
        choices=range(10),
        metavar="{0-9}",
        default=DEFAULT_COMPRESSION_LEVEL,
        help="gzip level; 0 stores",
    )
    parser.add_argument(
        "--no-adaptive",
        action="store_true",
        help="code every chunk at the level; by default a chunk whose samples code smaller "
        "with Huffman codes alone (dense weights) is coded that way, faster and smaller",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="compression threads; default: the CPUs this process may use "
        "(affinity and cgroup quota). The package bytes do not depend on it",
    )
    parser.add_argument(
        "--entry-point",
        default=None,
        metavar="NAME",
        help=f"the .py under code/ that SAGEMAKER_PROGRAM names (default {DEFAULT_ENTRY_POINT}, "
        "whose absence warns); given explicitly, its absence fails the job",
    )
    parser.add_argument(
        "--strip-components",
        type=int,
        default=0,
        metavar="N",
        help="drop the first N components of each member name of the model archive (after a "
        "leading ./), as GNU tar's option: 1 turns model/x into x",
    )
    parser.add_argument(
        "--serving-python",
        metavar="X.Y",
        help="the serving image's Python: the code is also parsed with its grammar, and "
        "standard modules it lacks are flagged",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="every warning fails the run (nothing is published); with --verify, exit 1",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="leave out input paths matching this glob (repeatable): matched against the path "
        "relative to its input; 'dir/' matches directories; no '/' matches at any depth",
    )
    parser.add_argument(
        "--no-default-excludes",
        action="store_true",
        help="keep what is left out by default: " + " ".join(DEFAULT_EXCLUDES),
    )
    parser.add_argument(
        "--allow-secrets",
        action="store_true",
        help="warn about credentials in the code, calibration or loose model, instead of failing",
    )
    parser.add_argument(
        "--keep-mtimes",
        action="store_true",
        help="keep the inputs' mtimes (clamped to $SOURCE_DATE_EPOCH) instead of one fixed "
        "time, so that the bytes then depend on when the inputs were written",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging detail, in any case",
    )
    parser.add_argument(
        "--print-contract", action="store_true", help="print the script contract as JSON and exit"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run every input and layout check (a model archive is read in full) and print "
        "what would ship and what is left out; create nothing; exit as the real run would",
    )
    smoke = parser.add_argument_group(
        "smoke test: run the package as the serving toolkit would (also with --verify)"
    )
    smoke.add_argument(
        "--smoke-test",
        action="store_true",
        help="before publishing, extract the package, pip install code/requirements.txt into "
        "a throwaway environment, import the entry point and call model_fn; a failure "
        "publishes nothing",
    )
    smoke.add_argument(
        "--sample",
        metavar="FILE",
        help="also send this request body through input_fn, predict_fn and output_fn (or "
        "transform_fn)",
    )
    smoke.add_argument(
        "--content-type",
        metavar="TYPE",
        help="the sample's content type; default: by its extension (.json, .csv, .npy), "
        "else application/octet-stream",
    )
    smoke.add_argument("--accept", metavar="TYPE", help="the request's Accept type")
    smoke.add_argument(
        "--smoke-python",
        metavar="PATH",
        help="the Python to run it with (a venv with the framework, or the serving image's); "
        "default: this one",
    )
    smoke.add_argument(
        "--smoke-timeout",
        type=float,
        default=DEFAULT_SMOKE_TIMEOUT,
        metavar="SECONDS",
        help="for the install and the child together; the child and all it started are then ended",
    )
    checking = parser.add_argument_group("checking a package (writes nothing)")
    checking.add_argument(
        "--verify",
        metavar="PACKAGE",
        help="check any model.tar.gz (whole, safe, deployable): one PASS, WARN or FAIL line a "
        "finding, then a summary; exit 1 if anything FAILs, 2 if it cannot be read",
    )
    checking.add_argument(
        "--expect-sha256",
        type=_sha256_hex,
        metavar="HEX",
        help="with --verify: the package's SHA-256 must be this",
    )
    checking.add_argument(
        "--expect-report",
        metavar="PACKAGE_JSON",
        help="with --verify: the package.json of the job that wrote the package; its SHA-256 "
        "and every member's type, size and SHA-256 must match, and any that differs is named",
    )
    checking.add_argument(
        "--json",
        action="store_true",
        help="with --verify: print one JSON object (logs go to standard error)",
    )
    return parser


def _sha256_hex(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise argparse.ArgumentTypeError(f"must be 64 hex digits, not {text!r}")
    return text.lower()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _read_report(path: Path) -> Dict[str, Any]:
    """A package.json, as --expect-report reads it (check_package checks what it holds)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's depth
        raise PackagingError(f"the report {path} is not JSON ({type(exc).__name__})") from None
    if not isinstance(report, dict):
        raise PackagingError(f"the report {path} is not a package.json: give the job's report")
    return report


def _verify_command(args: argparse.Namespace) -> int:
    """--verify: check the package, print the findings (or one JSON object); the exit code.

    With --json, standard output holds exactly one JSON object, whatever happens.
    """
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format=LOG_FORMAT)
    shown = _shown_path(args.verify)
    try:
        report = None
        if args.expect_report is not None:
            report = _read_report(Path(args.expect_report))
        options = _options_of(args, _optional_environ())
        with _stop_on_signals():
            result = check_package(
                args.verify,
                args.expect_sha256,
                None,
                report,
                options=options,
                work_dir=args.work_dir,
            )
    except (OSError, PackagingError, _Stopped) as exc:
        if isinstance(exc, OSError):
            reason = (
                f"cannot read {_shown_path(exc.filename or args.verify)}: {exc.strerror or exc}"
            )
        else:
            reason = str(exc) if isinstance(exc, PackagingError) else f"stopped by {exc}"
        log.error("%s", reason)
        if args.json:
            _write_out(json.dumps({"package": shown, "status": "error", "error": reason}))
        return 128 + exc.signum if isinstance(exc, _Stopped) else 2
    warnings = [finding.as_warning() for finding in result.findings if finding.level == "WARN"]
    if args.json:
        report = {**result._asdict(), "package": shown, "status": result.status}
        report["findings"] = [finding._asdict() for finding in _grouped(result.findings)]
        report["warnings"], report["warning_count"] = warnings, len(warnings)
        smoke = result.smoke_test
        report["smoke_test"] = smoke.summary() if smoke is not None else _smoke_status(result)
        _write_out(json.dumps(report, indent=2))
    else:
        for finding in _grouped(result.findings):
            where = f"{finding.member}: " if finding.member else ""
            _write_out(_escape(f"{finding.level} {finding.check}: {where}{finding.message}"))
        counts = {
            level: sum(f.level == level for f in result.findings) for level in ("FAIL", "WARN")
        }
        _write_out(
            _escape(
                f"summary: {result.status.upper()} {shown}: {result.files} files, "
                f"{result.directories} directories; package {_human(result.package_bytes)} "
                f"({result.compression}), contents {_human(result.content_bytes)}; sha256 "
                f"{result.sha256}; {counts['FAIL']} FAIL, {counts['WARN']} WARN"
            )
        )
    return 1 if result.status == "fail" or (args.strict and warnings) else 0


def _shown_path(path: Union[str, Path]) -> str:
    """A path as text for a person or JSON: bytes that are not UTF-8 as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _write_out(text: str) -> None:
    """A line on standard output, for a program to read; a reader that went away (| head)
    is not an error, and what is left to print is dropped."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _grouped(findings: List[Finding]) -> List[Finding]:
    """The findings by check, the checks that FAIL first, then those that WARN, then PASS."""
    checks = list(dict.fromkeys(finding.check for finding in findings))
    worst = {
        check: min(LEVELS.index(f.level) for f in findings if f.check == check) for check in checks
    }
    return sorted(
        findings, key=lambda f: (worst[f.check], checks.index(f.check), LEVELS.index(f.level))
    )


LEVELS = ("FAIL", "WARN", "PASS")


def _smoke_status(result: PackageCheck) -> Dict[str, str]:
    """--verify --json's smoke_test object where no smoke test passed: failed, or skipped."""
    failed = any(f.check == "smoke test" and f.level == "FAIL" for f in result.findings)
    return {"status": "fail" if failed else "skipped"}


def _optional_environ() -> Dict[str, str]:
    """The optional environment variables the contract names, as this process has them."""
    return {name: os.environ[name] for name in OPTIONAL_ENV_VARS if name in os.environ}


def cli(argv: Optional[List[str]] = None) -> int:
    """Run the job from the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.print_contract:
        _write_out(json.dumps(CONTRACT, indent=2))
        return 0
    if args.verify is not None:
        return _verify_command(args)
    if args.expect_sha256 is not None or args.expect_report is not None or args.json:
        build_parser().error("--expect-sha256, --expect-report and --json go with --verify")
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format=LOG_FORMAT)
    environ = _optional_environ()
    try:
        with _stop_on_signals():
            main(
                {
                    "model_input": args.model_dir,
                    "script_input": args.script_dir,
                    "calibration_model": args.calibration_dir,
                },
                {"package_output": args.output_dir, "package_report": args.report_dir},
                environ,
                args,
            )
    except _Stopped as exc:
        return 128 + exc.signum
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
