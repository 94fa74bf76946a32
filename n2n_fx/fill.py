"""Fill: a LayerNorm/RMSNorm-bound space grown to any width, exactly.

Uniform k-fold replication keeps a norm's statistics only for multiples of the width. Fill grows
a space of n units to any q > n: with s = sqrt(q / n), every value on the space is, in the
student, s**p * [teacher's n units, q - n fill units], where the fill units are MEAN (each is the
mean of the old units: a LayerNorm's input) or ZERO. Then the mean and variance (LayerNorm) or the
mean square (RMSNorm) over q units at p = 1 equal the teacher's over n: eps needs no change.

A small dataflow pass over the analysis (its Events, in graph order) gives every value a state,
On(fill, p) for a value with an axis on the space, Stat(p) for one without (s**p times the
teacher's; Stat(0) is exact), and every parameter axis on the space an AxisFill: gather through g,
set the new positions (copy, zero or the mean of the old ones) and multiply by s**p. How each op
moves states is the table's `fill` code (specs/ops.toml [fill]); an op without one, or a state its
code cannot justify, refuses with a ConstraintError that names the node.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NoReturn

from . import spaces as S
from .errors import ConstraintError, InternalError
from .inference import Analysis, ParamAxis, Space, Val, _norm_dim, _walk
from .spaces import Seg
from .spec import FILL_RULES


class Fill(enum.Enum):
    """What the new units of a value hold (before the factor s**p)."""

    MEAN = "mean"  # the mean of the old units: a LayerNorm's input
    ZERO = "zero"  # zero: an RMSNorm's input, every norm's output


class Rule(enum.StrEnum):
    """The table's `fill` codes (specs/ops.toml [fill])."""

    LINEAR = "linear"
    IDENTITY = "identity"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    POWER = "power"
    MEAN = "mean"
    LAYER_NORM = "layer_norm"
    RMS_NORM = "rms_norm"


assert {r.value for r in Rule} == set(FILL_RULES), "fill.Rule and spec.FILL_RULES must agree"

NORM_INPUT = {Rule.LAYER_NORM: Fill.MEAN, Rule.RMS_NORM: Fill.ZERO}  # what each norm needs


class NewRows(enum.Enum):
    """What a parameter axis holds at the new positions, before the factor s**power."""

    COPY = "copy"  # its g(j)'s entry (it multiplies zeros: any value is exact; a copy breaks no symmetry less)
    ZERO = "zero"
    MEAN = "mean"  # the mean of the old entries along the axis


@dataclass(frozen=True)
class AxisFill:
    """How one parameter axis on a filled space is remapped: gather through g, new positions
    `new`, every entry times s**power."""

    new: NewRows
    power: int


def produce(fill: Fill, power: int = 1) -> AxisFill:
    """A producer's rows (and bias, and an added per-unit parameter): s**p * [rows, fill of rows]."""
    return AxisFill(NewRows.MEAN if fill is Fill.MEAN else NewRows.ZERO, power)


def contract(fill: Fill, power: int) -> AxisFill:
    """A consumer's columns reading a value at s**power: divided by it; new columns zero where the
    input's new units are the mean (they would add it), free (copied) where they are zero."""
    return AxisFill(NewRows.ZERO if fill is Fill.MEAN else NewRows.COPY, -power)


def gain(power: int = 0) -> AxisFill:
    """A per-unit gain of a zero-filled value: old entries times s**power, new ones free."""
    return AxisFill(NewRows.COPY, power)


@dataclass(frozen=True)
class On:
    """A value with one axis on the space: s**power * [teacher, fill]."""

    fill: Fill
    power: int


@dataclass(frozen=True)
class Stat:
    """A value with no axis on the space: s**power times the teacher's."""

    power: int


EXACT = Stat(0)


@dataclass(frozen=True)
class Bad:
    """A value the pass cannot follow (a filled norm's statistics): refused where it is used."""

    node: str
    why: str


