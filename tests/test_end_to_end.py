"""A real model on the real serving path: train, package, extract as hosting does, predict."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import EXAMPLE, Job

pytestmark = pytest.mark.xdist_group("xgboost")

# Fields: age, income, balance, tenure_months, region, channel. Missing numbers and
# categories (empty fields) use the imputation and the risk tables' default bin; "mars"
# is a region the model never saw.
PAYLOAD = """\
34,52000,1200.5,12,north,web
,61000,,48,south,
71,,-300,,mars,phone
25,18000,8000,3,,branch
"""


def import_inference(code_dir: Path) -> ModuleType:
    """Import code/inference.py as sagemaker-inference-toolkit does: code/ first on sys.path."""
    for name in [n for n in sys.modules if n == "processing" or n.startswith("processing.")]:
        del sys.modules[name]
    sys.path.insert(0, str(code_dir))
    try:
        spec = importlib.util.spec_from_file_location("inference", code_dir / "inference.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert sys.modules["processing"].__file__.startswith(str(code_dir))
        return module
    finally:
        sys.path.remove(str(code_dir))


def test_trained_model_served_from_the_package(job: Job, make_example: Any) -> None:
    example = make_example.train(seed=11, rows=1500)
    make_example.write_model_archive(example, job.model / "model.tar.gz")
    make_example.write_calibration(example, job.tmp / "calibration")
    result = job.cli(
        "--script-dir", EXAMPLE / "script", "--calibration-dir", job.tmp / "calibration"
    )
    assert result.returncode == 0, result.stdout

    model_dir = job.tmp / "opt-ml-model"
    model_dir.mkdir()
    subprocess.run(["tar", "-xzf", str(job.package), "-C", str(model_dir)], check=True)
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "calibration",
        "code",
        "hyperparameters.json",
        "impute_dict.pkl",
        "risk_table_map.pkl",
        "xgboost_model.bst",
    ]

    inference = import_inference(model_dir / "code")
    model = inference.model_fn(str(model_dir))
    rows = inference.input_fn(PAYLOAD.encode(), "text/csv")
    predictions = inference.predict_fn(rows, model)
    body, content_type = inference.output_fn(predictions, "text/csv")

    records = [dict(zip(make_example.FIELDS, line.split(","))) for line in PAYLOAD.splitlines()]
    matrix = make_example.features(example, records)
    assert np.isnan(matrix).sum() == 0
    raw = example.booster.predict(
        make_example.xgb.DMatrix(matrix, feature_names=make_example.FIELDS)
    )
    expected = make_example.calibrate(example.calibration, raw)
    assert not np.allclose(expected, raw)  # the calibration really changes the scores
    assert content_type == "text/csv"
    assert [float(line) for line in body.splitlines()] == pytest.approx(expected.tolist(), abs=0)
    assert len(set(expected.round(6))) == 4  # four different scores: the inputs really differ


def test_bundled_example_is_current(tmp_path: Path, make_example: Any) -> None:
    """Regenerating the example gives the committed bytes: the archive and the calibration."""
    example = make_example.train()
    make_example.write_model_archive(example, tmp_path / "model" / "model.tar.gz")
    make_example.write_calibration(example, tmp_path / "calibration")
    for name in ("model/model.tar.gz", "calibration/calibration_model.pkl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), name
    summary = (tmp_path / "calibration" / "calibration_summary.json").read_bytes()
    assert summary == (EXAMPLE / "calibration" / "calibration_summary.json").read_bytes()
