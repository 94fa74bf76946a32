"""n2n_fx: Net2Net (Chen, Goodfellow, Shlens, ICLR 2016) for any traceable PyTorch model.

    plan = n2n_fx.plan(model, example_inputs)           # spaces: .name .width .frozen
    student = n2n_fx.widen(model, example_inputs, factor=2.0, seed=0)
    student = n2n_fx.deepen(model, example_inputs, after=["layer.name"], seed=0)
    report = n2n_fx.verify(teacher, student, example_inputs)   # .ok .max_abs_err .max_rel_err
    big = n2n_fx.grow(teacher, target, example_inputs)  # into a bigger model of the family: type(target)
    n2n_fx.grow_checkpoint(src_dir, dst_dir, factor=2.0)  # sharded safetensors, a few tensors in memory
    n2n_fx.save(student, "student.pt", recipe=[...]); student = n2n_fx.load("student.pt")

The names are imported on first use (n2n_fx._api): `import n2n_fx` alone does not import torch,
so the pytest plugin the package registers costs nothing in test runs that do not use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Analysis", "CheckpointError", "ConstraintError", "DeepenError", "FrozenSpaceError", "GrowError", "HookError",
    "InternalError", "LiftedGraphError", "N2NError", "Net2DeeperNet", "Net2WiderNet", "NotPreservedError", "Plan", "Report", "Space",
    "SpecError", "StalePlanError", "TraceFailure", "UnknownNodeError", "UnknownSpaceError", "WidthError", "apply_plan", "deepen",
    "grow", "grow_checkpoint", "infer", "load", "load_table", "plan", "save", "trace", "verify", "widen",
    "widen_optimizer", "widen_scheduler",
]


SUBMODULES = ("checkpoint", "distributed", "growth", "hf", "testing")  # `n2n_fx.hf.grow` after `import n2n_fx`


def __getattr__(name: str) -> Any:
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in __all__:
        value = getattr(importlib.import_module("._api", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see
    from ._api import (
        Analysis,
        CheckpointError,
        ConstraintError,
        DeepenError,
        FrozenSpaceError,
        GrowError,
        HookError,
        InternalError,
        LiftedGraphError,
        N2NError,
        Net2DeeperNet,
        Net2WiderNet,
        NotPreservedError,
        Plan,
        Report,
        Space,
        SpecError,
        StalePlanError,
        TraceFailure,
        UnknownNodeError,
        UnknownSpaceError,
        WidthError,
        apply_plan,
        deepen,
        grow,
        grow_checkpoint,
        infer,
        load,
        load_table,
        plan,
        save,
        trace,
        verify,
        widen,
        widen_optimizer,
        widen_scheduler,
    )
