"""The contract, the CLI and the Python API agree; failures reach SageMaker's message file."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPT, Job, archive_tree, run_cli, write_tree

import mims_package


def test_contract_constants_and_cli_defaults_agree() -> None:
    contract = mims_package.CONTRACT
    defaults = vars(mims_package.build_parser().parse_args([]))
    assert contract["entry_point"] == SCRIPT.name
    assert contract["expected_input_paths"] == {
        "model_input": mims_package.DEFAULT_MODEL_PATH,
        "script_input": "/opt/ml/processing/input/script",
        "calibration_model": "/opt/ml/processing/input/calibration",
    }
    assert contract["optional_input_paths"] == ["calibration_model"]
    # (conftest points the optional inputs' defaults into tmp_path, away from the host's /opt/ml)
    assert defaults["calibration_dir"] == mims_package.DEFAULT_CALIBRATION_PATH
    assert contract["expected_output_paths"] == {
        "package_output": mims_package.DEFAULT_OUTPUT_PATH,
        "package_report": "/opt/ml/processing/report",
    }
    assert contract["optional_output_paths"] == ["package_report"]
    assert (
        defaults["model_dir"] == "/opt/ml/processing/input/model" == mims_package.DEFAULT_MODEL_PATH
    )
    assert defaults["script_dir"] == mims_package.DEFAULT_SCRIPT_PATH
    assert defaults["output_dir"] == "/opt/ml/processing/output" == mims_package.DEFAULT_OUTPUT_PATH
    assert defaults["compression_level"] == 6
    assert contract["required_env_vars"] == []


def environ_reads(tree: ast.AST) -> set[str]:
    """The names looked up with .get in an environment mapping, anywhere in tree."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and "environ" in ast.unparse(node.func.value)
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def test_optional_env_vars_in_the_contract_are_the_ones_the_code_reads() -> None:
    """Every name the script looks up in an environment mapping, and no other, is declared;
    but those that the smoke test reads for the code it runs, as the serving toolkit does."""
    tree = ast.parse(SCRIPT.read_text())
    smoke = [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and node.name in ("_smoke_child", "_SmokeRun")
    ]
    for node in smoke:
        tree.body.remove(node)  # type: ignore[attr-defined]
    read = environ_reads(tree)
    assert read == set(mims_package.CONTRACT["optional_env_vars"])
    assert read == {"SOURCE_DATE_EPOCH", "WORKING_DIRECTORY", "SAGEMAKER_PROGRAM"}
    assert set().union(*map(environ_reads, smoke)) == {
        "PYTHONPATH",  # extended with code/, as the toolkit extends it
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",  # the toolkit's default Accept
    }


def test_print_contract_prints_the_contract_as_json() -> None:
    result = run_cli("--print-contract", merged=False)
    assert result.returncode == 0
    assert json.loads(result.stdout) == mims_package.CONTRACT


def test_help_documents_every_option_with_its_default() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in (
        "--model-dir",
        "--script-dir",
        "--output-dir",
        "--work-dir",
        "--compression-level",
        "--log-level",
        "--print-contract",
    ):
        assert option in result.stdout
    text = " ".join(result.stdout.split())
    assert "(default: /opt/ml/processing/input/model)" in text
    assert "(default: 6)" in text


def test_script_imports_only_the_standard_library() -> None:
    tree = ast.parse(SCRIPT.read_text())
    modules = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    modules |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert modules - {"__future__"} <= set(sys.stdlib_module_names)


@pytest.mark.parametrize(
    "args", [["--compression-level", "12"], ["--no-such-flag"], ["--threads", "0"]]
)
def test_bad_usage_exits_2(args: list[str]) -> None:
    result = run_cli(*args, merged=False)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_no_arguments_uses_the_sagemaker_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, script, output = tmp_path / "in" / "model", tmp_path / "in" / "script", tmp_path / "out"
    write_tree(model, {"m.bin": b"m"})
    write_tree(script, {"inference.py": "x"})
    monkeypatch.setattr(mims_package, "DEFAULT_MODEL_PATH", str(model))
    monkeypatch.setattr(mims_package, "DEFAULT_SCRIPT_PATH", str(script))
    monkeypatch.setattr(mims_package, "DEFAULT_OUTPUT_PATH", str(output))
    assert mims_package.cli([]) == 0
    assert (output / "model.tar.gz").is_file()
    assert mims_package.main({}, {}, {}) == output / "model.tar.gz"


