"""Attention: packed multi-head attention (nn.MultiheadAttention, Swin, MaxViT) and sdpa."""

from __future__ import annotations

from typing import Any

from torch.fx.passes.shape_prop import TensorMetadata

from ... import spaces as S
from ...spaces import Atom, Code, Seg
from ...spec import OpSpec
from .. import layouts as L
from ..context import Context
from ..layouts import _operand, _owner, _weights_used
from ..registry import rule
from ..values import HeadGrowth, HeadLink, QKLink, Rewrite, RewriteKind, Role, Scalar, Val


@rule("attention")
def attention(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    """Multi-head attention with a packed q/k/v projection (nn.MultiheadAttention, Swin's
    shifted_window_attention). Net2WiderNet grows it by whole heads: a copied head's q, k, v
    rows are its teacher's, so its softmax and output are the teacher head's; the output
    projection divides its columns by the copies."""
    op = lambda name: _operand(spec, a, name)  # noqa: E731
    q, k, v = op("query"), op("key"), op("value")
    w_in, b_in, w_out, b_out = op("in_weight"), op("in_bias"), op("out_weight"), op("out_bias")
    meta = ctx.out_meta()
    if not a.get("packed", True) or not isinstance(w_in, Val) or not isinstance(w_out, Val):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "separate q/k/v projections (kdim or vdim != embed_dim)"))
    if a.get("bias_k") is not None or a.get("add_zero_attn"):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "bias_k/bias_v or add_zero_attn append a key per head"))
    n_heads = a.get("num_heads")
    if not all(isinstance(t, Val) for t in (q, k, v)) or not isinstance(n_heads, int) \
            or not isinstance(meta, (list, tuple, TensorMetadata)):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "query, key and value must be tensors, num_heads a literal"))
    head_dim = w_in.shape[1] // n_heads
    for t in (q, k, v):  # attention mixes sequence positions (and batch rows stay fixed)
        for axis in range(t.ndim - 1):
            if S.is_spaced(t.layouts[axis]):
                ctx.freeze_all(Val((1,), (t.layouts[axis],)), ctx.reason(Code.POOLED_OVER, f"attention mixes axis {axis}"))
    why = ctx.reason(Code.FIXED_COUPLING, "attention features meet a fixed axis")
    for t in (q, k, v):  # the packed projection's columns read query, key and value alike
        S.unify(t.layouts[-1], w_in.layouts[1], why)
    heads = Atom(n_heads, f"{ctx.node.target}:heads", label=f"{_owner(ctx.node, w_in)}.heads")
    head = (Seg(heads, head_dim),)  # a head's head_dim rows move together
    S.unify(w_in.layouts[0], L.qkv_rows(heads, head_dim), why)
    S.unify(w_out.layouts[1], head, why)
    ctx.role(w_in, 1, Role.CONTRACT)
    ctx.role(w_in, 0, Role.OUT)
    ctx.role(w_out, 1, Role.CONTRACT)
    ctx.role(w_out, 0, Role.OUT)
    for b, w in ((b_in, w_in), (b_out, w_out)):
        if isinstance(b, Val):
            S.unify(w.layouts[0], b.layouts[0], why)
            ctx.role(b, 0, Role.CARRY)
    per_head = ctx.reason(Code.FIXED_COUPLING, "a per-head tensor is not a parameter or a heads space")
    for t, axis in ((op("head_bias"), -3), (op("head_scale"), 0), (op("head_table"), -1)):  # one per head
        if isinstance(t, Val):
            S.unify(t.layouts[axis], (Seg(heads),), per_head)
            ctx.role(t, axis, Role.CARRY)
    if ctx.heads == HeadGrowth.DIM:  # head_dim = embed / num_heads inside the op: no rescaled q, k rows here
        S.freeze(heads, ctx.reason(Code.CONSTRAINT, "heads='dim' keeps the heads, and this attention grows only by "
                                   "whole heads (its head_dim is embed width / num_heads)"))
    mask = a.get("attn_mask")
    if isinstance(mask, Val) and mask.ndim == 3:
        S.freeze(heads, ctx.reason(Code.CONSTRAINT, "a 3-D attn_mask holds one slice per head"))
    if not isinstance(meta, TensorMetadata) and _weights_used(ctx.node):  # (output, weights)
        S.freeze(heads, ctx.reason(Code.CONSTRAINT, "attention weights averaged over heads are used"))
    ctx.links.append(HeadLink(ctx.node.name, q.layouts[-1], heads, head_dim))
    for role_, layout in (("embed", q.layouts[-1]), ("kdim", k.layouts[-1]), ("vdim", v.layouts[-1]),
                          ("heads", (Seg(heads),)), ("proj_in", head), ("proj_out", w_out.layouts[0]),
                          ("qkv_in", q.layouts[-1]), ("qkv_out", L.qkv_rows(heads, head_dim))):
        ctx.module_attr(spec, role_, layout)
    if ctx.node.op == "call_function":  # num_heads is a literal of the call
        names = [n for n, _ in spec.signature]
        ctx.rewrites.append(Rewrite(ctx.node.name, RewriteKind.ARG, ((Seg(heads),),), names.index("num_heads"), "num_heads"))
    out_meta = meta if isinstance(meta, TensorMetadata) else meta[0]
    out = Val(tuple(int(d) for d in out_meta.shape), q.layouts[:-1] + (S.normalize(w_out.layouts[0]),))
    if isinstance(meta, TensorMetadata):
        return out
    return (out, ctx.from_meta(meta[1]) if len(meta) > 1 else Scalar())