class _Param:
    """A parameter operand: its treatment is decided by the op that reads it."""


PARAM = _Param()


@dataclass(frozen=True, eq=False)
class Lift:
    """A parameter on the space broadcast or viewed (a class token expanded over the batch): the op
    that meets it with filled values decides its axis `axis`'s treatment."""

    param: Val
    axis: int


@dataclass
class SpaceFill:
    """A normalised space grown by fill: n -> q units, the producers' fill, and the AxisFill of
    every parameter axis on it."""

    name: str
    width: int
    new_width: int
    fill: Fill
    axes: dict[ParamAxis, AxisFill]

    @property
    def ratio(self) -> Fraction:
        """s**2 = q / n."""
        return Fraction(self.new_width, self.width)


def solve(an: Analysis, space: Space, new_width: int, fill: Fill | None = None) -> SpaceFill:
    """The fill plan of one space (raises ConstraintError where fill cannot be exact). `fill`: the
    producers' fill; by default MEAN if a LayerNorm reads the space, else ZERO, and the other one
    when that fails (a LayerNorm written out); the error is the first choice's."""
    if fill is not None:
        return _Solver(an, space, new_width, fill).run()
    first = producer_fill(an, space)
    try:
        return _Solver(an, space, new_width, first).run()
    except ConstraintError as exc:
        try:
            return _Solver(an, space, new_width, Fill.ZERO if first is Fill.MEAN else Fill.MEAN).run()
        except ConstraintError:
            raise exc from None


def producer_fill(an: Analysis, space: Space) -> Fill:
    """MEAN when a LayerNorm normalises the space (its input must hold the mean), else ZERO."""
    root = S.find(space.atom)
    for node, layout in an.uniform:
        ev = an.events.get(node)
        if ev is not None and ev.spec.fill == Rule.LAYER_NORM.value and \
                any(S.find(a) is root for a in S.atoms_of(layout)):
            return Fill.MEAN
    return Fill.ZERO


FILL_DISPATCH: dict[Rule, Callable[..., None]] = {}  # the table's fill code -> its rule (a _Solver method)


def fill_rule(code: Rule) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a _Solver method as the one rule of a fill code."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        if code in FILL_DISPATCH:
            raise ValueError(f"fill code {code} has two rules")
        FILL_DISPATCH[code] = fn
        return fn

    return register