def test_main_raises_packaging_error_and_returns_the_path(job: Job) -> None:
    with pytest.raises(mims_package.PackagingError, match="does not exist"):
        job.main()
    write_tree(job.model, {"m.bin": b"m"})
    assert job.main(compression_level=0) == job.package
    with pytest.raises(mims_package.PackagingError, match="compression level must be 0-9"):
        job.main(compression_level=10)


def test_failure_reason_is_written_for_sagemaker(job: Job, no_sagemaker_paths: Path) -> None:
    config = no_sagemaker_paths / "config" / "processingjobconfig.json"
    write_tree(config.parent, {config.name: "{}"})
    with pytest.raises(mims_package.PackagingError):
        job.main()
    message = (no_sagemaker_paths / "output" / "message").read_text(encoding="utf-8")
    assert "model input" in message and "does not exist" in message


def test_failure_reason_is_cut_to_1024_bytes_on_a_character_boundary(
    no_sagemaker_paths: Path,
) -> None:
    (no_sagemaker_paths / "output").mkdir(parents=True)
    mims_package._report_failure("é" * 2000)
    data = (no_sagemaker_paths / "output" / "message").read_bytes()
    assert len(data) <= 1024 and data.decode("utf-8") == "é" * 512


def test_no_message_file_and_no_opt_ml_outside_a_job(job: Job, no_sagemaker_paths: Path) -> None:
    """/opt/ml exists here (as on some laptops), but no job config and no output dir in it."""
    no_sagemaker_paths.mkdir()
    with pytest.raises(mims_package.PackagingError):
        job.main()
    assert list(no_sagemaker_paths.iterdir()) == []


def test_expected_failures_end_in_one_error_line_without_traceback(job: Job) -> None:
    result = job.cli()
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert " ERROR " in lines[-2] and "does not exist" in lines[-2]
    assert json.loads(lines[-1])["status"] == "error"  # the summary closes every run
    assert "Traceback" not in result.stdout + result.stderr


