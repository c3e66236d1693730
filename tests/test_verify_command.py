"""--verify: any package, from any tool, checked as hosting will use it; nothing is written."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPT, Job, run_cli, write_tree

KEYS = (
    b"key = '"
    + b"AKIA"
    + b"Q3EGRXLWZ7N5TUHY' secret = '"
    + b"tG3k+f9Qw/x7LmN2pR4sV6uY8zA1bC3dE5fH7jK9'\n"
)
GOOD = {"xgboost_model.bst": b"booster", "code/inference.py": "def model_fn(d): pass\n"}


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def info(name: str, data: bytes = b"", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    member = tarfile.TarInfo(name)
    member.size, member.mode = len(data), 0o644
    for key, value in attrs.items():
        setattr(member, key, value)
    return member, data


def verify(package: Path, *extra: object) -> tuple[int, list[str]]:
    result = run_cli("--verify", package, *extra)
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stdout.splitlines()


def lines_at(level: str, lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(level + " ")]


def packaged_by(tool: str, tmp: Path) -> Path:
    tree = write_tree(tmp / "tree", GOOD)
    out = tmp / f"{tool}.tar.gz"
    commands = {
        "gnu": ["tar", "--format=gnu", "-czf", str(out), "-C", str(tree), "."],
        "posix": ["tar", "--format=posix", "-czf", str(out), "-C", str(tree), "."],
        "ustar": ["tar", "--format=ustar", "-czf", str(out), "-C", str(tree), "."],
        "bsdtar": ["bsdtar", "-czf", str(out), "-C", str(tree), "."],
    }
    if tool == "tarfile":
        with tarfile.open(out, "w:gz") as tar:
            for name in sorted(os.listdir(tree)):
                tar.add(tree / name, arcname=name)
    else:
        if shutil.which(commands[tool][0]) is None:
            pytest.skip(f"{commands[tool][0]} is not on PATH")
        subprocess.run(commands[tool], check=True)
    return out


@pytest.mark.parametrize("tool", ["gnu", "posix", "ustar", "bsdtar", "tarfile"])
def test_packages_from_every_tool_pass(tmp_path: Path, tool: str) -> None:
    code, lines = verify(packaged_by(tool, tmp_path))
    assert code == 0, lines
    assert lines_at("FAIL", lines) == [] and lines_at("WARN", lines) == [], lines
    assert {line.split(":")[0] for line in lines_at("PASS", lines)} == {
        "PASS integrity",
        "PASS safety",
        "PASS credentials",
        "PASS layout",
        "PASS syntax",
        "PASS handlers",
        "PASS imports",
        "PASS requirements",
        "PASS model files",
    }
    assert lines[-1].startswith("summary: PASS ") and "0 FAIL, 0 WARN" in lines[-1]


def test_a_package_of_this_script_passes_with_its_own_sha256(job: Job) -> None:
    write_tree(job.model, {"xgboost_model.bst": b"b"})
    write_tree(job.script, {"inference.py": ""})
    job.main()
    digest = hashlib.sha256(job.package.read_bytes()).hexdigest()
    code, lines = verify(job.package, "--expect-sha256", digest.upper())
    assert code == 0 and f"PASS sha256: --expect-sha256: {digest}" in lines
    code, lines = verify(job.package, "--expect-sha256", "0" * 64)
    assert code == 1 and lines_at("FAIL", lines)[0].startswith("FAIL sha256: --expect-sha256: 000")


UNSAFE = {
    "symlink": ([info("link", type=tarfile.SYMTYPE, linkname="xgboost_model.bst")], "is a symlink"),
    "hard-link": ([info("hard", type=tarfile.LNKTYPE, linkname="xgboost_model.bst")], "hardlink"),
    "fifo": ([info("pipe", type=tarfile.FIFOTYPE)], "is a FIFO"),
    "device": ([info("dev", type=tarfile.CHRTYPE)], "is a character device"),
    "dotdot": ([info("../escape.bin", b"x")], "absolute or '..' name"),
    "dotdot-inside": ([info("code/../../escape.bin", b"x")], "absolute or '..' name"),
    "dotdot-last": ([info("code/sub/../../..", type=tarfile.DIRTYPE)], "absolute or '..' name"),
    "absolute": ([info("/abs.bin", b"x")], "absolute or '..' name"),
    "setuid": ([info("tool.bin", b"x", mode=0o4755)], "is setuid (mode 4755)"),
    "setgid": ([info("tool.bin", b"x", mode=0o2755)], "is setgid (mode 2755)"),
    "sticky": ([info("shared", type=tarfile.DIRTYPE, mode=0o1777)], "is sticky"),
    "world-writable": ([info("tool.bin", b"x", mode=0o777)], "is writable by anyone"),
    "duplicate": ([info("xgboost_model.bst", b"again")], "appears twice"),
    "credentials-by-name": (
        [info("code/.env", b"TOKEN=x\n")],
        "its name marks a credentials file (.env)",
    ),
    "credentials-by-content": (
        [info("code/settings.py", KEYS)],
        "it holds an AWS access key id with a secret access key",
    ),
    "credentials-in-calibration": (
        [info("calibration/settings.json", KEYS)],
        "it holds an AWS access key id with a secret access key",
    ),
    "credentials-named-in-calibration": (
        [info("calibration/.env", b"TOKEN=x\n")],
        "its name marks a credentials file (.env)",
    ),
    "credentials-at-the-root": (
        [info("notes.txt", KEYS)],
        "it holds an AWS access key id with a secret access key",
    ),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_what_hosting_would_not_extract_safely_fails(tmp_path: Path, case: str) -> None:
    members, needle = UNSAFE[case]
    good = [
        info(name, data.encode() if isinstance(data, str) else data) for name, data in GOOD.items()
    ]
    code, lines = verify(tar_with(tmp_path / "p.tar.gz", [*good, *members]))
    assert code == 1, lines
    assert any(needle in line for line in lines_at("FAIL", lines)), lines
    assert lines[-1].startswith("summary: FAIL ")


WARNED = {
    "one-top-folder": (
        {"model/xgboost_model.bst": b"b", "code/inference.py": ""},
        "every model file is under one folder, model/",
    ),
    "no-entry-point": ({"m.bst": b"b", "code/serve.py": ""}, "code/ has no inference.py"),
    "code-at-the-root": ({"m.bst": b"b", "inference.py": ""}, "code at the root and no code/"),
    "junk": ({**GOOD, "code/__pycache__/x.pyc": b"\0"}, "default excludes leave out"),
    "only-archives": ({"model-v1.tar.gz": b"x", "code/inference.py": ""}, "holds only archives"),
    # calibration/ is not a model folder: the model files are under one folder still
    "one-top-folder-beside-calibration": (
        {"model/m.bst": b"b", "calibration/c.pkl": b"c", "code/inference.py": ""},
        "every model file is under one folder, model/",
    ),
}


@pytest.mark.parametrize("case", sorted(WARNED))
def test_layout_mistakes_warn(tmp_path: Path, case: str) -> None:
    tree, needle = WARNED[case]
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in tree.items()]
    code, lines = verify(tar_with(tmp_path / "p.tar.gz", members))
    assert code == 0, lines
    assert any(needle in line for line in lines_at("WARN", lines)), lines
    assert lines[-1].startswith("summary: WARN ")


@pytest.mark.parametrize(
    "tree",
    [
        {"code/inference.py": ""},
        {"code/inference.py": "", "calibration/c.pkl": b"c"},  # calibration is not a model
    ],
    ids=["code-alone", "code-and-calibration"],
)
def test_a_package_without_model_files_fails(tmp_path: Path, tree: dict[str, Any]) -> None:
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in tree.items()]
    code, lines = verify(tar_with(tmp_path / "p.tar.gz", members))
    assert code == 1
    assert "FAIL layout: the package holds no model files" in lines, lines


def test_an_explicit_entry_point_that_is_missing_fails(tmp_path: Path) -> None:
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in GOOD.items()]
    package = tar_with(tmp_path / "p.tar.gz", members)
    code, lines = verify(package, "--entry-point", "serve.py")
    failed = lines_at("FAIL", lines)
    assert code == 1 and failed[0].startswith("FAIL layout: code/serve.py: code/ has no serve.py")


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data + b"garbage",
        lambda data: data[:-8] + bytes(8),
    ],
    ids=["truncated", "trailing-garbage", "bad-crc"],
)
def test_a_damaged_file_fails_integrity(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in GOOD.items()]
    package = tar_with(tmp_path / "p.tar.gz", members)
    package.write_bytes(damage(package.read_bytes()))
    code, lines = verify(package)
    assert code == 1 and lines[0].startswith("FAIL integrity: ")
    assert "the package does not decode" in lines[0] or "is corrupt or truncated" in lines[0]
    assert f"sha256 {hashlib.sha256(package.read_bytes()).hexdigest()}" in lines[-1]


def test_json_is_one_object_on_standard_output(tmp_path: Path) -> None:
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in GOOD.items()]
    package = tar_with(
        tmp_path / "p.tar.gz", [*members, info("link", type=tarfile.SYMTYPE, linkname="x")]
    )
    result = run_cli("--verify", package, "--json", merged=False)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert set(report) == {
        "package",
        "sha256",
        "status",
        "compression",
        "files",
        "directories",
        "package_bytes",
        "content_bytes",
        "findings",
        "warnings",
        "warning_count",
        "smoke_test",
    }
    assert report["smoke_test"] == {"status": "skipped"}
    assert report["status"] == "fail" and (report["files"], report["directories"]) == (3, 0)
    assert report["package_bytes"] == package.stat().st_size and report["compression"] == "gzip"
    assert report["content_bytes"] == sum(len(data) for _, data in members)
    assert report["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    safety = [f for f in report["findings"] if f["check"] == "safety"]
    assert [(f["level"], f["member"]) for f in safety] == [("FAIL", "link")]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--verify", "missing.tar.gz"], 2),
        (["--json"], 2),
        (["--expect-sha256", "0" * 64], 2),
        (["--verify", "x.tar.gz", "--expect-sha256", "xyz"], 2),
    ],
    ids=["missing-file", "json-alone", "sha256-alone", "bad-hex"],
)
def test_usage_errors_and_unreadable_files_exit_2(args: list[str], code: int) -> None:
    outcome = run_cli(*args)
    assert outcome.returncode == code, outcome.stdout + outcome.stderr
    assert "Traceback" not in outcome.stdout + outcome.stderr


def test_verify_writes_nothing(job: Job, tmp_path: Path) -> None:
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in GOOD.items()]
    package = tar_with(tmp_path / "p.tar.gz", members)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert verify(package)[0] == 0
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert gzip.decompress(package.read_bytes())  # the package itself untouched and whole


def test_a_directory_listed_twice_is_not_a_duplicate(tmp_path: Path) -> None:
    members = [info(n, d.encode() if isinstance(d, str) else d) for n, d in GOOD.items()]
    twice = [info("code", type=tarfile.DIRTYPE, mode=0o755)] * 2
    code, lines = verify(tar_with(tmp_path / "p.tar.gz", [*twice, *members]))
    assert code == 0 and lines_at("FAIL", lines) == [], lines


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "dev-null", "not-utf-8"])
def test_json_is_one_object_whatever_the_path_is(tmp_path: Path, kind: str) -> None:
    path: Any = tmp_path / "model.tar.gz"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-null":
        path = Path(os.devnull)
    elif kind == "not-utf-8":
        path = os.fsdecode(bytes(tmp_path) + b"/model-\xff.tar.gz")
    result = run_cli("--verify", path, "--json", merged=False, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)  # one object, and nothing else
    assert report["status"] == "error" and report["error"]
    if kind == "not-utf-8":
        assert report["package"].endswith("model-\\xff.tar.gz")
        assert "\\udc" not in result.stdout


def test_json_is_one_object_when_a_stop_ends_it(tmp_path: Path) -> None:
    """SIGTERM once the smoke test's model_fn runs (it says so: a barrier, not a guess)."""
    started = tmp_path / "started"
    code = (
        "import time\n"
        "def model_fn(d):\n"
        f"    open({str(started)!r}, 'w').close()\n"
        "    time.sleep(300)\n"
    )
    tree = write_tree(tmp_path / "tree", {"m.bst": b"b", "code/inference.py": code})
    package = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "-czf", str(package), "-C", str(tree), "."], check=True)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--verify", str(package), "--smoke-test", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 143 and "Traceback" not in err
    assert json.loads(out) == {
        "package": str(package),
        "status": "error",
        "error": "stopped by SIGTERM",
    }


