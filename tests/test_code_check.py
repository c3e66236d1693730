"""The code check: code/ read as the serving toolkit will run it, in the job, --dry-run and
--verify alike, with nothing but ast (the code is never imported or run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPT, Job, find_pythons, run_cli, write_tree

import mims_package

MODEL = {"model.joblib": b"\x80\x04weights"}
ENTRY = "def model_fn(model_dir):\n    return None\n"
PREDICT = "def predict_fn(data, model):\n    return data\n"


def summary(result: Any) -> dict[str, Any]:
    return json.loads(result.stdout.strip().splitlines()[-1])


def job_findings(job: Job, *extra: Any) -> tuple[int, set[tuple[str, str, str]]]:
    """The job's exit code, and its warnings: (level, check, path)."""
    result = job.cli(*extra)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout
    return result.returncode, {("WARN", w["check"], w["path"]) for w in summary(result)["warnings"]}


def verify_findings(package: Path, *extra: Any) -> tuple[int, set[tuple[str, str, str]]]:
    result = run_cli("--verify", package, "--json", *extra, merged=False)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    report = json.loads(result.stdout)
    found = {
        (f["level"], f["check"], f["member"])
        for f in report["findings"]
        if f["level"] != "PASS" and f["check"] in mims_package.CODE_CHECK_TESTS
    }
    return result.returncode, found


def gnu_tar(tree: Path, out: Path) -> Path:
    """The tree as a package made by hand with GNU tar, as users make them."""
    subprocess.run(["tar", "-czf", str(out), "-C", str(tree), "."], check=True)
    return out


def layout(job: Job, model: dict[str, Any], code: dict[str, Any]) -> Path:
    """Loose model and script dirs for the job, and the same layout as a GNU tar package."""
    write_tree(job.model, model)
    write_tree(job.script, code)
    tree = write_tree(job.tmp / "tree", model)
    write_tree(tree / "code", code)
    return gnu_tar(tree, job.tmp / "by-hand.tar.gz")


def code_findings(
    code: dict[str, str], model: dict[str, Any] | None = None, **options: Any
) -> list[Any]:
    """check_code on a package of model files and code/, in the process."""
    files = {name: len(data) for name, data in (model or MODEL).items()}
    files.update({f"code/{name}": len(text) for name, text in code.items()})
    directories = {"code"} | {
        "code/" + "/".join(name.split("/")[:depth])
        for name in code
        for depth in range(1, name.count("/") + 1)
    }
    sources = {f"code/{name}": text.encode() for name, text in code.items()}
    return mims_package.check_code(
        files,
        sorted(directories),
        sources.get,
        options.get("entry_point", "inference.py"),
        options.get("serving_python"),
    )


def levels(findings: list[Any]) -> list[tuple[str, str]]:
    return [(f.level, f.check) for f in findings]


