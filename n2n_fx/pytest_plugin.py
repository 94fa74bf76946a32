"""pytest plugin (auto-loaded when n2n_fx is installed): the `n2n_check` fixture.

    def test_growth_step(n2n_check):
        teacher, x = build_teacher()
        student = my_pipeline.grow(teacher)
        n2n_check(teacher, student, x)          # AssertionError naming where the functions part

The fixture is session-scoped and returns a stateless checker, so it also works inside
Hypothesis' `@given` (no function-scoped-fixture health check), and a failure is a plain
`AssertionError` (n2n_fx.testing.assert_preserved), which Hypothesis shrinks and reports with its
falsifying example. Outside pytest, or without the fixture, call
`n2n_fx.testing.assert_preserved` directly: it is the same check.

pytest imports this module in every run of every project in the environment, so it imports
nothing heavy: torch and n2n_fx's verification load when a test first uses the fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def check(teacher: Any, student: Any, example_inputs: Any, *, mode: str = "eval", rtol: float | None = None,
          n_random: int = 3, seed: int = 0) -> Any:
    """Assert that `student` computes `teacher`'s function (float64, example + random inputs);
    return the Report. Raises AssertionError localising the first differing module otherwise."""
    from .testing import assert_preserved

    __tracebackhide__ = True
    return assert_preserved(teacher, student, example_inputs, mode=mode, rtol=rtol, n_random=n_random, seed=seed)


@pytest.fixture(scope="session")
def n2n_check() -> Callable[..., Any]:
    """The checker `check(teacher, student, example_inputs, *, mode, rtol, n_random, seed)`:
    session-scoped (it holds no state), so usable in `@given` tests."""
    return check
