"""n2n_fx: Net2Net (Chen, Goodfellow, Shlens, ICLR 2016) for any traceable PyTorch model.

    plan = n2n_fx.plan(model, example_inputs)           # spaces: .name .width .frozen
    student = n2n_fx.widen(model, example_inputs, factor=2.0, seed=0)
    student = n2n_fx.deepen(model, example_inputs, after=["layer.name"], seed=0)
    report = n2n_fx.verify(teacher, student, example_inputs)   # .ok .max_abs_err .max_rel_err
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .deeper import Net2DeeperNet
from .errors import (
    ConstraintError,
    DeepenError,
    FrozenSpaceError,
    N2NError,
    NotPreservedError,
    SpecError,
    TraceFailure,
    UnknownNodeError,
    UnknownSpaceError,
    WidthError,
)
from .frontend import as_inputs, own_tensors, trace
from .inference import Analysis, Space, infer
from .optim import widen_optimizer
from .planning import Plan
from .spec import load_table
from .verification import Report, verify
from .wider import Net2WiderNet

__version__ = "0.1.0"


def _none_defaults(model: torch.nn.Module, inputs: tuple) -> list[str]:
    """forward arguments past the example inputs that default to None (an optional mask)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params[len(inputs):]
            if p.default is None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _explain_optional_args(fn: Any) -> Any:
    """symbolic_trace makes every forward argument a placeholder, so `if mask is not None:` is traced
    as taken and the graph then fails on the default None: say so, with a fix widen accepts."""
    @functools.wraps(fn)
    def traced(model: torch.nn.Module, example_inputs: Any, **kw: Any) -> torch.fx.GraphModule:
        try:
            return fn(model, example_inputs, **kw)
        except TraceFailure:
            raise
        except N2NError as exc:
            missing = _none_defaults(model, as_inputs(example_inputs)) \
                if kw.get("frontend", "fx") == "fx" and exc.op == "forward" else []
            if not missing:
                raise
            raise TraceFailure(
                f"forward argument(s) {missing} default to None, but symbolic_trace traces every argument as a "
                f"tensor, so branches such as `if {missing[0]} is not None:` are traced as taken and the graph "
                f"fails on the default", op="symbolic_trace",
                fix="use frontend='export' (it specialises the default None), or pass the argument in "
                    "example_inputs") from exc
    return traced


trace = _explain_optional_args(trace)


def plan(model: torch.nn.Module, example_inputs: Any, *, factor: float | None = None,
         widths: dict[str, int] | None = None, seed: int = 0, symmetry: str = "none",
         noise_std: float = 0.01, leaf_modules: Sequence[type] = (), replication: str = "random",
         frontend: str = "fx") -> Plan:
    """Trace `model`, infer its spaces and plan their widths (current widths unless asked).

    replication='uniform' copies every unit k times (integer factors): what an exact optimizer
    hand-over needs (see widen_optimizer). frontend='export' traces with torch.export (models that
    only export; the graph is ATen-level and specialised to the example shapes)."""
    return _plan(model, example_inputs, factor, widths, seed, symmetry, noise_std, leaf_modules, False, replication,
                 frontend)


def _plan(model, example_inputs, factor, widths, seed, symmetry, noise_std, leaf_modules, share: bool,
          replication: str = "random", frontend: str = "fx") -> Plan:
    gm = trace(model, example_inputs, leaf_modules=leaf_modules, share_tensors=share, frontend=frontend)
    return Plan(infer(gm), factor=factor, widths=widths, seed=seed, symmetry=symmetry, noise_std=noise_std,
                replication=replication)


def widen(model: torch.nn.Module, example_inputs: Any, *, factor: float | None = None,
          widths: dict[str, int] | None = None, seed: int = 0, symmetry: str = "none",
          noise_std: float = 0.01, leaf_modules: Sequence[type] = (), replication: str = "random",
          frontend: str = "fx") -> torch.fx.GraphModule:
    """Net2WiderNet: a wider student computing the teacher's function (symmetry 'none'/'split').

    Give `factor` (a real >= 1, applied to every widenable space) or `widths` ({space: units});
    with neither, every widenable space doubles. The teacher is not modified.
    """
    if factor is None and not widths:
        factor = 2.0
    # the traced graph shares the teacher's tensors (no deep copy); the pass replaces the ones it
    # widens, and own_tensors clones the rest, so the teacher is never touched
    p = _plan(model, example_inputs, factor, widths, seed, symmetry, noise_std, leaf_modules, True, replication,
              frontend)
    student = Net2WiderNet(p)(p.analysis.gm).graph_module
    own_tensors(student, model)
    return student


def apply_plan(p: Plan) -> torch.fx.GraphModule:
    """Run the Net2WiderNet pass on a copy of the plan's graph (the plan stays reusable)."""
    return Net2WiderNet(p)(copy.deepcopy(p.analysis.gm)).graph_module


def deepen(model: torch.nn.Module, example_inputs: Any, *, after: Sequence[str], seed: int = 0,
           activation: str | None = "auto", batch_norm: bool = False, bn_mode: str = "eval",
           kernel_size: int = 3, leaf_modules: Sequence[type] = (), frontend: str = "fx",
           block: str = "identity", hidden: int | None = None) -> torch.fx.GraphModule:
    """Net2DeeperNet: insert an identity layer after each named node or module.

    block='identity' is the paper's identity layer (refused after a non-idempotent activation);
    block='residual' inserts x + W2 phi(W1 x) with W2 = 0, exact after any activation (`seed`
    draws W1; `hidden` is its width, default the feature width); block='gated' inserts a post-LN
    block x + alpha (LN(x + W2 phi(W1 x)) - x) behind a zero gate alpha.
    """
    if isinstance(after, str):
        after = [after]
    inputs = as_inputs(example_inputs)
    gm = trace(model, inputs, leaf_modules=leaf_modules, frontend=frontend)
    deeper = Net2DeeperNet(after, inputs, activation=activation, batch_norm=batch_norm, bn_mode=bn_mode,
                           kernel_size=kernel_size, block=block, hidden=hidden, seed=seed)
    return deeper(gm).graph_module


__all__ = [
    "Analysis", "ConstraintError", "DeepenError", "FrozenSpaceError", "N2NError", "Net2DeeperNet",
    "Net2WiderNet", "NotPreservedError", "Plan", "Report", "Space", "SpecError", "TraceFailure",
    "UnknownNodeError", "UnknownSpaceError", "WidthError", "apply_plan", "deepen", "infer", "load_table",
    "widen_optimizer",
    "plan", "trace", "verify", "widen",
]
