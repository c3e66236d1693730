"""The README's SageMaker SDK v3 snippets, run as written against the real SDK v3.

The Python blocks under "SDK v3" in "Running it on SageMaker" and "Deploying the
package" are taken from README.md itself and run in SDK v3's own virtualenv
(tests/sdk_v3.py), where a stub answers and records every AWS call and the network is
off. The assertions are the deploy path's promises: nothing is uploaded to S3,
CreateModel and the registered model package get the package's own URI (in a pipeline,
the Join of the packaging step's output and model.tar.gz), no repack step is added, and
both env vars are set. A control run with source_code= shows that the same assertions
catch a repack.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sdk_v3
from conftest import (
    EXAMPLE,
    PACKAGE_JOIN,
    PACKAGE_SHA256_METADATA,
    PACKAGE_URI,
    SERVING_ENV,
    SMOKE_ARGUMENTS,
    readme_blocks,
)

# One worker runs them all, from one run of the driver (pyproject.toml: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sdk-v3")

ROLE = "arn:aws:iam::111122223333:role/mims"
NAMES = {
    "role": ROLE,
    "region": sdk_v3.REGION,
    "sample_s3_uri": "s3://my-bucket/samples/",
    "script_s3_uri": "s3://my-bucket/scripts/mims_package.py",
    "inference_code_s3_uri": "s3://my-bucket/code/",
    "calibration_s3_uri": "s3://my-bucket/calibration/",
    "package_s3_uri": "s3://my-bucket/packages/",
    "report_s3_uri": "s3://my-bucket/reports/",
}
# A training step's one property the snippet reads, as a plain value.
TRAIN_STEP = """
from types import SimpleNamespace as _Namespace
train_step = _Namespace(properties=_Namespace(ModelArtifacts=_Namespace(
    S3ModelArtifacts="s3://my-bucket/train/model.tar.gz")))
"""
PIPELINE = """
import json
from sagemaker.mlops.workflow.pipeline import Pipeline
definition = json.loads(Pipeline(
    name="mims", steps=[package_step, register_step], sagemaker_session=pipeline_session
).definition())
"""
S3_WRITES = {"PutObject", "CreateMultipartUpload", "UploadPart", "CopyObject"}


@pytest.fixture(scope="module")
def sdk_v3_python() -> Path:
    """SDK v3's virtualenv python, built on first use; a skip only where it cannot be built."""
    try:
        return sdk_v3.build()
    except (OSError, RuntimeError) as error:
        if os.environ.get("MIMS_REQUIRE_SDK_V3"):
            raise
        pytest.skip(f"this machine cannot build SDK v3's virtualenv (Python 3.10+, PyPI): {error}")


