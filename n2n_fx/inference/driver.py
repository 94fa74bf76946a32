"""The driver: one walk over the FX graph in order (as fx's Interpreter / ShapeProp walk it), each
call looked up in the rule table and handed to its kind's registered rule; then the solver."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

from ..errors import WidthError
from ..spaces import Code
from ..spec import OpSpec, RuleTable, bind
from . import registry, solver
from .context import Context
from .values import Analysis, Event, HeadGrowth, Scalar, Val, _get_attr, _walk

# Called with (spec, node, gm) for every call the table matched: the proofs record which entries
# (and which of their spellings) their models reach. Empty in normal use.
OBSERVERS: list[Callable[[OpSpec, torch.fx.Node, torch.nn.Module], None]] = []


class Inference:
    """Runs the rules over a traced graph whose nodes carry shape metadata; `ctx` holds the state."""

    def __init__(self, gm: torch.fx.GraphModule, table: RuleTable | None = None,
                 heads: HeadGrowth = HeadGrowth.COUNT) -> None:
        self.ctx = Context(gm, table, heads)

    def run(self) -> Analysis:
        ctx = self.ctx
        for node in ctx.gm.graph.nodes:
            ctx.node = node
            if node.op == "placeholder":
                ctx.vals[node.name] = ctx.from_meta(node.meta.get("tensor_meta"))
            elif node.op == "get_attr":
                obj = _get_attr(ctx.gm, node.target)
                ctx.vals[node.name] = ctx.param_val(node.target, obj) if isinstance(obj, torch.Tensor) else Scalar()
            elif node.op == "output":
                ctx.freeze_all(ctx.value(node.args), ctx.reason(Code.MODEL_OUTPUT, "bound to a model output"))
            else:
                ctx.vals[node.name] = self.call(node)
        ctx.node = None
        spaces = solver.solve(ctx)
        return Analysis(ctx.gm, ctx.vals, ctx.param_layouts, ctx.roles, ctx.grouped, ctx.ties,
                        ctx.rewrites, ctx.module_attrs, spaces, ctx.ops, ctx.uniform, ctx.links,
                        ctx.aliases, ctx.tied_heads, ctx.events, ctx.qk)

    def call(self, node: torch.fx.Node) -> Any:
        ctx = self.ctx
        args, kwargs = ctx.value(node.args), ctx.value(node.kwargs)
        has_tensor = any(isinstance(v, Val) for v in _walk((args, kwargs)))
        if node.op == "call_function" and not has_tensor and not isinstance(ctx.out_meta(), TensorMetadata) \
                and node.target is not operator.getitem \
                and getattr(node.target, "__module__", None) in ("_operator", "operator", "builtins"):
            # Python arithmetic on sizes (c * h * w): the result depends on whatever its inputs did
            ctx.ops[node.name] = "python"
            return Scalar(frozenset(a for v in _walk((args, kwargs)) if isinstance(v, Scalar) for a in v.taint))
        spec = ctx.table.lookup(node, ctx.gm)
        if spec is None:
            ctx.ops[node.name] = "unknown"
            return ctx.stop(args, kwargs, ctx.reason(Code.UNKNOWN_OP, "no entry in specs/ops.toml"))
        ctx.ops[node.name] = spec.name
        for observe in OBSERVERS:
            observe(spec, node, ctx.gm)
        info = registry.lookup(spec.kind)
        bound = ctx.bind_module(node, spec, args, kwargs) if node.op == "call_module" else bind(spec, args, kwargs)
        if not info.sizes:
            tainted = [v for v in _walk(bound) if isinstance(v, Scalar) and v.taint]
            if tainted:
                ctx.freeze_all(tainted, ctx.reason(Code.SIZE_USED, "a width-dependent size feeds a computation"))
        if info.raw:
            return info.fn(ctx, spec, {"args": args, "kwargs": kwargs})
        ctx._roled = set()
        out = apply(ctx, info, spec, bound)
        ctx.events[node.name] = Event(spec, bound, out)
        # a rule that moves axes or reads sizes does not read values; nor does a view or broadcast
        # that keeps a parameter's axes
        if not info.moves and not (isinstance(out, Val) and out.param_axes):
            for v in _walk(bound):
                if isinstance(v, Val) and v.param_axes:
                    for key in v.param_axes:
                        if key is not None and key not in ctx._roled:
                            ctx.reads.setdefault(key, node.name)
        return out


def apply(ctx: Context, info: registry.RuleInfo, spec: OpSpec, bound: dict[str, Any]) -> Any:
    """The kind's rule. Core ATen ops that return (out, statistics...) (native_layer_norm,
    native batch norm, max pooling with indices) name `outputs` in the table: the rule computes
    out; "stats" outputs are per-row statistics (fixed axes), "like" ones share out's layouts."""
    kind, meta = spec.options.get("outputs"), ctx.node.meta.get("tensor_meta") if ctx.node else None
    if kind is None or not isinstance(meta, (list, tuple)) or not meta:
        return info.fn(ctx, spec, bound)
    ctx._first_only = True
    try:
        out = info.fn(ctx, spec, bound)
    finally:
        ctx._first_only = False
    if not isinstance(out, Val):
        return out
    rest = [Val(out.shape, out.layouts) if kind == "like" and isinstance(m, TensorMetadata)
            and tuple(m.shape) == out.shape else ctx.from_meta(m) for m in meta[1:]]
    return (out, *rest)


def infer(gm: torch.fx.GraphModule, table: RuleTable | None = None, *,
          heads: HeadGrowth | str = HeadGrowth.COUNT) -> Analysis:
    """Run the remapping inference on a traced graph whose nodes carry shape metadata. `heads`:
    attention grows by whole heads ("count") or by wider heads ("dim", the heads kept)."""
    try:
        heads = HeadGrowth(heads)
    except ValueError:
        raise WidthError(f"heads must be one of {[h.value for h in HeadGrowth]}, got {heads!r}",
                         op="heads", fix="heads='count' grows attention by whole heads, heads='dim' by wider heads") from None
    return Inference(gm, table, heads).run()
