#!/usr/bin/env python3
"""Benchmark mims_package.py against gzip, pigz and the naive tarfile baseline.

    python3 tests/benchmark.py [--size-mb 300,1000] [--runs 3] [--threads N] [--model text]
    python3 tests/benchmark.py --types all [--size-mb 64]     (or --types float32,json,...)
    python3 tests/benchmark.py --files 10000,50000,200000       (small-file trees)
    python3 tests/benchmark.py --code-check 2000                 (the code check's cost)
    python3 tests/benchmark.py --memory                          (peak memory, hostile inputs)

It measures; it asserts nothing, and pytest does not collect it. For each size
it generates a synthetic model with a fixed seed, as a directory and as a
model.tar.gz made with gzip -1, then runs every contender in turn, alternating
within each round, and reports the median of the rounds:

* ours: the whole job through the CLI, verification included;
* tar -cf - | gzip -6, and tar -cf - | pigz -6 -p N (when pigz is installed);
* for the tar input: tar -xzf into a staging dir, then tar | pigz;
* naive: extract or copy into a staging dir, then tarfile.open(..., "w:gz") at
  its default level, as the original script did;
* ours --no-adaptive and tar | pigz -H (Huffman codes only), so that adaptive
  coding is seen against each single setting;
* ours --verify on our package, against gzip -t on the same file.

With --model text, the model is text-heavy instead: XGBoost-style tree dumps
and a CSV of features, half each.

With --types, it instead makes one file of each kind of model data (float32,
float16, bf16, int8, sparse float32, JSON, CSV, an XGBoost model, a pickled
pandas frame) and reports, per kind, the size and time of adaptive coding, of
coding at the level, of pigz -6 and of pigz -H. Our job's phases log their
CPU-seconds, which the mix table reports per phase.

With --files, it makes trees of N small files (100 B to 100 KB, source-like
text, a few directory levels, like a vendored site-packages), loose and as a
model.tar.gz, and reports each command's time, peak RSS and microseconds per
file, and our job's phases in microseconds per file.

With --code-check N, code/ holds a vendored library: the first N .py files (tests
left out) of this Python's site-packages, in sorted order. It reports the code check's
phase, on every CPU and on one (taskset), and the whole job's time beside the same job
with only inference.py in code/.

With --memory, it measures the peak RSS of the job, --dry-run, --verify and --verify
--json on inputs made to cost memory: 200,000 files with short names, 32,000 members with
names of 1,000 characters (just under the bound on names), and a package of 100,000
symlinks with 3,000-character targets; each beside the goal of 100 MB + 1 KB a member.

Peak RSS is measured on each process of a command by GNU time (/usr/bin/time
-f %M, which forks it from a small process), and summed over a pipeline's
processes: wait4 on a child forked from this Python would count this
process's memory before exec. Needs numpy and GNU time (apt-get install time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "mims_package.py"
CODE = ROOT / "tests" / "fixtures" / "example" / "script"
SEED = 20261126
BLOCK = 16_000_000
GNU_TIME = "/usr/bin/time"

NAIVE = """
import shutil, sys, tarfile, tempfile
from pathlib import Path
source, output, work = sys.argv[1:4]
staging = Path(tempfile.mkdtemp(dir=work))
if source.endswith(".tar.gz"):
    with tarfile.open(source, "r:*") as tar:
        tar.extractall(staging, filter="data")
else:
    shutil.copytree(source, staging, dirs_exist_ok=True)
with tarfile.open(output, "w:gz") as tar:
    for item in sorted(staging.rglob("*")):
        if item.is_file():
            tar.add(item, arcname=item.relative_to(staging))