CONFLICTS = {
    "file-then-under-it": [info("m.bst", b"m"), info("a", b"x"), info("a/b", b"y")],
    "under-it-then-file": [info("m.bst", b"m"), info("a/b", b"y"), info("a", b"x")],
    "file-named-dot": [info("m.bst", b"m"), info(".", b"x")],
    "empty-pax-path": [info("m.bst", b"m"), info("x", b"x", pax_headers={"path": ""})],
    "file-repeats-a-directory": [
        info("m.bst", b"m"),
        info("d", type=tarfile.DIRTYPE),
        info("d/x", b"x"),
        info("d", b"a file named as the directory"),
    ],
    "directory-then-file-of-its-name": [
        info("m.bst", b"m"),
        info("d", type=tarfile.DIRTYPE),
        info("d", b"a file named as the directory"),
    ],
}


@pytest.mark.parametrize("kind", CONFLICTS)
def test_names_gnu_tar_refuses_fail_as_the_job_refuses_them(tmp_path: Path, kind: str) -> None:
    package = tar_with(tmp_path / "p.tar.gz", CONFLICTS[kind])
    code, lines = verify(package)
    assert code == 1 and [line for line in lines_at("FAIL", lines) if "safety" in line], lines
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(package, model / "model.tar.gz")
    result = run_cli("--model-dir", model, "--output-dir", tmp_path / "out")
    assert result.returncode == 1  # the job refuses it too