class _Solver:
    def __init__(self, an: Analysis, space: Space, q: int, fill: Fill) -> None:
        self.an, self.space, self.q = an, space, q
        self.root = S.find(space.atom)
        self.fill = fill
        self.states: dict[int, Any] = {}
        # id of a mean's own output -> id of the mean-filled value it is the per-row mean of: only
        # that very value makes x - mean(x) zero-filled (a slice or view of it is another number per row)
        self.row_means: dict[int, int] = {}
        self.axes: dict[ParamAxis, AxisFill] = {}
        # gains whose tied head needs its input at s**-1 (the table is produced at s): s**-2
        self.tied = {g for t in an.tied_heads for g in t.gains}
        self.node = ""

    # ------------------------------------------------------------------ helpers
    def refuse(self, why: str) -> NoReturn:
        n = self.space.width
        raise ConstraintError(
            f"space {self.space.name!r} is normalised, so {self.q} (not a multiple of {n}) needs fill, "
            f"which cannot be exact at {self.node}: {why}", node=self.node or self.space.name, op="fill",
            fix=f"ask for a multiple of {n} (uniform replication), e.g. {n * max(2, round(self.q / n))}")

    def _hits(self, v: Val) -> list[int]:
        return [k for k, lay in enumerate(v.layouts) if any(S.find(a) is self.root for a in S.atoms_of(lay))]

    def on_axis(self, v: Val) -> int | None:
        """The axis of v on the space (None: none); refuses unless the space is that whole axis."""
        hits = self._hits(v)
        if not hits:
            return None
        if len(hits) > 1:
            self.refuse("a value has two axes on the space")
        lay = S.normalize(v.layouts[hits[0]])
        if len(lay) != 1 or not isinstance(lay[0], Seg) or lay[0].inner != 1:
            self.refuse("the space is part of an axis (a concatenation, flatten or slice of it), not the whole axis")
        return hits[0]

    def state(self, v: Any) -> Any:
        if not isinstance(v, Val):
            return EXACT  # numbers, sizes
        if v.param_axes and any(p is not None for p in v.param_axes):
            return PARAM
        st = self.states.get(id(v))
        if st is None:
            return EXACT if not self._hits(v) else Bad(self.node, "a value on the space that no fill rule made")
        return st

    def get(self, v: Any) -> Any:
        st = self.state(v)
        if isinstance(st, Bad):
            self.refuse(f"{st.why} (from {st.node})")
        return PARAM if isinstance(st, Lift) else st  # a view of a parameter reads as the parameter

    def set(self, out: Any, st: Any) -> None:
        if isinstance(out, Val):
            if isinstance(st, On) and self.on_axis(out) is None or isinstance(st, Stat) and self._hits(out):
                self.refuse("the op's result is not laid out as its rule says")
            self.states[id(out)] = st
        elif isinstance(out, (list, tuple)):
            for o in out:
                self.set(o, st)

    def treat(self, v: Val, axis: int, how: AxisFill) -> None:
        key = v.param_axes[axis] if v.param_axes else None
        if key is None:
            self.refuse("a computed tensor where fill needs a parameter")
        old = self.axes.get(key)
        if old is not None and old != how:
            self.refuse(f"{key[0]} axis {key[1]} would need two fills ({old} and {how})")
        self.axes[key] = how

    def param_axis(self, v: Any) -> int | None:
        """The space axis of a parameter operand (None: not on the space)."""
        return self.on_axis(v) if isinstance(v, Val) else None

    def axis_on(self, v: Val, k: int) -> bool:
        """Is axis k of v (a parameter's) the space? Refuses when the space is only part of it."""
        lay = S.normalize(v.layouts[k])
        if not any(S.find(a) is self.root for a in S.atoms_of(lay)):
            return False
        if len(lay) != 1 or not isinstance(lay[0], Seg) or lay[0].inner != 1:
            self.refuse("the space is part of a parameter axis (a concatenation or piece), not the whole axis")
        return True

    # ------------------------------------------------------------------ driver
    def run(self) -> SpaceFill:
        an = self.an
        for node in an.gm.graph.nodes:
            self.node = node.name
            if node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                for a in node.all_input_nodes:
                    for v in _walk(an.vals.get(a.name)):
                        if self.get(v) not in (EXACT, PARAM):
                            self.refuse("a filled or rescaled value is a model output")
                continue
            ev = an.events.get(node.name)
            if ev is not None and ev.spec.kind == "getitem" and isinstance(ev.bound.get("input"), (list, tuple)):
                continue  # a tuple's element keeps its state (a Bad one is refused where it is used)
            operands = [v for v in _walk(ev.bound if ev is not None else
                                         [an.vals.get(a.name) for a in node.all_input_nodes]) if isinstance(v, Val)]
            states = [self.get(v) for v in operands]
            touched = any(st not in (EXACT, PARAM) for st in states) or any(
                st is PARAM and self._hits(v) for v, st in zip(operands, states))
            out_on = any(isinstance(o, Val) and self._hits(o) for o in _walk(ev.out if ev is not None else ()))
            if not touched and not out_on:
                continue
            if ev is None:
                self.refuse("an op the table does not know reads a filled or rescaled value")
            if ev.spec.kind == "shape_query":
                continue  # reads sizes and metadata, not values (the sizes are the analysis's business)
            if isinstance(ev.out, Val) and ev.out.param_axes and any(p is not None for p in ev.out.param_axes):
                continue  # a view of a parameter (W.t()): the op that reads it decides
            if not ev.spec.fill:
                self.refuse(f"{ev.spec.name} has no fill rule in specs/ops.toml (a nonlinear or "
                            f"unjustified op on the space)")
            rule = Rule(ev.spec.fill)
            FILL_DISPATCH[rule](self, ev.spec, ev.bound, ev.out)
        for (param, axis), layout in an.param_layouts.items():
            if any(S.find(a) is self.root for a in S.atoms_of(layout)):
                self.node = param
                if (param, axis) not in self.axes:
                    self.refuse(f"parameter {param} axis {axis} is on the space, but no fill rule decided it")
                lay = S.normalize(layout)
                if len(lay) != 1 or not isinstance(lay[0], Seg) or lay[0].inner != 1:
                    self.refuse(f"parameter {param} axis {axis} holds the space as part of the axis")
        return SpaceFill(self.space.name, self.space.width, self.q, self.fill, dict(self.axes))

    # ------------------------------------------------------------------ linear maps
    def _contract(self, x: Val, w: Val, w_in: int, x_axis: int) -> None:
        """x's axis `x_axis` contracted against w's axis `w_in`."""
        xs, k = self.get(x), self.on_axis(x)
        if k is None:
            if xs != EXACT:
                self.refuse("a rescaled statistic is contracted")
            return
        if k != x_axis or not isinstance(xs, On):
            self.refuse("the space is not the contracted axis")
        key = w.param_axes[w_in] if w.param_axes else None
        old = self.axes.get(key) if key is not None else None
        if old is None:
            self.treat(w, w_in, contract(xs.fill, xs.power))
        elif not (old.power + xs.power == 0 and (xs.fill is Fill.ZERO or old.new is NewRows.ZERO)):
            # a table both produced and contracted (a tied head): the head's input must cancel its factor
            self.refuse(f"{key[0]} is read as a table at s^{old.power} and contracted against a "
                        f"{xs.fill.value}-filled input at s^{xs.power}: the products do not cancel")

    def _produce(self, w: Val, w_out: int, bias: Any, out: Any) -> None:
        if self.axis_on(w, w_out):
            self.treat(w, w_out, produce(self.fill))
            if isinstance(bias, Val):
                if not self.axis_on(bias, bias.ndim - 1):
                    self.refuse("a producer's bias is not laid out on the space")
                self.treat(bias, bias.ndim - 1, produce(self.fill))
            self.set(out, On(self.fill, 1))
        else:
            self.set(out, EXACT)

    @fill_rule(Rule.LINEAR)
    def rule_linear(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        kind = spec.kind
        if kind == "dense":
            x, w = a.get("input"), a.get("weight")
            self._contract(x, w, 1, x.ndim - 1)
            self._produce(w, 0, a.get("bias"), out)
        elif kind == "matmul":
            x, w = a.get("input"), a.get("other")
            if not (isinstance(w, Val) and w.param_axes and isinstance(x, Val)):
                self.refuse("a product of two activations on the space")
            w_in, w_out = (1, 2) if w.ndim == 3 else (0, 1)
            self._contract(x, w, w_in, x.ndim - 1)
            self._produce(w, w_out, a.get("bias"), out)
        elif kind == "conv":
            x, w = a.get("input"), a.get("weight")
            if a.get("groups", 1) != 1:
                self.refuse("a grouped or depthwise conv on the space")
            self._contract(x, w, 1, x.ndim - (w.ndim - 2) - 1)
            self._produce(w, 0, a.get("bias"), out)
        elif kind == "attention":
            self._attention(spec, a, out)
        elif kind == "embedding":
            w = a.get(spec.operands.get("weight", "weight"))
            self._produce(w, 1, None, out)
        elif kind == "getitem" and isinstance(a.get("input"), (list, tuple)):
            return  # a tuple's element keeps the state it has
        elif kind in ("permute", "reshape", "getitem", "expand", "concat", "split"):
            tensors = [v for v in _walk(a.get("tensors", a.get("input"))) if isinstance(v, Val)]
            lifts = [self._lift(v) for v in tensors]
            lifts = [lift for lift in lifts if lift is not None]
            if lifts and len(tensors) == 1 and kind != "concat":  # a view of a parameter on the space
                self.states[id(out)] = lifts[0] if isinstance(out, Val) else self.refuse("a split parameter")
                return
            states = {self.get(v) for v in tensors if self._lift(v) is None} - {PARAM}
            if len(states) != 1:
                self.refuse(f"{spec.name} joins values in different fill states")
            st = states.pop()
            if lifts:  # cat([class token, stream]): the token is one more produced row
                if not isinstance(st, On):
                    self.refuse(f"{spec.name} of a parameter on the space and values that are not on it")
                for lift in lifts:
                    self.treat(lift.param, lift.axis, produce(st.fill, st.power))
            self.set(out, st)
        else:
            self.refuse(f"{spec.name}: kind {kind} has no fill rule")

    def _lift(self, v: Any) -> Lift | None:
        """A parameter (or a view of one) on the space, as a Lift; None otherwise."""
        st = self.state(v)
        if isinstance(st, Lift):
            return st
        if st is PARAM and isinstance(v, Val) and (k := self.on_axis(v)) is not None:
            return Lift(v, k)
        return None

    def _attention(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        """nn.MultiheadAttention: the packed projection contracts query, key and value (one state),
        the output projection produces the space; the averaged weights are not followed."""
        op = lambda name: a.get(spec.operands.get(name, name))  # noqa: E731
        q, k, v, w_in, w_out = op("query"), op("key"), op("value"), op("in_weight"), op("out_weight")
        if len({self.get(t) for t in (q, k, v)}) != 1:
            self.refuse("query, key and value in different fill states")
        for t in (q, k, v):
            self._contract(t, w_in, 1, t.ndim - 1)
        first = out[0] if isinstance(out, (list, tuple)) else out
        self._produce(w_out, 0, op("out_bias"), first)
        if isinstance(out, (list, tuple)):
            for o in out[1:]:
                if isinstance(o, Val):
                    self.states[id(o)] = Bad(self.node, "attention weights of a filled space")

    # ------------------------------------------------------------------ norms and statistics
    def _norm(self, need: Fill, spec: Any, a: dict[str, Any], out: Any) -> None:
        x = a.get("input")
        xs = self.get(x)
        if not isinstance(xs, On) or self.on_axis(x) != x.ndim - 1:
            self.refuse(f"{spec.name} normalises a value that is not on the space's last axis")
        if xs.fill is not need:
            why = (" (a post-norm residual: a norm's zero-filled output was added to the stream)"
                   if need is Fill.MEAN else " (a LayerNorm and an RMSNorm share the space)")
            self.refuse(f"{spec.name} needs a {need.value}-filled input, got a {xs.fill.value}-filled one{why}")
        if xs.power != 1:
            self.refuse(f"{spec.name} reads its input at s^{xs.power}: its eps would change")
        weight, bias = a.get("weight"), a.get("bias")
        power = 1
        if isinstance(weight, Val):
            g = -2 if weight.param_axes and weight.param_axes[0] in self.tied else 0
            self.treat(weight, 0, gain(g))
            power += g
        if isinstance(bias, Val):
            self.treat(bias, 0, produce(Fill.ZERO, power))
        if isinstance(out, (list, tuple)):  # native_layer_norm: (out, mean, rstd)
            self.set(out[0], On(Fill.ZERO, power))
            for o in out[1:]:
                if isinstance(o, Val):
                    self.states[id(o)] = Bad(self.node, "the statistics of a filled norm")
        else:
            self.set(out, On(Fill.ZERO, power))

    @fill_rule(Rule.LAYER_NORM)
    def rule_layer_norm(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        self._norm(NORM_INPUT[Rule.LAYER_NORM], spec, a, out)

    @fill_rule(Rule.RMS_NORM)
    def rule_rms_norm(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        self._norm(NORM_INPUT[Rule.RMS_NORM], spec, a, out)

    @fill_rule(Rule.MEAN)
    def rule_mean(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        x, dim = a.get("input"), a.get("dim")
        xs = self.get(x)
        if xs is PARAM:
            self.refuse("the mean of a parameter on the space")
        if isinstance(xs, Stat):
            self.set(out, Stat(xs.power))
            return
        k = self.on_axis(x)
        dims = set(range(x.ndim)) if dim is None else {
            _norm_dim(d, x.ndim) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        if k not in dims:
            self.set(out, xs)
        elif xs.fill is Fill.MEAN:  # (n * m + (q - n) * m) / q = m
            self.set(out, Stat(xs.power))
            if dims == {k} and isinstance(out, Val):  # over the units alone: each row's own mean
                self.row_means[id(out)] = id(x)
        else:  # n / q = s**-2
            self.set(out, Stat(xs.power - 2))

    # ------------------------------------------------------------------ elementwise
    def _pair(self, a: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
        x, y = a.get("input"), a.get("other")
        return x, y, self.get(x), self.get(y)

    @fill_rule(Rule.IDENTITY)
    def rule_identity(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        x = a.get("input")
        if (lift := self._lift(x)) is not None and isinstance(out, Val):
            self.states[id(out)] = lift  # a cast of a parameter on the space: still that parameter
            return
        st = self.get(x)
        if st is PARAM:
            self.refuse(f"{spec.name} of a parameter on the space")
        self.set(out, st)

    @fill_rule(Rule.ADD)
    def rule_add(self, spec: Any, a: dict[str, Any], out: Any, centre: bool = False) -> None:
        x, y, xs, ys = self._pair(a)
        if isinstance(ys, On) and not isinstance(xs, On):
            x, y, xs, ys = y, x, ys, xs
        if not isinstance(a.get("alpha", 1), (int, float)):
            self.refuse("a computed alpha")
        if isinstance(xs, On):
            if isinstance(ys, On):
                if ys != xs:
                    post = " (a post-norm residual: LN(x + f(x)) adds a norm's zero-filled output to the " \
                           "mean-filled stream)" if xs.fill is not ys.fill else ""
                    self.refuse(f"{spec.name} of a {xs.fill.value}-filled value at s^{xs.power} and a "
                                f"{ys.fill.value}-filled one at s^{ys.power}{post}")
                self.set(out, xs)
            elif ys is PARAM:  # a per-unit addend (a bias, position embeddings): scaled and filled
                lift = self._lift(y)
                if lift is None:
                    self.refuse("a parameter not on the space is added to a filled value")
                self.treat(lift.param, lift.axis, produce(xs.fill, xs.power))
                self.set(out, xs)
            elif centre and xs.fill is Fill.MEAN and self.row_means.get(id(y)) == id(x) and a.get("alpha", 1) == 1:
                self.set(out, On(Fill.ZERO, xs.power))  # x - mean(x): the new units hold m - m
            elif xs.fill is Fill.MEAN and ys.power == xs.power:
                self.set(out, xs)  # s (x_j + c) and s (m + c): the mean of the sums
            else:
                self.refuse(f"{spec.name} of a {xs.fill.value}-filled value at s^{xs.power} and a number "
                            f"or statistic at s^{ys.power}")
        elif xs is PARAM or ys is PARAM:
            if self.param_axis(x if xs is PARAM else y) is not None:
                self.refuse(f"{spec.name} of a parameter on the space and a value not on it")
            self._stats(spec, xs if ys is PARAM else ys, EXACT, out, same=True)
        else:
            self._stats(spec, xs, ys, out, same=True)

    @fill_rule(Rule.SUB)
    def rule_sub(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        self.rule_add(spec, a, out, centre=True)

    def _stats(self, spec: Any, xs: Stat, ys: Stat, out: Any, same: bool = False, power: int | None = None) -> None:
        if same and xs.power != ys.power:
            self.refuse(f"{spec.name} of statistics at s^{xs.power} and s^{ys.power}")
        self.set(out, Stat(xs.power if power is None else power))

    @fill_rule(Rule.MUL)
    def rule_mul(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        x, y, xs, ys = self._pair(a)
        if isinstance(ys, On) and not isinstance(xs, On):
            x, y, xs, ys = y, x, ys, xs
        if isinstance(xs, On):
            if ys is PARAM and self._lift(y) is None:
                ys = EXACT  # a parameter not on the space (a scalar): one factor for every unit
            if isinstance(ys, Stat):  # a per-row factor: commutes with the mean, keeps zeros
                self.set(out, On(xs.fill, xs.power + ys.power))
            elif xs.fill is not Fill.ZERO:
                self.refuse(f"{spec.name} of a mean-filled value by a per-unit factor (the mean of the "
                            f"products is not the product of the means)")
            elif isinstance(ys, On):
                if ys.fill is not Fill.ZERO:
                    self.refuse(f"{spec.name} of a zero-filled and a mean-filled value")
                self.set(out, On(Fill.ZERO, xs.power + ys.power))
            else:  # a per-unit gain of a zero-filled value; a tied head's gain also takes s**-2
                lift = self._lift(y)
                g = -2 if lift.param.param_axes[lift.axis] in self.tied else 0
                self.treat(lift.param, lift.axis, gain(g))
                self.set(out, On(Fill.ZERO, xs.power + g))
        elif xs is PARAM or ys is PARAM:
            if self.param_axis(x if xs is PARAM else y) is not None:
                self.refuse(f"{spec.name} of a parameter on the space by a statistic")
            other = xs if ys is PARAM else ys
            self.set(out, EXACT if other is PARAM else Stat(other.power))
        else:
            self._stats(spec, xs, ys, out, power=xs.power + ys.power)

    @fill_rule(Rule.DIV)
    def rule_div(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        x, y, xs, ys = self._pair(a)
        if a.get("rounding_mode") is not None:
            self.refuse("a rounded division")
        if isinstance(ys, On) or ys is PARAM and self.param_axis(y) is not None:
            self.refuse(f"{spec.name} by a value on the space")
        ys = EXACT if ys is PARAM else ys
        if isinstance(xs, On):
            self.set(out, On(xs.fill, xs.power - ys.power))
        elif xs is PARAM:
            if self.param_axis(x) is not None:
                self.refuse(f"{spec.name} of a parameter on the space")
            self.set(out, Stat(-ys.power))
        else:
            self.set(out, Stat(xs.power - ys.power))

    @fill_rule(Rule.POWER)
    def rule_power(self, spec: Any, a: dict[str, Any], out: Any) -> None:
        xs, k = self.get(a.get("input")), a.get("exponent")
        if xs is PARAM or isinstance(k, Val):
            self.refuse(f"{spec.name} of a parameter or to a tensor power")
        integral = isinstance(k, int) or isinstance(k, float) and k.is_integer()
        if isinstance(xs, On):
            if xs.fill is not Fill.ZERO or not integral or k <= 0:
                self.refuse(f"{spec.name}: only a zero-filled value to a positive integer power stays filled")
            self.set(out, On(Fill.ZERO, xs.power * int(k)))
        elif xs.power == 0:
            self.set(out, EXACT)
        elif integral:
            self.set(out, Stat(xs.power * int(k)))
        else:
            self.refuse(f"{spec.name} of a statistic at s^{xs.power} to a fractional power")


if set(FILL_DISPATCH) != set(Rule):  # every fill code of the table has exactly one rule
    raise InternalError(f"fill codes without a rule: {sorted(set(Rule) - set(FILL_DISPATCH))}")
