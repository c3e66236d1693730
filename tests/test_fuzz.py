"""The fuzz target's check, driven by hypothesis and the tar-layer mutator in the default suite.

tests/fuzz_archive.py runs the same check_one() under atheris (coverage-guided,
for a bounded time in .ci/run); here hypothesis feeds it random bytes, byte
mutations of valid archives, and tar-layer mutations (headers with valid
checksums, odd PAX records), so every run of the suite fuzzes a little, and a
test proves that most tar-layer cases get past the decoder to the member checks.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_archive import check_one, mutated, raw_header_corpus, seed_corpus

import mims_package

SEEDS = seed_corpus()
RAW_HEADER_SEEDS = raw_header_corpus()
FUZZ = settings(max_examples=150, deadline=None)


def test_seed_corpus_packages_cleanly() -> None:
    assert [check_one(seed) for seed in SEEDS] == ["packaged"] * len(SEEDS)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check_one(data)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS + RAW_HEADER_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
)
def test_mutated_archives(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(seed)
    for offset, value in edits:
        data[offset % len(data)] = value
    check_one(bytes(data[:cut] if cut is not None else data))


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from([SEEDS[0], SEEDS[3]]), rng_seed=st.integers(0, 2**32))
def test_tar_layer_mutations(seed: bytes, rng_seed: int) -> None:
    check_one(mutated(seed, random.Random(rng_seed)))


def test_most_tar_layer_mutations_reach_the_member_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzzer is only worth its time if its cases get past the decoder to _Extractor.add."""
    real_add = mims_package._Extractor.add
    reached = []

    def counting_add(self: Any, *args: Any) -> None:
        reached.append(True)
        real_add(self, *args)

    monkeypatch.setattr(mims_package._Extractor, "add", counting_add)
    cases = 200
    hits = 0
    for index in range(cases):
        reached.clear()
        check_one(mutated(SEEDS[index % 2 * 3], random.Random(index)))
        hits += bool(reached)
    assert hits >= cases // 2, f"only {hits} of {cases} cases reached _Extractor.add"
