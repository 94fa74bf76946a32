"""Small pure functions on layouts: reshape's stride map, head splits, batch folds, slice bounds."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

from .. import spaces as S
from ..spaces import Atom, Code, Fixed, Layout, Seg
from ..spec import OpSpec, RuleTable
from .registry import lookup
from .values import ParamAxis, Val


def _operand(spec: OpSpec, a: dict[str, Any], name: str) -> Any:
    """The bound argument that plays the rule's operand `name` (the table's `operands` may rename it)."""
    return a.get(spec.operands.get(name, name))


def _parent_module(param: str) -> str:
    """The module that holds a parameter's module ("enc.attn.q.weight" -> "enc.attn"), or ""."""
    return ".".join(param.split(".")[:-2])


def _owner(node: torch.fx.Node, w: Val) -> str:
    """A name for an attention's heads: its module, or the owner of its projection weight."""
    if node.op == "call_module":
        return str(node.target)
    param = w.param_axes[0][0] if w.param_axes and w.param_axes[0] else ""
    return _parent_module(param) or node.name


def qkv_rows(heads: Atom, head_dim: int) -> Layout:
    """The packed projection's rows: q | k | v, each laid out by head (a head's rows move together);
    q and k of one head must share its map (their dot product), and v with them (one output)."""
    return (Seg(heads, head_dim),) * 3




def _feeds_attention(node: torch.fx.Node, table: RuleTable, gm: torch.nn.Module, depth: int = 12) -> bool:
    """Does this node's value reach q, k or v of an sdpa call through layout-moving ops
    (transpose, contiguous, rotary products, ...)? Then a C -> (G, C/G) view splits heads. So does
    a bmm reached after a view that folds the heads into its batch (core ATen's decomposed sdpa)."""
    frontier, seen = [(node, False)], {node}
    for _ in range(depth):
        nxt = []
        for n, folded in frontier:
            folded = folded or _folds_batch(n, table, gm)
            for user in n.users:
                if user in seen:
                    continue
                seen.add(user)
                spec = table.lookup(user, gm) if user.op.startswith("call") else None
                if spec is None:
                    continue
                if spec.kind == "sdpa" or (spec.options.get("batched") and folded):
                    return True
                if lookup(spec.kind).passes and user.op != "call_module":
                    nxt.append((user, folded))
        frontier = nxt
    return False


def _broadcast_param_axes(x: Val, shape: tuple[int, ...]) -> tuple[ParamAxis | None, ...] | None:
    """A parameter expanded over new leading axes only (its own sizes kept) is still that parameter
    on its trailing axes: core ATen writes x @ W.t() on a batch as bmm(x, expand(W.t()))."""
    lead = len(shape) - x.ndim
    if not x.param_axes or lead < 0 or shape[lead:] != x.shape:
        return None
    return (None,) * lead + x.param_axes


def _fold_batch(in_shape: tuple[int, ...], in_layouts: tuple[Layout, ...],
                out_shape: tuple[int, ...]) -> tuple[Layout, ...] | None:
    """Fixed leading dims folded into a spaced dim and back, other dims kept: (B, H, L, D) <->
    (B*H, L, D), as core ATen's attention feeds bmm. Row b*H + h of the fold is unit h, so its
    layout is B copies of H's; None when the reshape is not such a fold (reshape_layouts decides)."""
    if len(in_shape) > len(out_shape):  # fold
        k = len(in_shape) - len(out_shape) + 1
        # a size-1 spaced dim makes the reading ambiguous ((B, 1, G, L, D) -> (B, G, L, D) is no fold
        # of B); a batch of one folds as any batch does
        if in_shape[k - 1] == 1 or in_shape[k:] != out_shape[1:] or not S.is_spaced(in_layouts[k - 1]) \
                or any(S.is_spaced(lay) for lay in in_layouts[:k - 1]):
            return None
        return (S.normalize(in_layouts[k - 1]) * _prod(in_shape[:k - 1]), *in_layouts[k:])
    if len(in_shape) < len(out_shape):  # unfold: the folded axis must be copies of one layout
        k = len(out_shape) - len(in_shape) + 1
        copies, width = _prod(out_shape[:k - 1]), out_shape[k - 1]
        if out_shape[k - 1] == 1 or in_shape[1:] != out_shape[k:] or not S.is_spaced(in_layouts[0]):
            return None
        unit = _tile_unit(S.normalize(in_layouts[0]), copies, width)
        return None if unit is None else (*(S.fixed(d) for d in out_shape[:k - 1]), unit, *in_layouts[1:])
    return None


