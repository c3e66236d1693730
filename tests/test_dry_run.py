"""--dry-run: every check of a real run, what would ship and what not, and nothing created."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from conftest import Job, make_archive, read_package, tar_member, walk, write_tree

SYM, HARD = tarfile.SYMTYPE, tarfile.LNKTYPE
KEYS = (
    "key = '"
    + "AKIA"
    + "Q3EGRXLWZ7N5TUHY'\nsecret = '"
    + "tG3k+f9Qw/x7LmN2pR4sV6uY8zA1bC3dE5fH7jK9'\n"
)


def everything(job: Job) -> list[Path]:
    return sorted(walk(job.tmp))


def dry_run(job: Job, *extra: object) -> tuple[int, list[str]]:
    """Run --dry-run; check that it created nothing; return its exit code and lines."""
    before = everything(job)
    result = job.cli("--dry-run", *extra)
    assert everything(job) == before, "a dry run created or removed something"
    assert "Traceback" not in result.stdout + result.stderr
    return result.returncode, result.stdout.splitlines()


def planned(lines: list[str]) -> dict[str, tuple[int, int, str]]:
    """{name: (mode, size, source)} from the 'ship' lines."""
    found = {}
    for line in lines:
        if line.startswith("ship "):
            _, mode, size, *source, name = line.split()
            found[name.rstrip("/")] = (int(mode, 8), int(size.replace(",", "")), " ".join(source))
    return found


@pytest.mark.parametrize("depth", [1, 2])
def test_a_dry_run_creates_no_missing_work_dir(job: Job, depth: int) -> None:
    """The fixture makes the work dir; here it is missing (and its parent too, at depth 2)."""
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n"})
    job.work.rmdir()
    work = job.tmp / "missing" / "work" if depth == 2 else job.work
    before = everything(job)
    result = job.cli("--dry-run", "--work-dir", work)
    assert result.returncode == 0, result.stdout
    assert everything(job) == before and not work.exists()


def test_the_plan_is_what_the_real_run_ships(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("weights/a.bin", b"a" * 100, mode=0o755),
            tar_member("weights/b.bin", type=HARD, linkname="weights/a.bin"),
            tar_member("view", type=SYM, linkname="weights"),
            tar_member("latest.bin", type=SYM, linkname="weights/a.bin"),
            tar_member("__pycache__/x.pyc", b"junk"),
            tar_member("code/old.py", b"replaced"),
        ],
    )
    write_tree(job.script, {"inference.py": "def model_fn(d): pass\n"})
    code, lines = dry_run(job)
    assert code == 0, lines
    plan = planned(lines)
    assert plan["latest.bin"] == (0o755, 100, "model archive")
    assert plan["code/inference.py"] == (0o644, 22, "script")
    assert "leave out __pycache__/ (__pycache__/)" in lines
    assert lines[-2].startswith("dry run: ") and lines[-2].endswith("nothing was written")
    job.main()
    shipped = read_package(job.package)
    assert set(plan) == set(shipped)
    for name, entry in shipped.items():
        assert plan[name][:2] == (entry.mode, len(entry.data)), name


FAILURES = {
    "dangling-symlink": lambda job: make_archive(
        job.model / "model.tar.gz",
        [tar_member("m.bin", b"m"), tar_member("gone", type=SYM, linkname="missing.bin")],
    ),
    "escaping-symlink": lambda job: make_archive(
        job.model / "model.tar.gz",
        [tar_member("m.bin", b"m"), tar_member("up", type=SYM, linkname="../outside")],
    ),
    "directory-loop": lambda job: make_archive(
        job.model / "model.tar.gz",
        [tar_member("d/m.bin", b"m"), tar_member("d/again", type=SYM, linkname="..")],
    ),
    "copies-over-budget": lambda job: make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("zeros.bin", bytes(1 << 20)),
            *(tar_member(f"c{i}", type=SYM, linkname="zeros.bin") for i in range(120)),
        ],
    ),
    "corrupt-archive": lambda job: write_tree(job.model, {"model.tar.gz": b"\x1f\x8b\x08garbage"}),
    "credentials-in-code": lambda job: (
        write_tree(job.model, {"m.bin": b"m"}),
        write_tree(job.script, {"inference.py": "", ".env": "TOKEN=x\n"}),
    ),
    "credentials-by-content": lambda job: (
        write_tree(job.model, {"m.bin": b"m"}),
        write_tree(job.script, {"inference.py": "", "settings.py": KEYS}),
    ),
    "swapped-inputs": lambda job: (
        write_tree(job.model, {"inference.py": ""}),
        write_tree(job.script, {"weights.bst": b"\x00w"}),
    ),
    "archives-alone": lambda job: write_tree(job.model, {"v1.tar.gz": b"x", "v2.tar.gz": b"y"}),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_dry_run_fails_where_the_real_run_fails(job: Job, case: str) -> None:
    FAILURES[case](job)
    code, lines = dry_run(job)
    real = job.cli()
    assert code == real.returncode == 1, lines
    error = next(line for line in lines if " ERROR " in line)
    real_error = next(line for line in real.stdout.splitlines() if " ERROR " in line)
    assert error.split(" ERROR ")[1] == real_error.split(" ERROR ")[1]


def test_a_dry_run_passes_where_the_real_run_passes_and_warns_alike(job: Job) -> None:
    write_tree(job.model, {"model/weights.bin": b"w"})
    write_tree(job.script, {"serve.py": ""})
    code, lines = dry_run(job)
    assert code == 0
    warnings = [line.split(" WARNING ")[1] for line in lines if " WARNING " in line]
    real = job.cli()
    assert warnings == [
        line.split(" WARNING ")[1] for line in real.stdout.splitlines() if " WARNING " in line
    ]
    assert len(warnings) == 2  # one top folder, no inference.py


def test_code_that_the_model_archive_brings_is_screened_as_in_the_real_run(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("m.bin", b"m"),
            tar_member("code/inference.py", b""),
            tar_member("code/settings.py", KEYS.encode()),
            tar_member("code/alias.py", type=SYM, linkname="settings.py"),
        ],
    )
    # The script dir is empty: the archive's code/ ships.
    code, lines = dry_run(job)
    real = job.cli()
    assert code == real.returncode == 1, lines
    error = next(line for line in lines if " ERROR " in line)
    assert "it holds an AWS access key id with a secret access key" in error