def run_v3(python: Path, requests: dict[str, dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """Run each request's blocks under the stub in SDK v3's virtualenv, all in one process
    (importing the SDK takes two seconds): each request's AWS calls and results."""
    result_path = tmp / "result.json"
    run = subprocess.run(
        [str(python), str(sdk_v3.HERE / "sdk_v3.py"), str(result_path)],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(result_path.read_text())  # type: ignore[no-any-return]


def s3_writes(calls: list[list[Any]]) -> list[str]:
    return [f"{op} {params.get('Key')}" for service, op, params in calls if op in S3_WRITES]


def pipeline_blocks() -> list[str]:
    """The README's v3 processing step and registration, then the pipeline definition."""
    running = readme_blocks("Running it on SageMaker", "SDK v3")
    registering = readme_blocks("Deploying the package", "SDK v3")[1:2]
    return [TRAIN_STEP, *running, *registering, PIPELINE]


def deploy_blocks() -> list[str]:
    return readme_blocks("Deploying the package", "SDK v3")[:1]


def source_code_blocks() -> list[str]:
    """The pipeline with source_code= added to the registration: the control run."""
    blocks = pipeline_blocks()
    session = "    sagemaker_session=pipeline_session,\n"
    source_code = (
        f"    source_code=SourceCode(source_dir={str(EXAMPLE / 'script')!r},"
        " entry_script='inference.py'),\n"
    )
    assert blocks[-2].count(session) == 1
    blocks[-2] = blocks[-2].replace(session, session + source_code)
    blocks.insert(-2, "from sagemaker.core.training.configs import SourceCode")
    return blocks


GATED = """
import json
from sagemaker.mlops.workflow.pipeline import Pipeline
definition = json.loads(Pipeline(
    name="mims", steps=[package_step, gate], sagemaker_session=pipeline_session
).definition())
"""


def gated_blocks() -> list[str]:
    """The processing step, then the README's gate in front of the registration."""
    gate = readme_blocks("Will it serve?", "Gating registration on warnings")
    return [*pipeline_blocks()[:-1], *gate, GATED]


@pytest.fixture(scope="module")
def runs(sdk_v3_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every snippet run, each under a stub of its own; the control run (source_code=) last,
    so that nothing it leaves in the SDK can reach the others."""
    definition = ["definition"]
    requests = {
        "pipeline": {"blocks": pipeline_blocks(), "names": NAMES, "results": definition},
        "deploy": {"blocks": deploy_blocks(), "names": NAMES},
        "gated": {"blocks": gated_blocks(), "names": NAMES, "results": definition},
        "source_code": {"blocks": source_code_blocks(), "names": NAMES, "results": definition},
    }
    return run_v3(sdk_v3_python, requests, tmp_path_factory.mktemp("sdk-v3"))


def test_the_readme_v3_pipeline_packages_then_registers_the_step_output_unchanged(
    runs: dict[str, Any],
) -> None:
    ran = runs["pipeline"]
    steps = ran["results"]["definition"]["Steps"]
    assert [s["Type"] for s in steps] == ["Processing", "RegisterModel"]  # no repack step
    processing = steps[0]["Arguments"]
    assert processing["AppSpecification"]["ContainerEntrypoint"] == [
        "python3",
        "/opt/ml/processing/input/code/mims_package.py",
    ]
    inputs = {i["InputName"]: i["S3Input"] for i in processing["ProcessingInputs"]}
    assert {name: i["LocalPath"] for name, i in inputs.items()} == {
        "model_input": "/opt/ml/processing/input/model",
        "script_input": "/opt/ml/processing/input/script",
        "calibration_model": "/opt/ml/processing/input/calibration",
        "sample": "/opt/ml/processing/input/sample",
        "code": "/opt/ml/processing/input/code",
    }
    # On the serving framework's image, with the smoke test and the sample.
    assert "sagemaker-xgboost:1.7-1" in processing["AppSpecification"]["ImageUri"]
    assert processing["AppSpecification"]["ContainerArguments"] == SMOKE_ARGUMENTS
    assert inputs["model_input"]["S3Uri"] == "s3://my-bucket/train/model.tar.gz"
    assert inputs["code"]["S3Uri"] == NAMES["script_s3_uri"]
    outputs = {
        o["OutputName"]: o["S3Output"] for o in processing["ProcessingOutputConfig"]["Outputs"]
    }
    assert outputs["packaged_model"]["LocalPath"] == "/opt/ml/processing/output"
    assert outputs["package_report"]["LocalPath"] == "/opt/ml/processing/report"
    (container,) = steps[1]["Arguments"]["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == PACKAGE_JOIN
    assert SERVING_ENV.items() <= container["Environment"].items()
    assert steps[1]["Arguments"]["CustomerMetadataProperties"] == PACKAGE_SHA256_METADATA
    assert s3_writes(ran["calls"]) == []


def test_the_readme_v3_deploy_creates_the_model_from_the_package_as_is(
    runs: dict[str, Any],
) -> None:
    ran = runs["deploy"]
    creates = [params for _, op, params in ran["calls"] if op == "CreateModel"]
    (create,) = creates
    assert create["PrimaryContainer"]["ModelDataUrl"] == PACKAGE_URI
    assert create["PrimaryContainer"]["Environment"] == SERVING_ENV
    assert "sagemaker-xgboost" in create["PrimaryContainer"]["Image"]
    assert [op for _, op, _ in ran["calls"] if op == "CreateEndpoint"] == ["CreateEndpoint"]
    assert s3_writes(ran["calls"]) == []


def test_source_code_would_upload_and_repack_which_these_checks_catch(
    runs: dict[str, Any],
) -> None:
    ran = runs["source_code"]
    types = [s["Type"] for s in ran["results"]["definition"]["Steps"]]
    assert "Training" in types  # the SDK's repack step, before the registration
    assert any(write.endswith("/inference.py") for write in s3_writes(ran["calls"]))


# Imports each module named, in one process: {module: "imported" or the exception's type}.
IMPORT_EACH = """
import importlib, json, sys
said = {}
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
        said[module] = "imported"
    except Exception as error:
        said[module] = type(error).__name__
print(json.dumps(said))
"""


def test_importing_sagemaker_serve_needs_a_region_as_the_readme_says(
    sdk_v3_python: Path, runs: dict[str, Any], tmp_path: Path
) -> None:
    """Without a region each import fails; with one (the driver sets only the region and
    stub keys, then runs the README's `from sagemaker.serve import ...`) the deploy ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"))
    modules = ["sagemaker.serve", "sagemaker.mlops.workflow.steps"]
    run = subprocess.run(
        [str(sdk_v3_python), "-c", IMPORT_EACH, *modules],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == dict.fromkeys(modules, "NoRegionError")
    assert "from sagemaker.serve import" in "".join(deploy_blocks())
    assert [op for _, op, _ in runs["deploy"]["calls"] if op == "CreateModel"] == ["CreateModel"]


def test_the_readme_gate_registers_only_a_package_without_warnings(
    runs: dict[str, Any],
) -> None:
    ran = runs["gated"]
    steps = ran["results"]["definition"]["Steps"]
    assert [s["Type"] for s in steps] == ["Processing", "Condition"]
    arguments = steps[1]["Arguments"]
    (condition,) = arguments["Conditions"]
    assert condition["Type"] == "Equals" and condition["RightValue"] == 0
    assert condition["LeftValue"] == {
        "Std:JsonGet": {
            "PropertyFile": {"Get": "Steps.MimsPackage.PropertyFiles.PackageReport"},
            "Path": "warning_count",
        }
    }
    assert [s["Type"] for s in arguments["IfSteps"]] == ["RegisterModel"]
    assert [s["Type"] for s in arguments["ElseSteps"]] == ["Fail"]
    assert s3_writes(ran["calls"]) == []
