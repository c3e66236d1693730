"""The hand-run mutation check stays runnable: every mutant's edits still apply to the script."""

from __future__ import annotations

import mutants
import pytest
from conftest import SCRIPT


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda mutant: mutant.name)
def test_each_mutants_edits_apply_once_and_compile(mutant: mutants.Mutant) -> None:
    source = SCRIPT.read_text()
    assert mutants.mutate(source, mutant) != source