def reported(job: Job) -> tuple[Path, dict[str, Any]]:
    write_tree(job.model, {"xgboost_model.bst": b"b"})
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n"})
    assert job.cli("--report-dir", job.tmp / "report").returncode == 0
    path = job.tmp / "report" / "package.json"
    return path, json.loads(path.read_text())


def test_expect_report_checks_its_own_sha256_beside_expect_sha256(job: Job) -> None:
    path, report = reported(job)
    digest = report["sha256"]
    report["sha256"] = "0" * 64
    path.write_text(json.dumps(report))
    code, lines = verify(job.package, "--expect-report", path, "--expect-sha256", digest)
    assert code == 1
    assert f"PASS sha256: --expect-sha256: {digest}" in lines
    assert any(line.startswith("FAIL sha256: the report: 000") for line in lines), lines


def test_expect_report_checks_its_own_sha256_alone(job: Job) -> None:
    path, report = reported(job)
    report["sha256"] = "0" * 64
    path.write_text(json.dumps(report))
    code, lines = verify(job.package, "--expect-report", path)
    assert code == 1
    assert any(line.startswith("FAIL sha256: the report: 000") for line in lines), lines


@pytest.mark.parametrize("change", ["mode", "missing", "made-a-file"])
def test_expect_report_compares_directories_too(job: Job, change: str) -> None:
    path, report = reported(job)
    entry = next(m for m in report["members"] if m["name"] == "code")
    if change == "mode":
        entry["mode"] = "0700"
        said = "FAIL report: code: differs from the report: mode 0700 in the report, 0755 here"
    elif change == "missing":
        report["members"].remove(entry)
        said = "FAIL report: code: is in the package but not in the report"
    else:
        entry.update(type="file", sha256="0" * 64)
        said = "FAIL report: code: differs from the report: type file in the report, dir here"
    path.write_text(json.dumps(report))
    code, lines = verify(job.package, "--expect-report", path)
    assert code == 1 and any(line.startswith(said) for line in lines), lines


