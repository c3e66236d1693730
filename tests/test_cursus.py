"""A drop-in for the cursus packaging step: its keys, its work dir, its calibration input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    CALIBRATION,
    CODE,
    MODEL,
    ROOT,
    SCRIPT,
    Job,
    archive_tree,
    files_of,
    in_namespace,
    needs_unshare,
    write_tree,
)

import mims_package

PACKAGED = {*MODEL, *(f"code/{n}" for n in CODE), *(f"calibration/{n}" for n in CALIBRATION)}


@pytest.mark.parametrize(
    ("model_key", "script_key", "output_key"),
    [
        ("model_input", "script_input", "package_output"),
        ("model_input", "inference_scripts_input", "packaged_model"),
        ("model_input", "script_input", "output_dir"),
    ],
)
def test_every_key_convention_is_honoured(
    job: Job, model_key: str, script_key: str, output_key: str
) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, CODE)
    calibration = write_tree(job.tmp / "calibration", CALIBRATION)
    path = mims_package.main(
        {
            model_key: str(job.model),
            script_key: str(job.script),
            "calibration_model": str(calibration),
        },
        {output_key: str(job.output)},
        {"WORKING_DIRECTORY": str(job.work)},
    )
    assert path == job.package
    assert set(files_of(job.package)) == PACKAGED


@pytest.mark.parametrize(
    ("inputs", "outputs", "needle"),
    [
        ({"model": "/m"}, {}, "unknown input key 'model'; the accepted keys are model_input, "),
        ({}, {"package": "/o"}, "unknown output key 'package'; the accepted keys are "),
    ],
)
def test_unknown_keys_fail_and_never_fall_back(
    job: Job, inputs: dict[str, str], outputs: dict[str, str], needle: str
) -> None:
    with pytest.raises(mims_package.PackagingError, match=needle):
        mims_package.main(inputs, outputs, {})
    assert not job.output.exists()


def test_two_aliases_with_different_paths_fail(job: Job) -> None:
    write_tree(job.model, MODEL)
    with pytest.raises(mims_package.PackagingError, match="'script_input' and 'inference_scri"):
        mims_package.main(
            {
                "model_input": str(job.model),
                "script_input": str(job.script),
                "inference_scripts_input": str(job.tmp / "other"),
            },
            {"package_output": str(job.output)},
            {},
        )
    same = {"script_input": str(job.script), "inference_scripts_input": str(job.script) + "/"}
    mims_package.main(
        {"model_input": str(job.model), **same}, {"package_output": str(job.output)}, {}
    )
    assert job.package.is_file()


def test_the_start_of_the_log_names_version_python_and_every_path(job: Job) -> None:
    write_tree(job.model, MODEL)
    relative = ["--model-dir", "model", "--script-dir", "script", "--output-dir", "output"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *relative, "--calibration-dir", "work"],
        cwd=job.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert result.returncode == 0, result.stdout
    first, second = result.stdout.splitlines()[:2]
    version = ".".join(map(str, sys.version_info[:3]))
    assert first.endswith(f"INFO mims_package {mims_package.__version__} on Python {version}")
    for name, path in [
        ("model_input", job.model),
        ("script_input", job.script),
        ("calibration_model", job.work),
        ("package_output", job.output),
    ]:
        assert f"{name} {path}" in second


def test_working_directory_that_does_not_exist_yet_is_created(job: Job) -> None:
    write_tree(job.model, MODEL)
    work = job.tmp / "mims_packaging_directory" / "nested"
    mims_package.main(
        {"model_input": str(job.model), "script_input": str(job.script)},
        {"packaged_model": str(job.output)},
        {"WORKING_DIRECTORY": str(work)},
    )
    assert job.package.is_file()
    assert work.is_dir() and list(work.iterdir()) == []  # left in place, nothing of ours in it


def test_used_as_a_library_main_shows_its_info_lines(job: Job) -> None:
    """No logging configured by the caller: the job's INFO lines still reach stdout, once."""
    write_tree(job.model, MODEL)
    call = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import mims_package; "
        f"mims_package.main({{'model_input': {str(job.model)!r}}}, "
        f"{{'packaged_model': {str(job.output)!r}}}, {{}})"
    )
    result = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("INFO mims_package ") == 1
    assert " INFO package " in result.stdout


def test_a_configured_root_logger_is_left_to_the_caller(job: Job) -> None:
    write_tree(job.model, MODEL)
    call = (
        f"import logging, sys; sys.path.insert(0, {str(ROOT)!r}); import mims_package; "
        "logging.basicConfig(level=logging.WARNING, format='CALLER %(message)s'); "
        f"mims_package.main({{'model_input': {str(job.model)!r}}}, "
        f"{{'packaged_model': {str(job.output)!r}}}, {{}})"
    )
    result = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Only the summary line is printed, as bare JSON; every log line is the caller's.
    assert json.loads(result.stdout)["status"] == "ok" and "INFO" not in result.stderr
    assert "CALLER no --script-dir was given" in result.stderr  # its WARNING, the caller's format


# The cursus main flow, restated: tar input and loose input, each key convention, a
# WORKING_DIRECTORY that does not exist yet, all under a tmpfs over /opt in a private
# mount namespace, so that /opt/ml is provably never touched.
CURSUS_FLOW = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import mims_package
base = sys.argv[2]
results = []
for input_form in ("tar", "loose"):
    for script_key, output_key in (("script_input", "output_dir"),
                                   ("inference_scripts_input", "packaged_model")):
        out = os.path.join(base, "out", input_form, output_key)
        path = mims_package.main(
            {"model_input": os.path.join(base, input_form),
             script_key: os.path.join(base, "code"),
             "calibration_model": os.path.join(base, "calibration")},
            {output_key: out},
            {"WORKING_DIRECTORY": os.path.join(base, "mims_packaging_directory", output_key)},
        )
        results.append([input_form, script_key, output_key, str(path)])
print(json.dumps({"results": results, "opt_ml": os.path.exists("/opt/ml")}))
"""


@needs_unshare
def test_cursus_main_flow_in_a_private_namespace(tmp_path: Path) -> None:
    base = tmp_path / "cursus"
    trained = write_tree(tmp_path / "trained", MODEL)
    archive_tree(trained, base / "tar" / "model.tar.gz")
    write_tree(base / "loose", MODEL)
    write_tree(base / "code", CODE)
    write_tree(base / "calibration", CALIBRATION)
    flow = tmp_path / "flow.py"
    flow.write_text(CURSUS_FLOW)
    opt_ml_existed = Path("/opt/ml").exists()
    result = in_namespace(
        'mount -t tmpfs tmpfs /opt && exec "$@"', sys.executable, flow, ROOT, base
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["opt_ml"] is False  # nothing under the (empty, private) /opt was created
    assert Path("/opt/ml").exists() == opt_ml_existed
    assert len(report["results"]) == 4
    for input_form, _, output_key, path in report["results"]:
        assert path == str(base / "out" / input_form / output_key / "model.tar.gz")
        assert set(files_of(Path(path))) == PACKAGED
    for work in (base / "mims_packaging_directory").iterdir():
        assert list(work.iterdir()) == []
