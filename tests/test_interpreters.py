"""The script on every Python that SageMaker processing images ship: 3.7 to 3.13 (3.14 if here).

Each interpreter runs the script as a subprocess, as a processing job would, and the
packages it writes must be byte-identical across all of them. Interpreters come from
MIMS_PYTHONS, pyenv and python3.X on PATH. A missing one is a skip that names it,
unless MIMS_REQUIRE_PYTHONS lists it (as CI does): then it is a failure.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import (
    EXAMPLE,
    SCRIPT,
    SUPPORTED_PYTHONS,
    Job,
    archive_tree,
    compiled_script,
    find_pythons,
    make_archive,
    read_package,
    stop_during,
    tar_member,
    walk,
    write_tree,
)

import mims_package

PYTHONS = find_pythons()
REQUIRED = {v.strip() for v in os.environ.get("MIMS_REQUIRE_PYTHONS", "").split(",") if v.strip()}
EPOCH = "1700000000"

# Names and shapes whose tar headers tarfile has written differently across versions.
TRICKY = {
    "modèle/données_été.bin": b"\x00\x01" * 500,
    "日本語/重み.npy": b"weights",
    "n" * 120 + ".bin": b"a name over 100 bytes",
    "/".join(["deep" * 20] * 4) + "/leaf.bin": b"a path over 255 bytes",
    "empty.bin": b"",
    "empty_dir": None,
    "bin/run.sh": b"#!/bin/sh\n",
}


def python_for(version: str) -> str:
    """The interpreter for version, or a skip (a failure where it is required) naming it."""
    if version in PYTHONS:
        return PYTHONS[version]
    message = f"Python {version} not found (pyenv, python{version} on PATH, MIMS_PYTHONS)"
    if version in REQUIRED:
        pytest.fail(f"{message}, but MIMS_REQUIRE_PYTHONS requires it")
    pytest.skip(message)


def run(
    python: str,
    *args: object,
    cwd: Path | None = None,
    merged: bool = True,
    source: bool = False,
    launcher: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """The script under python (compiled once by it, or from its source if asked), through a
    launcher if given; the logs (standard error) in stdout too, unless not merged."""
    env = {k: v for k, v in os.environ.items() if k != "WORKING_DIRECTORY"}
    env["SOURCE_DATE_EPOCH"] = EPOCH
    script = str(SCRIPT) if source else compiled_script(python)
    result = subprocess.run(
        [python, *launcher, script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    result.stderr = result.stderr or ""
    return result


def run_job(python: str, model: Path, script: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return run(python, "--model-dir", model, "--script-dir", script, "--output-dir", out)


def package_with(python: str, model: Path, script: Path, out: Path) -> bytes:
    result = run_job(python, model, script, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return (out / "model.tar.gz").read_bytes()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """The three inputs every interpreter packages: {case: (model dir, script dir)}."""
    root = tmp_path_factory.mktemp("inputs")
    script = write_tree(root / "script", {"inference.py": "def model_fn(d):\n    return d\n"})
    tricky_tree = write_tree(root / "tricky-tree", TRICKY)
    os.chmod(tricky_tree / "bin" / "run.sh", 0o755)
    archive_tree(tricky_tree, root / "tricky" / "model.tar.gz")
    loose = write_tree(root / "loose", {"weights/part0.bin": b"w" * 4096, "config.json": "{}"})
    (loose / "current").symlink_to("weights")
    (loose / "config-link.json").symlink_to("config.json")
    # enough small files for the reader process, and a larger one the main process streams
    many = {f"d{i % 7}/f{i:04}.py": f"x = {i}\n" for i in range(mims_package.READER_MIN_FILES)}
    many["large.bin"] = b"L" * (mims_package.SMALL_FILE_SIZE + 1)
    return {
        "example": (EXAMPLE / "model", EXAMPLE / "script"),
        "tricky-archive": (root / "tricky", script),
        "loose-symlinks": (loose, script),
        "many-small-files": (write_tree(root / "many", many), script),
    }


@pytest.fixture(scope="module")
def packages(
    inputs: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, bytes]]:
    """{case: {version: package bytes}} for every interpreter found, built once."""
    built: dict[str, dict[str, bytes]] = {case: {} for case in inputs}
    for version, python in sorted(PYTHONS.items()):
        if version not in SUPPORTED_PYTHONS:
            continue
        for case, (model, script) in inputs.items():
            out = tmp_path_factory.mktemp(f"out-{version}-{case}")
            built[case][version] = package_with(python, model, script, out)
    return built


# The tests of the packages share one worker, which builds them once (--dist loadgroup).
@pytest.mark.xdist_group("packages")
@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
def test_packages_each_input(version: str, packages: dict[str, dict[str, bytes]]) -> None:
    python_for(version)
    tricky = read_members(packages["tricky-archive"][version])
    for name, content in TRICKY.items():
        if content is None:
            assert tricky[name] == ("dir", 0o755)
        else:
            mode = 0o755 if name == "bin/run.sh" else 0o644
            assert tricky[name] == ("file", mode, content), name
    loose = read_members(packages["loose-symlinks"][version])
    assert loose["current/part0.bin"] == loose["weights/part0.bin"] == ("file", 0o644, b"w" * 4096)
    assert loose["config-link.json"] == ("file", 0o644, b"{}")
    example = read_members(packages["example"][version])
    assert "code/inference.py" in example
    assert any(name.endswith(".bst") or name.endswith(".json") for name in example)


def read_members(package: bytes) -> dict[str, tuple[object, ...]]:
    """{name: ("dir", mode) or ("file", mode, bytes)} of a package, via a temporary file."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"read-{os.getpid()}-{time.time_ns()}.tar.gz"
    path.write_bytes(package)
    try:
        entries = read_package(path)
    finally:
        path.unlink()
    return {
        name: (e.type, e.mode) if e.type == "dir" else (e.type, e.mode, e.data)
        for name, e in entries.items()
    }


