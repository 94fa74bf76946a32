"""Ops that move, cut, join or read axes: concat, stack, split, getitem, reshape, permute, reduce, shape_query, space_to_depth."""

from __future__ import annotations

from typing import Any

from torch.fx.passes.shape_prop import TensorMetadata

from ... import spaces as S
from ...spaces import Atom, Code, Fixed, Layout, Seg
from ...spec import OpSpec
from ..context import Context
from ..layouts import _bounds, _feeds_attention, _fold_batch, reshape_layouts
from ..registry import rule
from ..values import HeadGrowth, Rewrite, RewriteKind, Scalar, Val, _norm_dim, _walk, op_label


def _tensor_list(ctx: Context, a: dict[str, Any]) -> tuple[list[Val], tuple[int, ...], int] | None:
    """The tensors, output shape and normalised dim of cat/stack; None when not all are tensors."""
    tensors = [t for t in a.get("tensors", ()) if isinstance(t, Val)]
    meta = ctx.out_meta()
    if not tensors or len(tensors) != len(a.get("tensors", ())) or not isinstance(meta, TensorMetadata):
        return None
    shape = tuple(int(d) for d in meta.shape)
    return tensors, shape, _norm_dim(a.get("dim", 0), len(shape))


@rule("concat", passes=True)
def concat(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    parsed = _tensor_list(ctx, a)
    if parsed is None:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "cat of non-tensors"))
    tensors, shape, dim = parsed
    tensors = [t for t in tensors if t.ndim == len(shape)]  # legacy cat skips empty 1-D tensors
    layouts = []
    for k in range(len(shape)):
        if k == dim:
            layouts.append(tuple(s for t in tensors for s in S.normalize(t.layouts[k])))
        else:
            for t in tensors[1:]:
                S.unify(tensors[0].layouts[k], t.layouts[k], ctx.reason(Code.FIXED_COUPLING, f"cat axis {k}"))
            layouts.append(S.normalize(tensors[0].layouts[k]))
    return Val(shape, tuple(layouts))


@rule("stack")
def stack(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    parsed = _tensor_list(ctx, a)
    if parsed is None:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "stack of non-tensors"))
    tensors, shape, dim = parsed
    layouts = list(ctx.broadcast(tensors, tensors[0].shape, ctx.reason(Code.FIXED_COUPLING, "stack")))
    layouts.insert(dim, S.fixed(shape[dim]))
    return Val(shape, tuple(layouts))


@rule("split", sizes=True, passes=True)
def split(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, (list, tuple)):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "split of a non-tensor"))
    ctx.freeze_all([v for v in _walk(a) if isinstance(v, Scalar)], ctx.reason(Code.SIZE_USED, "split size"))
    dim = _norm_dim(a.get("dim", 0), x.ndim)
    if spec.options.get("squeeze"):  # unbind: every position of a fixed axis, the axis dropped
        if S.is_spaced(x.layouts[dim]):
            ctx.freeze_all(Val((1,), (x.layouts[dim],)), ctx.reason(Code.INDEX_ON_SPACE, f"unbinding axis {dim}"))
        rest = x.layouts[:dim] + x.layouts[dim + 1:]
        return tuple(Val(tuple(int(d) for d in m.shape), rest) for m in meta)
    sizes = [int(m.shape[dim]) for m in meta]
    parts = S.pieces(x.layouts[dim], sizes, ctx.reason(Code.CONSTRAINT, "split inside a stride-mapped unit"))
    ctx.rewrites.append(Rewrite(ctx.node.name, RewriteKind.SPLIT_SIZES, tuple(parts), dim))
    return tuple(Val(tuple(int(d) for d in m.shape), x.layouts[:dim] + (p,) + x.layouts[dim + 1:]) for m, p in zip(meta, parts))


