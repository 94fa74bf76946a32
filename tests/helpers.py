"""Shared checks: exactness, teacher immutability, widths as requested."""

from __future__ import annotations

import torch

import n2n_fx


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert set(now) == set(snap)
    for k, v in snap.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), f"teacher tensor {k} changed"


def assert_preserved(teacher, student, x, *, mode: str = "eval", rtol: float | None = None) -> n2n_fx.Report:
    report = n2n_fx.verify(teacher, student, x, mode=mode, rtol=rtol)
    assert report.ok, f"{report}"
    return report