def test_unexpected_bug_logs_a_traceback_and_exits_1(
    job: Job, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_tree(job.model, {"m.bin": b"m"})

    def boom(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(mims_package, "_check_and_log_members", boom)
    assert mims_package.cli([str(arg) for arg in job.args()]) == 1
    assert "Traceback" in caplog.text and "unexpected error (ZeroDivisionError: bug)" in caplog.text
    assert job.leftovers() == []


def test_logs_go_to_stdout_with_timestamps_and_a_summary(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m" * 1000})
    result = job.cli()
    assert result.returncode == 0 and result.stderr == ""
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ", result.stdout)
    for phase, amount in (
        ("stage", "1 files"),
        ("compress", "1.0 KB"),
        ("verify", r"\d+ B read back"),
    ):
        lines = re.findall(
            rf"INFO {phase}: .* in \d+\.\d\d s \(\d+\.\d\d CPU-s\)$", result.stdout, re.M
        )
        assert len(lines) == 1 and re.search(rf"{phase}: {amount} in", lines[0]), phase
    assert re.search(
        r"package .*, verified: 1 files, 0 directories; package .* \(gzip\), contents 1\.0 KB, "
        r"ratio \d\.\d+; .* s, .* MB/s of contents; sha256 [0-9a-f]{64}",
        result.stdout,
    )
    assert "free space: staging" in result.stdout


def test_api_accepts_a_namespace_without_optional_fields(job: Job) -> None:
    write_tree(job.model, {"m.bin": b"m"})
    path = mims_package.main(
        {"model_input": str(job.model), "script_input": str(job.script)},
        {"output_dir": str(job.output)},
        {},
        argparse.Namespace(),
    )
    assert path == job.package


def test_long_phases_log_progress(
    job: Job, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    trained = write_tree(job.tmp / "trained", {"w.bin": os.urandom(3 << 20)})
    archive_tree(trained, job.model / "model.tar.gz")
    monkeypatch.setattr(mims_package, "PROGRESS_INTERVAL", 0.0)
    caplog.set_level("INFO", logger="mims_package")
    job.main()
    for phase in ("extract", "compress", "verify"):
        pattern = rf"{phase}: [\d.]+ [KM]?B of [\d.]+ [KM]?B \(\d+%\), [\d.]+ MB/s, ETA \d+ s"
        assert re.search(pattern, caplog.text), phase


def test_print_contract_into_a_closed_pipe_is_quiet() -> None:
    """As when piped into a reader that has already gone: exit 0, nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--print-contract"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    "char", ["\u202e", "\u202a", "\u2066", "\u200b", "\ufeff", "\u2028", "\x85"]
)
def test_format_and_control_characters_from_the_inputs_are_escaped(job: Job, char: str) -> None:
    # A bidi override or a zero-width space would show another name than the file's own.
    write_tree(job.model, {"m.bin": b"m"})
    write_tree(job.script, {f"a{char}b/.env": "X=1\n"})
    result = job.cli()
    assert result.returncode == 1
    error = next(line for line in result.stdout.splitlines() if " ERROR " in line)
    assert char not in result.stdout
    escape = f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    assert f"code/a{escape}b/.env" in error


def test_the_message_file_keeps_the_reason_when_paths_are_long(
    job: Job, no_sagemaker_paths: Path
) -> None:
    (no_sagemaker_paths / "output").mkdir(parents=True)
    deep = job.tmp.joinpath(*(["a-long-directory-name"] * 60))
    with pytest.raises(mims_package.PackagingError):
        mims_package.main(
            {"model_input": str(deep), "script_input": str(job.script)},
            {"package_output": str(job.output)},
            {"WORKING_DIRECTORY": str(job.work)},
        )
    message = (no_sagemaker_paths / "output" / "message").read_text(encoding="utf-8")
    assert len(message.encode()) <= 1024 < len(str(deep))
    assert message.startswith("model input ") and "..." in message
    assert message.endswith("(a model.tar.gz or the model files)")


@pytest.mark.parametrize("option", ["--model-dir", "--script-dir", "--output-dir", "--work-dir"])
def test_an_s3_uri_where_a_local_path_goes_gets_its_own_message(job: Job, option: str) -> None:
    write_tree(job.model, {"m.bin": b"m"})
    args = {**dict(zip(job.args()[::2], job.args()[1::2])), option: "s3://bucket/prefix/model"}
    result = run_cli(*(item for pair in args.items() for item in pair))
    assert result.returncode == 1, result.stdout
    error = next(line for line in result.stdout.splitlines() if " ERROR " in line)
    assert f"{option} is the S3 URI s3://bucket/prefix/model" in error
    assert "ProcessingInput" in error and "Traceback" not in result.stdout + result.stderr


def test_an_error_while_walking_an_input_is_a_clean_failure(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(job.model, {"m.bin": b"m"})
    write_tree(job.script, {"inference.py": ""})

    def walk(root: object, stoppable: bool = True) -> object:
        raise OSError(36, "File name too long", str(root))

    monkeypatch.setattr(mims_package, "_walk_tree", walk)
    with pytest.raises(mims_package.PackagingError, match="while reading the script input"):
        job.main()


def test_progress_counts_the_same_bytes_on_both_sides(
    job: Job, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Many small files: the tar stream is mostly headers, which the total does not count.
    write_tree(job.model, {f"f{i}.bin": b"x" for i in range(3000)})
    monkeypatch.setattr(mims_package, "PROGRESS_INTERVAL", 0.0)
    caplog.set_level("INFO", logger="mims_package")
    job.main()
    percents = [int(p) for p in re.findall(r"(?:compress|verify): .* \((\d+)%\)", caplog.text)]
    assert percents and max(percents) <= 100


def test_one_version_in_the_script_and_the_project() -> None:
    import tomllib

    project = tomllib.loads((SCRIPT.parent / "pyproject.toml").read_text())["project"]
    assert project["version"] == mims_package.__version__


def test_the_readme_gives_package_and_options_their_full_signatures() -> None:
    import inspect

    text = (SCRIPT.parent / "README.md").read_text()
    for name in ("package", "Options"):
        shown = text.split(f"mims_package.{name}(", 1)[1].split(")\n", 1)[0]
        documented = " ".join(shown.split()).replace("*, ", "")
        parameters = inspect.signature(getattr(mims_package, name)).parameters.values()
        actual = ", ".join(
            f"**{p.name}" if p.kind is p.VAR_KEYWORD else f"{p.name}={p.default!r}"
            for p in parameters
        )
        assert documented == actual, name
