"""What the tool prints, read the way a person or a pipeline reads it: which stream carries
what, the JSON parsed, the words matched."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import CODE, MODEL, ROOT, Job, make_archive, run_cli, tar_member, write_tree

import mims_package


def test_a_run_prints_only_its_summary_line_on_standard_output(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, CODE)
    result = run_cli(*job.args(), merged=False)
    assert result.returncode == 0
    (line,) = result.stdout.splitlines()  # 2>/dev/null leaves the summary alone
    assert json.loads(line)["status"] == "ok"
    assert " INFO package " in result.stderr and "{" not in result.stderr  # >/dev/null: the log


def test_a_failed_run_says_so_on_standard_error_and_sums_up_on_standard_output(job: Job) -> None:
    result = run_cli(*job.args(), merged=False)  # no model
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["status"] == "error"
    (error,) = [x for x in result.stderr.splitlines() if " ERROR " in x]
    assert "model input" in error


def test_verify_json_and_the_contract_are_alone_on_standard_output(tmp_path: Path) -> None:
    package = make_archive(tmp_path / "p.tar.gz", [tar_member("m.bst", b"m")])
    verified = run_cli("--verify", package, "--json", merged=False)
    assert json.loads(verified.stdout)["status"] == "warn"
    contract = run_cli("--print-contract", merged=False)
    assert json.loads(contract.stdout) == mims_package.CONTRACT and contract.stderr == ""


def test_help_says_which_stream_carries_what() -> None:
    text = " ".join(run_cli("--help").stdout.split())
    assert "Standard output carries only what a program reads" in text
    assert "Every log line goes to standard error" in text


def test_the_closing_line_counts_files_and_directories_and_labels_sizes(job: Job) -> None:
    write_tree(job.model, {"w.bin": b"w" * 2000})
    write_tree(job.script, {**CODE, "lib/util.py": "X = 1\n"})
    result = job.cli()
    (line,) = [x for x in result.stdout.splitlines() if " INFO package " in x]
    assert ", verified: 4 files, 3 directories; package " in line
    assert " (gzip), contents 2.0 KB, ratio " in line
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["files"] == {"model": 1, "code": 3, "calibration": 0}
    assert summary["directories"] == 3 and summary["content_bytes"] == 2000 + sum(
        len(text) for text in (*CODE.values(), "X = 1\n")
    )


def test_verify_says_files_directories_and_both_sizes(tmp_path: Path) -> None:
    members = [
        tar_member("code", type=tarfile.DIRTYPE),
        tar_member("code/inference.py", CODE["inference.py"].encode()),
    ]
    package = make_archive(tmp_path / "p.tar.gz", [tar_member("m.bst", b"m" * 1000), *members])
    last = run_cli("--verify", package).stdout.splitlines()[-1]
    size = mims_package._human(package.stat().st_size)
    assert f": 2 files, 1 directories; package {size} (gzip), contents 1.0 KB; sha256 " in last


@pytest.mark.parametrize(
    ("kind", "said"),
    [("zip", "is a zip archive, not a tar archive"), ("json", "is a JSON file, not a tar archive")],
)
def test_verify_names_a_non_tar_for_what_it_is(tmp_path: Path, kind: str, said: str) -> None:
    path = tmp_path / f"model.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model.bin", b"m")
    else:
        path.write_text(json.dumps({"sha256": "0" * 64}))
    result = run_cli("--verify", path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"FAIL integrity: package {path} {said}; SageMaker needs a tar.gz: "
        "make it with: tar -czf model.tar.gz -C <model dir> ."
    )
    assert "(not a tar archive)" in result.stdout.splitlines()[-1]


def test_verify_groups_findings_by_check_fails_first(tmp_path: Path) -> None:
    members = [
        tar_member("m.bst", b"m"),
        tar_member("link", type=tarfile.SYMTYPE, linkname="m.bst"),
        tar_member(".DS_Store", b"x"),
        tar_member("other", type=tarfile.SYMTYPE, linkname="m.bst"),
    ]
    lines = run_cli("--verify", make_archive(tmp_path / "p.tar.gz", members)).stdout.splitlines()
    levels = [line.split(" ")[0] for line in lines[:-1]]
    assert levels == sorted(levels, key=["FAIL", "WARN", "PASS"].index)
    checks = [line.split(":")[0] for line in lines[:-1]]
    assert checks[:2] == ["FAIL safety", "FAIL safety"]  # together, one check at a time
    assert len(set(checks)) == len(dict.fromkeys(checks))
    assert "PASS safety" not in checks


def test_an_excluded_directory_is_one_warning_with_its_count(tmp_path: Path) -> None:
    members = [tar_member("m.bst", b"m"), tar_member("__pycache__", type=tarfile.DIRTYPE)]
    members += [tar_member(f"__pycache__/m{i}.pyc", b"c") for i in range(3)]
    lines = run_cli("--verify", make_archive(tmp_path / "p.tar.gz", members)).stdout.splitlines()
    excluded = [line for line in lines if "default excludes leave out" in line]
    assert excluded == [
        "WARN layout: __pycache__/: is what the default excludes leave out (VCS, caches, OS "
        "litter) (3 members under it): repack without it"
    ]


def test_verify_warns_on_a_package_with_no_code(tmp_path: Path) -> None:
    package = make_archive(tmp_path / "p.tar.gz", [tar_member("m.bst", b"m")])
    lines = run_cli("--verify", package).stdout.splitlines()
    assert "WARN layout: " + mims_package.NO_CODE in lines


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"weights.bin": 6_000_000}, "weights.bin"),  # one file over 5 MB
        ({f"d{i}.csv": 2_600_000 for i in range(4)}, "d0.csv"),  # over 10 MB in all
    ],
)
def test_data_in_code_warns_in_the_job_and_verify(
    job: Job, files: dict[str, int], named: str
) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, "vocab.json": "x" * 6_000_000})  # text: not data
    assert " WARNING code/ holds" not in job.cli().stdout
    write_tree(job.script, {name: bytes(size) for name, size in files.items()})
    result = job.cli()
    (warning,) = [line for line in result.stdout.splitlines() if " WARNING code/ holds" in line]
    assert named in warning and "copy code/ and pip install it at every start" in warning
    verified = run_cli("--verify", job.package).stdout
    assert "WARN layout: code/: code/ holds" in verified


def test_the_readme_gives_the_docker_commands_the_dockerfile_and_contract_take() -> None:
    readme = (ROOT / "README.md").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "docker build -t mims-package ." in readme
    (run,) = [
        line
        for line in readme.splitlines()
        if line.strip().startswith("docker run --rm")
        and " mims-package" in line
        and "--verify" not in line
    ]
    paths = mims_package.CONTRACT["expected_input_paths"]
    for host, container in (("model", paths["model_input"]), ("script", paths["script_input"])):
        assert f'-v "$PWD/{host}:{container}"' in run
    assert (
        f'-v "$PWD/out:{mims_package.CONTRACT["expected_output_paths"]["package_output"]}"' in run
    )
    assert run.rstrip().endswith("mims-package")
    (verify,) = [
        line
        for line in readme.splitlines()
        if "docker run --rm" in line and "mims-package --verify" in line
    ]
    assert '-v "$PWD:/work" -w /work' in verify and "--verify model.tar.gz" in verify
    entry = json.loads(dockerfile.split("ENTRYPOINT", 1)[1].strip().splitlines()[0])
    assert entry == ["python3", "/opt/program/mims_package.py"]
    assert "USER" not in dockerfile  # root, as SageMaker Processing runs it: the README says so
    assert "runs as root" in readme


@pytest.mark.parametrize(
    ("sizes", "warned"),
    [
        ({"a.bin": 5_000_000}, False),
        ({"a.bin": 5_000_001}, True),
        ({"a.bin": 4_000_000, "b.bin": 4_000_000, "c.bin": 2_000_000}, False),
        ({"a.bin": 4_000_000, "b.bin": 4_000_000, "c.bin": 2_000_001}, True),
        ({"a.py": 9_000_000, "b.json": 9_000_000, "c.txt": 6_000_000}, False),  # code and text
    ],
    ids=["one-at-5-MB", "one-past-5-MB", "all-at-10-MB", "all-past-10-MB", "code-and-text"],
)
def test_data_in_code_warns_past_its_thresholds_only(sizes: dict[str, int], warned: bool) -> None:
    found = mims_package._data_in_code({f"code/{name}": size for name, size in sizes.items()})
    assert (found is not None) is warned