def test_expect_report_compares_modes(job: Job) -> None:
    path, report = reported(job)
    member = next(m for m in report["members"] if m["name"] == "code/inference.py")
    member["mode"] = "0755"
    path.write_text(json.dumps(report))
    code, lines = verify(job.package, "--expect-report", path)
    assert code == 1
    said = "FAIL report: code/inference.py: differs from the report: mode 0755 in the report"
    assert f"{said}, 0644 here" in lines


MALFORMED = {
    "no-sha256": lambda r: r.pop("sha256"),
    "member-twice": lambda r: r["members"].append(dict(r["members"][-1])),
    "member-not-an-object": lambda r: r["members"].append("x.bin"),
    "name-not-a-string": lambda r: r["members"][0].update(name=7),
    "digest-a-number": lambda r: r["members"][-1].update(sha256=12),
    "no-members": lambda r: r.pop("members"),
}


@pytest.mark.parametrize("kind", [*MALFORMED, "deep-nesting", "not-json"])
def test_a_malformed_report_is_one_clean_error(job: Job, kind: str) -> None:
    path, report = reported(job)
    if kind == "deep-nesting":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "not-json":
        path.write_text("{")
    else:
        MALFORMED[kind](report)
        path.write_text(json.dumps(report))
    result = run_cli("--verify", job.package, "--expect-report", path, "--json", merged=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = json.loads(result.stdout)
    assert said["status"] == "error" and said["error"].startswith("the report ")
