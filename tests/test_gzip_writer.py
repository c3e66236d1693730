"""The parallel gzip writer: standard output, the same bytes for any thread count, clean failure."""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import subprocess
import sys
import tarfile
import threading
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mims_package
from mims_package import CHUNK_SIZE, GzipWriter, crc32_combine

KIB, MIB = 1 << 10, 1 << 20
BOUNDARY_SIZES = [0, 1, 32 * KIB - 1, MIB - 1, MIB, MIB + 1, 3 * MIB + 7]


def sample(size: int, seed: int = 0) -> bytes:
    """Half-compressible bytes: random runs and repeats, so matches cross chunk cuts."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(rng.randrange(1, 5000)) if rng.random() < 0.5 else out[-3000:] or b"x"
    return bytes(out[:size])


def compress(
    data: bytes,
    level: int = 6,
    threads: int = 2,
    piece: int | None = None,
    adaptive: bool = True,
) -> bytes:
    out = io.BytesIO()
    with GzipWriter(out, level, threads, adaptive) as writer:
        step = piece or max(len(data), 1)
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
    return out.getvalue()


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_round_trip_at_chunk_boundaries(size: int) -> None:
    data = sample(size)
    packed = compress(data)
    assert zlib.decompress(packed, 31) == data
    assert gzip.decompress(packed) == data
    inflate = zlib.decompressobj(31)
    assert inflate.decompress(packed) == data and inflate.eof and not inflate.unused_data


def test_gnu_gzip_accepts_it(tmp_path: Path) -> None:
    data = sample(3 * MIB + 7)
    path = tmp_path / "x.gz"
    path.write_bytes(compress(data))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    result = subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True)
    assert result.stdout == data


def test_tarfile_stream_mode_reads_a_tar_written_through_it() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for index, size in enumerate(BOUNDARY_SIZES):
            info = tarfile.TarInfo(f"f{index}")
            info.size = size
            tar.addfile(info, io.BytesIO(sample(size, index)))
    with tarfile.open(fileobj=io.BytesIO(compress(raw.getvalue())), mode="r|gz") as tar:
        for index, info in enumerate(tar):
            stream = tar.extractfile(info)
            assert stream is not None and stream.read() == sample(BOUNDARY_SIZES[index], index)


@pytest.mark.parametrize("size", [MIB + 1, 3 * MIB + 7])
def test_same_bytes_for_any_thread_count_and_write_pattern(size: int) -> None:
    data = sample(size)
    reference = compress(data, threads=1)
    for threads in (2, 3, 8):
        assert compress(data, threads=threads) == reference
    assert compress(data, threads=3, piece=4093) == reference


@pytest.mark.parametrize("level", range(10))
def test_every_level_round_trips(level: int) -> None:
    data = sample(2 * MIB + 5)
    packed = compress(data, level=level)
    assert zlib.decompress(packed, 31) == data
    if level == 0:
        assert len(packed) > len(data)


def test_matches_reach_back_across_chunk_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    block = os.urandom(20 * KIB)
    repeated = block * 200  # four chunks; each starts inside a repeat of the block
    with_window = compress(repeated)
    real = mims_package._deflate_chunk
    monkeypatch.setattr(mims_package, "_deflate_chunk", lambda c, w, *a: real(c, b"", *a))
    without_window = compress(repeated)
    assert zlib.decompress(without_window, 31) == repeated
    # Without the previous chunk's window, each of the 3 later chunks re-sends the block.
    assert len(without_window) - len(with_window) > 2.5 * len(block)


def test_header_is_fixed() -> None:
    packed = compress(b"x")
    assert packed[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert compress(b"x", level=9)[8] == 2 and compress(b"x", level=1)[8] == 4


class Discard:
    """A sink that keeps nothing, so that only the writer's own memory is measured."""

    def write(self, data: bytes) -> None:
        pass


