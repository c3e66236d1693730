"""The bundled example's package, served by the real SageMaker serving libraries, offline.

Each library runs in a subprocess laid out as its container would be: the package
extracted to <base>/model, the library's environment variables set, and the
code found the way that library finds it. The predictions must equal the
booster's, calibrated, exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import EXAMPLE, run_cli

pytestmark = pytest.mark.xdist_group("xgboost")

PAYLOAD = "34,52000,1200.5,12,north,web\n,61000,,48,south,\n71,,-300,,mars,phone\n"

TOOLKIT = """
import json, sys
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.transformer import Transformer

model_dir, payload = sys.argv[1], sys.argv[2].encode()

class Request:
    def get_request_properties(self):
        return {"Content-Type": "text/csv", "Accept": "text/csv"}

class Context:
    system_properties = {"model_dir": model_dir, "gpu_id": None}
    request_processor = [Request()]
    def set_response_content_type(self, index, content_type):
        self.content_type = content_type
    def set_response_status(self, code, phrase):
        raise SystemExit(f"{code} {phrase}")

service = DefaultHandlerService(Transformer(default_inference_handler=DefaultInferenceHandler()))
context = Context()
service.initialize(context)
(body,) = service.handle([{"body": payload}], context)
print(json.dumps({"body": body, "content_type": context.content_type,
                  "module": sys.modules["inference"].__file__}))
"""

CONTAINERS = """
import collections, collections.abc, json, os, sys
# sagemaker-containers 2.8 predates Python 3.10, where these aliases were removed; the
# XGBoost container runs it on an older Python that still has them.
for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
    setattr(collections, name, getattr(collections.abc, name))
from sagemaker_containers import _env, _modules

serving = _env.ServingEnv()
module = _modules.import_module(serving.module_dir, serving.module_name)
model = module.model_fn(_env.model_dir)
rows = module.input_fn(sys.argv[1], "text/csv")
body, content_type = module.output_fn(module.predict_fn(rows, model), "text/csv")
print(json.dumps({"body": body, "content_type": content_type, "module": module.__file__,
                  "name": serving.module_name}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example packaged (code with an empty requirements.txt) and extracted: <base>/model."""
    tmp = tmp_path_factory.mktemp("serving")
    script = tmp / "script"
    shutil.copytree(EXAMPLE / "script", script, ignore=shutil.ignore_patterns("__pycache__"))
    (script / "requirements.txt").write_text("")  # nothing to install: no network needed
    result = run_cli(
        "--model-dir",
        EXAMPLE / "model",
        "--script-dir",
        script,
        "--calibration-dir",
        EXAMPLE / "calibration",
        "--output-dir",
        tmp / "out",
    )
    assert result.returncode == 0, result.stdout
    model_dir = tmp / "opt-ml" / "model"
    model_dir.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(tmp / "out" / "model.tar.gz"), "-C", str(model_dir)])
    return tmp / "opt-ml"


@pytest.fixture(scope="module")
def expected_scores(make_example: Any) -> list[float]:
    """The booster's own scores for PAYLOAD, calibrated."""
    example = make_example.train()
    records = [dict(zip(make_example.FIELDS, line.split(","))) for line in PAYLOAD.splitlines()]
    matrix = make_example.features(example, records)
    raw = example.booster.predict(
        make_example.xgb.DMatrix(matrix, feature_names=make_example.FIELDS)
    )
    return [float(score) for score in make_example.calibrate(example.calibration, raw)]


def serve(script: str, env: dict[str, str], *args: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_inference_toolkit_serves_the_package(
    served: Path, expected_scores: list[float]
) -> None:
    """PyTorch-style containers: the model server puts /opt/ml/model/code on PYTHONPATH."""
    pytest.importorskip("sagemaker_inference", reason="sagemaker-inference is not installed")
    model_dir = served / "model"
    env = {"SAGEMAKER_BASE_DIR": str(served), "PYTHONPATH": str(model_dir / "code")}
    env["SAGEMAKER_PROGRAM"] = "inference.py"
    answer = serve(TOOLKIT, env, str(model_dir), PAYLOAD)
    assert answer["module"] == str(model_dir / "code" / "inference.py")
    assert answer["content_type"] == "text/csv"
    scores = [float(line) for line in answer["body"].splitlines()]
    assert np.array_equal(scores, expected_scores)


def test_the_xgboost_containers_library_serves_the_package(
    served: Path, tmp_path: Path, expected_scores: list[float]
) -> None:
    """sagemaker-containers 2.8: SAGEMAKER_SUBMIT_DIRECTORY copied to /opt/ml/code, pip
    install . there (offline: an empty requirements.txt, no build isolation, into a target
    dir so that the test environment is left alone), then SAGEMAKER_PROGRAM imported."""
    pytest.importorskip("sagemaker_containers", reason="sagemaker-containers is not installed")
    base = tmp_path / "container-opt-ml"
    shutil.copytree(served, base)
    site = tmp_path / "site"
    site.mkdir()  # on the path from the start, as site-packages is
    env = {
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_SUBMIT_DIRECTORY": str(base / "model" / "code"),
        "SAGEMAKER_PROGRAM": "inference.py",
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip reads this one backwards: 0 turns isolation off
        "PIP_TARGET": str(site),
        "PYTHONPATH": str(site),
    }
    answer = serve(CONTAINERS, env, PAYLOAD)
    assert answer["name"] == "inference"
    assert answer["module"] == str(site / "inference.py")  # installed by pip, as in the container
    assert (base / "code" / "processing" / "risk_table.py").exists()  # the whole code/ dir
    scores = [float(line) for line in answer["body"].splitlines()]
    assert np.array_equal(scores, expected_scores)