# Each broken code dir, the finding it must draw, the same in the job, --dry-run and --verify.
BROKEN: dict[str, tuple[dict[str, str], tuple[str, str, str]]] = {
    "syntax-in-entry-point": (
        {"inference.py": "def model_fn(model_dir:\n"},
        ("FAIL", "syntax", "code/inference.py"),
    ),
    "syntax-two-imports-away": (
        {
            "inference.py": ENTRY + "import helpers\n",
            "helpers/__init__.py": "from .features import build\n",
            "helpers/features.py": "def build(:\n",
        },
        ("FAIL", "syntax", "code/helpers/features.py"),
    ),
    "syntax-in-an-unimported-file": (
        {"inference.py": ENTRY, "scratch.py": "print 'old'\n"},
        ("WARN", "syntax", "code/scratch.py"),
    ),
    "transform-with-predict": (
        {"inference.py": ENTRY + "def transform_fn(m, d, c, a): pass\n" + PREDICT},
        ("FAIL", "handlers", "code/inference.py"),
    ),
    "no-model-fn": ({"inference.py": PREDICT}, ("WARN", "handlers", "code/inference.py")),
    "missing-helper-module": (
        {"inference.py": ENTRY + "from processing import risk_table\nimport processing.impute\n",
         "processing/risk_table.py": ""},
        ("WARN", "imports", "code/inference.py"),
    ),
    "package-in-no-requirements": (
        {"inference.py": ENTRY + "import lightgbm_not_installed_here\n"},
        ("WARN", "imports", "code/inference.py"),
    ),
    "requirements-at-the-root-of-code-subdir": (
        {"inference.py": ENTRY, "src/requirements.txt": "numpy\n"},
        ("WARN", "requirements", "code/src/requirements.txt"),
    ),
    "missing-r-file": (
        {"inference.py": ENTRY, "requirements.txt": "-r base.txt\n"},
        ("FAIL", "requirements", "code/base.txt"),
    ),
    "vcs-requirement": (
        {"inference.py": ENTRY, "requirements.txt": "git+https://github.com/org/lib.git\n"},
        ("WARN", "requirements", "code/requirements.txt"),
    ),
    "model-fn-opens-a-missing-file": (
        {"inference.py": "import os\ndef model_fn(model_dir):\n"
         "    return open(os.path.join(model_dir, 'model.pkl'), 'rb')\n"},
        ("WARN", "model files", "code/inference.py"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN)
def test_each_rule_says_the_same_in_the_job_the_dry_run_and_verify(job: Job, case: str) -> None:
    code, finding = BROKEN[case]
    by_hand = layout(job, MODEL, code)
    level = finding[0]
    for extra in ((), ("--dry-run",)):
        result = job.cli(*extra)
        if level == "FAIL":
            assert result.returncode == 1 and not job.package.exists()
            (error,) = [line for line in result.stdout.splitlines() if " ERROR " in line]
            assert error.split(" ERROR ")[1].startswith("the package would not serve: ")
            assert finding[2].rpartition("/")[2] in error, error
        else:
            assert result.returncode == 0, result.stdout
            warned = {("WARN", w["check"], w["path"]) for w in summary(result)["warnings"]}
            assert warned == {finding}
    exit_code, found = verify_findings(by_hand)
    assert found == {finding}
    assert exit_code == (1 if level == "FAIL" else 0)


def test_a_syntax_error_names_the_file_line_error_and_python(job: Job) -> None:
    layout(job, MODEL, BROKEN["syntax-in-entry-point"][0])
    result = job.cli()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (
        f"code/inference.py line 1: does not parse: '(' was never closed (Python {version} "
        "parsed it); the endpoint fails to import it"
    ) in result.stdout
    assert job.leftovers() == [] and not job.package.exists()  # checked before writing


def test_a_model_archive_brings_its_own_code_checked_too(job: Job) -> None:
    """A training job's model.tar.gz with code/ inside and no script dir."""
    trained = write_tree(job.tmp / "trained", {**MODEL, "code/inference.py": "def model_fn(:\n"})
    job.model.mkdir()
    gnu_tar(trained, job.model / "model.tar.gz")
    for extra in ((), ("--dry-run",)):
        result = job.cli(*extra)
        assert result.returncode == 1 and "code/inference.py line 1" in result.stdout


SERVING_SYNTAX = {
    "walrus": ("3.7", "if (n := 1):\n    pass\n"),
    "match": ("3.9", "match 1:\n    case 1:\n        pass\n"),
    "positional-only": ("3.7", "def f(a, /):\n    pass\n"),
    "except-star": ("3.10", "try:\n    pass\nexcept* ValueError:\n    pass\n"),
}


@pytest.mark.parametrize("case", SERVING_SYNTAX)
def test_serving_python_parses_with_its_grammar(job: Job, case: str) -> None:
    serving, syntax = SERVING_SYNTAX[case]
    layout(job, MODEL, {"inference.py": ENTRY + syntax})
    assert job.cli().returncode == 0, "this Python accepts it"
    before = job.package.read_bytes()
    result = job.cli("--serving-python", serving)
    assert result.returncode == 1 and job.package.read_bytes() == before
    assert f"uses syntax that Python {serving} lacks" in result.stdout
    assert "code/inference.py line" in result.stdout
    newer = job.cli("--serving-python", "3.11" if case == "except-star" else "3.10")
    assert newer.returncode == 0, newer.stdout


@pytest.mark.parametrize(
    ("version", "serving", "said", "level"),
    [
        ("3.8", (3, 10), "is newer than this Python (3.8), which parses the code", "WARN"),
        ("3.7", (3, 6), "Python 3.7, which runs this check, cannot parse with another", "FAIL"),
    ],
)
def test_a_grammar_this_python_cannot_apply_is_said_and_only_warns(
    version: str, serving: tuple[int, int], said: str, level: str
) -> None:
    """Run on 3.8, the check cannot tell a 3.10 match statement from an error: it warns.
    3.7's ast has no feature_version at all: it says so (and neither 3.6 nor 3.7 has
    match, so that fails)."""
    python = find_pythons().get(version)
    if python is None:
        pytest.skip(f"Python {version} is not on this machine")
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import mims_package as m\n"
        "for f in m.check_code({'m.bin': 1, 'code/inference.py': 1}, ['code'],\n"
        "        lambda n: b'match 1:\\n    case 1:\\n        pass\\n', 'inference.py',\n"
        f"        {serving!r}):\n"
        "    print(f.level, f.check, f.member, f.message)\n"
    )
    found = subprocess.run(
        [python, "-c", program, str(SCRIPT.parent)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split(" ")[:2] for line in found] == [["WARN", "syntax"], [level, "syntax"]]
    assert said in found[0]
    assert found[1].startswith(f"{level} syntax code/inference.py code/inference.py line 1: ")


def test_serving_python_must_be_a_python_3_version(job: Job) -> None:
    layout(job, MODEL, {"inference.py": ENTRY})
    for value in ("2.7", "3", "310", "3.x"):
        result = job.cli("--serving-python", value)
        assert result.returncode == 1 and "is not a Python 3 version" in result.stdout


# The toolkit calls each handler with these arguments, or with a context after them.
HANDLERS = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4}


def handler(name: str, parameters: str) -> dict[str, str]:
    model_fn = "" if name == "model_fn" else ENTRY
    return {"inference.py": f"{model_fn}def {name}({parameters}):\n    pass\n"}


@pytest.mark.parametrize("name", HANDLERS)
def test_each_handler_takes_its_arguments_or_one_more(name: str) -> None:
    given = HANDLERS[name]
    names = [f"a{i}" for i in range(given + 2)]
    for count in (given, given + 1):
        assert levels(code_findings(handler(name, ", ".join(names[:count])))) == []
    for count in (given - 1, given + 2):
        found = code_findings(handler(name, ", ".join(names[:count])))
        assert levels(found) == [("FAIL", "handlers")], (name, count)
        assert f"{name} takes {count} parameter" in found[0].message


@pytest.mark.parametrize(
    ("parameters", "fails"),
    [
        ("model_dir, context=None", False),  # defaults count, as inspect.signature counts them
        ("model_dir, context=None, extra=None", True),
        ("*args", False),  # one parameter: called with model_dir alone
        ("model_dir, *, context", True),  # two parameters, but the second is keyword-only
        ("model_dir, *, context=None", True),  # counted: so the toolkit passes two
        ("model_dir, **options", True),  # a context passed positionally cannot bind to **
    ],
)
def test_parameters_count_as_inspect_signature_counts_them(parameters: str, fails: bool) -> None:
    found = code_findings(handler("model_fn", parameters))
    assert levels(found) == ([("FAIL", "handlers")] if fails else [])


@pytest.mark.parametrize("name", ["input_fn", "predict_fn", "output_fn"])
def test_transform_fn_beside_any_request_handler_fails(name: str) -> None:
    code = ENTRY + "def transform_fn(m, d, c, a): pass\n" + f"def {name}(a, b): pass\n"
    found = code_findings({"inference.py": code})
    assert levels(found) == [("FAIL", "handlers")]
    assert f"defines transform_fn and {name}:" in found[0].message
    assert code_findings({"inference.py": ENTRY + "def transform_fn(m, d, c, a): pass\n"}) == []


def test_handlers_bound_by_import_or_assignment_count() -> None:
    imported = {"inference.py": "from handlers import model_fn\n", "handlers.py": ENTRY}
    assert levels(code_findings(imported)) == []
    assert levels(code_findings({"inference.py": "model_fn = lambda d, c, e: d\n"})) == [
        ("FAIL", "handlers")
    ]
    aliased = {"inference.py": "from handlers import load as model_fn\n", "handlers.py": ""}
    assert levels(code_findings(aliased)) == []


def test_a_star_import_makes_the_names_unknown() -> None:
    starred = {"inference.py": "from handlers import *\n", "handlers.py": ENTRY}
    assert levels(code_findings(starred)) == []  # no "defines no model_fn"


def test_imports_that_resolve_draw_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mims_package, "_importable_here", lambda top: False)
    code = {
        "inference.py": ENTRY
        + "import os, json, collections.abc\n"
        + "from pkg import helpers\nfrom pkg.sub import deep\nimport fast\n"
        + "try:\n    import ujson\nexcept ImportError:\n    ujson = None\n"
        + "try:\n    import orjson\nexcept (ValueError, ModuleNotFoundError):\n    pass\n"
        + "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mypy_stubs\n",
        "pkg/__init__.py": "from . import helpers\nfrom .sub.deep import x\n",
        "pkg/helpers.py": "",
        "pkg/sub/deep.py": "from ..helpers import y\nx = 1\n",
        "fast.cpython-311-x86_64-linux-gnu.so": "",
    }
    assert levels(code_findings(code)) == []