@pytest.mark.xdist_group("packages")
@pytest.mark.parametrize(
    "case", ["example", "tricky-archive", "loose-symlinks", "many-small-files"]
)
def test_packages_are_byte_identical_on_every_interpreter(
    case: str, packages: dict[str, dict[str, bytes]]
) -> None:
    for version in REQUIRED:
        python_for(version)
    built = packages[case]
    if len(built) < 2:
        pytest.skip(f"only {sorted(built)} found: nothing to compare")
    digests = {version: hashlib.sha256(data).hexdigest() for version, data in built.items()}
    assert len(set(digests.values())) == 1, digests


# attack: (members, given the directory outside the job; what the script's own message says)
HOSTILE = {
    "dotdot": (lambda outside: [tar_member("../escaped.bin", b"x")], "climbs out through '..'"),
    "absolute-symlink": (
        lambda outside: [tar_member("abs", type=tarfile.SYMTYPE, linkname=str(outside / "t"))],
        "an absolute or empty target",
    ),
    "write-through-symlink": (
        lambda outside: [
            tar_member("link", type=tarfile.SYMTYPE, linkname="sub"),
            tar_member("sub/x", b"x"),
            tar_member("link/evil.bin", b"through the link"),
        ],
        "goes through 'link', which is a symlink",
    ),
    "relative-symlink-escape": (
        lambda outside: [tar_member("up", type=tarfile.SYMTYPE, linkname="../../outside")],
        "points outside the archive",
    ),
    "escape-through-an-earlier-symlink": (
        lambda outside: [
            tar_member("here", type=tarfile.SYMTYPE, linkname="."),
            tar_member("out", type=tarfile.SYMTYPE, linkname="here/.."),
        ],
        "points outside the archive",
    ),
    "symlink-copies-over-budget": (
        lambda outside: [
            tar_member("zeros.bin", bytes(1 << 20)),
            *(tar_member(f"c{i}", type=tarfile.SYMTYPE, linkname="zeros.bin") for i in range(120)),
        ],
        "more than 10-fold",
    ),
}


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_archives_are_refused_by_the_scripts_own_checks(
    version: str, attack: str, tmp_path: Path
) -> None:
    """On 3.7 there is no tarfile.data_filter: only the script's checks stand here."""
    python = python_for(version)
    outside = tmp_path / "outside"
    outside.mkdir()
    model = tmp_path / "job" / "model"
    make_members, message = HOSTILE[attack]
    members = [tar_member("model.bin", b"m"), *make_members(outside)]
    make_archive(model / "model.tar.gz", members)
    script = write_tree(tmp_path / "script", {})
    before = set(walk(tmp_path))
    out = tmp_path / "job" / "out"
    result = run_job(python, model, script, out)
    error = assert_one_error(result)
    assert message in error and "is unsafe:" not in error  # ours, not tarfile's data_filter
    assert list(outside.iterdir()) == []
    assert set(walk(tmp_path)) == before  # not even the output dir is left behind


