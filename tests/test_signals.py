"""Stopping the job (SIGTERM, SIGINT) mid-run leaves nothing behind and keeps an older package."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SCRIPT, Job, make_archive, tar_member, write_tree

BIG = 48 << 20


STARTS = {"extract": "INFO model archive: ", "compress": "INFO compress: level"}


def stop_during(job: Job, phase: str, signum: int) -> tuple[int, str]:
    """Start the job, send signum once it logs the line before that phase; return (code, log)."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, job.args("--compression-level", "9"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    log = []
    for line in process.stdout:
        log.append(line)
        if STARTS[phase] in line:
            time.sleep(0.1)
            process.send_signal(signum)
            break
    log.extend(process.stdout)
    return process.wait(timeout=60), "".join(log)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_during_compression_cleans_up(job: Job, signum: int, code: int) -> None:
    write_tree(job.model, {"weights.bin": os.urandom(BIG)})
    write_tree(job.output, {"model.tar.gz": b"older package"})
    exit_code, log = stop_during(job, "compress", signum)
    assert exit_code == code, log
    assert "read back in" not in log  # the verify phase never finished
    assert f"stopped by {signal.Signals(signum).name}" in log
    assert "Traceback" not in log
    assert job.package.read_bytes() == b"older package"
    assert job.leftovers() == []


def test_sigterm_during_extraction_cleans_up(job: Job) -> None:
    members = [tar_member(f"shard{i // 1000}/part{i}.bin", b"w" * 64) for i in range(30_000)]
    make_archive(job.model / "model.tar.gz", members, compression="")
    exit_code, log = stop_during(job, "extract", signal.SIGTERM)
    assert exit_code == 143, log
    assert "compress: level" not in log
    assert not job.package.exists()
    assert job.leftovers() == []