def test_a_relative_import_in_the_entry_point_cannot_resolve() -> None:
    found = code_findings({"inference.py": ENTRY + "from . import helpers\n", "helpers.py": ""})
    assert levels(found) == [("WARN", "imports")]
    assert "a relative import in a top-level module" in found[0].message


REQUIRED_AS = {
    "scikit-learn": "sklearn",
    "Pillow": "PIL",
    "PyYAML": "yaml",
    "opencv-python-headless": "cv2",
    "beautifulsoup4": "bs4",
    "python-dateutil": "dateutil",
    "protobuf": "google.protobuf",
    "xgboost": "xgboost",
    "torch": "torch",
    "sentence-transformers": "sentence_transformers",
}


@pytest.mark.parametrize("distribution", REQUIRED_AS)
def test_requirements_provide_their_import_names(
    distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mims_package, "_importable_here", lambda top: False)
    code = {"inference.py": ENTRY + f"import {REQUIRED_AS[distribution]}\n"}
    assert levels(code_findings(code)) == [("WARN", "imports")]
    code["requirements.txt"] = f"{distribution}>=1.0 ; python_version >= '3'\n"
    assert levels(code_findings(code)) == []


def test_what_this_python_can_import_resolves() -> None:
    found = code_findings({"inference.py": ENTRY + "import numpy\nimport not_a_module_anywhere\n"})
    assert len(found) == 1 and "not_a_module_anywhere (line 4)" in found[0].message
    assert "numpy" not in found[0].message


