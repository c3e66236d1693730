"""--smoke-test: the written package run as the serving toolkit runs it, before it is
published, and the same on any package with --verify."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPT, Job, find_pythons, run_cli, write_tree

MODEL = {"model.json": json.dumps({"weights": [2, 3], "bias": 1})}
# A stdlib-only model: any Python can serve it, the smoke test's many interpreters included.
SERVE = """import json
import os

def model_fn(model_dir):
    with open(os.path.join(model_dir, "model.json")) as file:
        return json.load(file)

def input_fn(body, content_type):
    if content_type == "text/csv":
        assert isinstance(body, str), type(body)
        return [[float(x) for x in line.split(",")] for line in body.splitlines()]
    if content_type == "application/json":
        assert isinstance(body, str), type(body)
        return json.loads(body)["instances"]
    assert isinstance(body, bytes), type(body)
    return [[float(x) for x in body.split()]]

def predict_fn(rows, model):
    return [sum(w * x for w, x in zip(model["weights"], row)) + model["bias"] for row in rows]

def output_fn(prediction, accept):
    if accept == "text/csv":
        return "\\n".join(str(p) for p in prediction), "text/csv"
    return json.dumps({"predictions": prediction})
"""
CSV = "1,2\n3,4\n"
CSV_RESPONSE = b"9.0\n19.0"
JSON_RESPONSE = b'{"predictions": [9.0, 19.0]}'  # Accept defaults to application/json


def summary(result: Any) -> dict[str, Any]:
    return json.loads(result.stdout.strip().splitlines()[-1])


def error_of(result: Any) -> str:
    (error,) = [line for line in result.stdout.splitlines() if " ERROR " in line]
    return error.split(" ERROR ", 1)[1]


@pytest.fixture
def served(job: Job) -> Job:
    """A job whose package serves: the stdlib model and its handlers."""
    write_tree(job.model, MODEL)
    write_tree(job.script, {"inference.py": SERVE})
    return job


def sample(job: Job, name: str, body: str | bytes) -> Path:
    path = job.tmp / name
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return path


def test_a_package_that_serves_passes_and_says_how(served: Job) -> None:
    result = served.cli("--smoke-test", "--sample", sample(served, "rows.csv", CSV))
    assert result.returncode == 0, result.stdout
    (line,) = [x for x in result.stdout.splitlines() if "smoke test: passed:" in x]
    assert "model_fn " in line and " s gave a builtins.dict" in line
    assert (
        "the request " in line and f" gave {len(JSON_RESPONSE)} bytes of application/json" in line
    )
    assert "peak memory " in line
    said = summary(result)["smoke_test"]
    assert said["status"] == "pass" and said["response_sha256"] == sha256(JSON_RESPONSE)
    assert said["content_type"] == "application/json" and said["seconds"] > 0
    assert said["model_type"] == "builtins.dict" and said["peak_memory_bytes"] > 1 << 20
    assert served.leftovers() == []


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "body", "extra", "response"),
    [
        ("rows.csv", CSV, ["--accept", "text/csv"], CSV_RESPONSE),
        ("rows.json", '{"instances": [[1, 2]]}', [], b'{"predictions": [9]}'),
        ("rows.bin", b"1 2", [], b'{"predictions": [9.0]}'),  # octet-stream: bytes
        (
            "rows.txt",
            "1,2",
            ["--content-type", "text/csv", "--accept", "*/*"],
            b'{"predictions": [9.0]}',
        ),
    ],
    ids=["csv", "json", "octet-stream", "explicit-type"],
)
def test_the_request_is_decoded_as_the_toolkit_decodes_it(
    served: Job, name: str, body: str, extra: list[str], response: bytes
) -> None:
    """UTF-8 types reach input_fn as str, others as bytes; Accept */* means the default."""
    result = served.cli("--smoke-test", "--sample", sample(served, name, body), *extra)
    assert result.returncode == 0, result.stdout
    said = summary(result)["smoke_test"]
    assert said["response_sha256"] == sha256(response) and said["response_bytes"] == len(response)


def test_the_package_is_the_same_with_and_without_it_whatever_model_fn_does(job: Job) -> None:
    vandal = SERVE.replace(
        "def model_fn(model_dir):\n",
        "def model_fn(model_dir):\n"
        "    open(os.path.join(model_dir, 'model.json'), 'a').write('garbage')\n"
        "    open(os.path.join(model_dir, 'new.txt'), 'w').write('new')\n"
        "    os.remove(os.path.join(model_dir, 'code', 'inference.py'))\n"
        "    os.chmod(os.path.join(model_dir, 'code'), 0)\n",
    ).replace("        return json.load(file)", "        return json.loads(file.read()[:-7])")
    write_tree(job.model, MODEL)
    write_tree(job.script, {"inference.py": vandal})
    assert job.cli().returncode == 0
    plain = job.package.read_bytes()
    result = job.cli("--smoke-test", "--sample", sample(job, "rows.csv", CSV))
    assert result.returncode == 0, result.stdout
    assert job.package.read_bytes() == plain
    assert (job.model / "model.json").read_text() == MODEL["model.json"]  # inputs untouched
    assert job.leftovers() == []


FAILURES = {
    "import-error": (
        "import not_installed_anywhere\n",
        "importing inference.py: ModuleNotFoundError: No module named 'not_installed_anywhere'",
    ),
    "model-fn-raises": (
        "def model_fn(model_dir):\n    raise FileNotFoundError('model.pkl')\n",
        "in model_fn inference.py: FileNotFoundError: model.pkl (at ",
    ),
    "request-raises": (
        "def predict_fn(rows, model):\n    raise KeyError('weights2')\n",
        "in the request inference.py: KeyError: 'weights2' (at ",
    ),
    "model-fn-exits": (
        "def model_fn(model_dir):\n    raise SystemExit(3)\n",
        "in model_fn inference.py: SystemExit: 3",
    ),
    "killed": (
        "import signal\ndef model_fn(model_dir):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "its child process was killed by SIGKILL (out of memory?)",
    ),
    "response-not-bytes": (
        "def output_fn(prediction, accept):\n    return prediction\n",
        "the response is a list, not bytes or str",
    ),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_package_that_would_not_serve_is_not_published(served: Job, case: str) -> None:
    code, said = FAILURES[case]
    assert served.cli().returncode == 0
    before = served.package.read_bytes()
    write_tree(served.script, {"inference.py": SERVE + code})
    result = served.cli("--smoke-test", "--sample", sample(served, "rows.csv", CSV))
    assert result.returncode == 1, result.stdout
    error = error_of(result)
    assert error.startswith("the smoke test failed: ") and said in error, error
    assert "Traceback" not in result.stdout + result.stderr
    if case != "killed":
        assert "inference.py:" in error  # the last frames: file and line
    assert served.package.read_bytes() == before and served.leftovers() == []
    assert summary(result)["smoke_test"]["status"] == "fail"


def test_a_timeout_ends_the_child_and_everything_it_started(served: Job) -> None:
    pids = served.tmp / "pids"
    slow = (
        "import subprocess, time\n"
        "def model_fn(model_dir):\n"
        "    child = subprocess.Popen(['sleep', '300'])\n"
        f"    open({str(pids)!r}, 'w').write('%d %d' % (os.getpid(), child.pid))\n"
        "    time.sleep(300)\n"
    )
    write_tree(served.script, {"inference.py": SERVE + slow})
    result = served.cli("--smoke-test", "--smoke-timeout", "3")
    assert result.returncode == 1
    assert "it took more than --smoke-timeout 3 seconds" in error_of(result)
    for pid in map(int, pids.read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not served.package.exists() and served.leftovers() == []


def test_a_stop_during_the_smoke_test_ends_it_within_seconds(served: Job) -> None:
    """SIGTERM once model_fn is running (it says so in a file: a barrier, not a guess)."""
    started = served.tmp / "started"
    slow = (
        "import time\n"
        "def model_fn(model_dir):\n"
        f"    open({str(started)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(300)\n"
    )
    write_tree(served.script, {"inference.py": SERVE + slow})
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, served.args("--smoke-test"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "model_fn never ran"
    process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    log, _ = process.communicate(timeout=30)
    assert process.returncode == 143, log
    assert time.monotonic() - stopped < 10
    child = int(started.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()
    assert not served.package.exists() and served.leftovers() == []


def wheel(directory: Path, name: str, module: str) -> Path:
    """A pure-Python wheel of one module, made by hand (no build tools, no network)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.py", module)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def test_requirements_are_installed_as_the_endpoint_installs_them(served: Job) -> None:
    """Into a throwaway environment over the smoke Python's packages: what it has is not
    fetched (numpy), what it lacks is installed (from a local wheel, offline), and the
    smoke Python itself is left as it was."""
    links = served.tmp / "wheels"
    wheel(links, "mims_smoke_dep", "SCALE = 10\n")
    code = SERVE.replace("import json\n", "import json\nimport numpy\nimport mims_smoke_dep\n")
    write_tree(
        served.script, {"inference.py": code, "requirements.txt": "numpy\nmims_smoke_dep==1.0\n"}
    )
    env = {**OFFLINE, "PIP_FIND_LINKS": str(links)}
    result = served.cli("--smoke-test", env=env)
    assert result.returncode == 0, result.stdout
    assert "smoke test: pip install -r code/requirements.txt" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import mims_smoke_dep"], capture_output=True)
    assert probe.returncode != 0  # installed into the throwaway environment only
    assert served.leftovers() == []


def test_a_requirement_that_cannot_install_fails_as_the_endpoint_would(served: Job) -> None:
    write_tree(served.script, {"requirements.txt": "mims-no-such-distribution==9.9\n"})
    result = served.cli("--smoke-test", env={**OFFLINE, "PIP_FIND_LINKS": ""})
    assert result.returncode == 1
    error = error_of(result)
    assert "pip install -r code/requirements.txt failed" in error
    assert "mims-no-such-distribution" in error  # pip's own words, quoted
    assert not served.package.exists() and served.leftovers() == []


def test_a_smoke_python_without_pip_warns_and_goes_on(served: Job) -> None:
    bare = served.tmp / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    write_tree(served.script, {"requirements.txt": "numpy\n"})
    result = served.cli("--smoke-test", "--smoke-python", bare / "bin" / "python")
    assert result.returncode == 0, result.stdout
    (warning,) = [w for w in summary(result)["warnings"] if w["check"] == "smoke test"]
    assert "has no pip, so code/requirements.txt is not installed" in warning["message"]


@pytest.mark.parametrize("version", ["3.8", "3.13"])
def test_the_smoke_test_runs_on_other_pythons(served: Job, version: str) -> None:
    python = find_pythons().get(version)
    if python is None:
        pytest.skip(f"Python {version} is not on this machine")
    rows = sample(served, "rows.csv", CSV)
    result = served.cli("--smoke-test", "--smoke-python", python, "--sample", rows)
    assert result.returncode == 0, result.stdout
    assert summary(result)["smoke_test"]["response_sha256"] == sha256(JSON_RESPONSE)
    # Syntax this Python parses and 3.8 lacks: the serving Python's import fails.
    write_tree(
        served.script,
        {"helpers.py": "def f(x):\n    match x:\n        case _:\n            return x\n"},
    )
    write_tree(served.script, {"inference.py": "import helpers\n" + SERVE})
    result = served.cli("--smoke-test", "--smoke-python", python, "--sample", rows)
    if version == "3.8":
        assert result.returncode == 1 and "SyntaxError" in error_of(result)
    else:
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--sample", "x.csv"], "--sample goes with --smoke-test"),
        (["--smoke-python", "python3"], "--smoke-python goes with --smoke-test"),
        (["--smoke-test", "--sample", "no-such.csv"], "is not a file"),
        (["--smoke-test", "--smoke-timeout", "0"], "--smoke-timeout must be more than 0"),
        (["--smoke-test", "--smoke-python", "/no/such/python"], "is not a Python that can"),
        (["--smoke-test", "--accept", "text/csv"], "--content-type and --accept go with"),
    ],
)
def test_smoke_options_that_cannot_work_are_refused_first(
    served: Job, args: list[str], said: str
) -> None:
    result = served.cli(*args)
    assert result.returncode == 1 and said in error_of(result)
    assert not served.output.exists() and served.leftovers() == []


def test_verify_smoke_tests_any_package_and_writes_nothing_beside_it(
    served: Job, tmp_path: Path
) -> None:
    assert served.cli().returncode == 0
    package = tmp_path / "copy" / "model.tar.gz"
    package.parent.mkdir()
    shutil.copy(served.package, package)
    rows = sample(served, "rows.csv", CSV)
    work = tmp_path / "verify-work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--verify", str(package), "--smoke-test", "--sample",
         str(rows), "--work-dir", str(work), "--json"],
        capture_output=True, text=True, cwd=tmp_path / "copy",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["smoke_test"]["response_sha256"] == sha256(JSON_RESPONSE)
    assert ("PASS", "smoke test") in [(f["level"], f["check"]) for f in report["findings"]]
    assert os.listdir(package.parent) == ["model.tar.gz"] and os.listdir(work) == []
    write_tree(served.script, {"inference.py": SERVE + FAILURES["model-fn-raises"][0]})
    assert served.cli().returncode == 0
    failed = run_cli("--verify", served.package, "--smoke-test")
    assert failed.returncode == 1
    (line,) = [x for x in failed.stdout.splitlines() if x.startswith("FAIL smoke test")]
    assert "FileNotFoundError: model.pkl" in line


# Agreement with sagemaker-inference's own Transformer, on the same extracted package.
TOOLKIT = """
import json, sys
from sagemaker_inference.transformer import Transformer

model_dir, sample, content_type, accept = sys.argv[1:5]

class Request:
    def get_request_properties(self):
        return {"Content-Type": content_type, "Accept": accept}

class Context:
    system_properties = {"model_dir": model_dir, "gpu_id": None}
    request_processor = [Request()]
    status = None
    def set_response_content_type(self, index, content_type):
        self.content_type = content_type
    def set_response_status(self, code, phrase):
        self.status = code

context = Context()
(body,) = Transformer().transform([{"body": open(sample, "rb").read()}], context)
if isinstance(body, str):
    body = body.encode()
print(json.dumps({"ok": context.status is None, "body": body.decode("latin-1")}))
"""

AGREEMENT = {
    "good": SERVE,
    "import-error": SERVE + FAILURES["import-error"][0],
    "model-fn-error": SERVE + FAILURES["model-fn-raises"][0],
    "request-error": SERVE + FAILURES["request-raises"][0],
    "transform-fn-beside-predict-fn": SERVE
    + "def transform_fn(model, data, content_type, accept):\n    return data\n",
    "transform-fn-with-context": SERVE.split("def input_fn")[0]
    + "def transform_fn(model, data, content_type, accept, context):\n"
    + "    return json.dumps([model['bias'], context.system_properties['model_dir'] != ''])\n",
}


@pytest.mark.parametrize("case", AGREEMENT)
def test_the_smoke_test_agrees_with_the_inference_toolkit(tmp_path: Path, case: str) -> None:
    """A package made with GNU tar: --verify's smoke test passes exactly when the toolkit's
    Transformer answers, with the same response bytes."""
    pytest.importorskip("sagemaker_inference", reason="sagemaker-inference is not installed")
    extracted = write_tree(
        tmp_path / "opt-ml" / "model", {**MODEL, "code/inference.py": AGREEMENT[case]}
    )
    package = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "-czf", str(package), "-C", str(extracted), "."], check=True)
    rows = tmp_path / "rows.csv"
    rows.write_text(CSV)
    ours = run_cli(
        "--verify",
        package,
        "--smoke-test",
        "--sample",
        rows,
        "--accept",
        "text/csv",
        "--json",
        merged=False,
    )
    smoke = json.loads(ours.stdout)["smoke_test"]
    toolkit = subprocess.run(
        [sys.executable, "-c", TOOLKIT, str(extracted), str(rows), "text/csv", "text/csv"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(extracted / "code"),
             "SAGEMAKER_PROGRAM": "inference.py", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert toolkit.returncode == 0, toolkit.stderr  # the toolkit answers an error, as a 500
    agreed = json.loads(toolkit.stdout)
    assert (smoke["status"] == "pass") == agreed["ok"], (ours.stdout, toolkit.stdout)
    if agreed["ok"]:
        assert smoke["response_sha256"] == sha256(agreed["body"].encode("latin-1"))


def test_a_real_scikit_learn_model_serves(job: Job) -> None:
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3))
    model = LogisticRegression().fit(features, features[:, 0] > 0)
    job.model.mkdir()
    joblib.dump(model, job.model / "model.joblib")
    from test_code_check import SKLEARN

    write_tree(
        job.script, {**SKLEARN, "requirements.txt": f"scikit-learn=={sklearn.__version__}\n"}
    )
    rows = "\n".join(",".join(f"{x:.6f}" for x in row) for row in features[:5])
    result = job.cli(
        "--smoke-test", "--sample", sample(job, "rows.csv", rows), "--strict", env=OFFLINE
    )
    assert result.returncode == 0, result.stdout
    said = summary(result)["smoke_test"]
    assert said["model_type"] == "sklearn.linear_model._logistic.LogisticRegression"
    expected = json.dumps({"predictions": model.predict_proba(features[:5].round(6)).tolist()})
    assert said["response_sha256"] == sha256(expected.encode())
