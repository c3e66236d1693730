"""The fuzz target's check, driven by hypothesis in the default suite.

tests/fuzz_archive.py runs the same check_one() under atheris (coverage-guided,
for a bounded time in .ci/run); here hypothesis feeds it random bytes and
mutations of valid archives, so every run of the suite fuzzes a little.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_archive import check_one, seed_corpus

SEEDS = seed_corpus()
FUZZ = settings(max_examples=150, deadline=None)


def test_seed_corpus_packages_cleanly() -> None:
    for seed in SEEDS:
        check_one(seed)


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check_one(data)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 1 << 16)),
)
def test_mutated_archives(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(seed)
    for offset, value in edits:
        data[offset % len(data)] = value
    check_one(bytes(data[:cut] if cut is not None else data))