@rule("getitem", sizes=True, passes=True)
def getitem(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    if "index" not in a:
        return _index_axis(ctx, a)
    x, index = a.get("input"), a.get("index")
    if isinstance(x, (list, tuple)):
        return x[index] if isinstance(index, (int, slice)) else ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "dynamic index"))
    if isinstance(x, Scalar):
        return x
    meta = ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "indexing"))
    idx = index if isinstance(index, tuple) else (index,)
    if any(isinstance(v, (Val, Scalar)) for v in _walk(idx)) or any(
            not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in idx):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "advanced or dynamic indexing"))
    n_real = sum(1 for i in idx if isinstance(i, (int, slice)))
    pos = list(range(len(idx)))  # each item's position in the index as written (None: filled in)
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        fill = x.ndim - n_real
        idx = idx[:e] + (slice(None),) * fill + idx[e + 1:]
        pos = pos[:e] + [None] * fill + pos[e + 1:]
    pad = x.ndim - sum(1 for i in idx if isinstance(i, (int, slice)))
    idx, pos = idx + (slice(None),) * pad, pos + [None] * pad
    shape = tuple(int(d) for d in meta.shape)
    layouts, k = [], 0
    for i, p in zip(idx, pos):
        if i is None:
            layouts.append(S.fixed(1))
            continue
        lay = x.layouts[k]
        if i == slice(None):
            layouts.append(lay)
        elif isinstance(i, slice) and S.is_spaced(lay) and p is not None and i.step in (None, 1) \
                and (bounds := _bounds(i.start, i.stop, x.shape[k], shape[len(layouts)])) is not None:
            # a literal slice of a space (a fused projection's q | k | v): the pieces are cut
            # into atoms of their own, and the student's bounds are their new offsets
            layouts.append(_slice_piece(ctx, lay, *bounds, x.shape[k], p))
        else:
            if S.is_spaced(lay):
                ctx.freeze_all(Val((1,), (lay,)), ctx.reason(Code.INDEX_ON_SPACE, f"indexing {i!r} on a space"))
            if isinstance(i, slice):
                _computed_bounds(ctx, i.start, i.stop, i.step)
                layouts.append(S.fixed(shape[len(layouts)]))
        k += 1
    return Val(shape, tuple(layouts))


def _computed_bounds(ctx: Context, *bounds: Any) -> None:
    """A slice bound computed from a width (h[:, :y.shape[1]]) that stays as written on the
    student would move with that width: the spaces it is computed from are frozen."""
    for b in bounds:
        if isinstance(b, Scalar) and b.taint:
            ctx.freeze_all(b, ctx.reason(Code.SIZE_USED, "a slice bound is computed from a width"))


def _slice_piece(ctx: Context, lay: Layout, start: int, end: int, size: int, where: int) -> Layout:
    """Positions start..end of a spaced axis as a piece of their own (refining the atoms they
    fall in); a Rewrite gives the student the piece's new bounds. `where`: the axis for
    slice/narrow, the index position for getitem."""
    why = ctx.reason(Code.INDEX_ON_SPACE, "a slice bound inside a stride-mapped unit")
    prefix, piece, suffix = S.pieces(lay, [start, end - start, size - end], why)
    ctx.rewrites.append(Rewrite(ctx.node.name, RewriteKind.SLICE_PIECE, (prefix, piece, suffix), where))
    return piece


def _start_end(ctx: Context, a: dict[str, Any], size: int) -> tuple[Any, Any]:
    """slice(input, dim, start, end) or narrow(input, dim, start, length): the bounds as written."""
    start, end = a.get("start"), a.get("end")
    if "narrow" in op_label(ctx.node, ctx.gm):
        if not (isinstance(start, int) and isinstance(end, int)):
            return start, Scalar()
        start = start + size if start < 0 else start  # narrow counts a negative start from the end
        end = start + end
    return start, end