def test_memory_stays_bounded_whatever_the_input_size() -> None:
    """64 MiB through 2 threads: the writer holds a few chunks (in and out), not the stream."""
    block = sample(CHUNK_SIZE // 2)
    tracemalloc.start()
    try:
        with GzipWriter(Discard(), 1, 2) as writer:
            for _ in range(128):
                writer.write(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * CHUNK_SIZE, f"{peak / CHUNK_SIZE:.1f} MiB at the peak"


def deflate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("deflate")]


def test_worker_failure_reaches_the_caller_and_leaves_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = mims_package._deflate_chunk
    calls = []

    def failing(chunk: bytes, window: bytes, *coding: Any) -> tuple[bytes, int, int]:
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("worker failed")
        return real(chunk, window, *coding)

    monkeypatch.setattr(mims_package, "_deflate_chunk", failing)
    with pytest.raises(MemoryError, match="worker failed"):
        compress(sample(10 * MIB), threads=2, piece=MIB)
    assert deflate_threads() == []


def test_an_exception_in_the_producer_cancels_the_workers() -> None:
    with pytest.raises(KeyboardInterrupt), GzipWriter(io.BytesIO(), 9, 2) as writer:
        writer.write(sample(6 * MIB))
        raise KeyboardInterrupt
    assert deflate_threads() == []


def test_crc32_combine_matches_zlib_on_random_splits() -> None:
    rng = random.Random(7)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 5000))
        cut = rng.randrange(0, len(data) + 1)
        a, b = data[:cut], data[cut:]
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(data)
    big = sample(3 * MIB)
    assert crc32_combine(zlib.crc32(big[:MIB]), zlib.crc32(big[MIB:]), 2 * MIB) == zlib.crc32(big)


def test_the_trailer_length_wraps_at_4_gib() -> None:
    writer = GzipWriter(io.BytesIO(), 0, 1)
    writer.size = (5 << 30) - 1
    out = io.BytesIO()
    writer._out = out
    with writer:
        writer.write(b"x")
    assert int.from_bytes(out.getvalue()[-4:], "little") == (5 << 30) % (1 << 32)


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("150000 100000\n", None, 2),
        ("50000 100000\n", None, 1),
        ("max 100000\n", None, None),
        (None, ("50000", "100000"), 1),
        (None, ("-1", "100000"), None),
        (None, None, None),
    ],
)
def test_threads_default_to_usable_cpus(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    v2: str | None,
    v1: tuple[str, str] | None,
    expected: int | None,
) -> None:
    affinity = len(os.sched_getaffinity(0))
    paths = {name: tmp_path / name for name in ("cpu.max", "quota", "period")}
    if v2 is not None:
        paths["cpu.max"].write_text(v2)
    if v1 is not None:
        paths["quota"].write_text(v1[0])
        paths["period"].write_text(v1[1])
    monkeypatch.setattr(mims_package, "CGROUP_V2_CPU_MAX", str(paths["cpu.max"]))
    monkeypatch.setattr(mims_package, "CGROUP_V1_CPU_QUOTA", str(paths["quota"]))
    monkeypatch.setattr(mims_package, "CGROUP_V1_CPU_PERIOD", str(paths["period"]))
    assert mims_package.available_cpus() == (min(expected, affinity) if expected else affinity)
    monkeypatch.setattr(mims_package.os, "sched_getaffinity", lambda pid: {0})
    assert mims_package.available_cpus() == 1


def test_package_bytes_do_not_depend_on_threads(tmp_path: Path) -> None:
    from conftest import run_cli, write_tree

    write_tree(tmp_path / "model", {"w.bin": sample(3 * MIB + 7), "v.json": b"{}"})
    write_tree(tmp_path / "script", {"inference.py": ""})
    packages = []
    for threads in ("1", "2", "3", "8"):
        out = tmp_path / f"out{threads}"
        result = run_cli(
            "--model-dir",
            tmp_path / "model",
            "--script-dir",
            tmp_path / "script",
            "--output-dir",
            out,
            "--threads",
            threads,
        )
        assert result.returncode == 0, result.stdout
        assert f"{threads} threads" in result.stdout
        packages.append((out / "model.tar.gz").read_bytes())
    assert len(set(packages)) == 1


# Adaptive coding: Huffman codes alone where they code smaller, the level elsewhere.

sys.path.insert(0, str(Path(__file__).parent))
from benchmark import data_types  # noqa: E402

TYPES = data_types()


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_adaptive_coding_is_never_larger_than_the_level(kind: str) -> None:
    data = TYPES[kind](np.random.default_rng(7), 3 * MIB)
    adaptive, plain = compress(data), compress(data, adaptive=False)
    assert len(adaptive) <= len(plain)
    assert gzip.decompress(adaptive) == data