def _period(layout: Layout) -> tuple[Layout, int] | None:
    """(unit, copies) for the shortest unit that `layout` repeats more than once, or None."""
    for n in range(1, len(layout) // 2 + 1):
        unit = _tile_unit(layout, len(layout) // n, S.width(layout[:n])) if len(layout) % n == 0 else None
        if unit is not None:
            return unit, len(layout) // n
    return None


def _tile_unit(layout: Layout, copies: int, width: int) -> Layout | None:
    """The layout that `layout` repeats `copies` times, `width` wide each; None if it does not."""
    key = lambda seg: (id(S.find(seg.atom)), seg.inner) if isinstance(seg, Seg) else seg.size  # noqa: E731
    if len(layout) % copies:
        return None
    n = len(layout) // copies
    unit = layout[:n]
    if S.width(unit) != width or any([key(g) for g in layout[c * n:(c + 1) * n]] != [key(g) for g in unit]
                                     for c in range(1, copies)):
        return None
    return unit


def _folds_batch(node: torch.fx.Node, table: RuleTable, gm: torch.nn.Module) -> bool:
    """Is this a view that folds leading dims into the batch ((B, H, L, D) -> (B*H, L, D))? Core
    ATen's decomposed sdpa feeds bmm so; a bmm of unfolded operands (rotary tables) is no attention."""
    spec = table.lookup(node, gm) if node.op.startswith("call") else None
    if spec is None or spec.kind != "reshape":
        return False
    src = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
    out, inp = node.meta.get("tensor_meta"), src.meta.get("tensor_meta") if src is not None else None
    return isinstance(out, TensorMetadata) and isinstance(inp, TensorMetadata) and len(inp.shape) > len(out.shape)


def _weights_used(node: torch.fx.Node) -> bool:
    """Does anything read element 1 (the attention weights) of this node's output tuple?"""
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem:
            return True  # the tuple escapes whole
        if user.args[1] != 0 and user.users:
            return True
    return False


def reshape_layouts(in_shape: tuple[int, ...], in_layouts: tuple[Layout, ...], out_shape: tuple[int, ...],
                    reason, heads: Callable[[], bool] = lambda: False) -> tuple[Layout, ...]:
    """Carry layouts through a reshape by grouping dims with equal products (the stride map).

    C -> (G, C/G) makes the G blocks one space by default (a channel shuffle); when `heads()` says
    the view feeds attention, G is the space instead, each unit C/G wide: whole heads."""
    out: list[Layout | None] = [None] * len(out_shape)
    if 0 in in_shape or 0 in out_shape:
        for lay in in_layouts:
            for atom in S.atoms_of(lay):
                S.freeze(atom, reason(Code.REDUCED_OVER, "empty tensor reshape"))
        return tuple(S.fixed(d) for d in out_shape)
    def spaced(k: int) -> bool:
        return S.is_spaced(in_layouts[k])

    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        if i < len(in_shape) and j < len(out_shape) and in_shape[i] == 1 == out_shape[j] and not spaced(i):
            # a size-1 dim kept in place (a batch of one): pair it, so that the output's 1 is not
            # mistaken below for the 1 of a (1, C) head split of the next input dim
            out[j] = S.fixed(1)
            i, j = i + 1, j + 1
            continue
        if i < len(in_shape) and in_shape[i] == 1 and not spaced(i):
            i += 1  # a fixed size-1 dim: nothing to carry
            continue
        if j < len(out_shape) and out_shape[j] == 1 and not (i < len(in_shape) and in_shape[i] == 1):
            if i < len(in_shape) and spaced(i) and j + 1 < len(out_shape) \
                    and out_shape[j + 1] == in_shape[i] and heads():  # C -> (1, C): a single head (multi-query k/v)
                out[j], out[j + 1] = _split_heads(in_layouts[i], 1, in_shape[i], reason)
                i, j = i + 1, j + 2
                continue
            out[j] = S.fixed(1)
            j += 1
            continue
        if i >= len(in_shape) or j >= len(out_shape):  # a width-1 space squeezed away
            for k in range(i, len(in_shape)):
                for atom in S.atoms_of(in_layouts[k]):
                    S.freeze(atom, reason(Code.RESHAPE_SPLITS_SPACE, "a width-1 space is squeezed away"))
            break
        gi, gj, pi, pj = [i], [j], in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(i)
                pi *= in_shape[i]
                i += 1
            else:
                gj.append(j)
                pj *= out_shape[j]
                j += 1
        for k in gj:
            out[k] = S.fixed(out_shape[k])
        group_spaced = [k for k in gi if spaced(k)]
        if not group_spaced:
            continue
        lead = in_layouts[gi[0]]
        real_in = [k for k in gi if in_shape[k] != 1 or spaced(k)]
        if len(real_in) == 1 and len(gj) == 1:
            out[gj[0]] = lead
        elif len(gj) == 1 and group_spaced == [gi[0]]:  # merge: the space leads, the rest is its stride
            out[gj[0]] = S.stride(lead, _prod(in_shape[k] for k in gi[1:]))
        elif len(gj) == 1 and group_spaced == [gi[-1]]:  # merge: fixed dims lead, one copy of the space each
            out[gj[0]] = S.normalize(tuple(in_layouts[gi[-1]]) * _prod(in_shape[k] for k in gi[:-1]))
        elif len(real_in) == 1 and _divisible(lead, _prod(out_shape[k] for k in gj[1:])):  # unflatten
            rest = _prod(out_shape[k] for k in gj[1:])
            out[gj[0]] = tuple(Seg(s.atom, s.inner // rest) if isinstance(s, Seg) else Fixed(s.size // rest)
                               for s in S.normalize(lead))
        elif len(real_in) == 1 and len(gj) == 2 and heads():  # C -> (heads, head_dim)
            out[gj[0]], out[gj[1]] = _split_heads(lead, out_shape[gj[0]], out_shape[gj[1]], reason)
        elif len(real_in) == 1 and len(gj) == 3 and heads():  # fused 3C -> (3, heads, head_dim): q | k | v
            groups, n_heads, head_dim = (out_shape[k] for k in gj)
            why = reason(Code.RESHAPE_SPLITS_SPACE, "fused projection blocks sharing one heads axis")
            blocks = S.pieces(lead, [n_heads * head_dim] * groups, why)
            for b in blocks[1:]:  # one heads axis holds every block: q, k and v heads share one map
                S.unify(blocks[0], b, why)
            out[gj[0]] = S.fixed(groups)
            out[gj[1]], out[gj[2]] = _split_heads(blocks[0], n_heads, head_dim, reason)
        elif len(real_in) == 1 and len(gj) >= 2:  # C -> (G, C/G) (a channel shuffle; wider heads: (H, d), (3, H, d))
            groups, size = _prod(out_shape[k] for k in gj[:-1]), out_shape[gj[-1]]
            why = reason(Code.RESHAPE_SPLITS_SPACE, "group blocks of a space cannot share one map")
            blocks = S.pieces(lead, [size] * groups, why)
            for b in blocks[1:]:  # the G blocks become one space: every block widens by one shared g
                S.unify(blocks[0], b, why)
            out[gj[-1]] = S.normalize(blocks[0])
        else:
            detail = "a space would be split across dims" if len(real_in) == 1 else "a space trails other dims in a merge"
            for k in group_spaced:
                for atom in S.atoms_of(in_layouts[k]):
                    S.freeze(atom, reason(Code.RESHAPE_SPLITS_SPACE, detail))
    return tuple(lay if lay is not None else S.fixed(d) for lay, d in zip(out, out_shape))


def _split_heads(lead: Layout, groups: int, size: int, reason) -> tuple[Layout, Layout]:
    """(heads, head_dim) layouts of a projection split for attention: a new heads space, each unit
    `size` wide, named after the projection's parent module; free, so it may join a kv group."""
    param = next((S.find(g.atom).origin for g in S.normalize(lead) if isinstance(g, Seg)), "").split(":")[0]
    owner = _parent_module(param) or param.split(".")[0]
    unit = Atom(groups, "heads", label=f"{owner}.heads" if owner else "", free=True)
    S.unify(lead, (Seg(unit, size),), reason(Code.RESHAPE_SPLITS_SPACE, "a projection split into heads"))
    return (Seg(unit),), S.fixed(size)


def _bounds(start: Any, end: Any, size: int, out: int) -> tuple[int, int] | None:
    """A step-1 slice's (start, end) on an axis of `size`, producing `out` positions; None when the
    bounds are computed and do not keep the whole axis (a piece whose place is unknown)."""
    if out == 0:
        return None
    if all(b is None or isinstance(b, int) for b in (start, end)):
        lo, hi, _ = slice(start, end).indices(size)
        return (lo, hi) if hi - lo == out else None
    return (0, size) if out == size else None


def _prod(values) -> int:
    p = 1
    for v in values:
        p *= v
    return p


def _divisible(layout: Layout, rest: int) -> bool:
    return all((s.inner % rest == 0) if isinstance(s, Seg) else (s.size % rest == 0) for s in S.normalize(layout))
