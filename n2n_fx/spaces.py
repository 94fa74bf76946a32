"""The space algebra the inference works in.

An *atom* is a set of hidden units that must be widened by one mapping g. Atoms form a union-find
(a residual add merges two) and can be *refined* into consecutive pieces on demand (a split cuts
one; a concat consumer sees several). A tensor axis carries a *layout*: a sequence of segments,
each either a run of an atom's units (every unit repeated `inner` times consecutively, the flatten
stride map) or a `Fixed` run of units that never change.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field


class Code(enum.StrEnum):
    """Why a space is frozen (str-valued: reports, JSON and messages print the same words)."""

    UNKNOWN_OP = "unknown_op"  # the table has no entry for the call
    UNSUPPORTED_OP = "unsupported_op"  # a stop entry, or operands the kind's rule cannot handle
    MODEL_OUTPUT = "model_output"  # bound to a model output (its width is the user's contract)
    SIZE_USED = "size_used"  # a width-dependent size feeds a computation
    UNTRACKED_SIZE = "untracked_size"  # a computed view size follows another space
    FIXED_COUPLING = "fixed_coupling"  # aligned with a fixed axis (input, constant, unknown op)
    POOLED_OVER = "pooled_over"  # the axis is pooled or mixed (spatial, sequence positions)
    PADDED = "padded"  # a pad reaches the channel axis
    REDUCED_OVER = "reduced_over"  # a reduction sums over the space
    BROADCAST = "broadcast"  # a width-1 space is broadcast against a wider axis
    RESHAPE_SPLITS_SPACE = "reshape_splits_space"  # a view splits or squeezes a space
    INDEX_ON_SPACE = "index_on_space"  # indexing, selecting or a strided slice on a space
    ACTIVATION_MATMUL = "activation_matmul"  # two activations contracted over a space
    CONSTRAINT = "constraint"  # a structural constraint (groups, norms, heads links)
    PARAM_ROLE_CONFLICT = "param_role_conflict"  # one parameter axis copied and contracted (tied)
    PARAM_READ = "param_read"  # a contracted parameter axis also read elsewhere


@dataclass(frozen=True)
class Reason:
    """Why a space is frozen: a stable code plus the node and op that caused it."""

    code: Code
    node: str
    op: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.code} at {self.node} ({self.op})"
        return f"{text}: {self.detail}" if self.detail else text


_ids = itertools.count()


@dataclass(eq=False)
class Atom:
    width: int
    origin: str  # qualified parameter axis or node that created it, for naming
    id: int = field(default_factory=lambda: next(_ids))
    parent: Atom | None = None  # union-find link
    children: tuple[Atom, ...] | None = None  # refinement (set on roots only)
    piece_of: tuple[Atom, int] | None = None  # (refined atom, offset) for naming
    frozen: list[Reason] = field(default_factory=list)
    free: bool = False  # a parameter axis not yet related to any other axis: may adopt a stride
    alias: tuple[Atom, int] | None = None  # (atom, k): this atom IS that atom's units, each k wide
    label: str = ""  # a space name given by the rule that made the atom (attention heads)

    def __repr__(self) -> str:
        return f"Atom#{self.id}({self.origin}, w={self.width})"


def find(a: Atom) -> Atom:
    root = a
    while root.parent is not None:
        root = root.parent
    while a.parent is not None:  # path compression
        a.parent, a = root, a.parent
    return root


def leaves(a: Atom) -> list[Atom]:
    r = find(a)
    if r.alias is not None:
        return leaves(r.alias[0])
    if r.children is None:
        return [r]
    return [leaf for c in r.children for leaf in leaves(c)]


def _refine_at(a: Atom, pos: int) -> None:
    """Cut atom `a` so that a piece boundary falls at unit `pos` (0 < pos < width)."""
    r = find(a)
    if r.children is None:
        left = Atom(pos, r.origin, piece_of=(r, 0), frozen=list(r.frozen), free=r.free)
        right = Atom(r.width - pos, r.origin, piece_of=(r, pos), frozen=list(r.frozen), free=r.free)
        r.children = (left, right)
        return
    offset = 0
    for c in r.children:
        w = find(c).width
        if offset < pos < offset + w:
            _refine_at(c, pos - offset)
            return
        offset += w


def _cut_points(a: Atom) -> list[int]:
    points, offset = [], 0
    for leaf in leaves(a):
        offset += leaf.width
        points.append(offset)
    return points[:-1]


def union(a: Atom, b: Atom) -> None:
    ra, rb = find(a), find(b)
    if ra is rb:
        return
    assert ra.width == rb.width, (ra, rb)
    if ra.children is None and rb.children is None:
        rb.parent = ra
        ra.frozen.extend(r for r in rb.frozen if r not in ra.frozen)
        ra.free = ra.free and rb.free
        ra.label = ra.label or rb.label
        return
    cuts = sorted(set(_cut_points(ra)) | set(_cut_points(rb)))
    for p in cuts:
        _refine_at(ra, p)
        _refine_at(rb, p)
    la, lb = leaves(ra), leaves(rb)
    for x, y in zip(la, lb, strict=True):
        union(x, y)
    ra, rb = find(ra), find(rb)
    if ra is not rb:  # both now stand for the same leaves; link the roots too
        rb.parent = ra


def freeze(a: Atom, reason: Reason) -> None:
    for leaf in leaves(a):
        if len(leaf.frozen) < 8 and reason not in leaf.frozen:
            leaf.frozen.append(reason)


@dataclass(frozen=True)
class Seg:
    atom: Atom
    inner: int = 1  # each unit of the atom spans `inner` consecutive positions

    @property
    def size(self) -> int:
        return find(self.atom).width * self.inner


@dataclass(frozen=True)
class Fixed:
    size: int


Segment = Seg | Fixed
Layout = tuple[Segment, ...]


def fixed(size: int) -> Layout:
    return (Fixed(size),) if size else ()


def width(layout: Layout) -> int:
    return sum(s.size for s in layout)


def normalize(layout: Layout) -> Layout:
    """Expand refined atoms into their current leaves; merge neighbouring fixed runs."""
    out: list[Segment] = []
    for s in layout:
        pieces: list[Segment] = list(_expand(s)) if isinstance(s, Seg) else [s]
        for p in pieces:
            if isinstance(p, Fixed) and out and isinstance(out[-1], Fixed):
                out[-1] = Fixed(out[-1].size + p.size)
            elif p.size:
                out.append(p)
    return tuple(out)


def _expand(s: Seg) -> list[Seg]:
    r = find(s.atom)
    if r.alias is not None:
        return _expand(Seg(r.alias[0], s.inner * r.alias[1]))
    if r.children is None:
        return [Seg(r, s.inner)]
    return [x for c in r.children for x in _expand(Seg(c, s.inner))]


def atoms_of(layout: Layout) -> list[Atom]:
    return [s.atom for s in normalize(layout) if isinstance(s, Seg)]


def is_spaced(layout: Layout) -> bool:
    return any(isinstance(s, Seg) for s in layout)


def boundaries(layout: Layout) -> set[int]:
    out, offset = set(), 0
    for s in normalize(layout):
        offset += s.size
        out.add(offset)
    return out


def cut(layout: Layout, pos: int, reason: Reason) -> Layout:
    """Make `pos` a segment boundary, refining the atom it falls in.

    A cut inside one unit's block of a stride-mapped segment cannot be honoured for that unit: the
    atom is refined so that the unit stands alone, and that unit is frozen (its positions become
    fixed); the units either side keep their map.
    """
    offset = 0
    layout = normalize(layout)
    for i, s in enumerate(layout):
        if offset < pos < offset + s.size:
            local = pos - offset
            if isinstance(s, Fixed):
                head, tail = Fixed(local), Fixed(s.size - local)
                return layout[:i] + (head, tail) + layout[i + 1:]
            if local % s.inner:
                unit, units = local // s.inner, find(s.atom).width
                if units > 1:  # isolate the one unit the cut falls in; its neighbours stay widenable
                    for edge in (unit, unit + 1):
                        if 0 < edge < units:
                            _refine_at(s.atom, edge)
                    return cut(normalize(layout), pos, reason)
                freeze(s.atom, reason)
                return layout[:i] + (Fixed(local), Fixed(s.size - local)) + layout[i + 1:]
            _refine_at(s.atom, local // s.inner)
            return cut(normalize(layout), pos, reason)
        offset += s.size
    return layout


def pieces(layout: Layout, sizes: list[int], reason: Reason) -> list[Layout]:
    """Cut a layout into consecutive pieces of the given sizes."""
    for p in itertools.accumulate(sizes[:-1]):
        layout = cut(layout, p, reason)
    return _split_fixed(layout, sizes)


def _split_fixed(layout: Layout, sizes: list[int]) -> list[Layout]:
    out: list[Layout] = []
    segs = list(normalize(layout))
    for size in sizes:
        piece: list[Segment] = []
        need = size
        while need:
            s = segs.pop(0)
            if s.size <= need:
                piece.append(s)
                need -= s.size
            else:  # only a fixed run can straddle (atom runs were cut above)
                assert isinstance(s, Fixed), s
                piece.append(Fixed(need))
                segs.insert(0, Fixed(s.size - need))
                need = 0
        out.append(tuple(piece))
    return out


def unify(a: Layout, b: Layout, reason: Reason) -> None:
    """Declare two layouts of one axis to be the same units: one g for aligned atoms.

    An atom aligned with fixed positions, or with another atom under a different stride, is
    frozen with `reason`.
    """
    assert width(a) == width(b), (a, b)
    # refine until no atom run of one side contains an atom-run edge of the other (fixed runs
    # need no cutting: they are split when paired)
    for _ in range(10_000):
        changed = False
        for p in _seg_edges(b):
            if _inside_seg(a, p):
                a, changed = cut(a, p, reason), True
        for p in _seg_edges(a):
            if _inside_seg(b, p):
                b, changed = cut(b, p, reason), True
        if not changed:
            break
    else:  # pragma: no cover - every cut adds a boundary, bounded by the width
        raise AssertionError("layout refinement did not converge")
    for x, y in zip(_split_fixed(a, _sizes(a, b)), _split_fixed(b, _sizes(a, b)), strict=True):
        sx, sy = x[0], y[0]
        if isinstance(sx, Seg) and isinstance(sy, Seg):
            if sx.inner == sy.inner:
                union(sx.atom, sy.atom)
            elif _adopt(sx, sy) or _adopt(sy, sx) or _common_block(sx, sy):
                # an atom that occurs again further on (cat(h, h) under a GroupNorm) is now an alias:
                # pair the rest in its new terms
                return unify(a, b, reason)
            else:
                freeze(sx.atom, reason)
                freeze(sy.atom, reason)
        elif isinstance(sx, Seg):
            freeze(sx.atom, reason)
        elif isinstance(sy, Seg):
            freeze(sy.atom, reason)


def _adopt(free: Seg, other: Seg) -> bool:
    """A fresh parameter axis meeting a stride-mapped space becomes an alias of it."""
    r = find(free.atom)
    if not r.free or r.children is not None or other.inner % free.inner:
        return False
    r.alias, r.free = (find(other.atom), other.inner // free.inner), False
    for reason in r.frozen:  # its units are the other's now: a frozen one freezes them
        freeze(other.atom, reason)
    return True


def _common_block(a: Seg, b: Seg) -> bool:
    """Two free atoms whose units are a and b positions wide, neither dividing the other (GroupNorms
    of groups of 8 and of 12 channels on one map): both become blocks of one new atom whose units
    are lcm(a, b) wide, so every copy moves whole units of both."""
    ra, rb = find(a.atom), find(b.atom)
    block = math.lcm(a.inner, b.inner)
    if not (ra.free and rb.free) or ra.children is not None or rb.children is not None or a.size % block:
        return False
    common = Atom(a.size // block, ra.origin, free=True, label=ra.label or rb.label)
    for r, seg in ((ra, a), (rb, b)):
        r.alias, r.free = (common, block // seg.inner), False
        for reason in r.frozen:
            freeze(common, reason)
    return True


def _seg_edges(layout: Layout) -> list[int]:
    edges, offset = [], 0
    for s in normalize(layout):
        if isinstance(s, Seg):
            edges += [offset, offset + s.size]
        offset += s.size
    return edges


def _inside_seg(layout: Layout, pos: int) -> bool:
    offset = 0
    for s in normalize(layout):
        if isinstance(s, Seg) and offset < pos < offset + s.size:
            return True
        offset += s.size
    return False


def _sizes(a: Layout, b: Layout) -> list[int]:
    points = sorted(boundaries(a) | boundaries(b))
    return [q - p for p, q in zip([0] + points[:-1], points)]


def stride(layout: Layout, factor: int) -> Layout:
    """Each unit now spans `factor` times more positions (flatten of trailing dims)."""
    return tuple(Seg(s.atom, s.inner * factor) if isinstance(s, Seg) else Fixed(s.size * factor)
                 for s in normalize(layout))
