"""pytest plugin (auto-loaded when n2n_fx is installed): the `n2n_check` fixture.

    def test_growth_step(n2n_check):
        teacher, x = build_teacher()
        student = my_pipeline.grow(teacher)
        n2n_check(teacher, student, x)          # fails with the error table if not preserved

pytest imports this module in every run of every project in the environment, so it imports
nothing heavy: torch and n2n_fx's verification load when a test first uses the fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def n2n_check() -> Callable[..., Any]:
    """Assert that `student` computes `teacher`'s function (float64, example + random inputs)."""
    from .verification import verify

    def check(teacher: Any, student: Any, example_inputs: Any, *, mode: str = "eval", rtol: float | None = None,
              n_random: int = 3, seed: int = 0) -> Any:
        report = verify(teacher, student, example_inputs, mode=mode, rtol=rtol, n_random=n_random, seed=seed)
        if not report.ok:
            pytest.fail(f"n2n_fx: student does not preserve the teacher's function: {report}", pytrace=False)
        return report

    return check
