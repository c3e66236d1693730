"""The README's SageMaker SDK v2 snippets, run against the real SDK with stubbed AWS clients.

The Python blocks of "Running it on SageMaker" and "Deploying the package", under
"SDK v2", are taken from README.md itself, so the docs cannot drift from what is tested. The
AWS clients are mocks that record every call: no network, no credentials. The
assertions are the deploy path's promises: CreateModel and CreateModelPackage get
the package's own URI, unchanged; the two env vars are set; nothing is uploaded
or repacked.
"""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

import pytest
from conftest import (
    PACKAGE_JOIN,
    PACKAGE_SHA256_METADATA,
    PACKAGE_URI,
    ROOT,
    SERVING_ENV,
    SMOKE_ARGUMENTS,
    readme_blocks,
)

# One worker imports the SDK (three seconds) and runs them all (pyproject.toml: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sdk-v2")

REGION = "us-east-1"
ROLE = "arn:aws:iam::111122223333:role/mims"


class Recorder:
    """Boto clients and resources whose every call is recorded and answers plausibly."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def client(self, service: str, **_: Any) -> Any:
        return self._fake(service)

    def resource(self, service: str, **_: Any) -> Any:
        return self._fake(service + "-resource")

    def _fake(self, service: str) -> Any:
        recorder = self

        class Fake(mock.MagicMock):
            def __getattr__(self, name: str) -> Any:
                if name.startswith("_"):
                    return super().__getattr__(name)

                def call(*args: Any, **kwargs: Any) -> Any:
                    recorder.calls.append((service, name, kwargs))
                    return ANSWERS.get(name, mock.MagicMock())

                return call

        return Fake()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for _, call, kwargs in self.calls if call == name]

    def uploads(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [c for c in self.calls if c[1] in ("upload_file", "put_object", "upload_fileobj")]


ANSWERS: dict[str, Any] = {
    "describe_endpoint": {"EndpointStatus": "InService"},
    "get_caller_identity": {"Account": "111122223333"},
    "create_model_package": {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:1:model-package/m/1"},
}


def stubbed(session_class: Any, recorder: Recorder) -> Any:
    """A real SDK session whose AWS clients are the recorder's."""
    session = session_class.__new__(session_class)
    stub_init(session_class.__init__, recorder)(session)
    return session


def stub_init(real_init: Any, recorder: Recorder) -> Any:
    """A session __init__ that gives the session the recorder's clients and a bucket."""

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        boto = mock.MagicMock(region_name=REGION)
        boto.client.side_effect = recorder.client
        boto.resource.side_effect = recorder.resource
        kwargs.update(
            boto_session=boto, sagemaker_client=recorder.client("sagemaker"), default_bucket="b"
        )
        real_init(self, *args, **kwargs)
        self._default_bucket = "my-bucket"  # set, so that no bucket check goes to S3

    return init


@pytest.fixture
def sagemaker(monkeypatch: pytest.MonkeyPatch) -> Any:
    """SDK v2, imported by the test that needs it; the endpoint is "InService" at the first
    look, so that the SDK's polling need not sleep."""
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    module = pytest.importorskip("sagemaker", reason="sagemaker<3 is not installed")
    monkeypatch.setattr(module.session, "_wait_until", lambda check, poll=5: check())
    return module


def run_blocks(blocks: list[str], names: dict[str, Any]) -> dict[str, Any]:
    for block in blocks:
        exec(compile(block, "README.md", "exec"), names)
    return names


def test_the_readme_deploy_snippet_creates_the_model_from_the_package_as_is(sagemaker: Any) -> None:
    recorder = Recorder()
    session = stubbed(sagemaker.Session, recorder)
    deploy = readme_blocks("Deploying the package", "SDK v2")[0]
    run_blocks([deploy], {"session": session, "role": ROLE, "region": REGION})
    (create,) = recorder.named("create_model")
    container = create["PrimaryContainer"]
    assert container["ModelDataUrl"] == PACKAGE_URI
    assert container["Environment"] == SERVING_ENV
    assert "xgboost" in container["Image"]
    assert recorder.named("create_endpoint") and recorder.uploads() == []
    assert not any(call[0].startswith("s3") for call in recorder.calls)


