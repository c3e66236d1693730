"""SageMaker SDK v3 for the README's snippets: its virtualenv, and a stubbed AWS to run them in.

SDK v3 needs Python 3.10 or later and cannot share an environment with v2, so it gets a
virtualenv of its own, built from tests/requirements-sdk-v3.txt and cached under
~/.cache/mims-package (one per requirements file's content):

    python3 tests/sdk_v3.py --build        # build it if missing; print its python

Run with that virtualenv's python, requests as JSON on standard input ({name: request})
and a result path, this file is the driver. It imports the SDK once and runs the requests
in order, each with a stub of its own: it executes a request's code blocks in one fresh
namespace (the test's setup, the README's snippets, the test's own lines), with every AWS
call answered by the stub and recorded, the network off and the SDK's polling not
sleeping, and writes {name: {"calls": [[service, operation, params], ...], "results":
{...}}} to the result path, the results being the namespace's values of the names asked
for.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-sdk-v3.txt"
ACCOUNT = "111122223333"
REGION = "us-east-1"


def venv_dir() -> Path:
    """Where the virtualenv for the current requirements lives."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mims-package" / f"sdk-v3-{digest}"


def build() -> Path:
    """Build the virtualenv if it is not there yet (one builder at a time); return its python."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    if sys.version_info < (3, 10):
        raise RuntimeError("SageMaker SDK v3 needs Python 3.10 or later for its virtualenv")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / "ready").exists():
            _run(sys.executable, "-m", "venv", "--clear", str(venv))
            _run(str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS))
            (venv / "ready").write_text("")
    return python


def _run(*command: str) -> None:
    """Run a build command quietly; on failure raise with the end of what it said."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{said}")


class Stub:
    """Answers every AWS API call plausibly, and records it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.created: dict[str, dict[str, Any]] = {}

    def __call__(self, client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        service = client.meta.service_model.service_name
        self.calls.append((service, operation, params))
        return self.answer(service, operation, params)

    def answer(self, service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        if operation == "GetCallerIdentity":
            return {"Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:role/mims"}
        if operation == "ListBuckets":
            return {"Buckets": [{"Name": f"sagemaker-{REGION}-{ACCOUNT}", "CreationDate": now}]}
        if operation == "GetRole":
            allow = {"Effect": "Allow", "Action": "sts:AssumeRole"}
            trust = {"Statement": [{**allow, "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
            return {"Role": {"RoleName": "mims", "AssumeRolePolicyDocument": trust}}
        if operation == "SimulatePrincipalPolicy":
            return {"EvaluationResults": [], "IsTruncated": False}
        if service == "sagemaker" and operation.startswith("Create"):
            kind = operation[len("Create") :]
            arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind.lower()}/mims"
            self.created[kind] = {**params, f"{kind}Arn": arn}
            return {f"{kind}Arn": arn}
        if service == "sagemaker" and operation.startswith("Describe"):
            kind = operation[len("Describe") :]
            times = {"CreationTime": now, "LastModifiedTime": now}
            return {**self.created.get(kind, {}), **times, f"{kind}Status": "InService"}
        return {}


def refuse_network(*_: Any, **__: Any) -> None:
    raise OSError("the network is off in this test")


def run(requests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Execute each request's blocks under a stub of its own; its calls and the results asked."""
    os.environ.update(
        AWS_DEFAULT_REGION=REGION, AWS_ACCESS_KEY_ID="AKIDSTUB", AWS_SECRET_ACCESS_KEY="stub"
    )
    socket.socket.connect = refuse_network  # type: ignore[method-assign]
    socket.getaddrinfo = refuse_network  # type: ignore[assignment]
    time.sleep = lambda seconds: None  # the endpoint is InService at the first look
    import botocore.client

    ran = {}
    for name, request in requests.items():
        stub = Stub()
        botocore.client.BaseClient._make_api_call = (  # type: ignore[method-assign]
            lambda client, operation, params, stub=stub: stub(client, operation, params)
        )
        names: dict[str, Any] = dict(request.get("names", {}))
        for number, block in enumerate(request["blocks"]):
            exec(compile(block, f"<{name} block {number}>", "exec"), names)
        results = {key: names[key] for key in request.get("results", [])}
        ran[name] = {"calls": stub.calls, "results": results}
    return ran


if __name__ == "__main__":
    if sys.argv[1:] == ["--build"]:
        print(build())
    else:
        result = run(json.load(sys.stdin))
        Path(sys.argv[1]).write_text(json.dumps(result, default=str))
