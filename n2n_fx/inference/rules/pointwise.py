"""Ops that keep every axis in place: elementwise, channelwise, normalize, constant, expand."""

from __future__ import annotations

from typing import Any

from torch.fx.passes.shape_prop import TensorMetadata

from ... import spaces as S
from ...spaces import Atom, Code, Fixed, Layout, Seg
from ...spec import OpSpec
from ..context import Context
from ..layouts import _broadcast_param_axes
from ..registry import rule
from ..values import Rewrite, RewriteKind, Role, Val, _norm_dim, _walk


@rule("elementwise", passes=True)
def elementwise(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    meta = ctx.out_meta()
    tensors = [v for v in _walk(a) if isinstance(v, Val)]
    if not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "elementwise op without a tensor result"))
    shape = tuple(int(d) for d in meta.shape)
    layouts = ctx.broadcast(tensors, shape, ctx.reason(
        Code.FIXED_COUPLING, "aligned with a fixed tensor (model input, constant or unknown op output)"))
    for v in tensors:
        for j in range(v.ndim):
            ctx.role(v, j, Role.CARRY)
    return Val(shape, layouts)


@rule("channelwise")
def channelwise(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or len(meta.shape) != x.ndim:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "unexpected operands for a channelwise op"))
    ch = _norm_dim(spec.channel_axis or 1, x.ndim)
    shape = tuple(int(d) for d in meta.shape)
    if "pad" in spec.options:  # F.pad: (left, right) per trailing dim, last dim first
        pad = a.get(spec.options["pad"])
        if not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
            return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "pad sizes are computed"))
        if ch >= x.ndim - len(pad) // 2:  # the pad reaches the channel axis: its units are not one space
            ctx.freeze_all(x, ctx.reason(Code.PADDED, "the pad reaches the channel axis"))
            return Val(shape, tuple(S.fixed(d) for d in shape))
    if "groups" in spec.options and _whole_groups(ctx, spec, a, x, ch) is None:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "GroupNorm's num_groups is computed or does not divide C"))
    layouts = []
    for k in range(x.ndim):
        if k == ch:
            layouts.append(S.normalize(x.layouts[k]))
        else:  # batch and spatial axes: pooled over, or reduced by batch statistics
            if S.is_spaced(x.layouts[k]):
                ctx.freeze_all(Val((x.shape[k],), (x.layouts[k],)), ctx.reason(Code.POOLED_OVER, f"axis {k} is pooled"))
            layouts.append(S.fixed(shape[k]))
    if not ctx.carry_per_unit(spec, a, x.layouts[ch], x.shape[ch]):  # PReLU(1) keeps num_parameters=1
        ctx.module_attr(spec, "channels", x.layouts[ch])
    return Val(shape, tuple(layouts))


def _whole_groups(ctx: Context, spec: OpSpec, a: dict[str, Any], x: Val, ch: int) -> Layout | None:
    """GroupNorm: channel c is unit c // (C/G) of a groups space, each unit C/G channels wide (as
    attention heads are head_dim wide): a copied group brings all its channels, so it keeps its
    teacher's mean and variance. A space that cannot move by whole groups (a stride-1 space
    already bound elsewhere, groups cut by a concat) is frozen. None: G is not a literal divisor."""
    n_groups, c = a.get(spec.options["groups"]), x.shape[ch]
    if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups <= 0 or c % n_groups:
        return None
    node = ctx.node
    owner = str(node.target) if node.op == "call_module" else node.name
    groups = Atom(n_groups, f"{node.name}:groups", label=f"{owner}.groups", free=True)
    S.unify(x.layouts[ch], (Seg(groups, c // n_groups),),
            ctx.reason(Code.CONSTRAINT, f"GroupNorm grows by whole groups of {c // n_groups} channels"))
    ctx.module_attr(spec, "groups", (Seg(groups),))
    if node.op == "call_function":  # literals of the call: num_groups (core ATen's C too)
        names = [n for n, _ in spec.signature]
        for arg, layout in ((spec.options["groups"], (Seg(groups),)), (spec.options.get("channels"), x.layouts[ch])):
            if arg is not None:
                ctx.rewrites.append(Rewrite(node.name, RewriteKind.ARG, (layout,), names.index(arg), arg))
    return S.normalize(x.layouts[ch])


@rule("normalize")
def normalize(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta, ns = a.get("input"), ctx.out_meta(), a.get("normalized_shape")
    ns = (ns,) if isinstance(ns, int) else ns
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or not isinstance(ns, (list, tuple)) \
            or not all(isinstance(d, int) for d in ns):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "normalisation with a computed shape"))
    if len(ns) != 1:
        return ctx.stop(a, {}, ctx.reason(Code.CONSTRAINT, f"normalised over {len(ns)} axes at once"))
    layout = x.layouts[-1]
    if S.is_spaced(layout):
        if any(isinstance(seg, Fixed) for seg in S.normalize(layout)):
            # fixed positions are not replicated: the mean over the axis would change
            ctx.freeze_all(Val((1,), (layout,)), ctx.reason(Code.CONSTRAINT, "normalised together with fixed positions"))
        else:
            ctx.uniform.append((ctx.node.name, layout))
    ctx.carry_per_unit(spec, a, layout, x.shape[-1])
    ctx.module_attr(spec, "normalized", layout)
    if ctx.node.op == "call_function" and "normalized_shape" in ctx.node.kwargs:
        ctx.freeze_all(Val((1,), (layout,)), ctx.reason(Code.UNSUPPORTED_OP, "normalized_shape given by keyword"))
    elif ctx.node.op == "call_function":
        ctx.rewrites.append(Rewrite(ctx.node.name, RewriteKind.NORMALIZED_SHAPE, (layout,)))
    return Val(tuple(int(d) for d in meta.shape), x.layouts)


@rule("expand", passes=True)
def expand(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "expand of a non-tensor"))
    shape = tuple(int(d) for d in meta.shape)
    other = a.get("other")  # expand_as: the student expands to `other`'s new shape, so axes align
    tensors = [x, other] if isinstance(other, Val) else [x]
    layouts = ctx.broadcast(tensors, shape, ctx.reason(Code.FIXED_COUPLING, "expand"))
    if any(isinstance(d, int) and d != -1 for d in a.get("size", ())):
        ctx.rewrites.append(Rewrite(ctx.node.name, RewriteKind.VIEW_SHAPE, layouts))  # literal sizes follow
    return Val(shape, layouts, _broadcast_param_axes(x, shape))


@rule("constant", sizes=True)
def constant(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    """zeros / ones: one value everywhere, so every axis may adopt the layout it meets (a fresh
    free atom per axis); the student's size literals follow the widths of those layouts."""
    meta, sizes = ctx.out_meta(), a.get("size", ())
    if not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "a constant without a tensor result"))
    shape = tuple(int(d) for d in meta.shape)
    layouts = []
    for k, d in enumerate(shape):
        literal = k < len(sizes) and isinstance(sizes[k], int)
        # a computed size stays as computed on the student: that axis keeps its size
        layouts.append((Seg(Atom(d, f"{ctx.node.name}:{k}", free=True)),) if d and literal else S.fixed(d))
    ctx.rewrites.append(Rewrite(ctx.node.name, RewriteKind.SIZES, tuple(layouts)))
    return Val(shape, tuple(layouts))