def test_standard_modules_the_serving_python_lacks() -> None:
    code = {"inference.py": ENTRY + "import imp\nimport tomllib\n"}
    (old,) = code_findings(code, serving_python=(3, 8))
    assert "tomllib (line 4; in the standard library only from Python 3.11)" in old.message
    assert "imp (line" not in old.message
    (new,) = [f for f in code_findings(code, serving_python=(3, 12)) if f.check == "imports"]
    assert "imp (line 3; removed from the standard library in Python 3.12)" in new.message
    assert "tomllib (line" not in new.message


def test_an_import_anywhere_in_a_served_module_counts_and_dynamic_imports_widen() -> None:
    inside = {"inference.py": "def model_fn(model_dir):\n    import lightgbm_x\n"}
    assert levels(code_findings(inside)) == [("WARN", "imports")]
    unserved = {"inference.py": ENTRY, "tools/offline.py": "import lightgbm_x\n"}
    assert levels(code_findings(unserved)) == []  # nothing serves it
    plugins = {
        "inference.py": ENTRY
        + "import sys, os\nsys.path.insert(0, os.path.dirname(__file__) + '/lib')\n"
        + "import vendored\n",
        "lib/vendored.py": "",
    }
    assert levels(code_findings(plugins)) == []


NEEDS = {
    "-e .": "an editable install",
    "--extra-index-url https://pypi.example.com/simple": "another index",
    "-i https://pypi.example.com/simple": "another index",
    "git+https://github.com/org/lib.git@v1": "a VCS checkout",
    "lib @ git+ssh://git@github.com/org/lib.git": "a VCS checkout",
    "file:///opt/wheels/lib.whl": "a local path",
    "./wheels/lib-1.0-py3-none-any.whl": "a local path",
    "../lib": "a local path",
    "lib @ https://example.com/lib-1.0.tar.gz": "a direct URL",
    "https://example.com/lib-1.0.tar.gz": "a direct URL",
}


