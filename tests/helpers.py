"""Shared checks: exactness, teacher immutability, widths as requested."""

from __future__ import annotations

import torch

import n2n_fx
from n2n_fx.testing import assert_untouched, fingerprint


def snapshot(model: torch.nn.Module) -> dict:
    """The teacher's deep fingerprint: tensors (values, storage, version counters) and every
    module's Python attributes (caches, hooks, flags)."""
    return fingerprint(model)


def assert_unchanged(model: torch.nn.Module, snap: dict) -> None:
    assert_untouched(model, snap)


def assert_preserved(teacher, student, x, *, mode: str = "eval", rtol: float | None = None) -> n2n_fx.Report:
    report = n2n_fx.verify(teacher, student, x, mode=mode, rtol=rtol)
    assert report.ok, f"{report}"
    return report
