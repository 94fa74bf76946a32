"""How each arm's starting point is made: a Net2Net student, random pad, or random init.

Random init keeps the student's exact architecture (the same GraphModule, parameters re-drawn), so
every comparison is between identical networks that differ only in where they start.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import n2n_fx


def reinit(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with every parameter re-drawn by its module's own initialiser."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if m is not fresh and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # BatchNorm's also resets its running statistics
    return fresh


def target_widths(teacher: nn.Module, standard: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Widths that turn the narrow teacher's spaces into the standard network's (same names)."""
    want = {s.name: s.width for s in n2n_fx.plan(standard, x).spaces}
    return {s.name: want[s.name] for s in n2n_fx.plan(teacher, x).spaces
            if not s.frozen and want.get(s.name, s.width) > s.width}


def _first_occurrence(index: torch.Tensor) -> torch.Tensor:
    """True where a student position is the first copy of its teacher unit (the original)."""
    keep = torch.zeros(len(index), dtype=torch.bool)
    seen: set[int] = set()
    for j, i in enumerate(index.tolist()):
        if i not in seen:
            keep[j] = True
            seen.add(i)
    return keep


def random_pad(teacher: nn.Module, x: torch.Tensor, widths: dict[str, int], seed: int) -> nn.Module:
    """The paper's baseline: the teacher's units keep their weights, new units (and every weight
    that touches one) are drawn at random, and nothing is divided: the function changes."""
    plan = n2n_fx.plan(teacher, x, widths=widths, seed=seed)
    student = reinit(n2n_fx.apply_plan(plan), seed)
    old = plan.analysis.gm
    axes = plan.analysis.axes_by_param()
    state = student.state_dict()
    with torch.no_grad():
        for name, t in old.state_dict().items():
            if name not in axes:
                state[name].copy_(t)
                continue
            kept, mask = t, torch.ones((), dtype=torch.bool)
            for axis in axes[name]:
                index = plan.layout_index(plan.analysis.param_layouts[(name, axis)])
                kept = kept.index_select(axis, index)
                shape = [1] * t.ndim
                shape[axis] = -1
                mask = mask & _first_occurrence(index).reshape(shape)
            state[name].copy_(torch.where(mask, kept, state[name]))
    student.load_state_dict(state)
    return student