def test_dense_weights_choose_huffman_and_text_chooses_matching() -> None:
    rng = np.random.default_rng(3)
    assert mims_package.choose_strategy(TYPES["float32"](rng, MIB), 6) == zlib.Z_HUFFMAN_ONLY
    assert mims_package.choose_strategy(TYPES["json"](rng, MIB), 6) == zlib.Z_DEFAULT_STRATEGY


def test_no_adaptive_codes_every_chunk_at_the_level() -> None:
    """--no-adaptive gives the stream of 1.0: each chunk deflated at the level, window-primed."""
    data = TYPES["float32"](np.random.default_rng(5), 2 * MIB + 1000)
    expected = bytearray(mims_package._gzip_header(6))
    window = b""
    for start in range(0, len(data), CHUNK_SIZE):
        chunk = data[start : start + CHUNK_SIZE]
        deflate = mims_package._raw_deflate(6, zlib.Z_DEFAULT_STRATEGY, window)
        expected += deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
        window = chunk[-mims_package.WINDOW_SIZE :]
    expected += b"\x03\x00" + struct.pack("<II", zlib.crc32(data), len(data))
    assert compress(data, adaptive=False) == bytes(expected)
    assert compress(data) != bytes(expected)  # the adaptive stream codes these with Huffman


def test_the_cli_codes_adaptively_unless_told_not_to(tmp_path: Path) -> None:
    from conftest import run_cli, write_tree

    write_tree(tmp_path / "model", {"w.bin": TYPES["float32"](np.random.default_rng(1), 3 * MIB)})
    write_tree(tmp_path / "script", {"inference.py": ""})
    sizes = {}
    for flag in ("", "--no-adaptive"):
        out = tmp_path / f"out{flag}"
        args = ["--model-dir", tmp_path / "model", "--script-dir", tmp_path / "script"]
        result = run_cli(*args, "--output-dir", out, *([flag] if flag else []))
        assert result.returncode == 0, result.stdout
        coding = "every chunk at the level" if flag else "adaptive"
        assert f"compress: level 6 ({coding})" in result.stdout
        sizes[flag] = (out / "model.tar.gz").stat().st_size
    assert sizes[""] < sizes["--no-adaptive"]


def test_probing_stops_once_matching_clearly_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    real = mims_package._raw_deflate

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(mims_package, "_raw_deflate", counted)
    text = (b"def f(x):\n    return x\n" * 50_000)[:MIB]
    assert mims_package.choose_strategy(text, 6) == zlib.Z_DEFAULT_STRATEGY
    assert len(calls) == 2  # the first probe, coded both ways
    calls.clear()
    weights = TYPES["float32"](np.random.default_rng(3), MIB)
    assert mims_package.choose_strategy(weights, 6) == zlib.Z_HUFFMAN_ONLY
    assert len(calls) == 2 * mims_package.PROBES


def no_repeats(size: int, seed: int) -> bytes:
    """size bytes in which no 3 bytes in a row occur twice: deflate finds no match in them."""
    rng = random.Random(seed)
    out, seen = bytearray(b"\0\1"), set()
    while len(out) < size:
        byte = rng.randrange(256)
        gram = bytes(out[-2:]) + bytes([byte])
        if gram not in seen:
            seen.add(gram)
            out.append(byte)
    return bytes(out)


def test_probes_that_tie_go_to_the_level_which_finds_repeats_across_the_chunk() -> None:
    # Each probe is the same 16 KiB run with no match inside it: both codings of it are the
    # same size. Across the chunk the run repeats, which only matching can use.
    chunk = no_repeats(16 << 10, seed=7) * 64
    probe = chunk[: mims_package.PROBE_SIZE]
    sizes = set()
    for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_HUFFMAN_ONLY):
        deflate = mims_package._raw_deflate(6, strategy)
        sizes.add(len(deflate.compress(probe) + deflate.flush()))
    assert len(sizes) == 1  # a tie
    assert mims_package.choose_strategy(chunk, 6) == zlib.Z_DEFAULT_STRATEGY
    piece = mims_package._deflate_chunk(chunk, b"", 6, True)[0]
    assert len(piece) < len(chunk) // 20  # Huffman alone would take it all