def assert_one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    return errors[0]


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
def test_corrupt_gzip_is_one_error(version: str, tmp_path: Path) -> None:
    python = python_for(version)
    model = tmp_path / "model"
    archive = make_archive(model / "model.tar.gz", [tar_member("model.bin", os.urandom(50_000))])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = run_job(python, model, write_tree(tmp_path / "script", {}), out)
    assert "corrupt" in assert_one_error(result)
    assert not out.exists()


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
def test_print_contract(version: str) -> None:
    result = run(python_for(version), "--print-contract", merged=False)
    assert result.returncode == 0, result.stderr
    contract = json.loads(result.stdout)
    assert contract["framework_requirements"]["python"] == ">=3.7"


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
def test_verify_gives_the_same_findings_on_every_interpreter(version: str) -> None:
    package = EXAMPLE / "model" / "model.tar.gz"  # a training job's archive: no code/ in it
    result = run(python_for(version), "--verify", package, "--json", merged=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert [(f["level"], f["check"]) for f in report["findings"]] == [
        ("WARN", "layout"),  # no code/: a training job's archive
        ("PASS", "integrity"),
        ("PASS", "safety"),
        ("PASS", "credentials"),
        ("PASS", "model files"),
    ]


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
def test_sigterm_during_compression_leaves_nothing(version: str, tmp_path: Path) -> None:
    python = python_for(version)
    model = write_tree(tmp_path / "model", {"weights.bin": os.urandom(32 << 20)})
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    job = Job(tmp_path, model, write_tree(tmp_path / "script", {}), out, work)
    code, log = stop_during(job, "compress", signal.SIGTERM, python)
    assert code == 143, log
    assert "Traceback" not in log
    assert list(work.iterdir()) == []
    assert not out.exists()  # the job made it, and removes it when it fails or stops


def test_older_pythons_get_a_message_not_a_traceback() -> None:
    """3.6 cannot run the script; it must say so in one line and exit 1."""
    if "3.6" not in PYTHONS:
        pytest.skip("Python 3.6 not found (pyenv, python3.6 on PATH, MIMS_PYTHONS)")
    result = run(PYTHONS["3.6"], "--print-contract", merged=False, source=True)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "ERROR mims_package.py needs Python 3.7 or later, this is 3.6\n"


HEADER_CASES = [
    ("huge.bin", False, 9 << 30, 0o644, 1_700_000_000),  # over 8 GiB: a PAX size record
    ("日本" * 60, False, 8**11, 0o755, 7),
    ("z" * 100, True, 0, 0o755, 3),
]
HASH_HEADERS = f"""
import hashlib, sys
sys.path.insert(0, {str(SCRIPT.parent)!r})
import mims_package
cases = {HEADER_CASES!r}
print(hashlib.sha256(b"".join(mims_package.member_header(*c) for c in cases)).hexdigest())
"""


def test_large_file_headers_are_byte_identical_on_every_interpreter() -> None:
    """Files over 8 GiB are too big to package here; their headers alone are compared."""
    for version in REQUIRED:
        python_for(version)
    digests = {}
    for version, python in PYTHONS.items():
        if version in SUPPORTED_PYTHONS:
            result = subprocess.run([python, "-c", HASH_HEADERS], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            digests[version] = result.stdout.strip()
    assert len(digests) >= 1 and len(set(digests.values())) == 1, digests


def global_size_header() -> bytes:
    records = mims_package._pax_record(b"size", b"512")
    pax = mims_package._ustar_block(b"././@PaxHeader", b"g", len(records), 0, 0)
    member = mims_package.member_header("a.bin", False, 10, 0o644, 0) + b"A" * 10 + bytes(502)
    return gzip.compress(pax + records + bytes(-len(records) % 512) + member + bytes(1024))


# The third red team's cases, as they were built; each (what to give the job, what it says).
ROUND_THREE = {
    "global-size": "its PAX global header sets 'size'",
    "root-credentials": ".env: its name marks a credentials file",
    "strip-components-escape": "climbs out through '..'",
    "report-dir-in-an-input": "is inside the input",
    "bomb": "decodes to more than 200 times",
}


@functools.lru_cache(maxsize=None)
def bzip2_bomb(chunks: int) -> bytes:
    """chunks x 64 MiB of zeros in a few KB: bzip2 streams, one after another, as bzip2 -d
    reads them."""
    zeros = bz2.compress(bytes(64 << 20))
    header = mims_package.member_header("zeros.bin", False, chunks * (64 << 20), 0o644, 0)
    return bz2.compress(header) + zeros * chunks + bz2.compress(bytes(1024))


# Runs the script with the decoding ratio applying past 1 MiB instead of 1 GiB.
LOWERED_RATIO_LAUNCHER = (
    "-c",
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "cli = runpy.run_path(sys.argv[0], run_name='mims_package')['cli']\n"
    "cli.__globals__['DECODE_RATIO_AFTER'] = 1 << 20\n"
    "sys.exit(cli())\n",
)


# The oldest and newest Pythons for every case, and 3.11 (this suite's) but for the bomb,
# which test_security.py runs on this Python. The bomb is the red team's 1.25 GiB on the
# oldest; on the newest, 64 MiB with the ratio applying past 1 MiB (decoding 1.25 GiB
# takes five seconds a Python).
@pytest.mark.parametrize(
    ("case", "version"),
    [
        (case, version)
        for case in sorted(ROUND_THREE)
        for version in ("3.7", "3.11", "3.13")
        if (case, version) != ("bomb", "3.11")
    ],
)
def test_the_third_red_teams_cases_are_refused_on_every_python(
    version: str, case: str, tmp_path: Path
) -> None:
    python = python_for(version)
    model, script, out = tmp_path / "model", tmp_path / "script", tmp_path / "out"
    model.mkdir()
    write_tree(script, {"inference.py": "def model_fn(d): pass\n"})
    extra: list[object] = []
    launcher: tuple[str, ...] = ()
    if case == "global-size":
        (model / "model.tar.gz").write_bytes(global_size_header())
    elif case == "root-credentials":  # a training tar made from a repository root
        trained = write_tree(tmp_path / "repo", {"w.bin": b"w", ".env": "AWS_PROFILE=prod\n"})
        files = [tar_member(path.name, path.read_bytes()) for path in sorted(trained.iterdir())]
        make_archive(model / "model.tar.gz", files)
    elif case == "strip-components-escape":
        members = [tar_member("m/w.bin", b"w"), tar_member("../m/x.bin", b"x")]
        make_archive(model / "model.tar.gz", members)
        extra = ["--strip-components", "1"]
    elif case == "report-dir-in-an-input":
        write_tree(model, {"w.bin": b"w"})
        extra = ["--report-dir", script]
    elif version == "3.7":
        (model / "model.tar.gz").write_bytes(bzip2_bomb(20))
    else:
        (model / "model.tar.gz").write_bytes(bzip2_bomb(1))
        launcher = LOWERED_RATIO_LAUNCHER
    paths = ["--model-dir", model, "--script-dir", script, "--output-dir", out]
    result = run(python, *paths, *extra, launcher=launcher)
    error = assert_one_error(result)
    assert ROUND_THREE[case] in error
    assert not out.exists() and list(script.iterdir()) == [script / "inference.py"]