@pytest.mark.parametrize("line", NEEDS)
def test_requirement_lines_that_need_more_than_the_index_warn(line: str) -> None:
    found = code_findings({"inference.py": ENTRY, "requirements.txt": f"numpy\n{line}\n"})
    assert levels(found) == [("WARN", "requirements")]
    assert f"line 2: {line!r} needs {NEEDS[line]}" in found[0].message


@pytest.mark.parametrize("line", ["numpy==2.0", "torch>=2 --hash=sha256:abc", "--pre", "# x"])
def test_plain_requirement_lines_pass(line: str) -> None:
    assert code_findings({"inference.py": ENTRY, "requirements.txt": line + "\n"}) == []


@pytest.mark.parametrize("option", ["-r", "-c", "--requirement", "--constraint"])
def test_included_requirement_files_must_be_in_code(option: str) -> None:
    code = {"inference.py": ENTRY, "requirements.txt": f"{option} base.txt\n"}
    found = code_findings(code)
    assert levels(found) == [("FAIL", "requirements")] and found[0].member == "code/base.txt"
    code["base.txt"] = "numpy\n"
    assert code_findings(code) == []


def test_an_included_file_provides_names_and_is_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mims_package, "_importable_here", lambda top: False)
    code = {
        "inference.py": ENTRY + "import yaml\n",
        "requirements.txt": "-r requirements/base.txt\n",
        "requirements/base.txt": "-r base.txt\n-r ../requirements.txt\npyyaml\n",
    }
    assert code_findings(code) == []


def test_a_requirements_file_outside_code_warns_only_when_code_has_none() -> None:
    model = {**MODEL, "requirements.txt": b"numpy\n"}
    found = code_findings({"inference.py": ENTRY}, model)
    assert [(f.level, f.member) for f in found] == [("WARN", "requirements.txt")]
    assert code_findings({"inference.py": ENTRY, "requirements.txt": "numpy\n"}, model) == []


@pytest.mark.parametrize(
    "expression",
    [
        "os.path.join(model_dir, 'model.pkl')",
        "os.path.join(model_dir, 'sub', 'model.pkl')",
        "Path(model_dir) / 'model.pkl'",
        "Path(model_dir).joinpath('model.pkl')",
        "f'{model_dir}/model.pkl'",
        "model_dir + '/model.pkl'",
        "join(model_dir, './model.pkl')",
    ],
)
def test_a_file_that_model_fn_opens_must_be_in_the_package(expression: str) -> None:
    entry = (
        "import os\nfrom os.path import join\nfrom pathlib import Path\n"
        f"def model_fn(model_dir):\n    return {expression}\n"
    )
    found = code_findings({"inference.py": entry})
    assert levels(found) == [("WARN", "model files")]
    assert "which the package does not hold (at its root: model.joblib)" in found[0].message
    held = {**MODEL, "model.pkl": b"x", "sub/model.pkl": b"x"}
    assert code_findings({"inference.py": entry}, held) == []


