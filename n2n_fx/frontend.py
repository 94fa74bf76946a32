"""Front end: trace a model into an FX graph with shapes on every node.

The graph is a private copy: symbolic_trace shares submodules with the model it traces, and the
teacher must never be mutated (not even its BatchNorm statistics during shape propagation).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import traceback
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp

from .errors import N2NError, TraceFailure
from .spec import load_table

_TORCH_DIR = os.path.dirname(torch.__file__)


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaf_modules: Sequence[type] = ()) -> None:  # default: unpickling re-creates it
        super().__init__()
        self._leaves = tuple(leaf_modules)
        # read before tracing: while it runs, fx swaps wrapped functions (Swin's attention) for
        # patched stand-ins, and a table first loaded then would record the stand-ins
        self._known = load_table().by_module

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        # a module class the rule table covers is kept whole (torch.nn ones are leaves anyway)
        return isinstance(m, self._leaves) or type(m) in self._known or super().is_leaf_module(m, qualname)


def as_inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise N2NError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}",
                   fix="pass example_inputs=torch.randn(batch, ...) or a tuple of such tensors")


def _offending_line(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def _tensors(m: torch.nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(), *m.buffers()]


def _copy(gm: torch.fx.GraphModule, share_tensors: bool) -> torch.fx.GraphModule:
    # a memo that maps each parameter and buffer to itself: the module tree is copied, the tensors not
    memo = {id(t): t for t in _tensors(gm)} if share_tensors else {}
    return copy.deepcopy(gm, memo)


def own_tensors(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Clone every parameter and buffer `student` still shares with `teacher` (after a pass that
    replaced the tensors it changed), so that training one never touches the other."""
    shared = {id(t) for t in _tensors(teacher)}
    clones: dict[int, torch.Tensor] = {}  # one clone per tensor: tied weights stay tied
    for module in student.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in shared:
                if id(p) not in clones:
                    clones[id(p)] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                module._parameters[name] = clones[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None and id(b) in shared:
                module._buffers[name] = clones.setdefault(id(b), b.clone())


FRONTENDS = ("fx", "export")


def trace(model: torch.nn.Module, example_inputs: Any, *, leaf_modules: Sequence[type] = (),
          concrete_args: dict[str, Any] | None = None, share_tensors: bool = False,
          frontend: str = "fx") -> torch.fx.GraphModule:
    """Trace `model` and annotate every node with `meta['tensor_meta']` from the example inputs.

    The graph module owns copies of the model's tensors. With `share_tensors=True` it holds the
    model's own tensors (no copy: the cost of a deep copy is that of the whole widening); only a
    pass that replaces tensors rather than writing into them may run on it, followed by
    `own_tensors` (this is what `n2n_fx.widen` does).

    frontend="export" runs torch.export instead of symbolic_trace, for models that only export:
    the graph is ATen-level (the table spells those ops too) and specialised to the example
    shapes and to the model's current mode (export a teacher in eval mode to widen it for eval).
    """
    if not isinstance(model, torch.nn.Module):
        raise N2NError(f"expected an nn.Module, got {type(model).__name__}", fix="pass the model object itself")
    if frontend not in FRONTENDS:
        raise N2NError(f"frontend must be one of {FRONTENDS}, got {frontend!r}", op="trace",
                       fix="use frontend='fx' (symbolic_trace) or 'export' (torch.export)")
    inputs = as_inputs(example_inputs)
    if frontend == "export" and not isinstance(model, torch.fx.GraphModule):
        gm = _copy(_export(model, inputs), share_tensors)
    elif isinstance(model, torch.fx.GraphModule) and not leaf_modules and concrete_args is None:
        gm = _copy(model, share_tensors)
    else:
        try:
            tracer = _Tracer(leaf_modules)
            graph = tracer.trace(model, concrete_args=concrete_args)
            gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
        except Exception as exc:  # symbolic tracing raises many types (TraceError, TypeError, ...)
            where = _offending_line(exc)
            raise TraceFailure(
                f"torch.fx.symbolic_trace failed on {type(model).__name__}: {exc}."
                + (f" Offending line: {where}." if where else ""),
                node=None, op="symbolic_trace",
                fix=("in-place item assignment (h[:, 0] = 0) is not traceable by symbolic_trace: use "
                     "frontend='export', or write it out of place (torch.where, masked_fill)"
                     if "item assignment" in str(exc) else
                     "data-dependent Python control flow cannot be traced: use frontend='export', or "
                     "leaf_modules=[TheModuleClass] to keep that module opaque (its spaces are then frozen); "
                     "n2n_fx.trace(..., concrete_args={...}) can also fix a branch")) from exc
        gm = _copy(gm, share_tensors)
    propagate_shapes(gm, inputs)
    return gm


def _export(model: torch.nn.Module, inputs: tuple) -> torch.fx.GraphModule:
    """torch.export, unlifted: parameters and buffers are get_attr nodes again, as in an fx trace."""
    try:
        exported = torch.export.export(model, inputs)
    except Exception as exc:  # export raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise TraceFailure(f"torch.export failed on {type(model).__name__}: {str(exc).splitlines()[0]}",
                           node=None, op="torch.export",
                           fix="make the forward exportable (torch.export's error names the line), or use "
                               "frontend='fx' (leaf_modules=[...] keeps an untraceable module opaque)") from exc
    return exported.module()


def propagate_shapes(gm: torch.fx.GraphModule, inputs: tuple) -> None:
    """Put meta['tensor_meta'] on every node, in eval mode, restoring training flags afterwards.

    Shapes are computed on the meta device (no arithmetic: a ResNet-50 forward costs more than
    the whole widening); a model with an op that has no meta kernel falls back to a real run.
    """
    flags = {name: m.training for name, m in gm.named_modules()}
    try:
        gm.eval()
        with torch.no_grad():
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback it raises
                    _meta_shape_prop(gm, inputs)
            except Exception:  # no meta kernel, data-dependent shapes, plain tensor attributes...
                ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        raise N2NError(f"the model does not run on the example inputs: {exc}", op="forward",
                       fix="pass example_inputs with the shapes and dtypes the model expects") from exc
    finally:
        for name, m in gm.named_modules():
            m.training = flags[name]


def _meta_shape_prop(gm: torch.fx.GraphModule, inputs: tuple) -> None:
    from torch.nn.utils.stateless import _reparametrize_module

    state = {k: torch.empty_like(v, device="meta") for k, v in (*gm.named_parameters(), *gm.named_buffers())}
    meta_inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    with _reparametrize_module(gm, state):
        ShapeProp(gm).propagate(*meta_inputs)