def _index_axis(ctx: Context, a: dict[str, Any]) -> Any:
    """select / slice / narrow along one axis: a fixed axis may be indexed; a step-1 slice of a
    space with known bounds is a piece of it (see _slice_piece); select or a strided slice of a
    space freezes it."""
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or not isinstance(a.get("dim"), int):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "indexing with a computed axis"))
    dim = _norm_dim(a["dim"], x.ndim)
    shape = tuple(int(d) for d in meta.shape)
    lay, layouts = x.layouts[dim], list(x.layouts)
    if len(shape) == x.ndim - 1:  # select: one position of the axis, dropped
        if S.is_spaced(lay):
            ctx.freeze_all(Val((1,), (lay,)), ctx.reason(Code.INDEX_ON_SPACE, f"selecting on axis {dim}"))
        del layouts[dim]
    elif not S.is_spaced(lay):
        _computed_bounds(ctx, a.get("start"), a.get("end"), a.get("step"))
        layouts[dim] = lay if shape[dim] == x.shape[dim] else S.fixed(shape[dim])
    elif a.get("step", 1) in (None, 1) and (bounds := _bounds(*_start_end(ctx, a, x.shape[dim]), x.shape[dim], shape[dim])):
        layouts[dim] = _slice_piece(ctx, lay, *bounds, x.shape[dim], dim)
    else:
        ctx.freeze_all(Val((1,), (lay,)), ctx.reason(Code.INDEX_ON_SPACE, f"strided slice of axis {dim}"))
        _computed_bounds(ctx, a.get("start"), a.get("end"), a.get("step"))
        layouts[dim] = S.fixed(shape[dim])
    return Val(shape, tuple(layouts))


@rule("reshape", sizes=True, passes=True)
def reshape(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "reshape of a non-tensor"))
    shape = tuple(int(d) for d in meta.shape)
    node, table, gm = ctx.node, ctx.table, ctx.gm  # asked only by a split that could be heads
    layouts = _fold_batch(x.shape, x.layouts, shape) or reshape_layouts(
        x.shape, x.layouts, shape, ctx.reason, heads=lambda: ctx.heads == HeadGrowth.COUNT and _feeds_attention(node, table, gm))
    # the literal sizes and the first output dim they size: view sizes every dim, unflatten its new dims
    literal = None
    if "shape" in a:
        literal = a["shape"], 0, RewriteKind.VIEW_SHAPE
    elif "sizes" in a:
        literal = a["sizes"], _norm_dim(a.get("dim", 0), x.ndim), RewriteKind.UNFLATTEN_SIZES
    if literal is not None:
        sizes, first, kind = literal
        for k, (arg, lay) in enumerate(zip(sizes, layouts[first:])):
            if isinstance(arg, Scalar) and S.is_spaced(lay):
                # checked once the graph is read: SENet's y.view(b, c, 1, 1) sizes a space that a
                # later `x * y` makes the very space `c` was read from
                ctx.sizes.append((lay, arg, ctx.reason(Code.UNTRACKED_SIZE, f"size argument {k} is computed from another space")))
            elif isinstance(arg, Scalar) and arg.taint:
                # a fixed dim whose size is computed from a width: it would change on the student
                ctx.freeze_all(arg, ctx.reason(Code.SIZE_USED, f"size argument {k} depends on a width"))
        ctx.rewrites.append(Rewrite(ctx.node.name, kind, layouts[first:first + len(sizes)], dim=first))
    return Val(shape, layouts, x.param_axes if shape == x.shape else None)  # a no-op view keeps a parameter


@rule("permute", moves=True, passes=True)
def permute(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x = a.get("input")
    if not isinstance(x, Val):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "permute of a non-tensor"))
    if "dims" in a:
        perm = [_norm_dim(d, x.ndim) for d in a["dims"]]
    else:
        perm = list(range(x.ndim))
        if x.ndim >= 2:
            d0, d1 = _norm_dim(a.get("dim0", 0), x.ndim), _norm_dim(a.get("dim1", 1), x.ndim)
            perm[d0], perm[d1] = perm[d1], perm[d0]
    pa = tuple(x.param_axes[p] for p in perm) if x.param_axes else None
    return Val(tuple(x.shape[p] for p in perm), tuple(x.layouts[p] for p in perm), pa)