def test_names_that_are_not_literal_paths_are_left_alone() -> None:
    entry = (
        "import glob, os\ndef model_fn(model_dir):\n    name = 'x'\n"
        "    return [os.path.join(model_dir, name), glob.glob(os.path.join(model_dir, '*.pt'))]\n"
    )
    assert code_findings({"inference.py": entry}) == []


def test_empty_and_lfs_pointer_model_files_warn_in_the_job_dry_run_and_verify(job: Job) -> None:
    pointer = (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        b"size 12345\n"
    )
    model = {"model.pt": pointer, "scaler.pkl": b"", "_SUCCESS": b"", **MODEL}
    by_hand = layout(job, model, {"inference.py": ENTRY})
    expected = {("WARN", "model files", "model.pt"), ("WARN", "model files", "scaler.pkl")}
    for extra in ((), ("--dry-run",)):
        assert job_findings(job, *extra) == (0, expected)
    assert verify_findings(by_hand) == (0, expected)
    # A model archive, read without extracting it, sees the pointer too.
    archive_job = Job(job.tmp, job.tmp / "archived", job.script, job.tmp / "out2", job.work)
    archive_job.model.mkdir()
    gnu_tar(write_tree(job.tmp / "trained", model), archive_job.model / "model.tar.gz")
    assert job_findings(archive_job, "--dry-run") == (0, expected)
    assert job_findings(archive_job) == (0, expected)


def test_strict_fails_on_any_warning_and_publishes_nothing(job: Job) -> None:
    by_hand = layout(job, MODEL, {"inference.py": PREDICT})
    assert job.cli().returncode == 0
    before = job.package.read_bytes()
    for extra in (("--strict",), ("--strict", "--dry-run")):
        result = job.cli(*extra)
        assert result.returncode == 1, result.stdout
        (error,) = [line for line in result.stdout.splitlines() if " ERROR " in line]
        assert (
            "--strict: 1 warning before writing, the first: code/inference.py defines no " in error
        )
        assert job.package.read_bytes() == before and job.leftovers() == []
    assert verify_findings(by_hand)[0] == 0
    assert verify_findings(by_hand, "--strict")[0] == 1


@pytest.mark.parametrize(("size", "warned"), [(1023, True), (1024, False)])
def test_a_git_lfs_pointer_is_a_file_under_1_kib(size: int, warned: bool) -> None:
    """LFS_POINTER_MAX: pointers are about 130 bytes; a 1 KiB file that starts like one is
    something else (a document about LFS, say), not warned."""
    head = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"
    data = head + b"#" * (size - len(head))
    assert (mims_package._lfs_pointer("model.bin", data) is not None) is warned
    assert (mims_package._verdict("model.bin", None, data, size) is not None) is warned


def test_strict_counts_warnings_found_while_writing(job: Job) -> None:
    """An LFS pointer is seen as the file is written: --strict publishes nothing then."""
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"
    layout(job, {"model.bin": pointer}, {"inference.py": ENTRY})
    result = job.cli("--strict")
    assert result.returncode == 1 and "--strict: 1 warning before publishing" in result.stdout
    assert not job.package.exists() and job.leftovers() == []


