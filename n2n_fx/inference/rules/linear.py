"""Contractions: dense, matmul (bmm, addmm), conv, embedding."""

from __future__ import annotations

from typing import Any

from torch.fx.passes.shape_prop import TensorMetadata

from ... import spaces as S
from ...spaces import Code, Layout, Reason
from ...spec import OpSpec
from ..context import Context
from ..layouts import _operand, _period
from ..registry import rule
from ..values import GroupedContract, Rewrite, RewriteKind, Role, Scalar, Val, _norm_dim, _walk


@rule("dense")
def dense(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, w, b = a.get("input"), a.get("weight"), a.get("bias")
    if not (isinstance(x, Val) and isinstance(w, Val) and w.param_axes and w.ndim == 2):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "linear whose weight is not a parameter (computed in forward: a reparametrisation, a product)"))
    S.unify(x.layouts[-1], w.layouts[1], ctx.reason(Code.FIXED_COUPLING, "in-features meet a fixed axis"))
    ctx.role(w, 1, Role.CONTRACT)
    ctx.role(w, 0, Role.OUT)
    if isinstance(b, Val) and b.ndim:  # F.linear broadcasts its bias: (out,) or (1, out); a 0-d one is fixed
        S.unify(w.layouts[0], b.layouts[-1], ctx.reason(Code.FIXED_COUPLING, "bias"))
        if not ctx.role(b, b.ndim - 1, Role.CARRY):
            ctx.freeze_all(b, ctx.reason(Code.FIXED_COUPLING, "bias is computed, not a parameter"))
    ctx.module_attr(spec, "in", x.layouts[-1])
    ctx.module_attr(spec, "out", w.layouts[0])
    meta = ctx.out_meta()
    return Val(tuple(int(d) for d in meta.shape), x.layouts[:-1] + (S.normalize(w.layouts[0]),))


