"""Package layout: model files at the root, code under code/, from every kind of input."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import (
    CODE,
    MODEL,
    Job,
    archive_tree,
    assert_refused,
    files_of,
    make_archive,
    read_package,
    run_cli,
    tar_member,
    write_tree,
)

import mims_package

MODEL_TREE = {
    "xgboost_model.bst": b"booster",
    "hyperparameters.json": "{}",
    "preprocess/risk_table_map.pkl": b"risk",
    "preprocess/nested/deeper/impute_dict.pkl": b"impute",
}
CODE_TREE = {
    "inference.py": "def model_fn(d): pass\n",
    "processing/__init__.py": "",
    "requirements.txt": "numpy\n",
}
EXPECTED = {
    **MODEL_TREE,
    **{f"code/{name}": content for name, content in CODE_TREE.items()},
}


def as_bytes(spec: dict[str, object]) -> dict[str, bytes]:
    return {k: v.encode() if isinstance(v, str) else v for k, v in spec.items()}  # type: ignore[misc]


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz", ""])
def test_archive_input_of_any_compression(job: Job, compression: str) -> None:
    archive_tree(
        write_tree(job.tmp / "trained", MODEL_TREE), job.model / "model.tar.gz", compression
    )
    write_tree(job.script, CODE_TREE)
    result = job.cli()
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_of(job.package) == as_bytes(EXPECTED)


def test_loose_input_through_main(job: Job) -> None:
    write_tree(job.model, MODEL_TREE)
    write_tree(job.script, CODE_TREE)
    assert job.main() == job.package
    assert files_of(job.package) == as_bytes(EXPECTED)


def test_every_directory_has_an_entry_and_there_is_no_root_entry(job: Job) -> None:
    write_tree(job.model, {**MODEL_TREE, "empty/dir": None})
    write_tree(job.script, CODE_TREE)
    job.main()
    entries = read_package(job.package)
    dirs = {name for name, e in entries.items() if e.type == "dir"}
    assert dirs == {
        "code",
        "code/processing",
        "empty",
        "empty/dir",
        "preprocess",
        "preprocess/nested",
        "preprocess/nested/deeper",
    }
    for name in entries:
        assert not name.startswith(("/", "./")) and name not in ("", ".")


def test_dot_slash_archive_from_gnu_tar(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", MODEL_TREE)
    job.model.mkdir()
    subprocess.run(
        ["tar", "czf", str(job.model / "model.tar.gz"), "-C", str(trained), "."], check=True
    )
    listing = subprocess.run(
        ["tar", "tzf", str(job.model / "model.tar.gz")], capture_output=True, text=True
    )
    assert "./xgboost_model.bst" in listing.stdout.splitlines()
    write_tree(job.script, CODE_TREE)
    job.main()
    assert files_of(job.package) == as_bytes(EXPECTED)


def test_archive_code_is_replaced_by_script_dir(job: Job, caplog: pytest.LogCaptureFixture) -> None:
    trained = write_tree(
        job.tmp / "trained", {**MODEL_TREE, "code/old.py": "old", "code/lib/x.py": "x"}
    )
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, CODE_TREE)
    job.main()
    assert files_of(job.package) == as_bytes(EXPECTED)
    assert "code/ (2 files) is dropped" in caplog.text


@pytest.mark.parametrize("script_state", ["missing", "empty"])
def test_missing_script_dir_keeps_archive_code(
    job: Job, script_state: str, caplog: pytest.LogCaptureFixture
) -> None:
    trained = write_tree(job.tmp / "trained", {**MODEL_TREE, "code/inference.py": "archived"})
    archive_tree(trained, job.model / "model.tar.gz")
    if script_state == "empty":
        write_tree(job.script, {"sub": None})
    job.main()
    assert files_of(job.package) == as_bytes({**MODEL_TREE, "code/inference.py": "archived"})
    assert "no inference code in" in caplog.text


def test_missing_script_dir_and_no_archive_code_means_no_code(job: Job) -> None:
    write_tree(job.model, MODEL_TREE)
    result = job.cli()
    assert result.returncode == 0
    assert " WARNING no inference code in" in result.stdout
    assert not any(name.startswith("code") for name in read_package(job.package))


def test_files_beside_the_archive_are_ignored_and_named(job: Job) -> None:
    archive_tree(write_tree(job.tmp / "trained", MODEL_TREE), job.model / "model.tar.gz")
    (job.model / "output.tar.gz").write_bytes(b"training output")
    write_tree(job.script, CODE_TREE)
    result = job.cli()
    assert result.returncode == 0
    assert f"WARNING ignoring {job.model / 'output.tar.gz'}" in result.stdout
    assert files_of(job.package) == as_bytes(EXPECTED)


def test_files_are_counted_by_part_whatever_sorts_beside_code(job: Job) -> None:
    # "code.txt" sorts before "code/", "code0" after its last file: both are model files.
    near = {"code.txt": "1", "code-a/x": "2", "code0": "3", "codex/y": "4", "a": "5", "z": "6"}
    write_tree(job.model, {**near, "calibration.json": "7"})
    write_tree(job.script, CODE_TREE)
    write_tree(job.tmp / "calibration", {"c/one.pkl": b"1", "two.pkl": b"2"})
    result = job.cli("--calibration-dir", job.tmp / "calibration")
    assert result.returncode == 0, result.stdout
    assert "INFO model files: 7, 7 B" in result.stdout
    assert "INFO code files: 3, 28 B" in result.stdout
    assert "INFO calibration files: 2, 2 B" in result.stdout


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (lambda j: None, "does not exist"),
        (lambda j: j.model.write_text("not a dir"), "is not a tar archive"),
        (lambda j: j.model.mkdir(), "holds no model files"),
        (lambda j: write_tree(j.model, {"a/b": None}), "holds no model files"),
        (lambda j: write_tree(j.model, {"code/inference.py": "only code"}), "holds no model files"),
    ],
    ids=["missing", "a-file", "empty", "only-dirs", "only-code"],
)
def test_missing_or_empty_model_fails(job: Job, setup, needle: str) -> None:  # type: ignore[no-untyped-def]
    setup(job)
    write_tree(job.script, CODE_TREE)
    assert_refused(job.cli(), job, needle)


def test_output_dir_is_created_and_holds_only_the_package(job: Job) -> None:
    write_tree(job.model, MODEL_TREE)
    write_tree(job.script, CODE_TREE)
    job.output = job.tmp / "deep" / "new" / "output"
    assert job.cli().returncode == 0
    assert sorted(p.name for p in job.output.iterdir()) == ["model.tar.gz"]
    assert list(job.work.iterdir()) == []


def test_output_path_that_is_a_file_fails(job: Job) -> None:
    write_tree(job.model, MODEL_TREE)
    job.output.write_text("in the way")
    result = job.cli()
    assert result.returncode == 1
    assert "exists and is not a directory" in result.stdout
    assert job.output.read_text() == "in the way"


def test_default_work_dir_is_the_outputs_parent(job: Job, staging_parents: list[Path]) -> None:
    write_tree(job.model, MODEL_TREE)
    mims_package.main(
        {"model_input": str(job.model), "script_input": str(job.script)},
        {"output_dir": str(job.output)},
        {},
    )
    assert staging_parents == [job.output.parent]
    mims_package.main(
        {"model_input": str(job.model), "script_input": str(job.script)},
        {"package_output": str(job.output)},
        {"WORKING_DIRECTORY": str(job.work)},
    )
    assert staging_parents[-1] == job.work
    assert sorted(p.name for p in job.tmp.iterdir()) == ["model", "output", "script", "work"]


def test_default_staging_is_beside_a_new_output_dir(job: Job, staging_parents: list[Path]) -> None:
    write_tree(job.model, MODEL_TREE)
    output = job.tmp / "build" / "package"
    mims_package.main(
        {"model_input": str(job.model), "script_input": str(job.script)},
        {"package_output": str(output)},
        {},
    )
    assert staging_parents == [job.tmp / "build"]
    assert sorted(p.name for p in (job.tmp / "build").iterdir()) == ["package"]


def test_output_or_work_dir_inside_an_input_is_refused(job: Job) -> None:
    write_tree(job.model, MODEL_TREE)
    write_tree(job.script, CODE_TREE)
    before = sorted(p.relative_to(job.tmp) for p in job.tmp.rglob("*"))
    result = job.cli("--output-dir", job.script / "out")
    assert result.returncode == 1 and "is inside the input" in result.stdout
    result = job.cli("--work-dir", job.model)
    assert result.returncode == 1 and "is inside the input" in result.stdout
    assert sorted(p.relative_to(job.tmp) for p in job.tmp.rglob("*")) == before


def test_inputs_are_never_modified(job: Job) -> None:
    write_tree(job.model, {**MODEL_TREE, "run.sh": "#!/bin/sh\n"})
    (job.model / "run.sh").chmod(0o700)
    write_tree(job.script, CODE_TREE)
    snapshot = {
        p: (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes())
        for p in job.model.rglob("*")
        if p.is_file()
    }
    job.main()
    assert {
        p: (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes()) for p in snapshot
    } == snapshot
    shutil.rmtree(job.output)
    assert all(p.exists() for p in snapshot)


# Layouts that pass every integrity check but that no endpoint can serve.


def warnings_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


@pytest.mark.parametrize("dot_slash", [False, True], ids=["model/", "./model/"])
def test_one_top_folder_in_an_archive_warns_and_strip_components_fixes_it(
    job: Job, dot_slash: bool
) -> None:
    trained = write_tree(job.tmp / "trained", {"model/xgboost_model.bst": b"b"})
    archive = job.model / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    prefix = ["-C", str(trained), "./model" if dot_slash else "model"]
    subprocess.run(["tar", "-czf", str(archive), *prefix], check=True)
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    (warning,) = warnings_in(result.stdout)
    assert "every model file is under one folder, model/" in warning
    assert "/opt/ml/model/model/..." in warning and "--strip-components 1" in warning
    fixed = job.cli("--strip-components", "1")
    assert fixed.returncode == 0 and warnings_in(fixed.stdout) == [], fixed.stdout
    assert set(files_of(job.package)) == {"xgboost_model.bst", "code/inference.py"}


def test_one_top_folder_in_a_loose_model_names_the_folder_to_pass(job: Job) -> None:
    write_tree(job.model, {"model/weights.bin": b"w"})
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    result = job.cli()
    (warning,) = warnings_in(result.stdout)
    assert f"pass --model-dir {job.model / 'model'}" in warning
    job.package.unlink()
    assert_refused(job.cli("--strip-components", "1"), job, "pass --model-dir <folder>")


def test_strip_components_strips_hard_link_targets_too(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("run/a.bin", b"a"),
            tar_member("run/b.bin", type=tarfile.LNKTYPE, linkname="run/a.bin"),
        ],
    )
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    job.main(strip_components=1)
    assert files_of(job.package) == {
        "a.bin": b"a",
        "b.bin": b"a",
        "code/inference.py": CODE["inference.py"].encode(),
    }


def test_code_without_the_entry_point_warns_naming_the_py_files_at_its_top(job: Job) -> None:
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {f"m{i}.py": "" for i in range(7)} | {"lib/util.py": ""})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    (warning,) = warnings_in(result.stdout)
    assert "code/ has no inference.py" in warning
    assert "(the .py files at its top: m0.py, m1.py, m2.py, m3.py, m4.py)" in warning


def test_an_explicit_entry_point_must_be_there(job: Job) -> None:
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {"serve/handler.py": ""})
    assert_refused(job.cli("--entry-point", "handler.py"), job, "code/ has no handler.py")
    write_tree(job.script, {"handler.py": "def model_fn(d): pass\n"})
    result = job.cli("--entry-point", "handler.py")
    assert result.returncode == 0 and warnings_in(result.stdout) == [], result.stdout
    assert "SAGEMAKER_PROGRAM=handler.py and SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code" in (
        result.stdout
    )


@pytest.mark.parametrize("name", ["../inference.py", "/abs/inference.py", "inference.txt", ""])
def test_an_entry_point_outside_code_or_not_python_is_refused(job: Job, name: str) -> None:
    write_tree(job.model, {"weights.bin": b"w"})
    assert_refused(job.cli("--entry-point", name), job, "is not a .py file at code/'s top")


def test_a_nested_entry_point_is_refused_with_a_module_that_imports_it(job: Job) -> None:
    """Neither toolkit imports SAGEMAKER_PROGRAM=serve/handler.py: the module name would be
    'serve/handler'. The fix is a top-level module that imports it."""
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {"serve/handler.py": "def model_fn(d): pass\n"})
    assert_refused(
        job.cli("--entry-point", "serve/handler.py"),
        job,
        "neither serving toolkit imports SAGEMAKER_PROGRAM=serve/handler.py",
        "code/inference.py holding 'from serve.handler import *'",
    )


def test_swapped_loose_inputs_are_refused(job: Job) -> None:
    write_tree(job.model, {"inference.py": "", "requirements.txt": "xgboost\n"})
    write_tree(job.script, {"xgboost_model.bst": b"booster", "vocab": b"\x00\x01binary"})
    assert_refused(job.cli(), job, "are --model-dir and --script-dir swapped?")


@pytest.mark.parametrize("given", ["--entry-point", "SAGEMAKER_PROGRAM"])
def test_the_default_entry_point_given_explicitly_must_be_there(job: Job, given: str) -> None:
    """inference.py given by name is a promise, as any other name is: missing, it fails."""
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {"serve.py": "def model_fn(d): pass\n"})
    if given == "--entry-point":
        result = job.cli("--entry-point", "inference.py")
    else:
        result = job.cli(env={**os.environ, "SAGEMAKER_PROGRAM": "inference.py"})
    assert_refused(result, job, "code/ has no inference.py", "fix --entry-point")
    assert job.cli().returncode == 0  # not given: a warning only


@pytest.mark.parametrize("before", [1, mims_package.MAX_BINARY_PROBES - 1])
def test_swapped_inputs_are_found_past_files_that_are_not_model_files(
    job: Job, before: int
) -> None:
    """The probe reads up to MAX_BINARY_PROBES files of the script input that are not code,
    not only the first: notes and configs sort before the weights."""
    write_tree(job.model, {"inference.py": ""})
    notes = {f"a-notes-{i:02}.txt": "text\n" for i in range(before)}
    write_tree(job.script, {**notes, "weights": b"\x00\x01\x02binary"})
    assert_refused(job.cli(), job, "holds model files (weights)", "swapped?")


def test_the_swapped_inputs_probe_reads_at_most_its_bound(job: Job) -> None:
    write_tree(job.model, {"inference.py": ""})
    notes = {f"a-notes-{i:02}.txt": "text\n" for i in range(mims_package.MAX_BINARY_PROBES)}
    write_tree(job.script, {**notes, "weights": b"\x00\x01\x02binary"})
    assert job.cli().returncode == 0  # the weights, 65th, are never read: the bound holds


def test_swapped_inputs_are_found_by_binary_content_too(job: Job) -> None:
    write_tree(job.model, {"inference.py": ""})
    write_tree(job.script, {"weights": b"\x00\x01\x02binary"})
    assert_refused(job.cli(), job, "holds model files (weights)", "swapped?")


def test_a_model_with_code_beside_its_weights_is_not_taken_for_swapped(job: Job) -> None:
    # A Hugging Face custom model: modeling code beside its weights.
    write_tree(job.model, {"modeling_custom.py": "", "model.safetensors": b"\x00w"})
    write_tree(job.script, {"inference.py": "", "tokenizer.bin": b"\x00t"})
    result = job.cli()
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("names", "needles"),
    [
        (
            ["model-v1.tar.gz", "model-v2.tar.gz"],
            ["holds only archives (model-v1.tar.gz, model-v2.tar.gz)", "/NAME.tar.gz"],
        ),
        (["model.zip"], ["holds only archives (model.zip)", "tar -czf model.tar.gz"]),
    ],
    ids=["two-tarballs", "zip"],
)
def test_a_model_of_archives_alone_is_refused(
    job: Job, names: list[str], needles: list[str]
) -> None:
    write_tree(job.model, {name: b"PK\x03\x04 or gzip" for name in names})
    assert_refused(job.cli(), job, *needles)


def test_a_run_ends_with_one_line_that_says_the_package_was_verified(job: Job) -> None:
    write_tree(job.model, {"weights.bin": b"w"})
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    result = job.cli()
    last = result.stdout.splitlines()[-2]  # then only the JSON summary
    digest = hashlib.sha256(job.package.read_bytes()).hexdigest()
    said = f" INFO package {job.package.resolve()}, verified: 2 files, 1 directories; package "
    assert said in last and "(gzip), contents " in last
    assert last.endswith(f"sha256 {digest}")


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("../model/x.bin", "climbs out through '..'"),
        ("model/../../x.bin", "climbs out through '..'"),
        ("/model/x.bin", "has an absolute path"),
    ],
)
def test_strip_components_refuses_what_it_would_strip_away(job: Job, name: str, said: str) -> None:
    """GNU tar refuses "Member name contains '..'" whether or not it strips: so does the job."""
    make_archive(
        job.model / "model.tar.gz", [tar_member("model/w.bin", b"w"), tar_member(name, b"x")]
    )
    for strip in (0, 1):
        with pytest.raises(mims_package.PackagingError, match=said):
            job.main(strip_components=strip)
        assert job.leftovers() == []


def test_a_hard_link_target_that_climbs_out_is_refused_under_strip_components(job: Job) -> None:
    members = [
        tar_member("model/w.bin", b"w"),
        tar_member("model/l.bin", type=tarfile.LNKTYPE, linkname="../model/w.bin"),
    ]
    make_archive(job.model / "model.tar.gz", members)
    with pytest.raises(mims_package.PackagingError, match=r"climbs out through '\.\.'"):
        job.main(strip_components=1)


def test_apple_double_files_are_left_out_and_hide_no_wrapping_folder(job: Job) -> None:
    """tar on a Mac adds ._model beside model/: left out, the folder is still the only one."""
    trained = write_tree(
        job.tmp / "trained",
        {"model/w.bin": b"w", "._model": b"\x00\x05\x16\x07", "model/._w.bin": b"x"},
    )
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    (warning,) = warnings_in(result.stdout)
    assert "every model file is under one folder, model/" in warning
    assert set(files_of(job.package)) == {"model/w.bin", "code/inference.py"}


def test_a_calibration_dir_one_level_too_deep_warns_with_the_fix(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    calibration = write_tree(job.tmp / "cal", {"calibration/calibration_model.pkl": b"c"})
    result = job.cli("--calibration-dir", calibration)
    (warning,) = warnings_in(result.stdout)
    assert "every calibration file is under calibration/calibration/" in warning
    assert "serves uncalibrated scores" in warning
    assert f"pass --calibration-dir {calibration}/calibration" in warning
    verified = run_cli("--verify", job.package)
    assert (
        "WARN layout: calibration/calibration/: every calibration file is under" in verified.stdout
    )
    write_tree(calibration, {"summary.json": "{}"})  # not every file: a real layout
    assert warnings_in(job.cli("--calibration-dir", calibration).stdout) == []


def test_a_model_archive_of_archives_alone_warns_as_verify_does(job: Job) -> None:
    inner = archive_tree(write_tree(job.tmp / "inner", MODEL), job.tmp / "inner.tar.gz")
    trained = write_tree(job.tmp / "trained", {"model-v1.tar.gz": inner.read_bytes()})
    archive_tree(trained, job.model / "model.tar.gz")
    write_tree(job.script, {"inference.py": CODE["inference.py"]})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    (warning,) = warnings_in(result.stdout)
    said = "the model holds only archives (model-v1.tar.gz): hosting does not unpack them"
    assert said in warning
    verified = run_cli("--verify", job.package)
    assert "WARN layout: the package holds only archives (model-v1.tar.gz)" in verified.stdout
