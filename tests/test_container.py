"""The container contract, run for real without a Docker engine.

The script runs exactly as the Dockerfile's ENTRYPOINT says, with no argument, in
a private mount namespace where /opt/ml is a fresh tmpfs laid out as SageMaker
Processing lays it out: read-only inputs, a bind-mounted output, the job config
and /opt/ml/output. Nothing of it is visible on the host, before or after.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import (
    EXAMPLE,
    ROOT,
    SCRIPT,
    files_of,
    in_namespace,
    needs_unshare,
    unshare_problem,
    write_tree,
)

LAYOUT = r"""
set -eu
tmp="$1"; script="$2"; shift 2
# Cover /opt with a tmpfs only this namespace sees, keeping the host's /opt entries in it.
mkdir "$tmp/host-opt"
mount --bind /opt "$tmp/host-opt"
mount -t tmpfs -o size=16m tmpfs /opt
for entry in "$tmp"/host-opt/*; do
  [ -e "$entry" ] || continue
  if [ -d "$entry" ]; then mkdir "/opt/${entry##*/}"; else touch "/opt/${entry##*/}"; fi
  mount --bind "$entry" "/opt/${entry##*/}"
done
[ -d /opt/ml ] || mkdir /opt/ml  # the host's own /opt/ml, if it has one, is covered
mount -t tmpfs -o size=256m tmpfs /opt/ml
mkdir -p /opt/ml/processing/input/model /opt/ml/processing/input/script \
         /opt/ml/processing/output /opt/ml/config /opt/ml/output
mount --bind -o ro "$tmp/model" /opt/ml/processing/input/model
mount --bind -o ro "$tmp/script" /opt/ml/processing/input/script
mount --bind "$tmp/output" /opt/ml/processing/output
if [ -d "$tmp/calibration" ]; then
  mkdir /opt/ml/processing/input/calibration
  mount --bind -o ro "$tmp/calibration" /opt/ml/processing/input/calibration
fi
if touch /opt/ml/processing/input/model/probe 2>/dev/null; then
  echo "inputs are writable"; exit 99
fi
echo '{"ProcessingJobName": "mims-package-test"}' > /opt/ml/config/processingjobconfig.json
mkdir -p "$(dirname "$script")"
cp "$tmp/mims_package.py" "$script"
set +e
cd /
"$@"
code=$?
if [ -f /opt/ml/output/message ]; then cp /opt/ml/output/message "$tmp/message"; fi
ls -A /opt/ml/processing > "$tmp/processing-dir"
exit $code
"""


def entrypoint() -> list[str]:
    """The Dockerfile's exec-form ENTRYPOINT."""
    found = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert found, "the Dockerfile has no exec-form ENTRYPOINT"
    command = json.loads(found.group(1))
    assert command[0] == "python3" and command[1].endswith("/mims_package.py")
    return command


# As on a SageMaker notebook instance or in a processing image: /opt/ml already there, with
# something in it, on a /opt of this namespace's own.
HOST_WITH_OPT_ML = """
mount -t tmpfs -o size=16m tmpfs /opt
mkdir -p /opt/ml/processing/input /opt/ml/code
echo host > /opt/ml/code/host-file
"""


def run_container(tmp: Path, host_has_opt_ml: bool = False) -> tuple[int, str]:
    """Run the ENTRYPOINT with no argument in the SageMaker layout; return (exit code, log)."""
    opt_ml_existed = Path("/opt/ml").exists()
    (tmp / "mims_package.py").write_bytes(SCRIPT.read_bytes())
    command = entrypoint()
    layout = (HOST_WITH_OPT_ML if host_has_opt_ml else "") + LAYOUT
    result = in_namespace(layout, tmp, command[1], *command)
    assert Path("/opt/ml").exists() == opt_ml_existed, "/opt/ml leaked onto the host"
    assert result.returncode != 99, result.stdout
    return result.returncode, result.stdout + result.stderr


@needs_unshare
@pytest.mark.parametrize("host_has_opt_ml", [False, True], ids=["no-opt-ml", "opt-ml-on-host"])
def test_the_container_packages_the_example(tmp_path: Path, host_has_opt_ml: bool) -> None:
    write_tree(
        tmp_path / "model", {"model.tar.gz": (EXAMPLE / "model" / "model.tar.gz").read_bytes()}
    )
    write_tree(tmp_path / "script", {})
    for path in (EXAMPLE / "script").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            write_tree(
                tmp_path / "script", {str(path.relative_to(EXAMPLE / "script")): path.read_bytes()}
            )
    shutil.copytree(EXAMPLE / "calibration", tmp_path / "calibration")
    (tmp_path / "output").mkdir()
    code, log = run_container(tmp_path, host_has_opt_ml)
    assert code == 0, log
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["model.tar.gz"]
    names = set(files_of(tmp_path / "output" / "model.tar.gz"))
    assert {
        "xgboost_model.bst",
        "hyperparameters.json",
        "code/inference.py",
        "code/processing/risk_table.py",
        "calibration/calibration_model.pkl",
        "calibration/calibration_summary.json",
    } <= names
    assert "calibration_model /opt/ml/processing/input/calibration" in log
    assert not (tmp_path / "message").exists()
    assert (tmp_path / "processing-dir").read_text().split() == ["input", "output"]


@needs_unshare
def test_the_container_reports_a_corrupt_input(tmp_path: Path) -> None:
    archive = (EXAMPLE / "model" / "model.tar.gz").read_bytes()
    write_tree(tmp_path / "model", {"model.tar.gz": archive[: len(archive) // 2]})
    write_tree(tmp_path / "script", {"inference.py": "x"})
    (tmp_path / "output").mkdir()
    code, log = run_container(tmp_path)
    assert code == 1, log
    message = (tmp_path / "message").read_text(encoding="utf-8")
    assert (
        "model archive /opt/ml/processing/input/model/model.tar.gz is corrupt or truncated"
        in message
    )
    assert len(message.encode()) <= 1024
    assert list((tmp_path / "output").iterdir()) == []
    assert (tmp_path / "processing-dir").read_text().split() == ["input", "output"]


def test_without_unshare_on_path_the_namespace_tests_skip_saying_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert unshare_problem() == "unshare is not on PATH (util-linux)"
