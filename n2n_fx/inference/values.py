"""The values the inference passes around and returns: tensors' layouts (Val), sizes (Scalar),
the student's literal rewrites, the spaces, the Analysis; the role and rewrite-kind enums."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from .. import spaces as S
from ..spaces import Atom, Layout, Reason
from ..spec import OpSpec


class Role(enum.StrEnum):
    """How a call uses a parameter axis (str-valued: plans and messages print the same words)."""

    OUT = "out"  # produces the axis's units: rows copied through g
    CONTRACT = "contract"  # sums over the axis: columns gathered and divided by replica counts
    CARRY = "carry"  # one value per unit (bias, norm gain, statistics): copied through g
    GROUPED = "grouped"  # a grouped conv's input axis: contracted per group
    DIVIDE = "divide"  # a tied head's gain: divided by replica counts (TiedHead)


class RewriteKind(enum.StrEnum):
    """Which literal of the student's graph a Rewrite changes (wider.py dispatches on it)."""

    VIEW_SHAPE = "view_shape"  # view/reshape/expand sizes
    UNFLATTEN_SIZES = "unflatten_sizes"  # unflatten: the sizes of the dims it makes (from `dim` on)
    SPLIT_SIZES = "split_sizes"  # split/chunk: the pieces' sizes
    GROUPS = "groups"  # conv groups (positional argument 6)
    NORMALIZED_SHAPE = "normalized_shape"  # F.layer_norm's normalized_shape
    ARG = "arg"  # a width literal at argument position `dim` or keyword `arg` (num_heads)
    SLICE_PIECE = "slice_piece"  # a slice's bounds: (before, piece, after) on the sliced axis
    SIZES = "sizes"  # zeros / ones: literal sizes


class HeadGrowth(enum.StrEnum):
    """How attention grows: by whole heads (head_dim kept) or by wider heads (the heads count kept)."""

    COUNT = "count"  # a projection split into heads makes the heads a space; head_dim stays fixed
    DIM = "dim"  # the heads stay fixed; head_dim is a space whose q and k rows are rescaled (QKLink)


ParamAxis = tuple[str, int]


@dataclass
class Val:
    """A tensor value: its shape, a layout per axis, and which parameter axis each axis is."""

    shape: tuple[int, ...]
    layouts: tuple[Layout, ...]
    param_axes: tuple[ParamAxis | None, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Scalar:
    """A Python number computed in the graph; `taint` holds the atoms whose width it depends on."""

    taint: frozenset[Atom] = frozenset()


@dataclass
class Rewrite:
    """A literal in the student's graph that depends on widths (view sizes, split sizes, groups)."""

    node: str
    what: RewriteKind
    layouts: tuple[Layout, ...]  # slice_piece: (before, piece, after) on the sliced axis
    dim: int = 0  # split: the axis; arg: the argument's position; slice_piece: the axis (getitem: index position)
    arg: str = ""  # arg: the argument's name (when passed by keyword)


@dataclass
class ModuleAttr:
    module: str
    attr: str
    layout: Layout


@dataclass
class GroupedContract:
    """Grouped conv: rows of group k contract, on weight axis 1, with input piece k."""

    param: str
    in_pieces: list[Layout]
    out_pieces: list[Layout]


@dataclass
class HeadLink:
    """nn.MultiheadAttention ties widths: embed width (of `embed`) == head_dim x heads."""

    node: str
    embed: Layout
    heads: Atom
    head_dim: int


@dataclass
class QKLink:
    """sdpa contracting q and k over a head_dim space. Widened by g, the scores keep the teacher's
    when every q and k row of unit j is scaled by f = sqrt(r / c_j), r = s / s' (the teacher's
    scale over the student's): the replicas' sum_i f_i^2 = r undoes the new scale. v shares the
    factor when it shares the space; the consumers' columns then divide by c f instead of c."""

    node: str
    layout: Layout  # the head_dim axis of q and k
    scale: float | None  # the literal scale of the call; None: 1/sqrt(head_dim) at run time
    params: tuple[ParamAxis, ...] = ()  # the rows the factor goes on (set by the solver)


@dataclass
class TiedHead:
    """A tied table kept one tensor: its contracted use is not divided; `gains` (the final norm's
    weight and bias) are divided by replica counts instead."""

    param: ParamAxis
    gains: tuple[ParamAxis, ...]


@dataclass
class Event:
    """One call the rules handled: its table entry, bound operands and result (the very Val
    objects of the analysis, so a later pass can follow values by identity: fill.py)."""

    spec: OpSpec
    bound: dict[str, Any]
    out: Any


@dataclass
class Space:
    """A set of units widened by one g: what the user sees in the plan."""

    name: str
    width: int
    atom: Atom
    producers: list[str] = field(default_factory=list)
    carriers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    reasons: tuple[Reason, ...] = ()
    uniform: str = ""  # the norm node whose statistics allow only uniform k-fold replication
    attention: str = ""  # the attention node whose embed = heads x head_dim link holds this width

    @property
    def frozen(self) -> str | None:
        return str(self.reasons[0]) if self.reasons else None


@dataclass
class Analysis:
    gm: torch.fx.GraphModule
    vals: dict[str, Any]
    param_layouts: dict[ParamAxis, Layout]
    roles: dict[ParamAxis, set[Role]]
    grouped: list[GroupedContract]
    ties: list[list[Layout]]
    rewrites: list[Rewrite]
    module_attrs: list[ModuleAttr]
    spaces: list[Space]
    ops: dict[str, str]  # node name -> table entry name (or "unknown")
    uniform: list[tuple[str, Layout]] = field(default_factory=list)  # (norm node, normalised layout)
    links: list[HeadLink] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # tied: parameter -> its other names
    tied_heads: list[TiedHead] = field(default_factory=list)
    events: dict[str, Event] = field(default_factory=dict)  # node name -> the call as the rules saw it
    qk: list[QKLink] = field(default_factory=list)  # head_dim spaces contracted by sdpa (HeadGrowth.DIM)

    def axes_by_param(self) -> dict[str, list[int]]:
        """The bound axes of every parameter or buffer, in binding order."""
        out: dict[str, list[int]] = {}
        for param, axis in self.param_layouts:
            out.setdefault(param, []).append(axis)
        return out

    def space_of(self, atom: Atom) -> Space | None:
        root = S.find(atom)
        for sp in self.spaces:
            if S.find(sp.atom) is root:
                return sp
        return None


def op_label(node: torch.fx.Node, gm: torch.nn.Module) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _walk(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _walk(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    else:
        yield value


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


_MISSING = object()


def _get_attr(gm: torch.nn.Module, target: str, default: Any = _MISSING) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part) if default is _MISSING else getattr(obj, part, default)
    return obj