def test_the_readme_model_registers_the_package_as_is_with_a_plain_session(sagemaker: Any) -> None:
    recorder = Recorder()
    session = stubbed(sagemaker.Session, recorder)
    names = run_blocks(
        readme_blocks("Deploying the package", "SDK v2")[:1],
        {"session": session, "role": ROLE, "region": REGION},
    )
    names["model"].register(
        content_types=["text/csv"],
        response_types=["text/csv"],
        inference_instances=["ml.m5.large"],
        transform_instances=["ml.m5.large"],
        model_package_group_name="mims-models",
        approval_status="PendingManualApproval",
    )
    (package,) = recorder.named("create_model_package")
    (container,) = package["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == PACKAGE_URI
    assert container["Environment"] == SERVING_ENV
    assert recorder.uploads() == []


def test_network_isolation_on_the_plain_model_repacks_nothing(sagemaker: Any) -> None:
    recorder = Recorder()
    session = stubbed(sagemaker.Session, recorder)
    deploy = readme_blocks("Deploying the package", "SDK v2")[0].replace(
        "    sagemaker_session=session,",
        "    sagemaker_session=session,\n    enable_network_isolation=True,",
    )
    run_blocks([deploy], {"session": session, "role": ROLE, "region": REGION})
    (create,) = recorder.named("create_model")
    assert create["EnableNetworkIsolation"] is True
    assert create["PrimaryContainer"]["ModelDataUrl"] == PACKAGE_URI
    assert recorder.uploads() == []


def test_the_readme_pipeline_packages_then_registers_the_step_output_unchanged(
    sagemaker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.pipeline_context import PipelineSession

    recorder = Recorder()
    # The snippet makes its own PipelineSession(): it gets the recorder's clients.
    monkeypatch.setattr(PipelineSession, "__init__", stub_init(PipelineSession.__init__, recorder))
    train_step = mock.MagicMock()
    train_step.properties.ModelArtifacts.S3ModelArtifacts = "s3://my-bucket/train/model.tar.gz"
    names = {
        "role": ROLE,
        "region": REGION,
        "train_step": train_step,
        "sample_s3_uri": "s3://my-bucket/samples/",
        "inference_code_s3_uri": "s3://my-bucket/code/",
        "calibration_s3_uri": "s3://my-bucket/calibration/",
        "package_s3_uri": "s3://my-bucket/packages/",
    }
    running = readme_blocks("Running it on SageMaker", "SDK v2")[0]
    cwd = os.getcwd()
    os.chdir(ROOT)  # processor.run(code="mims_package.py") reads the script from here
    try:
        run_blocks([running], names)
        run_blocks(readme_blocks("Deploying the package", "SDK v2")[1:2], names)
        steps = [names["package_step"], names["register_step"]]
        session = names["pipeline_session"]
        pipeline = Pipeline(name="mims", steps=steps, sagemaker_session=session)
        definition = json.loads(pipeline.definition())
    finally:
        os.chdir(cwd)
    by_name = {step["Name"]: step for step in definition["Steps"]}
    processing = by_name["MimsPackage"]["Arguments"]
    inputs = {i["InputName"]: i for i in processing["ProcessingInputs"]}
    assert set(inputs) == {"model_input", "script_input", "calibration_model", "sample", "code"}
    assert inputs["sample"]["S3Input"]["LocalPath"] == "/opt/ml/processing/input/sample"
    # On the serving framework's image, with the smoke test and the sample.
    assert "sagemaker-xgboost:1.7-1" in processing["AppSpecification"]["ImageUri"]
    assert processing["AppSpecification"]["ContainerArguments"] == SMOKE_ARGUMENTS
    assert (
        inputs["calibration_model"]["S3Input"]["LocalPath"]
        == "/opt/ml/processing/input/calibration"
    )
    outputs = processing["ProcessingOutputConfig"]["Outputs"]
    assert [o["OutputName"] for o in outputs] == ["packaged_model", "package_report"]
    assert by_name["MimsPackage"]["PropertyFiles"] == [
        {
            "PropertyFileName": "PackageReport",
            "OutputName": "package_report",
            "FilePath": "package.json",
        }
    ]
    registers = [s for s in definition["Steps"] if s["Type"] == "RegisterModel"]
    assert [s["Type"] for s in definition["Steps"]] == ["Processing", "RegisterModel"]  # no repack
    (container,) = registers[0]["Arguments"]["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == PACKAGE_JOIN
    assert container["Environment"] == SERVING_ENV
    assert registers[0]["Arguments"]["CustomerMetadataProperties"] == PACKAGE_SHA256_METADATA
    uploaded = [kwargs for _, _, kwargs in recorder.uploads()]
    assert all("model.tar.gz" not in json.dumps(kwargs, default=str) for kwargs in uploaded)
