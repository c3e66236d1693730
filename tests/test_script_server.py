"""run_cli's fork server gives what a new Python gives: exit status, streams, package bytes.

Most tests run the script through tests/script_server.py; these compare it with
`python mims_package.pyc ARGS` started anew, on every way a run can end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Job, cli_environ, compiled_script, run_cli, script_server, write_tree


def run_new_python(*args: Any, merged: bool = True) -> subprocess.CompletedProcess[str]:
    """The script in a new Python: what a forked run stands for."""
    return subprocess.run(
        [sys.executable, compiled_script(), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        env=cli_environ(),
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],  # exit 0 from argparse
        ["--print-contract"],  # exit 0 from the script
        ["--no-such-option"],  # exit 2, usage on standard error
        ["--verify", "/nonexistent/model.tar.gz"],  # exit 2, one ERROR line
    ],
    ids=["help", "contract", "usage", "error"],
)
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "split"])
def test_a_forked_run_ends_as_a_new_python_does(args: list[str], merged: bool) -> None:
    forked, new = run_cli(*args, merged=merged), run_new_python(*args, merged=merged)
    assert forked.returncode == new.returncode
    assert untimed(forked.stdout) == untimed(new.stdout)
    assert untimed(forked.stderr) == untimed(new.stderr or "")


def untimed(log: str) -> str:
    """The log without its lines' timestamps."""
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", log, flags=re.M)


def test_a_forked_run_packages_the_same_bytes(job: Job, tmp_path: Path) -> None:
    write_tree(job.model, {"weights.bin": os.urandom(1 << 20), "config.json": "{}"})
    write_tree(job.script, {"inference.py": "def model_fn(d):\n    return d\n"})
    forked = job.cli()
    assert forked.returncode == 0, forked.stdout
    new_output = tmp_path / "new"
    new = run_new_python(*job.args()[:4], "--output-dir", new_output, "--work-dir", job.work)
    assert new.returncode == 0, new.stdout
    assert job.package.read_bytes() == (new_output / "model.tar.gz").read_bytes()


def test_a_failed_run_exits_1_with_the_same_error(job: Job) -> None:
    forked, new = job.cli(), run_new_python(*job.args())  # no model dir
    assert forked.returncode == new.returncode == 1
    errors = [
        [line for line in untimed(r.stdout).splitlines() if line.startswith("ERROR ")]
        for r in (forked, new)
    ]
    assert errors[0] == errors[1] and len(errors[0]) == 1


def test_what_python_reads_as_it_starts_takes_a_new_python() -> None:
    server = script_server()
    assert server.can_run(dict(os.environ))
    assert not server.can_run({**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert not server.can_run({**os.environ, "LC_ALL": "C"})
    # Only a Python that starts with this set writes its import times to standard error.
    result = run_cli("--print-contract", env={"PYTHONPROFILEIMPORTTIME": "1"}, merged=False)
    assert result.returncode == 0 and "import time:" in result.stderr
    assert result.stdout == run_new_python("--print-contract", merged=False).stdout