@rule("reduce")
def reduce(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "reduction"))
    dim = a.get("dim")
    dims = set(range(x.ndim)) if dim is None else {_norm_dim(d, x.ndim) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
    keep = bool(a.get("keepdim", False))
    over = spec.options.get("over_space", "freeze")  # mean: uniform; max/min: any g; sum: frozen
    layouts = []
    for k in range(x.ndim):
        if k in dims:
            lay = x.layouts[k]
            if S.is_spaced(lay) and over == "uniform" and not any(isinstance(g, Fixed) for g in S.normalize(lay)):
                ctx.uniform.append((ctx.node.name, lay))
            elif S.is_spaced(lay) and over != "any":
                ctx.freeze_all(Val((1,), (lay,)), ctx.reason(Code.REDUCED_OVER, f"reduction over axis {k}"))
            if spec.options.get("shape") == "kept":  # softmax: normalised over dim, not reduced
                layouts.append(S.fixed(x.shape[k]))
            elif keep:
                layouts.append(S.fixed(1))
        else:
            layouts.append(x.layouts[k])
    return Val(tuple(int(d) for d in meta.shape), tuple(layouts))


@rule("shape_query", sizes=True, moves=True)
def shape_query(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, node = a.get("input"), ctx.node
    if isinstance(ctx.out_meta(), TensorMetadata) or not isinstance(x, Val):
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "tensor-valued attribute"))
    taints = [frozenset(S.atoms_of(lay)) for lay in x.layouts]
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    name = name.split(".")[0]  # torch.ops.aten.sym_size.int (a dynamic export's size read) is "sym_size.int"
    if name == "getattr":
        return tuple(Scalar(t) for t in taints) if a.get("name") == "shape" else Scalar()
    if name == "len":
        return Scalar(taints[0])
    if name in ("size", "sym_size"):
        d = a.get("name")
        return tuple(Scalar(t) for t in taints) if d is None else Scalar(taints[_norm_dim(d, x.ndim)])
    if name == "numel":
        return Scalar(frozenset().union(*taints))
    return Scalar()


@rule("space_to_depth")
def space_to_depth(ctx: Context, spec: OpSpec, a: dict[str, Any]) -> Any:
    x, meta = a.get("input"), ctx.out_meta()
    if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or len(meta.shape) != x.ndim:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "space_to_depth of a non-tensor"))
    ch = _norm_dim(spec.channel_axis if spec.channel_axis is not None else 1, x.ndim)
    shape = tuple(int(d) for d in meta.shape)
    channels = _depth_layout(ctx, spec, x, ch, shape[ch])
    if channels is None:
        return ctx.stop(a, {}, ctx.reason(Code.UNSUPPORTED_OP, "channels are not whole copies of the input's"))
    layouts = []
    for k in range(x.ndim):
        if k == ch:
            layouts.append(channels)
        else:
            if S.is_spaced(x.layouts[k]):
                ctx.freeze_all(Val((1,), (x.layouts[k],)), ctx.reason(Code.POOLED_OVER, f"axis {k} is folded into channels"))
            layouts.append(S.fixed(shape[k]))
    return Val(shape, tuple(layouts))


def _depth_layout(ctx: Context, spec: OpSpec, x: Val, ch: int, out_channels: int) -> Layout | None:
    """The output channel layout of a space_to_depth op; None when the sizes do not fit it."""
    how, c = spec.options.get("channels", "copies"), x.shape[ch]
    if how == "merge":  # pixel_shuffle: input channel c*r^2 + k -> output channel c
        if c % out_channels:
            return None
        unit = Atom(out_channels, f"{ctx.node.name}:channels", free=True)
        S.unify(x.layouts[ch], (Seg(unit, c // out_channels),),
                ctx.reason(Code.RESHAPE_SPLITS_SPACE, "pixel_shuffle takes whole blocks of r^2 channels"))
        return S.normalize((Seg(unit),))
    if out_channels % c:
        return None
    if how == "stride":  # pixel_unshuffle: input channel c -> output channels c*r^2 .. c*r^2 + r^2 - 1
        return S.stride(x.layouts[ch], out_channels // c)
    return S.normalize(x.layouts[ch]) * (out_channels // c)  # a copy of every channel per patch offset