# Realistic, correct code dirs: none may draw a warning (no false alarms).
SKLEARN = {
    "inference.py": '''"""scikit-learn model served from model.joblib."""
import io
import json
import os

import joblib
import numpy as np

from preprocessing import transform

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(request_body, content_type):
    if content_type == "text/csv":
        return np.loadtxt(io.StringIO(request_body), delimiter=",", ndmin=2)
    if content_type == "application/json":
        return np.asarray(json.loads(request_body)["instances"])
    raise ValueError(f"unsupported content type {content_type}")

def predict_fn(data, model):
    return model.predict_proba(transform(data))

def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction.tolist()}), "application/json"
''',
    "preprocessing/__init__.py": "from .features import transform\n",
    "preprocessing/features.py": (
        "from ._scaling import scale\n\ndef transform(x):\n    return scale(x)\n"
    ),
    "preprocessing/_scaling.py": (
        "import numpy as np\n\ndef scale(x):\n    return np.asarray(x, dtype=float)\n"
    ),
    "requirements.txt": "scikit-learn==1.9.1\njoblib>=1.3\n",
}
PYTORCH = {
    "inference.py": """import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer

from model_def import Classifier

try:
    import orjson as fast_json
except ImportError:
    fast_json = json

logger = logging.getLogger(__name__)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

def model_fn(model_dir, context=None):
    model = Classifier()
    model.load_state_dict(torch.load(Path(model_dir) / "model.pth", map_location=DEVICE))
    tokenizer = AutoTokenizer.from_pretrained(str(Path(model_dir) / "tokenizer"))
    return model.eval(), tokenizer

def input_fn(body, content_type, context):
    return fast_json.loads(body)["inputs"]

def predict_fn(data, model_and_tokenizer, context):
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        return model(**tokenizer(data, return_tensors="pt", padding=True)).tolist()

def output_fn(prediction, accept, context):
    return json.dumps(prediction), accept
""",
    "model_def.py": "from torch import nn\n\nclass Classifier(nn.Module):\n    pass\n",
    "requirements.txt": "# the image has torch\ntransformers==4.46.0\ntorch\n",
}
PYTORCH_MODEL = {"model.pth": b"\x80\x02weights", "tokenizer/tokenizer.json": b"{}"}


@pytest.mark.parametrize("kind", ["sklearn", "xgboost-example", "pytorch"])
def test_realistic_code_dirs_draw_no_warning(job: Job, kind: str) -> None:
    from conftest import EXAMPLE

    if kind == "xgboost-example":
        model, code = None, None
        extra: tuple[Any, ...] = (
            "--model-dir", EXAMPLE / "model", "--script-dir", EXAMPLE / "script",
            "--calibration-dir", EXAMPLE / "calibration",
        )  # fmt: skip
    else:
        model, code = (MODEL, SKLEARN) if kind == "sklearn" else (PYTORCH_MODEL, PYTORCH)
        extra = ()
        by_hand = layout(job, model, code)
        assert verify_findings(by_hand, "--strict") == (0, set())
    result = job.cli(*extra, "--strict", "--serving-python", "3.9")
    assert result.returncode == 0, result.stdout
    assert summary(result)["warnings"] == []


def test_a_large_code_dir_is_parsed_in_worker_processes_with_the_same_findings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = {f"vendor/m{i}.py": "import json\nx = 1\n" * 20 for i in range(40)}
    code["vendor/broken.py"] = "def f(:\n"
    code["vendor/__init__.py"] = "from . import m0, m1\n"
    code["inference.py"] = ENTRY + "import vendor\nimport not_there_x\nfrom vendor import broken\n"
    serial = code_findings(code)
    assert levels(serial) == [("FAIL", "syntax"), ("WARN", "imports")]
    workers: list[int] = []
    in_workers = mims_package._parse_in_workers

    def counted(*args: Any) -> Any:
        parsed = in_workers(*args)
        workers.append(len(parsed))
        return parsed

    monkeypatch.setattr(mims_package, "_parse_in_workers", counted)
    monkeypatch.setattr(mims_package, "PARALLEL_PARSE_BYTES", 0)
    monkeypatch.setattr(mims_package, "available_cpus", lambda: 2)
    assert code_findings(code) == serial
    assert workers == [len(code)]  # every file went through the pool