@rule("sdpa")
def sdpa(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    """F.scaled_dot_product_attention on (..., heads, L, head_dim): q, k and v of one head go
    together (the heads axis is one space); head_dim and the positions stay fixed, so the
    softmax and its 1/sqrt(head_dim) scale see the teacher's numbers."""
    q, k, v, mask, meta = a.get("query"), a.get("key"), a.get("value"), a.get("attn_mask"), ctx.out_meta()
    if not all(isinstance(t, Val) and t.ndim >= 3 for t in (q, k, v)) or not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "sdpa needs (..., heads, L, head_dim) tensors"))
    if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "grouped-query attention (enable_gqa) has no rule yet"))
    for t in (q, k, v):  # positions are mixed
        if S.is_spaced(t.layouts[-2]):
            ctx.freeze_all(Val((1,), (t.layouts[-2],)), ctx.reason(Code.CONSTRAINT, "sdpa: positions must stay fixed"))
    scale = a.get("scale")
    if ctx.heads == HeadGrowth.COUNT:  # whole heads: a head_dim space (a head split the view rule did not
        for t in (q, k, v):            # see, e.g. past a long chain of views) stays as it was, fixed
            if S.is_spaced(t.layouts[-1]):
                ctx.freeze_all(Val((1,), (t.layouts[-1],)), ctx.reason(
                    Code.CONSTRAINT, "sdpa: heads='count' keeps head_dim (heads='dim' grows it)"))
    elif S.is_spaced(q.layouts[-1]) or S.is_spaced(k.layouts[-1]):  # wider heads
        # q and k rows of one unit meet in every score: one space, its rows rescaled (QKLink)
        S.unify(q.layouts[-1], k.layouts[-1], ctx.reason(Code.FIXED_COUPLING, "q and k share the head_dim they contract"))
        if scale is None or (isinstance(scale, (int, float)) and not isinstance(scale, bool)):
            ctx.qk.append(QKLink(ctx.node.name, q.layouts[-1], None if scale is None else float(scale)))
            _label_head_dim(ctx, q.layouts[-1])
            _label_head_dim(ctx, v.layouts[-1])
        else:
            ctx.freeze_all(Val((1,), (q.layouts[-1],)), ctx.reason(Code.CONSTRAINT, "sdpa: a computed scale with a wider head_dim"))
    # batch and heads axes broadcast like an elementwise op: q, k, v (and a per-head mask) of
    # one head share its map; a width-1 space broadcast over heads is frozen
    shape = tuple(int(d) for d in meta.shape)
    lead = [Val(t.shape[:-2], t.layouts[:-2]) for t in (q, k, v, mask) if isinstance(t, Val) and t.ndim >= 2]
    layouts = ctx.broadcast(lead, shape[:-2], ctx.reason(Code.FIXED_COUPLING, "q, k, v and mask of a head share its map"))
    return Val(shape, layouts + (q.layouts[-2], v.layouts[-1]))


def _label_head_dim(ctx: Context, layout: S.Layout) -> None:
    """Name a head_dim space after the module that owns its projection (`layers.0.attn.head_dim`)."""
    for atom in S.atoms_of(layout):
        root = S.find(atom)
        if not root.label:
            param = root.origin.split(":")[0]
            owner = L._parent_module(param) or param.rsplit(".", 1)[0]
            root.label = f"{owner}.head_dim"
