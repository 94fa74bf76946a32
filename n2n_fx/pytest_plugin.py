"""pytest plugin (auto-loaded when n2n_fx is installed): the `n2n_check` fixture.

    def test_growth_step(n2n_check):
        teacher, x = build_teacher()
        student = my_pipeline.grow(teacher)
        n2n_check(teacher, student, x)          # fails with the error table if not preserved
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .verification import Report, verify


@pytest.fixture
def n2n_check() -> Callable[..., Report]:
    """Assert that `student` computes `teacher`'s function (float64, example + random inputs)."""

    def check(teacher: Any, student: Any, example_inputs: Any, *, mode: str = "eval", rtol: float | None = None,
              n_random: int = 3, seed: int = 0) -> Report:
        report = verify(teacher, student, example_inputs, mode=mode, rtol=rtol, n_random=n_random, seed=seed)
        if not report.ok:
            pytest.fail(f"n2n_fx: student does not preserve the teacher's function: {report}", pytrace=False)
        return report

    return check