@rule("matmul")
def matmul(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, w = a.get("input"), a.get("other")
    meta = ctx.out_meta()
    if spec.options.get("batched") and isinstance(w, Val) and w.ndim == 3:
        return _bmm(ctx, x, w, meta)
    if not (isinstance(x, Val) and isinstance(w, Val) and w.ndim == 2 and x.ndim >= 2
            and w.param_axes and w.param_axes[0] and w.param_axes[1]):
        return ctx.stop(a, {}, ctx.reason(Code.ACTIVATION_MATMUL,
                                            "contraction of two activations (or a 1-D operand) has no rule yet"))
    S.unify(x.layouts[-1], w.layouts[0], ctx.reason(Code.FIXED_COUPLING, "contracted axis meets a fixed axis"))
    ctx.role(w, 0, Role.CONTRACT)
    ctx.role(w, 1, Role.OUT)
    b = a.get("bias")  # addmm: bias + x @ W
    if isinstance(b, Val):
        S.unify(w.layouts[1], b.layouts[-1], ctx.reason(Code.FIXED_COUPLING, "bias"))
        if not ctx.role(b, b.ndim - 1, Role.CARRY):
            ctx.freeze_all(b, ctx.reason(Code.FIXED_COUPLING, "bias is computed, not a parameter"))
    return Val(tuple(int(d) for d in meta.shape), x.layouts[:-1] + (S.normalize(w.layouts[1]),))


def _bmm(ctx: Context, x: Any, w: Val, meta: Any) -> Any:
    """bmm (N, L, K) x (N, K, M). A weight broadcast over N (core ATen's linear on 3-D input:
    expand(W.t())) contracts K as matmul does. Two activations: row n of the output reads only
    row n of each operand, so N is one space for both (heads folded into the batch by a view);
    a space on K would be summed over replicas: frozen."""
    if not (isinstance(x, Val) and x.ndim == 3 and isinstance(meta, TensorMetadata)):
        return ctx.stop((x, w), {}, ctx.reason(Code.ACTIVATION_MATMUL, "bmm of a non-3-D operand"))
    shape = tuple(int(d) for d in meta.shape)
    why = ctx.reason(Code.FIXED_COUPLING, "bmm batch rows meet a fixed axis")
    tiles = [_period(S.normalize(v.layouts[0])) for v in (x, w)]
    if tiles[0] and tiles[1] and tiles[0][1] == tiles[1][1] and S.width(tiles[0][0]) == S.width(tiles[1][0]):
        S.unify(tiles[0][0], tiles[1][0], why)  # folded heads: one copy first (a query head may join a kv group)
    batch = ctx.broadcast([Val(x.shape[:1], x.layouts[:1]), Val(w.shape[:1], w.layouts[:1])], shape[:1],
                           why)
    if w.param_axes and w.param_axes[0] is None and w.param_axes[1] and w.param_axes[2]:
        S.unify(x.layouts[-1], w.layouts[1], ctx.reason(Code.FIXED_COUPLING, "contracted axis meets a fixed axis"))
        ctx.role(w, 1, Role.CONTRACT)
        ctx.role(w, 2, Role.OUT)
        return Val(shape, batch + (x.layouts[1], S.normalize(w.layouts[2])))
    for lay in (x.layouts[2], w.layouts[1]):
        if S.is_spaced(lay):
            ctx.freeze_all(Val((1,), (lay,)), ctx.reason(Code.ACTIVATION_MATMUL, "two activations contracted over a space"))
    return Val(shape, batch + (x.layouts[1], w.layouts[2]))


@rule("conv")
def conv(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, w, b = a.get("input"), a.get("weight"), a.get("bias")
    groups = a.get("groups", 1)
    meta = ctx.out_meta()
    if not (isinstance(x, Val) and isinstance(w, Val) and w.param_axes and isinstance(groups, int)
            and isinstance(meta, TensorMetadata)):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "conv whose weight is not a parameter (computed in forward: a reparametrisation, a product)"))
    transposed = _transposed(spec, a)
    if transposed is None:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "whether the convolution is transposed is computed"))
    if transposed:
        return _conv_transposed(ctx, spec, x, w, b, groups, meta)
    shape = tuple(int(d) for d in meta.shape)
    ch = x.ndim - (w.ndim - 2) - 1
    c_in, c_out = x.shape[ch], w.shape[0]
    fixed_reason = ctx.reason(Code.FIXED_COUPLING, "conv channels meet a fixed axis")
    _freeze_spatial(ctx, x, ch)
    if groups == 1:
        S.unify(x.layouts[ch], w.layouts[1], fixed_reason)
        ctx.role(w, 1, Role.CONTRACT)
        ctx.role(w, 0, Role.OUT)
        out = S.normalize(w.layouts[0])
    elif groups == c_in:  # depthwise: output channel o reads input channel o // multiplier
        out = S.stride(x.layouts[ch], c_out // c_in)
        S.unify(out, w.layouts[0], fixed_reason)
        ctx.role(w, 0, Role.CARRY)
        _rewrite_groups(ctx, spec, x.layouts[ch])
    else:
        cut = ctx.reason(Code.CONSTRAINT, f"groups={groups}: a piece must not straddle groups")
        ins = S.pieces(x.layouts[ch], [c_in // groups] * groups, cut)
        outs = S.pieces(w.layouts[0], [c_out // groups] * groups, cut)
        ctx.role(w, 0, Role.OUT)
        ctx.role(w, 1, Role.GROUPED)
        ctx.grouped.append(GroupedContract(w.param_axes[0][0], ins, outs))
        ctx.ties.extend([ins, outs])
        out = S.normalize(w.layouts[0])
    _bias_and_attrs(ctx, spec, x, ch, b, out, fixed_reason)
    layouts = x.layouts[:ch] + (out,) + tuple(S.fixed(d) for d in shape[ch + 1:])
    return Val(shape, layouts)


def _freeze_spatial(ctx: Context, x: Val, ch: int) -> None:
    """A conv's spatial axes are mixed by its kernel: a space on one of them cannot pass."""
    for k in range(ch + 1, x.ndim):
        if S.is_spaced(x.layouts[k]):
            ctx.freeze_all(Val((1,), (x.layouts[k],)), ctx.reason(Code.POOLED_OVER, "spatial axis is a space"))


def _bias_and_attrs(ctx: Context, spec: OpSpec, x: Val, ch: int, b: Any, out: Layout, fixed_reason: Reason) -> None:
    """The bias is carried on the output channels; the module's in/out attributes follow the widths."""
    if isinstance(b, Val):
        S.unify(out, b.layouts[0], fixed_reason)
        if not ctx.role(b, 0, Role.CARRY):
            ctx.freeze_all(b, ctx.reason(Code.FIXED_COUPLING, "bias is computed, not a parameter"))
    ctx.module_attr(spec, "in", x.layouts[ch])
    ctx.module_attr(spec, "out", out)


def _transposed(spec: OpSpec, a: dict[str, Any]) -> bool | None:
    """Is this convolution transposed? The table says so (true) or names the argument that does."""
    flag = spec.options.get("transposed", False)
    flag = a.get(flag) if isinstance(flag, str) else flag
    return flag if isinstance(flag, bool) else None


def _conv_transposed(ctx: Context, spec: OpSpec, x: Val, w: Val, b: Any, groups: int, meta: TensorMetadata) -> Any:
    """ConvTranspose: weight (C_in, C_out/groups, *k), so axis 0 is contracted (rows gathered and
    divided by replica counts) and axis 1 produces the output channels; stride, padding,
    output_padding and dilation act on the spatial axes only. Depthwise: output channel
    c*m + j reads input channel c alone (the space passes through, x m)."""
    shape = tuple(int(d) for d in meta.shape)
    ch = x.ndim - (w.ndim - 2) - 1
    fixed_reason = ctx.reason(Code.FIXED_COUPLING, "conv channels meet a fixed axis")
    _freeze_spatial(ctx, x, ch)
    if groups == 1:
        S.unify(x.layouts[ch], w.layouts[0], fixed_reason)
        ctx.role(w, 0, Role.CONTRACT)
        ctx.role(w, 1, Role.OUT)
        out = S.normalize(w.layouts[1])
    elif groups == x.shape[ch]:
        out = S.stride(x.layouts[ch], w.shape[1])
        S.unify(x.layouts[ch], w.layouts[0], fixed_reason)
        ctx.role(w, 0, Role.CARRY)
        _rewrite_groups(ctx, spec, x.layouts[ch])
    else:
        ctx.freeze_all(x, ctx.reason(Code.UNSUPPORTED_OP, f"grouped transposed conv (groups={groups}) has no rule"))
        return ctx.from_meta(meta)
    _bias_and_attrs(ctx, spec, x, ch, b, out, fixed_reason)
    return Val(shape, x.layouts[:ch] + (out,) + tuple(S.fixed(d) for d in shape[ch + 1:]))


def _rewrite_groups(ctx: Context, spec: OpSpec, layout: Layout) -> None:
    node = ctx.node
    assert node is not None
    names = [n for n, _ in spec.signature]
    if node.op == "call_module":
        ctx.module_attr(spec, "groups", layout)
    elif names.index("groups") != 6:  # core ATen's convolution: groups after transposed, output_padding
        ctx.rewrites.append(Rewrite(node.name, RewriteKind.ARG, (layout,), names.index("groups"), "groups"))
    else:
        ctx.rewrites.append(Rewrite(node.name, RewriteKind.GROUPS, (layout,)))


@rule("embedding")
def embedding(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    w, idx = _operand(spec, a, "weight"), _operand(spec, a, "input")
    meta = ctx.out_meta()
    if not (isinstance(w, Val) and w.ndim == 2 and isinstance(idx, Val) and isinstance(meta, TensorMetadata)):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "an embedding needs a 2-D table and index tensor"))
    if a.get("max_norm") is not None:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "max_norm renormalises rows over the features"))
    ctx.freeze_all([v for v in _walk(a) if isinstance(v, Scalar)], ctx.reason(Code.SIZE_USED, "embedding size"))
    if any(S.is_spaced(lay) for lay in idx.layouts):
        ctx.freeze_all(idx, ctx.reason(Code.INDEX_ON_SPACE, "indices laid out along a space"))
    shape = tuple(int(d) for d in meta.shape)
    feature = _norm_dim(spec.options.get("feature_axis", -1), len(shape))
    layouts = [S.fixed(d) for d in shape]
    layouts[feature] = S.normalize(w.layouts[1])
    ctx.role(w, 1, Role.OUT)  # a parameter table's features are copied (a producer); rows are only looked up
    ctx.module_attr(spec, "out", w.layouts[1])
    return Val(shape, tuple(layouts))
