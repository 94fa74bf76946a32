"""The public API, imported by `n2n_fx` on first use (so that `import n2n_fx`, and the pytest
plugin it registers, do not import torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .checkpoint import CheckpointError
from .checkpoint import grow_checkpoint as _grow_checkpoint
from .deeper import Net2DeeperNet
from .errors import (
    ConstraintError,
    DeepenError,
    FrozenSpaceError,
    HookError,
    InternalError,
    LiftedGraphError,
    N2NError,
    NotPreservedError,
    SpecError,
    StalePlanError,
    TraceFailure,
    UnknownNodeError,
    UnknownSpaceError,
    WidthError,
    typed,
)
from .frontend import as_inputs, as_module, own_tensors, trace
from .growth import GrowError
from .growth import grow as _grow
from .inference import Analysis, Space, infer
from .optim import widen_optimizer, widen_scheduler
from .planning import Plan
from .saving import load, save  # noqa: F401 (re-exported)
from .spec import load_table
from .tied import untie_parameters
from .verification import Report, verify
from .wider import Net2WiderNet


@typed("plan")
def plan(model: torch.nn.Module, example_inputs: Any, *, factor: float | None = None,
         widths: dict[str, int] | None = None, seed: int = 0, symmetry: str = "none",
         noise_std: float = 0.01, leaf_modules: Sequence[type] = (), replication: str = "random",
         frontend: str = "auto", mode: str = "eval", untie: bool = False, dynamic_shapes: Any = None,
         norm_fill: bool = False, heads: str = "count") -> Plan:
    """Trace `model`, infer its spaces and plan their widths (current widths unless asked).

    untie=True gives every tied parameter (one tensor under two names, e.g. a token embedding that
    is also the LM head) its own copy before planning, so a space frozen by the tie
    (param_role_conflict) widens exactly; the trade-off: the student stores the matrix twice and
    its copies are no longer tied (they drift apart under training).

    replication='uniform' copies every unit k times (integer factors): what an exact optimizer
    hand-over needs (see widen_optimizer). frontend='export' traces with torch.export (models that
    only export; the graph is ATen-level and specialised to the example shapes); 'auto' (the
    default) uses symbolic_trace where it traces and torch.export where it does not. The model is traced
    in `mode` semantics ('eval' unless asked), whatever mode the teacher is in. dynamic_shapes
    (torch.export's, or "auto"; see trace) keeps an exported graph's batch and sequence dims
    dynamic; the plan is the same as without it.

    A LayerNorm/RMSNorm-bound space asked (in `widths`) for a width that is not a multiple of its
    own grows by fill (see n2n_fx.fill): exact, eps unchanged; multiples keep uniform replication.
    A factor gives such spaces k = floor(factor) unless norm_fill=True (then fill, where it is exact).

    heads='count' (the default) grows attention by whole heads, head_dim kept; heads='dim' keeps the
    number of heads and grows head_dim (F.scaled_dot_product_attention): every q and k row is then
    scaled by sqrt(r / count), r = the teacher's scale over the student's, so the scores stay the
    teacher's. Exact where nothing but views, casts, biases and numbers lie between the projections
    and the scores; rotary embeddings and q/k norms freeze the head_dim with the op that breaks it."""
    return _plan(model, example_inputs, factor, widths, seed, symmetry, noise_std, leaf_modules, False, replication,
                 frontend, mode, untie, dynamic_shapes, norm_fill, heads)


def _plan(model, example_inputs, factor, widths, seed, symmetry, noise_std, leaf_modules, share: bool,
          replication: str = "random", frontend: str = "auto", mode: str = "eval", untie: bool = False,
          dynamic_shapes: Any = None, norm_fill: bool = False, heads: str = "count") -> Plan:
    gm = trace(model, example_inputs, leaf_modules=leaf_modules, share_tensors=share, frontend=frontend, mode=mode,
               dynamic_shapes=dynamic_shapes)
    if untie:
        untie_parameters(gm)  # on the private trace: the teacher keeps its tie
    return Plan(infer(gm, heads=heads), factor=factor, widths=widths, seed=seed, symmetry=symmetry,
                noise_std=noise_std, replication=replication, norm_fill=norm_fill)


@typed("widen")
def widen(model: torch.nn.Module, example_inputs: Any, *, factor: float | None = None,
          widths: dict[str, int] | None = None, seed: int = 0, symmetry: str = "none",
          noise_std: float = 0.01, leaf_modules: Sequence[type] = (), replication: str = "random",
          frontend: str = "auto", mode: str = "eval", untie: bool = False,
          dynamic_shapes: Any = None, norm_fill: bool = False, heads: str = "count") -> torch.fx.GraphModule:
    """Net2WiderNet: a wider student computing the teacher's function (symmetry 'none'/'split').

    Give `factor` (a real >= 1, applied to every widenable space) or `widths` ({space: units});
    with neither, every widenable space doubles. The teacher is not modified. untie=True: see plan
    (tied parameters become separate copies in the student, which then widens the tied space).
    dynamic_shapes (torch.export's, or "auto" for every input dim; see trace): an exported student
    then runs at other batch sizes and sequence lengths; without it (the default) it is specialised
    to the example shapes and refuses others. norm_fill: see plan (normalised spaces at a width
    that is not a multiple grow by fill). heads: see plan ('dim' grows head_dim instead of the heads).
    """
    if factor is None and not widths:
        factor = 2.0
    model = as_module(model)  # an ExportedProgram: the module it runs
    # the traced graph shares the teacher's tensors (no deep copy); the pass replaces the ones it
    # widens, and own_tensors clones the rest, so the teacher is never touched
    p = _plan(model, example_inputs, factor, widths, seed, symmetry, noise_std, leaf_modules, True, replication,
              frontend, mode, untie, dynamic_shapes, norm_fill, heads)
    student = Net2WiderNet(p)(p.analysis.gm).graph_module
    own_tensors(student, model)
    return student


@typed("apply_plan")
def apply_plan(p: Plan) -> torch.fx.GraphModule:
    """Run the Net2WiderNet pass on the plan's graph (the pass writes into a copy of it, so the plan
    stays reusable)."""
    return Net2WiderNet(p)(p.analysis.gm).graph_module


@typed("deepen")
def deepen(model: torch.nn.Module, example_inputs: Any, *, after: Sequence[str], seed: int = 0,
           activation: str | None = "auto", batch_norm: bool = False, bn_mode: str = "eval",
           kernel_size: int = 3, leaf_modules: Sequence[type] = (), frontend: str = "auto",
           block: str = "identity", hidden: int | None = None, mode: str = "eval",
           dynamic_shapes: Any = None) -> torch.fx.GraphModule:
    """Net2DeeperNet: insert an identity layer after each named node or module.

    block='identity' is the paper's identity layer (refused after a non-idempotent activation);
    block='residual' inserts x + W2 phi(W1 x) with W2 = 0, exact after any activation (`seed`
    draws W1; `hidden` is its width, default the feature width); block='gated' inserts a post-LN
    block x + alpha (LN(x + W2 phi(W1 x)) - x) behind a zero gate alpha. dynamic_shapes: see trace.
    """
    if isinstance(after, str):
        after = [after]
    inputs = as_inputs(example_inputs)
    # the trace shares the teacher's tensors; the pass inserts into a copy and clones what it keeps
    gm = trace(model, inputs, leaf_modules=leaf_modules, frontend=frontend, mode=mode, dynamic_shapes=dynamic_shapes,
               share_tensors=True)
    deeper = Net2DeeperNet(after, inputs, activation=activation, batch_norm=batch_norm, bn_mode=bn_mode,
                           kernel_size=kernel_size, block=block, hidden=hidden, seed=seed)
    return deeper(gm).graph_module


# the stage functions re-exported here raise only N2NErrors too
grow = typed("grow")(_grow)
grow_checkpoint = typed("grow_checkpoint")(_grow_checkpoint)
trace = typed("trace")(trace)
infer = typed("infer")(infer)
verify = typed("verify")(verify)
widen_optimizer = typed("widen_optimizer")(widen_optimizer)
widen_scheduler = typed("widen_scheduler")(widen_scheduler)

__all__ = [
    "Analysis", "CheckpointError", "ConstraintError", "DeepenError", "FrozenSpaceError", "GrowError", "HookError", "InternalError", "LiftedGraphError", "N2NError", "Net2DeeperNet",
    "Net2WiderNet", "NotPreservedError", "Plan", "Report", "Space", "SpecError", "StalePlanError", "TraceFailure",
    "UnknownNodeError", "UnknownSpaceError", "WidthError", "apply_plan", "deepen", "grow", "grow_checkpoint", "infer", "load_table",
    "widen_optimizer", "widen_scheduler",
    "load", "plan", "save", "trace", "verify", "widen",
]