shutil.rmtree(staging)
"""


def write_array(path: Path, size: int, make: Callable[[int], Any]) -> None:
    """Write size bytes of make(n_bytes) -> ndarray or bytes blocks, so memory stays small."""
    with open(path, "wb") as out:
        left = size
        while left > 0:
            block = make(min(BLOCK, left))
            out.write((block if isinstance(block, bytes) else block.tobytes())[:left])
            left -= BLOCK


def data_types() -> dict[str, Callable[[Any, int], bytes]]:
    """What models are made of, by name: each makes about n bytes of its kind from an rng."""
    import numpy as np

    def weights(rng: Any, n: int, dtype: Any) -> Any:
        return rng.normal(0, 0.02, n // np.dtype(dtype).itemsize).astype(dtype)

    def bfloat16(rng: Any, n: int) -> bytes:
        return (weights(rng, 2 * n, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()

    def int8(rng: Any, n: int) -> bytes:
        return np.clip(np.round(rng.normal(0, 40, n)), -127, 127).astype(np.int8).tobytes()

    def sparse(rng: Any, n: int) -> bytes:
        values = weights(rng, n, np.float32)
        values[rng.random(values.size) < 0.9] = 0
        return values.tobytes()

    def vocabulary(rng: Any, n: int) -> bytes:
        words = {f"token_{i}_{rng.integers(1 << 30):x}": i for i in range(n // 24)}
        return json.dumps(words).encode()[:n]

    def csv(rng: Any, n: int) -> bytes:
        rows = ["id,age,income,region,score"]
        regions = ["north", "south", "east", "west"]
        for i in range(n // 40):
            age, income = rng.integers(18, 90), rng.lognormal(10.5, 0.5)
            rows.append(f"{i},{age},{income:.2f},{regions[i % 4]},{rng.random():.6f}")
        return "\n".join(rows).encode()[:n]

    def xgboost_model(rng: Any, n: int) -> bytes:
        import xgboost as xgb

        features = rng.normal(size=(4000, 20))
        labels = (features[:, 0] + rng.normal(size=4000) > 0).astype(float)
        params = {"max_depth": 6, "eta": 0.1, "nthread": 1, "seed": 0}
        rounds = max(10, n // 20_000)
        booster = xgb.train(params, xgb.DMatrix(features, label=labels), num_boost_round=rounds)
        return bytes(booster.save_raw("ubj"))[:n]

    def pandas_frame(rng: Any, n: int) -> bytes:
        import pickle

        import pandas as pd

        rows = n // 40
        frame = pd.DataFrame(
            {
                "id": np.arange(rows),
                "amount": rng.lognormal(3, 1, rows),
                "ratio": rng.random(rows).astype(np.float32),
                "region": pd.Categorical(rng.choice(["north", "south", "east", "west"], rows)),
                "label": rng.integers(0, 2, rows).astype(np.int8),
                "note": [f"row {i}" for i in range(rows)],
            }
        )
        return pickle.dumps(frame, protocol=4)[:n]

    return {
        "float32": lambda rng, n: weights(rng, n, np.float32).tobytes(),
        "float16": lambda rng, n: weights(rng, n, np.float16).tobytes(),
        "bf16": bfloat16,
        "int8": int8,
        "sparse-float32": sparse,
        "json": vocabulary,
        "csv": csv,
        "xgboost-model": xgboost_model,
        "pandas-pickle": pandas_frame,
    }


def make_model(directory: Path, size_mb: int, kind: str = "mix") -> None:
    """A synthetic model: half weights, a quarter embeddings, sparse layers, a vocabulary.

    The "text" kind is a text-heavy model instead: tree dumps and a CSV, half each.
    """
    import numpy as np

    rng = np.random.default_rng(SEED)
    total = size_mb * 1_000_000
    directory.mkdir(parents=True)
    if kind == "text":
        make_text_model(directory, total, rng)
        return

    def sparse(n: int) -> Any:
        values = rng.normal(0, 0.02, n // 4).astype(np.float32)
        values[rng.random(values.size) < 0.9] = 0
        return values

    write_array(
        directory / "weights.bin",
        total // 2,
        lambda n: rng.normal(0, 0.02, n // 4).astype(np.float32),
    )
    write_array(
        directory / "embeddings.bin",
        total // 4,
        lambda n: rng.normal(0, 1, n // 2).astype(np.float16),
    )
    write_array(directory / "sparse.bin", total * 23 // 100, sparse)
    vocab_size = total // 50 // 16
    vocabulary = {f"token_{i}_{rng.integers(1 << 30):x}": i for i in range(vocab_size)}
    (directory / "vocab.json").write_text(json.dumps(vocabulary))


def make_text_model(directory: Path, total: int, rng: Any) -> None:
    """Tree dumps (as XGBoost's dump_model writes them) and a CSV of features, half each."""

    def tree(number: int) -> str:
        """One depth-5 tree: 31 splits, 32 leaves."""
        features, thresholds = rng.integers(200, size=31), rng.normal(size=31)
        leaves = rng.normal(0, 0.1, 32)
        lines = [f"booster[{number}]:"]
        for node in range(63):
            depth = (node + 1).bit_length() - 1
            indent = "\t" * depth
            if node < 31:
                yes, no = 2 * node + 1, 2 * node + 2
                split = f"f{features[node]}<{thresholds[node]:.6g}"
                lines.append(f"{indent}{node}:[{split}] yes={yes},no={no},missing={yes}")
            else:
                lines.append(f"{indent}{node}:leaf={leaves[node - 31]:.8g}")
        return "\n".join(lines) + "\n"

    def tree_dump(n: int) -> bytes:
        trees, size = [], 0
        while size < n:
            trees.append(tree(len(trees)))
            size += len(trees[-1])
        return "".join(trees).encode()[:n]

    csv = data_types()["csv"]
    write_array(directory / "trees.txt", total // 2, tree_dump)
    # csv() makes rows of about 33 bytes where it counts 40: ask for more, then cut.
    write_array(directory / "features.csv", total - total // 2, lambda n: csv(rng, n * 3 // 2)[:n])


@dataclass
class Contender:
    """One command; "{T}" in it stands where GNU time goes before each of its processes."""

    name: str
    command: list[str]
    output: Path
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rss_kb: int = 0
    phases: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def rss_file(self) -> Path:
        return self.output.with_name("rss.txt")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run_measured(contender: Contender) -> None:
    """Run one contender; its peak RSS is the sum of its processes' peaks, from GNU time."""
    for path in (contender.output, contender.rss_file):
        if path.exists():
            path.unlink()
    timer = f"{GNU_TIME} -f '%M %U %S' -a -o '{contender.rss_file}'"
    command = [part.replace("{T}", timer) for part in contender.command]
    os.sync()  # untimed: what the last run wrote (50,000 files) is not flushed during this one
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    log = result.stdout.decode()
    if result.returncode:
        raise SystemExit(f"{contender.name} failed ({result.returncode}):\n{log}")
    contender.seconds.append(seconds)
    processes = [line.split() for line in contender.rss_file.read_text().splitlines()]
    processes = [p for p in processes if len(p) == 3 and p[0].isdigit()]
    contender.rss_kb = max(contender.rss_kb, sum(int(p[0]) for p in processes))
    contender.cpu_seconds.append(sum(float(p[1]) + float(p[2]) for p in processes))
    for name, wall, cpu in re.findall(
        r"INFO (\w+): .* in ([\d.]+) s \(([\d.]+) CPU-s\)$", log, re.M
    ):
        contender.phases.setdefault(name, []).append((float(wall), float(cpu)))


def ours(name: str, model: Path, out: Path, work: Path, *extra: str) -> Contender:
    return python(
        name,
        out,
        str(SCRIPT),
        "--model-dir",
        str(model),
        "--script-dir",
        str(CODE),
        "--output-dir",
        str(out.parent),
        "--work-dir",
        str(work),
        *extra,
    )


def python(name: str, out: Path, *args: str) -> Contender:
    """A Python command, measured by GNU time like the shell ones."""
    return Contender(name, ["sh", "-c", '{T} "$@"', "sh", sys.executable, *args], out)


def shell(name: str, script: str, output: Path) -> Contender:
    return Contender(name, ["sh", "-c", script], output)


def contenders(
    model: Path, archive_dir: Path, work: Path, threads: int
) -> dict[str, dict[str, Contender]]:
    """What runs, by input kind and key; the first of each kind is ours."""
    archive = archive_dir / "model.tar.gz"
    stage = work / "peer-stage"

    def out(key: str) -> Path:
        (work / key).mkdir(exist_ok=True)
        return work / key / "model.tar.gz"

    def naive(source: Path, key: str) -> Contender:
        return python(
            "naive (tarfile w:gz)", out(key), "-c", NAIVE, str(source), str(out(key)), str(work)
        )

    pigz = f"pigz -6 -p {threads}"
    directory = {
        "ours": ours("ours", model, out("ours"), work, "--threads", str(threads)),
        "gzip": shell(
            "tar | gzip -6",
            f"{{T}} tar -cf - -C '{model}' . | {{T}} gzip -6 > '{out('gzip')}'",
            out("gzip"),
        ),
        "pigz": shell(
            f"tar | {pigz}",
            f"{{T}} tar -cf - -C '{model}' . | {{T}} {pigz} > '{out('pigz')}'",
            out("pigz"),
        ),
        "naive": naive(model, "naive"),
        "pigz-H": shell(
            f"tar | pigz -H -p {threads}",
            f"{{T}} tar -cf - -C '{model}' . | {{T}} pigz -H -p {threads} > '{out('pigz-H')}'",
            out("pigz-H"),
        ),
        "ours-t1": ours("ours --threads 1", model, out("ours-t1"), work, "--threads", "1"),
        "ours-t4": ours("ours --threads 4", model, out("ours-t4"), work, "--threads", "4"),
        "ours-fixed": ours("ours --no-adaptive", model, out("ours-fixed"), work, "--no-adaptive"),
    }
    extract_then_pigz = (
        f"rm -rf '{stage}' && mkdir '{stage}' && {{T}} tar -xzf '{archive}' -C '{stage}' && "
        f"{{T}} tar -cf - -C '{stage}' . | {{T}} {pigz} > '{out('pigz-tar')}' && rm -rf '{stage}'"
    )
    tar_input = {
        "ours": ours("ours", archive_dir, out("ours-tar"), work, "--threads", str(threads)),
        "pigz": shell(f"tar -xzf + tar | {pigz}", extract_then_pigz, out("pigz-tar")),
        "naive": naive(archive, "naive-tar"),
    }
    if not shutil.which("pigz"):
        del directory["pigz"], directory["pigz-H"], tar_input["pigz"]
    return {"directory": directory, "model.tar.gz": tar_input}


def writer_scaling(model: Path, threads: int, runs: int) -> tuple[float, float]:
    """Median seconds of the compression alone (tar stream into GzipWriter), 1 and N threads."""
    sys.path.insert(0, str(ROOT))
    import mims_package

    members = sorted(
        mims_package.stage_tree(model, mims_package.Normalized(None)), key=lambda m: m.name
    )

    class Discard:
        def write(self, data: bytes) -> None:
            pass

    times: dict[int, list[float]] = {1: [], threads: []}
    for _ in range(runs):
        for count in times:
            start = time.perf_counter()
            with mims_package.GzipWriter(Discard(), 6, count) as sink:
                mims_package.write_tar(members, sink)
            times[count].append(time.perf_counter() - start)
    return statistics.median(times[1]), statistics.median(times[threads])


def report(size_mb: int, kind: str, group: list[Contender], gzip_size: int | None) -> list[str]:
    mine = group[0]
    rows = []
    for contender in group:
        ratio = contender.median / mine.median
        size = contender.output.stat().st_size
        size_ratio = f"{size / gzip_size:.4f}" if gzip_size else "-"
        rows.append(
            f"| {size_mb} MB | {kind} | {contender.name.replace('|', chr(92) + '|')} | "
            f"{contender.median:.2f} | {statistics.median(contender.cpu_seconds):.2f} | "
            f"{ratio:.2f}x | {size_ratio} | {contender.rss_kb / 1024:.0f} |"
        )
    return rows


def phase_note(size_mb: int, kind: str, contender: Contender) -> str:
    """The job's phases: median wall and CPU seconds of each."""
    parts = []
    for name, runs in contender.phases.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        parts.append(f"{name} {wall:.2f} s / {cpu:.2f} CPU-s")
    return f"{size_mb} MB {kind}, {contender.name}: " + ", ".join(parts)


def helper(*args: str) -> str:
    """Run this file in a subprocess for work that must not grow this process."""
    command = [sys.executable, __file__, *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def compress_file(path: Path, adaptive: bool, threads: int) -> tuple[int, float]:
    """Our gzip writer alone on one file: (compressed size, seconds)."""
    sys.path.insert(0, str(ROOT))
    import mims_package

    class Counter:
        size = 0

        def write(self, data: bytes) -> None:
            Counter.size += len(data)

    data = path.read_bytes()
    start = time.perf_counter()
    with mims_package.GzipWriter(Counter(), 6, threads, adaptive) as writer:
        for offset in range(0, len(data), 1 << 20):
            writer.write(data[offset : offset + (1 << 20)])
    return Counter.size, time.perf_counter() - start


def timed_size(command: str) -> tuple[int, float]:
    start = time.perf_counter()
    out = subprocess.run(command, shell=True, check=True, capture_output=True).stdout
    return len(out), time.perf_counter() - start


def compare_types(kinds: list[str], size_mb: int, threads: int, runs: int, scratch: Path) -> None:
    """Per kind of data: adaptive coding, the level, pigz -6 and pigz -H, vs gzip -6's size."""
    import numpy as np

    makers = data_types()
    rows = [
        "| data | MB | gzip -6 ratio | adaptive: size, s | level 6: size, s | pigz -6: size, s "
        "| pigz -H: size, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        path = scratch / f"{kind}.bin"
        path.write_bytes(makers[kind](np.random.default_rng(SEED), size_mb * 1_000_000))
        reference = timed_size(f"gzip -6 -c '{path}'")[0]
        results = []
        for adaptive in (True, False):
            command = ("--compress-file", str(path), str(adaptive), str(threads))
            found = [helper(*command).split() for _ in range(runs)]
            size = int(found[0][0])
            results.append((size, statistics.median(float(f[1]) for f in found)))
        for flags in ("-6", "-H"):
            measured = [timed_size(f"pigz {flags} -p {threads} -c '{path}'") for _ in range(runs)]
            results.append((measured[0][0], statistics.median(m[1] for m in measured)))
        cells = " | ".join(f"{size / reference:.4f}, {seconds:.2f}" for size, seconds in results)
        mb = path.stat().st_size / 1e6
        rows.append(f"| {kind} | {mb:.0f} | {reference / path.stat().st_size:.3f} | {cells} |")
        path.unlink()
    print("\n".join(rows))


def make_inputs(base: Path, generate: str, amount: int, *kind: str) -> tuple[Path, Path, Path]:
    """(model dir, dir of its model.tar.gz made with gzip -1, work dir), generated under base."""
    model, archive_dir, work = base / "model", base / "archive", base / "work"
    helper(generate, str(model), str(amount), *kind)
    archive_dir.mkdir(parents=True)
    work.mkdir()
    archive = archive_dir / "model.tar.gz"
    subprocess.run(f"tar -cf - -C '{model}' . | gzip -1 > '{archive}'", shell=True, check=True)
    return model, archive_dir, work


def make_file_tree(directory: Path, count: int) -> None:
    """count small source-like files, 100 B to 100 KB (lognormal), in packages and modules."""
    import random

    rng = random.Random(SEED)
    lines = [f"def f{i}(x):\n    return x * {i}\n" for i in range(200)]
    for index in range(count):
        folder = directory / f"pkg{index % 50}" / f"mod{(index // 50) % 20}"
        folder.mkdir(parents=True, exist_ok=True)
        size = int(min(100_000, max(100, rng.lognormvariate(7.2, 1.0))))
        text = "".join(rng.choice(lines) for _ in range(size // 25 + 1))[:size]
        (folder / f"file{index}.py").write_text(text)


def compare_files(counts: list[int], args: argparse.Namespace, scratch: Path) -> None:
    """Trees of many small files, loose and as a model.tar.gz, against tar with pigz and gzip."""
    pigz = f"pigz -6 -p {args.threads}"
    table = [
        "| files | input | command | median s | x the tar one | us per file | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for count in counts:
        base = scratch / f"files-{count}"
        tree, archive_dir, work = make_inputs(base, "--generate-files", count)
        archive = archive_dir / "model.tar.gz"
        out = {key: work / key / "model.tar.gz" for key in ("ours", "pigz", "gzip", "tar", "x")}
        for path in out.values():
            path.parent.mkdir()
        stage = work / "stage"
        extract_then_pigz = (
            f"rm -rf '{stage}' && mkdir '{stage}' && {{T}} tar -xzf '{archive}' -C '{stage}' "
            f"&& {{T}} tar -cf - -C '{stage}' . | {{T}} {pigz} > '{out['x']}'"
        )
        groups = {
            "directory": [
                ours("ours", tree, out["ours"], work),
                shell(
                    "tar | pigz",
                    f"{{T}} tar -cf - -C '{tree}' . | {{T}} {pigz} > '{out['pigz']}'",
                    out["pigz"],
                ),
                shell(
                    "tar | gzip -6",
                    f"{{T}} tar -cf - -C '{tree}' . | {{T}} gzip -6 > '{out['gzip']}'",
                    out["gzip"],
                ),
            ],
            "model.tar.gz": [
                ours("ours", archive_dir, out["tar"], work),
                shell("tar -xzf + tar | pigz", extract_then_pigz, out["x"]),
            ],
        }
        # Rounds interleave the contenders of one input kind. The kinds run one after the
        # other: extracting 50,000 files leaves the kernel busy for a while, and that
        # would land on whichever contender ran next.
        for group in groups.values():
            for _ in range(args.runs):
                for contender in group:
                    run_measured(contender)
        for kind, group in groups.items():
            tar = group[1].median  # the tar | pigz of this input kind
            for contender in group:
                name = contender.name.replace("|", chr(92) + "|")
                per_file = contender.median / count * 1e6
                table.append(
                    f"| {count} | {kind} | {name} | {contender.median:.2f} | "
                    f"{contender.median / tar:.2f} | {per_file:.0f} | "
                    f"{contender.rss_kb / 1024:.0f} |"
                )
            parts = [
                f"{phase} {statistics.median(r[0] for r in runs) / count * 1e6:.0f} us"
                for phase, runs in group[0].phases.items()
            ]
            notes.append(f"{count} files, {kind}, ours per file: " + ", ".join(parts))
        shutil.rmtree(base)
    print("\n".join(table))
    print()
    print("\n".join(notes))


def main() -> None:
    if sys.argv[1:2] == ["--generate"]:
        make_model(Path(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
        return
    if sys.argv[1:2] == ["--writer-scaling"]:
        print(*writer_scaling(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
        return
    if sys.argv[1:2] == ["--generate-files"]:
        make_file_tree(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--compress-file"]:
        adaptive = sys.argv[3] == "True"
        print(*compress_file(Path(sys.argv[2]), adaptive, int(sys.argv[4])))
        return
    if not Path(GNU_TIME).exists():
        raise SystemExit(f"{GNU_TIME} is missing: apt-get install time")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", default="300,1000", help="model sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work-dir", default=None, help="scratch space (default: system temp)")
    parser.add_argument(
        "--types", default=None, help="'all' or kinds of data, comma-separated: a table per kind"
    )
    parser.add_argument("--files", default=None, help="small-file tree sizes, comma-separated")
    parser.add_argument("--code-check", type=int, default=None, help="vendored .py files")
    parser.add_argument("--memory", action="store_true", help="peak memory on hostile inputs")
    parser.add_argument(
        "--model",
        choices=("mix", "text"),
        default="mix",
        help="the model: the weights mix, or text-heavy (tree dumps and a CSV)",
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.size_mb.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="mims-bench-", dir=args.work_dir))
    print_machine(args)
    try:
        if args.types:
            kinds = list(data_types()) if args.types == "all" else args.types.split(",")
            compare_types(kinds, sizes[0], args.threads, args.runs, scratch)
        elif args.files:
            compare_files([int(n) for n in args.files.split(",")], args, scratch)
        elif args.code_check:
            measure_code_check(args.code_check, args.runs, scratch)
        elif args.memory:
            measure_memory(scratch)
        else:
            compare_mix(sizes, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def print_machine(args: argparse.Namespace) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    python = platform.python_version()
    print(f"{datetime.date.today()}, {cpu}, {os.cpu_count()} CPUs, Python {python}, ")
    print(f"{args.runs} rounds, median; level 6, {args.threads} threads")
    print()


def compare_checks(package: Path, work: Path, runs: int) -> str:
    """--verify on our package against gzip -t on the same file: median seconds, peak RSS."""
    nothing = work / "check" / "none"  # neither writes a file
    nothing.parent.mkdir(exist_ok=True)
    verify = python("ours --verify", nothing, str(SCRIPT), "--verify", str(package))
    gzip_test = shell("gzip -t", f"{{T}} gzip -t '{package}'", nothing)
    for _ in range(runs):
        for contender in (verify, gzip_test):
            run_measured(contender)
    return (
        f"--verify {verify.median:.2f} s ({verify.rss_kb / 1024:.0f} MB peak RSS), gzip -t "
        f"{gzip_test.median:.2f} s: {verify.median / gzip_test.median:.2f}x (target 1.5x)"
    )


def compare_mix(sizes: list[int], args: argparse.Namespace, scratch: Path) -> None:
    """The synthetic model mix, as a directory and as a model.tar.gz, against every peer."""
    table = [
        "| model | input | command | median s | CPU-s | time vs ours | size vs gzip -6 "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for size_mb in sizes:
        base = scratch / f"{size_mb}"
        model, archive_dir, work = make_inputs(base, "--generate", size_mb, args.model)
        groups = contenders(model, archive_dir, work, args.threads)
        for _ in range(args.runs):
            for group in groups.values():
                for contender in group.values():
                    run_measured(contender)
        directory = groups["directory"]
        gzip_size = directory["gzip"].output.stat().st_size
        for kind, group in groups.items():
            table += report(size_mb, kind, list(group.values()), gzip_size)
            notes.append(phase_note(size_mb, kind, group["ours"]))
        one, many = map(
            float,
            helper("--writer-scaling", str(model), str(args.threads), str(args.runs)).split(),
        )
        notes.append(f"{size_mb} MB: " + compare_checks(directory["ours"].output, work, args.runs))
        t1, tn = directory["ours-t1"].median, directory["ours"].median
        notes.append(
            f"{size_mb} MB: compression alone 1 -> {args.threads} threads: {one:.2f} s -> "
            f"{many:.2f} s ({one / many:.2f}x); the whole job: {t1:.2f} s -> {tn:.2f} s "
            f"({t1 / tn:.2f}x)"
        )
        shutil.rmtree(base)
    print("\n".join(table))
    print()
    print("\n".join(notes))


def vendored_library(code: Path, count: int) -> int:
    """code/ with inference.py and a vendored library of count .py files; their bytes."""
    import site

    packages = Path(site.getsitepackages()[0])
    sources = sorted(
        path
        for path in packages.rglob("*.py")
        if not any(part.startswith("test") for part in path.relative_to(packages).parts)
    )[:count]
    total = 0
    for source in sources:
        target = code / "vendor" / source.relative_to(packages)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        total += source.stat().st_size
    (code / "inference.py").write_text(
        "import vendor\n\ndef model_fn(model_dir):\n    return None\n"
    )
    (code / "vendor" / "__init__.py").write_text("")
    return total


def measure_code_check(count: int, runs: int, scratch: Path) -> None:
    """The code check's phase and the whole job, with and without a vendored library."""
    model = scratch / "model"
    model.mkdir()
    (model / "model.bin").write_bytes(os.urandom(1 << 20))
    plain, vendored = scratch / "plain", scratch / "vendored"
    plain.mkdir()
    (plain / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")
    size = vendored_library(vendored, count)
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, code, prefix in (
            ("plain", plain, []),
            ("vendored", vendored, []),
            ("vendored, 1 CPU", vendored, ["taskset", "-c", "0"]),
        ):
            out = scratch / "out"
            start = time.perf_counter()
            result = subprocess.run(
                [*prefix, sys.executable, str(SCRIPT), "--model-dir", str(model), "--script-dir",
                 str(code), "--output-dir", str(out), "--work-dir", str(scratch)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            total = time.perf_counter() - start
            seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
            times.setdefault(f"{name}: job", []).append(total)
            times.setdefault(f"{name}: code check", []).append(seconds["code check"])
    print(f"code/ with {count} vendored .py files, {size / 1e6:.1f} MB of source")
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s over {runs} runs")


def hostile_archive(path: Path, count: int, name: Callable[[int], str], link: str = "") -> None:
    """A gzip'd tar of count members (files of one byte, or symlinks to link + their number)."""
    import gzip

    sys.path.insert(0, str(ROOT))
    import mims_package

    with gzip.open(path, "wb", compresslevel=1) as out:
        for index in range(count):
            if not link:
                out.write(mims_package.member_header(name(index), False, 1, 0o644, 0))
                out.write(b"x" + bytes(511))
                continue
            records = mims_package._pax_record(b"linkpath", f"{link}{index}".encode())
            records += mims_package._pax_record(b"path", name(index).encode())
            pax = mims_package._ustar_block(b"././@PaxHeader", b"x", len(records), 0, 0)
            out.write(pax + records + mims_package._padding(len(records)))
            out.write(mims_package._ustar_block(b"l", b"2", 0, 0o777, 0))
        out.write(bytes(1024))


def peak_rss_mb(*args: str) -> float:
    """Our script's peak RSS, in MB, by GNU time."""
    result = subprocess.run(
        [GNU_TIME, "-f", "%M", sys.executable, str(SCRIPT), *args], capture_output=True, text=True
    )
    return int(result.stderr.strip().splitlines()[-1]) / 1024


def measure_memory(scratch: Path) -> None:
    """Peak RSS of every command on inputs made to cost memory, beside the goal."""
    long_name = lambda i: "/".join([f"p{i % 7:03d}" * 60] * 4) + f"/f{i}.bin"  # noqa: E731
    inputs = {
        "200,000 short names": (200_000, lambda i: f"pkg{i % 50}/mod{i // 4000}/file{i}.py", ""),
        "32,000 names of 1,000 chars": (32_000, long_name, ""),
        "100,000 symlinks, 3,000-char targets": (100_000, lambda i: f"l{i}", "../" * 1000),
    }
    print("| input | command | peak RSS MB | goal MB |")
    print("|---|---|---|---|")
    for label, (count, name, link) in inputs.items():
        model = scratch / "model"
        model.mkdir()
        archive = model / "model.tar.gz"
        hostile_archive(archive, count, name, link)
        out, work = scratch / "out", scratch / "work"
        (work / "script").mkdir(parents=True)
        goal = 100 + count / 1024
        runs = {"--verify": ["--verify", str(archive)]}
        runs["--verify --json"] = [*runs["--verify"], "--json"]
        if not link:  # a package of links is refused by the job: --verify is what reads it
            job = ["--model-dir", str(model), "--script-dir", str(work / "script")]
            job += ["--output-dir", str(out), "--work-dir", str(work)]
            runs = {"job": job, "--dry-run": [*job, "--dry-run"], **runs}
        for command, args in runs.items():
            print(f"| {label} | {command} | {peak_rss_mb(*args):.0f} | {goal:.0f} |", flush=True)
        shutil.rmtree(model)
        shutil.rmtree(work)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
