"""Remapping inference: one forward pass over the FX graph that finds the spaces.

Every node's value gets a layout per axis (see spaces.py). Each call is looked up in the rule
table and handled by its kind's rule below; a call the table does not know stops: every space it
touches is frozen with reason `unknown_op`. The result lists the spaces (leaf atoms that own at
least one producer), what binds each parameter axis, and the literal rewrites the student needs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

from . import spaces as S
from .spaces import Atom, Fixed, Layout, Reason, Seg
from .spec import OpSpec, RuleTable, bind, load_table

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
    what: str  # "view_shape" | "split_sizes" | "groups" | "normalized_shape" | "arg" | "slice_piece" | "sizes"
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
    roles: dict[ParamAxis, set[str]]
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


class Inference:
    def __init__(self, gm: torch.fx.GraphModule, table: RuleTable | None = None) -> None:
        self.gm = gm
        self.table = table or load_table()
        self.vals: dict[str, Any] = {}
        self.param_layouts: dict[ParamAxis, Layout] = {}
        self.roles: dict[ParamAxis, set[str]] = {}
        self.grouped: list[GroupedContract] = []
        self.ties: list[list[Layout]] = []
        self.rewrites: list[Rewrite] = []
        self.module_attrs: list[ModuleAttr] = []
        self.uniform: list[tuple[str, Layout]] = []
        self.links: list[HeadLink] = []
        self.aliases: dict[str, list[str]] = {}  # parameter -> other names of the same tensor
        self._tensor_names: dict[int, str] = {}
        self.ops: dict[str, str] = {}
        self.node: torch.fx.Node | None = None
        self._first_only = False  # a tuple-returning op's rule sees only its first output (see _apply)
        self._roled: set[ParamAxis] = set()  # parameter axes the current call gave a role
        self.reads: dict[ParamAxis, str] = {}  # parameter axis -> first node that read it without a role
        self.sizes: list[tuple[Layout, Scalar, Reason]] = []  # computed view sizes of spaced axes
        self.contractors: dict[ParamAxis, list[torch.fx.Node]] = {}  # the calls that contract each axis
        self.tied_heads: list[TiedHead] = []
        self.events: dict[str, Event] = {}

    # ------------------------------------------------------------------ helpers
    def reason(self, code: str, detail: str = "") -> Reason:
        node = self.node
        assert node is not None
        return Reason(code, node.name, op_label(node, self.gm), detail)

    def freeze_all(self, value: Any, reason: Reason) -> None:
        for v in _walk(value):
            if isinstance(v, Val):
                for layout in v.layouts:
                    for atom in S.atoms_of(layout):
                        S.freeze(atom, reason)
            elif isinstance(v, Scalar):
                for atom in v.taint:
                    S.freeze(atom, reason)

    def from_meta(self, meta: Any) -> Any:
        """A value with only fixed axes, shaped like the node's recorded output."""
        if isinstance(meta, TensorMetadata):
            shape = tuple(int(d) for d in meta.shape)
            return Val(shape, tuple(S.fixed(d) if d else () for d in shape))
        if isinstance(meta, (list, tuple)):
            return tuple(self.from_meta(m) for m in meta)
        return Scalar()

    def out_meta(self) -> Any:
        assert self.node is not None
        meta = self.node.meta.get("tensor_meta")
        return meta[0] if self._first_only and isinstance(meta, (list, tuple)) and meta else meta

    def param_val(self, qualname: str, tensor: torch.Tensor) -> Val:
        # a tensor reached under two names (tied weights) is one parameter: its first name
        canonical = self._tensor_names.setdefault(id(tensor), qualname)
        if canonical != qualname and qualname not in self.aliases.setdefault(canonical, []):
            self.aliases[canonical].append(qualname)
        qualname = canonical
        layouts, axes = [], []
        for axis, size in enumerate(tensor.shape):
            key = (qualname, axis)
            if key not in self.param_layouts:
                self.param_layouts[key] = (Seg(Atom(size, f"{qualname}:{axis}", free=True)),) if size else ()
            layouts.append(self.param_layouts[key])
            axes.append(key)
        return Val(tuple(tensor.shape), tuple(layouts), tuple(axes))

    def role(self, val: Any, axis: int, role: str) -> bool:
        """Record how a parameter axis is used; False when `val` is not a parameter."""
        if not isinstance(val, Val) or val.param_axes is None or val.param_axes[axis] is None:
            return False
        self.roles.setdefault(val.param_axes[axis], set()).add(role)
        self._roled.add(val.param_axes[axis])
        if role == "contract" and self.node is not None:
            self.contractors.setdefault(val.param_axes[axis], []).append(self.node)
        return True

    def value(self, arg: Any) -> Any:
        if isinstance(arg, torch.fx.Node):
            return self.vals[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.value(arg.start), self.value(arg.stop), self.value(arg.step))
        return arg

    # ------------------------------------------------------------------ driver
    def run(self) -> Analysis:
        for node in self.gm.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                self.vals[node.name] = self.from_meta(node.meta.get("tensor_meta"))
            elif node.op == "get_attr":
                obj = _get_attr(self.gm, node.target)
                self.vals[node.name] = self.param_val(node.target, obj) if isinstance(obj, torch.Tensor) else Scalar()
            elif node.op == "output":
                self.freeze_all(self.value(node.args), self.reason("model_output", "bound to a model output"))
            else:
                self.vals[node.name] = self.call(node)
        self.node = None
        self._check_sizes()
        self._check_roles()
        self._check_ties()
        while self._check_uniform() | self._check_links():
            self._check_ties()
        spaces = self._spaces()
        by_root = {S.find(sp.atom).id: sp for sp in spaces}
        for node, layout in self.uniform:
            for atom in S.atoms_of(layout):
                sp = by_root.get(S.find(atom).id)
                if sp is not None and not sp.uniform:
                    sp.uniform = node
        for link in self.links:
            for atom in (*S.atoms_of(link.embed), link.heads):
                sp = by_root.get(S.find(atom).id)
                if sp is not None and not sp.attention:
                    sp.attention = link.node
        return Analysis(self.gm, self.vals, self.param_layouts, self.roles, self.grouped, self.ties,
                        self.rewrites, self.module_attrs, spaces, self.ops, self.uniform, self.links,
                        self.aliases, self.tied_heads, self.events)

    def call(self, node: torch.fx.Node) -> Any:
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        has_tensor = any(isinstance(v, Val) for v in _walk((args, kwargs)))
        if node.op == "call_function" and not has_tensor and not isinstance(self.out_meta(), TensorMetadata) \
                and node.target is not operator.getitem \
                and getattr(node.target, "__module__", None) in ("_operator", "operator", "builtins"):
            # Python arithmetic on sizes (c * h * w): the result depends on whatever its inputs did
            self.ops[node.name] = "python"
            return Scalar(frozenset(a for v in _walk((args, kwargs)) if isinstance(v, Scalar) for a in v.taint))
        spec = self.table.lookup(node, self.gm)
        if spec is None:
            self.ops[node.name] = "unknown"
            return self.stop(args, kwargs, self.reason("unknown_op", "no entry in specs/ops.toml"))
        self.ops[node.name] = spec.name
        if node.op == "call_method":
            bound = bind(spec, args, kwargs)
        elif node.op == "call_module":
            bound = self.bind_module(node, spec, args, kwargs)
        else:
            bound = bind(spec, args, kwargs)
        if spec.kind not in ("reshape", "getitem", "shape_query", "split", "constant"):
            tainted = [v for v in _walk(bound) if isinstance(v, Scalar) and v.taint]
            if tainted:
                self.freeze_all(tainted, self.reason("size_used", "a width-dependent size feeds a computation"))
        if spec.kind == "stop":
            return self.stop(args, kwargs, self.reason("unsupported_op", spec.reason))
        self._roled = set()
        out = self._apply(spec, bound)
        self.events[node.name] = Event(spec, bound, out)
        # these move axes or read sizes, not values; so does a view or broadcast that keeps a parameter's axes
        if spec.kind not in ("permute", "shape_query") and not (isinstance(out, Val) and out.param_axes):
            for v in _walk(bound):
                if isinstance(v, Val) and v.param_axes:
                    for key in v.param_axes:
                        if key is not None and key not in self._roled:
                            self.reads.setdefault(key, node.name)
        return out

    def _apply(self, spec: OpSpec, bound: dict[str, Any]) -> Any:
        """The kind's rule. Core ATen ops that return (out, statistics...) (native_layer_norm,
        native batch norm, max pooling with indices) name `outputs` in the table: the rule computes
        out; "stats" outputs are per-row statistics (fixed axes), "like" ones share out's layouts."""
        rule = getattr(self, f"rule_{spec.kind}")
        kind, meta = spec.options.get("outputs"), self.node.meta.get("tensor_meta") if self.node else None
        if kind is None or not isinstance(meta, (list, tuple)) or not meta:
            return rule(spec, bound)
        self._first_only = True
        try:
            out = rule(spec, bound)
        finally:
            self._first_only = False
        if not isinstance(out, Val):
            return out
        rest = [Val(out.shape, out.layouts) if kind == "like" and isinstance(m, TensorMetadata)
                and tuple(m.shape) == out.shape else self.from_meta(m) for m in meta[1:]]
        return (out, *rest)

    def bind_module(self, node: torch.fx.Node, spec: OpSpec, args: tuple, kwargs: dict) -> dict[str, Any]:
        mod = self.gm.get_submodule(node.target)
        if spec.forward:
            bound = bind(spec, args, kwargs, spec.forward)
        else:
            bound = bind(spec, args[:1], {}) if args else {}
        for name, attr in spec.params.items():
            t = _get_attr(mod, attr, None)
            bound[name] = self.param_val(f"{node.target}.{attr}", t) if isinstance(t, torch.Tensor) else None
        for name, attr in spec.config.items():
            bound[name] = getattr(mod, attr)
        return bound

    def stop(self, args: Any, kwargs: Any, reason: Reason) -> Any:
        self.freeze_all((args, kwargs), reason)
        return self.from_meta(self.out_meta())

    def _check_sizes(self) -> None:
        """A size read at run time may size a view's spaced axis only if it tracks that very space."""
        for lay, arg, why in self.sizes:
            need = {S.find(t) for t in S.atoms_of(lay)}
            have = {S.find(leaf) for t in arg.taint for leaf in S.leaves(t)}
            if not need <= have:  # the computed size follows other spaces: hold both
                self.freeze_all(Val((1,), (lay,)), why)
                self.freeze_all(arg, why)

    def _check_roles(self) -> None:
        for key, roles in list(self.roles.items()):
            if roles == {"out", "contract"} and self._divide_before_head(key):
                continue
            if "contract" in roles and roles & {"out", "carry"}:
                for atom in S.atoms_of(self.param_layouts[key]):
                    S.freeze(atom, Reason("param_role_conflict", key[0], "parameter",
                                          f"axis {key[1]} is both copied and contracted (tied weights); " +
                                          ("untie=True widens it with separate copies" if self.aliases.get(key[0])
                                           else "no per-unit gain before the contraction takes the division, "
                                                "and the table has one name (untie=True copies tables reached "
                                                "under two names)")))
        for key, reader in self.reads.items():
            # a contracted axis holds divided (or split) columns on the student: any other read of
            # its values (a reduction, a norm, an indexing, a view) sees numbers the teacher never had
            if self.roles.get(key, set()) & {"contract", "grouped"}:
                for atom in S.atoms_of(self.param_layouts[key]):
                    S.freeze(atom, Reason("param_read", reader, "parameter",
                                          f"{key[0]} axis {key[1]} is contracted and also read by {reader}"))

    def _divide_before_head(self, key: ParamAxis) -> bool:
        """A tied embedding + head (one table, copied by the lookup and contracted by the head) stays
        one tensor when the head's division by replica counts moves onto the per-unit gain (and
        shift) that produced the head's input: the final norm's weight and bias. Holds when nothing
        else reads the values in between (proofs: the tied claims of `embedding`)."""
        gains: list[ParamAxis] = []
        for node in self.contractors.get(key, []):
            found = self._gain_before(node, key)
            if found is None:
                return False
            gains += found
        if not gains or any(self.roles.get(g, set()) - {"carry"} for g in gains):
            return False
        self.roles[key] = {"out"}
        for g in gains:
            self.roles.setdefault(g, set()).add("divide")
        self.tied_heads.append(TiedHead(key, tuple(gains)))
        return True

    def _gain_before(self, head: torch.fx.Node, key: ParamAxis) -> list[ParamAxis] | None:
        """The per-unit parameters whose division by replica counts divides the head's input,
        walking back through ops the table marks `tie_head`: pass (f(x / c) = f(x) / c), gain
        (x * w: divide w, stop), shift (x + b: divide b, go on); a normalize op with a weight is gain
        (and shift, with a bias). Each divided parameter must be read by that one call alone: any
        other use would see the divided values."""
        space = {S.find(a) for a in S.atoms_of(self.param_layouts[key])}

        def per_unit(v: Any) -> bool:  # a 1-D parameter laid out on the tied space
            return isinstance(v, Val) and v.param_axes is not None and v.ndim == 1 and v.param_axes[0] is not None \
                and {S.find(a) for a in S.atoms_of(v.layouts[0])} == space

        def sole(vals: list[Val], node: torch.fx.Node) -> list[ParamAxis] | None:
            keys = [v.param_axes[0] for v in vals]
            return keys if all(self._uses(k[0]) == [node] for k in keys) else None

        inputs = [a for a in head.all_input_nodes if not getattr(self.vals.get(a.name), "param_axes", None)]
        node, found = (inputs[0] if len(inputs) == 1 else None), []
        while node is not None and node.op.startswith("call") and len(node.users) == 1:
            spec = self.table.lookup(node, self.gm)
            if spec is None:
                return None
            args, kwargs = self.value(node.args), self.value(node.kwargs)
            operands = [v for v in _walk((args, kwargs)) if isinstance(v, Val)]
            params = [v for v in operands if per_unit(v)]
            tensors = [a for a in node.all_input_nodes if not getattr(self.vals.get(a.name), "param_axes", None)]
            how = "norm" if spec.kind == "normalize" else spec.options.get("tie_head")
            if how == "norm":
                bound = self.bind_module(node, spec, args, kwargs) if node.op == "call_module" else bind(spec, args, kwargs)
                weight, bias = bound.get("weight"), bound.get("bias")
                if not per_unit(weight) or not (bias is None or per_unit(bias)):
                    return None  # no gain (a bias alone does not divide the output) or a computed one
                gains = sole([weight] + ([bias] if bias is not None else []), node)
                return None if gains is None else found + gains
            if how == "gain" and len(params) == 1 and len(tensors) == 1 and len(operands) == 2:
                gains = sole(params, node)
                return None if gains is None else found + gains
            if how == "gain" and len(tensors) == 1 and len(operands) == 1:
                how = "pass"  # x * a number (T5's d_model ** -0.5 before its tied head) commutes
            if how == "shift" and len(params) == 1 and len(tensors) == 1 and len(operands) == 2:
                shift = sole(params, node)
                if shift is None:
                    return None
                found += shift
            elif how != "pass" or len(tensors) != 1:
                return None
            node = tensors[0]
        return None

    def _uses(self, qualname: str) -> list[torch.fx.Node]:
        """Every call that reads this parameter (under any of its names, tied ones included)."""
        tensor = _get_attr(self.gm, qualname, None)
        uses: list[torch.fx.Node] = []
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and _get_attr(self.gm, n.target, None) is tensor:
                uses += list(n.users)
            elif n.op == "call_module":
                mod = self.gm.get_submodule(n.target)
                if any(t is tensor for t in (*mod.parameters(), *mod.buffers())):
                    uses.append(n)
        return uses

    def _check_ties(self) -> None:
        for group in self.ties:
            atoms = [a for layout in group for a in S.atoms_of(layout)]
            frozen = [r for a in atoms for r in S.find(a).frozen]
            inners = {lay[0].inner if len(lay) == 1 and isinstance(lay[0], Seg) else None
                      for lay in (S.normalize(layout) for layout in group)}
            bad = frozen or None in inners or len(inners) > 1  # each piece must be one space, alike
            if bad and atoms:
                reason = frozen[0] if frozen else Reason("constraint", "-", "conv", "grouped conv piece is not one space")
                for a in atoms:
                    S.freeze(a, reason)

    def _check_uniform(self) -> bool:
        """All units under one norm replicate by one k: a frozen one (k = 1) fixes the others."""
        changed = False
        for node, layout in self.uniform:
            atoms = S.atoms_of(layout)
            frozen = [r for a in atoms for r in S.find(a).frozen]
            if frozen and any(not S.find(a).frozen for a in atoms):
                why = Reason("constraint", node, "normalize", f"normalised together with a frozen space ({frozen[0].code})")
                for a in atoms:
                    S.freeze(a, why)
                changed = True
        return changed

    def _check_links(self) -> bool:
        """embed width == heads x head_dim: frozen heads fix the embed width, a fixed embed the heads."""
        changed = False
        for link in self.links:
            heads = S.find(link.heads)
            embed = [S.find(a) for a in S.atoms_of(link.embed)]
            if heads.frozen and any(not a.frozen for a in embed):
                why = Reason("constraint", link.node, "attention", f"embed width is heads x head_dim and the heads are frozen ({heads.frozen[0].code})")
                for a in embed:
                    S.freeze(a, why)
                changed = True
            elif not heads.frozen and all(a.frozen for a in embed):
                S.freeze(heads, Reason("constraint", link.node, "attention", "heads x head_dim must equal the embed width, which is frozen"))
                changed = True
        return changed

    def _spaces(self) -> list[Space]:
        found: dict[int, Space] = {}
        order: list[int] = []
        for (param, axis), layout in self.param_layouts.items():
            roles = self.roles.get((param, axis), {"carry"})
            offset, norm = 0, S.normalize(layout)
            for seg in norm:
                if isinstance(seg, Seg):
                    root = S.find(seg.atom)
                    if root.id not in found:
                        found[root.id] = Space("", root.width, root)
                        order.append(root.id)
                    sp = found[root.id]
                    owner = param.rsplit(".", 1)[0] if "." in param else param
                    label = owner if len(norm) == 1 else f"{owner}[{offset}:{offset + seg.size}]"
                    if "out" in roles:
                        sp.producers.append(label)
                    if "contract" in roles:
                        sp.consumers.append(label)
                    if "carry" in roles or not roles & {"out", "contract"}:
                        sp.carriers.append(label)
                offset += seg.size
        for gc in self.grouped:  # grouped conv columns: consumers of each input piece
            owner = gc.param.rsplit(".", 1)[0]
            for k, piece in enumerate(gc.in_pieces):
                for atom in S.atoms_of(piece):
                    sp = found.get(S.find(atom).id)
                    if sp is not None:
                        sp.consumers.append(f"{owner}[group {k}]")
        result, names = [], set()
        for rid in order:
            sp = found[rid]
            if not sp.producers and not (sp.carriers and sp.consumers):
                continue  # a parameter axis that meets no hidden unit (kernel taps, ...)
            base = S.find(sp.atom).label or (sp.producers or sp.carriers)[0]
            name, k = base, 2
            while name in names:
                name, k = f"{base}#{k}", k + 1
            names.add(name)
            sp.name = name
            sp.reasons = tuple(S.find(sp.atom).frozen)
            result.append(sp)
        return result

    # ------------------------------------------------------------------ rules, one per kind
    def broadcast(self, tensors: list[Val], shape: tuple[int, ...], reason: Reason) -> tuple[Layout, ...]:
        nd, out = len(shape), []
        for k, size in enumerate(shape):
            cands, fixed_one = [], False
            for v in tensors:
                j = k - (nd - v.ndim)
                if j < 0:
                    continue
                spaced = S.is_spaced(v.layouts[j])
                fixed_one |= v.shape[j] == 1 and not spaced
                if v.shape[j] == size and (size != 1 or spaced):
                    cands.append(v.layouts[j])
                elif spaced:  # a width-1 space broadcast against a wider axis: widening it breaks the broadcast
                    self.freeze_all(Val((1,), (v.layouts[j],)), self.reason("broadcast", "a width-1 space is broadcast"))
            if k == 0 and nd >= 2 and size == 1 and fixed_one and cands:
                # a leading axis of size 1 is a batch of one: at a batch of two the space would be
                # broadcast against it, so it is here too (a plan never depends on the batch size)
                for c in cands:
                    self.freeze_all(Val((1,), (c,)), self.reason("broadcast", "a width-1 space meets a batch of one"))
                cands = []
            if not cands:
                out.append(S.fixed(size))
                continue
            for c in cands[1:]:
                S.unify(cands[0], c, reason)
            out.append(S.normalize(cands[0]))
        return tuple(out)

    def rule_elementwise(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        meta = self.out_meta()
        tensors = [v for v in _walk(a) if isinstance(v, Val)]
        if not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "elementwise op without a tensor result"))
        shape = tuple(int(d) for d in meta.shape)
        layouts = self.broadcast(tensors, shape, self.reason(
            "fixed_coupling", "aligned with a fixed tensor (model input, constant or unknown op output)"))
        for v in tensors:
            for j in range(v.ndim):
                self.role(v, j, "carry")
        return Val(shape, layouts)

    def rule_channelwise(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or len(meta.shape) != x.ndim:
            return self.stop(a, {}, self.reason("unsupported_op", "unexpected operands for a channelwise op"))
        ch = _norm_dim(spec.channel_axis or 1, x.ndim)
        shape = tuple(int(d) for d in meta.shape)
        if "pad" in spec.options:  # F.pad: (left, right) per trailing dim, last dim first
            pad = a.get(spec.options["pad"])
            if not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
                return self.stop(a, {}, self.reason("unsupported_op", "pad sizes are computed"))
            if ch >= x.ndim - len(pad) // 2:  # the pad reaches the channel axis: its units are not one space
                self.freeze_all(x, self.reason("padded", "the pad reaches the channel axis"))
                return Val(shape, tuple(S.fixed(d) for d in shape))
        if "groups" in spec.options and self.whole_groups(spec, a, x, ch) is None:
            return self.stop(a, {}, self.reason("unsupported_op", "GroupNorm's num_groups is computed or does not divide C"))
        layouts = []
        for k in range(x.ndim):
            if k == ch:
                layouts.append(S.normalize(x.layouts[k]))
            else:  # batch and spatial axes: pooled over, or reduced by batch statistics
                if S.is_spaced(x.layouts[k]):
                    self.freeze_all(Val((x.shape[k],), (x.layouts[k],)), self.reason("pooled_over", f"axis {k} is pooled"))
                layouts.append(S.fixed(shape[k]))
        if not self.carry_per_unit(spec, a, x.layouts[ch], x.shape[ch]):  # PReLU(1) keeps num_parameters=1
            self.module_attr(spec, "channels", x.layouts[ch])
        return Val(shape, tuple(layouts))

    def carry_per_unit(self, spec: OpSpec, a: dict[str, Any], layout: Layout, size: int) -> bool:
        """Per-unit tensors of the axis (BatchNorm statistics, norm gains and biases) are copied
        through its g; one that is not a 1-D parameter of that size freezes the axis. True when
        one was a single value shared by every unit (the table's `shared`)."""
        whole, shared = Val((size,), (layout,)), False
        for name in spec.per_channel:
            t = a.get(name)
            if not isinstance(t, Val):
                continue
            if spec.options.get("shared") and t.shape == (1,) and size != 1:
                shared = True  # one value for every unit (PReLU's single slope): replicas share it
                continue
            if t.ndim != 1 or t.shape[0] != size:
                self.freeze_all(whole, self.reason("unsupported_op", f"{name} is not one value per unit"))
                continue
            S.unify(layout, t.layouts[0], self.reason("fixed_coupling", f"{name} is not a parameter"))
            if not self.role(t, 0, "carry"):
                self.freeze_all(whole, self.reason("fixed_coupling", f"{name} is computed"))
        return shared

    def module_attr(self, spec: OpSpec, role: str, layout: Layout) -> None:
        node = self.node
        if node is not None and node.op == "call_module" and role in spec.attrs:
            child, _, attr = spec.attrs[role].rpartition(".")  # "out_proj.in_features": a child's
            self.module_attrs.append(ModuleAttr(f"{node.target}.{child}" if child else node.target, attr, layout))

    def rule_normalize(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta, ns = a.get("input"), self.out_meta(), a.get("normalized_shape")
        ns = (ns,) if isinstance(ns, int) else ns
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or not isinstance(ns, (list, tuple)) \
                or not all(isinstance(d, int) for d in ns):
            return self.stop(a, {}, self.reason("unsupported_op", "normalisation with a computed shape"))
        if len(ns) != 1:
            return self.stop(a, {}, self.reason("constraint", f"normalised over {len(ns)} axes at once"))
        layout = x.layouts[-1]
        if S.is_spaced(layout):
            if any(isinstance(seg, Fixed) for seg in S.normalize(layout)):
                # fixed positions are not replicated: the mean over the axis would change
                self.freeze_all(Val((1,), (layout,)), self.reason("constraint", "normalised together with fixed positions"))
            else:
                self.uniform.append((self.node.name, layout))
        self.carry_per_unit(spec, a, layout, x.shape[-1])
        self.module_attr(spec, "normalized", layout)
        if self.node.op == "call_function" and "normalized_shape" in self.node.kwargs:
            self.freeze_all(Val((1,), (layout,)), self.reason("unsupported_op", "normalized_shape given by keyword"))
        elif self.node.op == "call_function":
            self.rewrites.append(Rewrite(self.node.name, "normalized_shape", (layout,)))
        return Val(tuple(int(d) for d in meta.shape), x.layouts)

    def rule_expand(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "expand of a non-tensor"))
        shape = tuple(int(d) for d in meta.shape)
        other = a.get("other")  # expand_as: the student expands to `other`'s new shape, so axes align
        tensors = [x, other] if isinstance(other, Val) else [x]
        layouts = self.broadcast(tensors, shape, self.reason("fixed_coupling", "expand"))
        if any(isinstance(d, int) and d != -1 for d in a.get("size", ())):
            self.rewrites.append(Rewrite(self.node.name, "view_shape", layouts))  # literal sizes follow
        return Val(shape, layouts, _broadcast_param_axes(x, shape))

    def rule_constant(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        """zeros / ones: one value everywhere, so every axis may adopt the layout it meets (a fresh
        free atom per axis); the student's size literals follow the widths of those layouts."""
        meta, sizes = self.out_meta(), a.get("size", ())
        if not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "a constant without a tensor result"))
        shape = tuple(int(d) for d in meta.shape)
        layouts = []
        for k, d in enumerate(shape):
            literal = k < len(sizes) and isinstance(sizes[k], int)
            # a computed size stays as computed on the student: that axis keeps its size
            layouts.append((Seg(Atom(d, f"{self.node.name}:{k}", free=True)),) if d and literal else S.fixed(d))
        self.rewrites.append(Rewrite(self.node.name, "sizes", tuple(layouts)))
        return Val(shape, tuple(layouts))

    def rule_attention(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        """Multi-head attention with a packed q/k/v projection (nn.MultiheadAttention, Swin's
        shifted_window_attention). Net2WiderNet grows it by whole heads: a copied head's q, k, v
        rows are its teacher's, so its softmax and output are the teacher head's; the output
        projection divides its columns by the copies."""
        op = lambda name: _operand(spec, a, name)  # noqa: E731
        q, k, v = op("query"), op("key"), op("value")
        w_in, b_in, w_out, b_out = op("in_weight"), op("in_bias"), op("out_weight"), op("out_bias")
        meta = self.out_meta()
        if not a.get("packed", True) or not isinstance(w_in, Val) or not isinstance(w_out, Val):
            return self.stop(a, {}, self.reason("unsupported_op", "separate q/k/v projections (kdim or vdim != embed_dim)"))
        if a.get("bias_k") is not None or a.get("add_zero_attn"):
            return self.stop(a, {}, self.reason("unsupported_op", "bias_k/bias_v or add_zero_attn append a key per head"))
        n_heads = a.get("num_heads")
        if not all(isinstance(t, Val) for t in (q, k, v)) or not isinstance(n_heads, int) \
                or not isinstance(meta, (list, tuple, TensorMetadata)):
            return self.stop(a, {}, self.reason("unsupported_op", "query, key and value must be tensors, num_heads a literal"))
        head_dim = w_in.shape[1] // n_heads
        for t in (q, k, v):  # attention mixes sequence positions (and batch rows stay fixed)
            for axis in range(t.ndim - 1):
                if S.is_spaced(t.layouts[axis]):
                    self.freeze_all(Val((1,), (t.layouts[axis],)), self.reason("pooled_over", f"attention mixes axis {axis}"))
        why = self.reason("fixed_coupling", "attention features meet a fixed axis")
        for t in (q, k, v):  # the packed projection's columns read query, key and value alike
            S.unify(t.layouts[-1], w_in.layouts[1], why)
        heads = Atom(n_heads, f"{self.node.target}:heads", label=f"{_owner(self.node, w_in)}.heads")
        head = (Seg(heads, head_dim),)  # a head's head_dim rows move together
        S.unify(w_in.layouts[0], qkv_rows(heads, head_dim), why)
        S.unify(w_out.layouts[1], head, why)
        self.role(w_in, 1, "contract")
        self.role(w_in, 0, "out")
        self.role(w_out, 1, "contract")
        self.role(w_out, 0, "out")
        for b, w in ((b_in, w_in), (b_out, w_out)):
            if isinstance(b, Val):
                S.unify(w.layouts[0], b.layouts[0], why)
                self.role(b, 0, "carry")
        per_head = self.reason("fixed_coupling", "a per-head tensor is not a parameter or a heads space")
        for t, axis in ((op("head_bias"), -3), (op("head_scale"), 0), (op("head_table"), -1)):  # one per head
            if isinstance(t, Val):
                S.unify(t.layouts[axis], (Seg(heads),), per_head)
                self.role(t, axis, "carry")
        mask = a.get("attn_mask")
        if isinstance(mask, Val) and mask.ndim == 3:
            S.freeze(heads, self.reason("constraint", "a 3-D attn_mask holds one slice per head"))
        if not isinstance(meta, TensorMetadata) and _weights_used(self.node):  # (output, weights)
            S.freeze(heads, self.reason("constraint", "attention weights averaged over heads are used"))
        self.links.append(HeadLink(self.node.name, q.layouts[-1], heads, head_dim))
        for role_, layout in (("embed", q.layouts[-1]), ("kdim", k.layouts[-1]), ("vdim", v.layouts[-1]),
                              ("heads", (Seg(heads),)), ("proj_in", head), ("proj_out", w_out.layouts[0]),
                              ("qkv_in", q.layouts[-1]), ("qkv_out", qkv_rows(heads, head_dim))):
            self.module_attr(spec, role_, layout)
        if self.node.op == "call_function":  # num_heads is a literal of the call
            names = [n for n, _ in spec.signature]
            self.rewrites.append(Rewrite(self.node.name, "arg", ((Seg(heads),),), names.index("num_heads"), "num_heads"))
        out_meta = meta if isinstance(meta, TensorMetadata) else meta[0]
        out = Val(tuple(int(d) for d in out_meta.shape), q.layouts[:-1] + (S.normalize(w_out.layouts[0]),))
        if isinstance(meta, TensorMetadata):
            return out
        return (out, self.from_meta(meta[1]) if len(meta) > 1 else Scalar())

    def rule_sdpa(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        """F.scaled_dot_product_attention on (..., heads, L, head_dim): q, k and v of one head go
        together (the heads axis is one space); head_dim and the positions stay fixed, so the
        softmax and its 1/sqrt(head_dim) scale see the teacher's numbers."""
        q, k, v, mask, meta = a.get("query"), a.get("key"), a.get("value"), a.get("attn_mask"), self.out_meta()
        if not all(isinstance(t, Val) and t.ndim >= 3 for t in (q, k, v)) or not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "sdpa needs (..., heads, L, head_dim) tensors"))
        if a.get("enable_gqa") and q.shape[-3] != k.shape[-3]:
            return self.stop(a, {}, self.reason("unsupported_op", "grouped-query attention (enable_gqa) has no rule yet"))
        for t in (q, k, v):
            for axis in (-2, -1):  # positions are mixed; head_dim sets the scale
                if S.is_spaced(t.layouts[axis]):
                    self.freeze_all(Val((1,), (t.layouts[axis],)),
                                    self.reason("constraint", "sdpa: positions and head_dim must stay fixed"))
        # batch and heads axes broadcast like an elementwise op: q, k, v (and a per-head mask) of
        # one head share its map; a width-1 space broadcast over heads is frozen
        shape = tuple(int(d) for d in meta.shape)
        lead = [Val(t.shape[:-2], t.layouts[:-2]) for t in (q, k, v, mask) if isinstance(t, Val) and t.ndim >= 2]
        layouts = self.broadcast(lead, shape[:-2], self.reason("fixed_coupling", "q, k, v and mask of a head share its map"))
        return Val(shape, layouts + (q.layouts[-2], S.fixed(shape[-1])))

    def rule_embedding(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        w, idx = _operand(spec, a, "weight"), _operand(spec, a, "input")
        meta = self.out_meta()
        if not (isinstance(w, Val) and w.ndim == 2 and isinstance(idx, Val) and isinstance(meta, TensorMetadata)):
            return self.stop(a, {}, self.reason("unsupported_op", "an embedding needs a 2-D table and index tensor"))
        if a.get("max_norm") is not None:
            return self.stop(a, {}, self.reason("unsupported_op", "max_norm renormalises rows over the features"))
        self.freeze_all([v for v in _walk(a) if isinstance(v, Scalar)], self.reason("size_used", "embedding size"))
        if any(S.is_spaced(lay) for lay in idx.layouts):
            self.freeze_all(idx, self.reason("index_on_space", "indices laid out along a space"))
        shape = tuple(int(d) for d in meta.shape)
        feature = _norm_dim(spec.options.get("feature_axis", -1), len(shape))
        layouts = [S.fixed(d) for d in shape]
        layouts[feature] = S.normalize(w.layouts[1])
        self.role(w, 1, "out")  # a parameter table's features are copied (a producer); rows are only looked up
        self.module_attr(spec, "out", w.layouts[1])
        return Val(shape, tuple(layouts))

    def rule_space_to_depth(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or len(meta.shape) != x.ndim:
            return self.stop(a, {}, self.reason("unsupported_op", "space_to_depth of a non-tensor"))
        ch = _norm_dim(spec.channel_axis if spec.channel_axis is not None else 1, x.ndim)
        shape = tuple(int(d) for d in meta.shape)
        channels = self.depth_layout(spec, x, ch, shape[ch])
        if channels is None:
            return self.stop(a, {}, self.reason("unsupported_op", "channels are not whole copies of the input's"))
        layouts = []
        for k in range(x.ndim):
            if k == ch:
                layouts.append(channels)
            else:
                if S.is_spaced(x.layouts[k]):
                    self.freeze_all(Val((1,), (x.layouts[k],)), self.reason("pooled_over", f"axis {k} is folded into channels"))
                layouts.append(S.fixed(shape[k]))
        return Val(shape, tuple(layouts))

    def rule_dense(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, w, b = a.get("input"), a.get("weight"), a.get("bias")
        if not (isinstance(x, Val) and isinstance(w, Val) and w.param_axes and w.ndim == 2):
            return self.stop(a, {}, self.reason("unsupported_op", "linear whose weight is not a parameter (computed in forward: a reparametrisation, a product)"))
        S.unify(x.layouts[-1], w.layouts[1], self.reason("fixed_coupling", "in-features meet a fixed axis"))
        self.role(w, 1, "contract")
        self.role(w, 0, "out")
        if isinstance(b, Val):
            S.unify(w.layouts[0], b.layouts[0], self.reason("fixed_coupling", "bias"))
            if not self.role(b, 0, "carry"):
                self.freeze_all(b, self.reason("fixed_coupling", "bias is computed, not a parameter"))
        self.module_attr(spec, "in", x.layouts[-1])
        self.module_attr(spec, "out", w.layouts[0])
        meta = self.out_meta()
        return Val(tuple(int(d) for d in meta.shape), x.layouts[:-1] + (S.normalize(w.layouts[0]),))

    def rule_matmul(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, w = a.get("input"), a.get("other")
        meta = self.out_meta()
        if spec.options.get("batched") and isinstance(w, Val) and w.ndim == 3:
            return self._bmm(x, w, meta)
        if not (isinstance(x, Val) and isinstance(w, Val) and w.ndim == 2 and x.ndim >= 2
                and w.param_axes and w.param_axes[0] and w.param_axes[1]):
            return self.stop(a, {}, self.reason("activation_matmul",
                                                "contraction of two activations (or a 1-D operand) has no rule yet"))
        S.unify(x.layouts[-1], w.layouts[0], self.reason("fixed_coupling", "contracted axis meets a fixed axis"))
        self.role(w, 0, "contract")
        self.role(w, 1, "out")
        b = a.get("bias")  # addmm: bias + x @ W
        if isinstance(b, Val):
            S.unify(w.layouts[1], b.layouts[-1], self.reason("fixed_coupling", "bias"))
            if not self.role(b, b.ndim - 1, "carry"):
                self.freeze_all(b, self.reason("fixed_coupling", "bias is computed, not a parameter"))
        return Val(tuple(int(d) for d in meta.shape), x.layouts[:-1] + (S.normalize(w.layouts[1]),))

    def _bmm(self, x: Any, w: Val, meta: Any) -> Any:
        """bmm (N, L, K) x (N, K, M). A weight broadcast over N (core ATen's linear on 3-D input:
        expand(W.t())) contracts K as matmul does. Two activations: row n of the output reads only
        row n of each operand, so N is one space for both (heads folded into the batch by a view);
        a space on K would be summed over replicas: frozen."""
        if not (isinstance(x, Val) and x.ndim == 3 and isinstance(meta, TensorMetadata)):
            return self.stop((x, w), {}, self.reason("activation_matmul", "bmm of a non-3-D operand"))
        shape = tuple(int(d) for d in meta.shape)
        why = self.reason("fixed_coupling", "bmm batch rows meet a fixed axis")
        tiles = [_period(S.normalize(v.layouts[0])) for v in (x, w)]
        if tiles[0] and tiles[1] and tiles[0][1] == tiles[1][1] and S.width(tiles[0][0]) == S.width(tiles[1][0]):
            S.unify(tiles[0][0], tiles[1][0], why)  # folded heads: one copy first (a query head may join a kv group)
        batch = self.broadcast([Val(x.shape[:1], x.layouts[:1]), Val(w.shape[:1], w.layouts[:1])], shape[:1],
                               why)
        if w.param_axes and w.param_axes[0] is None and w.param_axes[1] and w.param_axes[2]:
            S.unify(x.layouts[-1], w.layouts[1], self.reason("fixed_coupling", "contracted axis meets a fixed axis"))
            self.role(w, 1, "contract")
            self.role(w, 2, "out")
            return Val(shape, batch + (x.layouts[1], S.normalize(w.layouts[2])))
        for lay in (x.layouts[2], w.layouts[1]):
            if S.is_spaced(lay):
                self.freeze_all(Val((1,), (lay,)), self.reason("activation_matmul", "two activations contracted over a space"))
        return Val(shape, batch + (x.layouts[1], w.layouts[2]))

    def rule_conv(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, w, b = a.get("input"), a.get("weight"), a.get("bias")
        groups = a.get("groups", 1)
        meta = self.out_meta()
        if not (isinstance(x, Val) and isinstance(w, Val) and w.param_axes and isinstance(groups, int)
                and isinstance(meta, TensorMetadata)):
            return self.stop(a, {}, self.reason("unsupported_op", "conv whose weight is not a parameter (computed in forward: a reparametrisation, a product)"))
        transposed = _transposed(spec, a)
        if transposed is None:
            return self.stop(a, {}, self.reason("unsupported_op", "whether the convolution is transposed is computed"))
        if transposed:
            return self.conv_transposed(spec, x, w, b, groups, meta)
        shape = tuple(int(d) for d in meta.shape)
        ch = x.ndim - (w.ndim - 2) - 1
        c_in, c_out = x.shape[ch], w.shape[0]
        fixed_reason = self.reason("fixed_coupling", "conv channels meet a fixed axis")
        for k in range(ch + 1, x.ndim):
            if S.is_spaced(x.layouts[k]):
                self.freeze_all(Val((1,), (x.layouts[k],)), self.reason("pooled_over", "spatial axis is a space"))
        if groups == 1:
            S.unify(x.layouts[ch], w.layouts[1], fixed_reason)
            self.role(w, 1, "contract")
            self.role(w, 0, "out")
            out = S.normalize(w.layouts[0])
        elif groups == c_in:  # depthwise: output channel o reads input channel o // multiplier
            out = S.stride(x.layouts[ch], c_out // c_in)
            S.unify(out, w.layouts[0], fixed_reason)
            self.role(w, 0, "carry")
            self._rewrite_groups(spec, x.layouts[ch])
        else:
            cut = self.reason("constraint", f"groups={groups}: a piece must not straddle groups")
            ins = S.pieces(x.layouts[ch], [c_in // groups] * groups, cut)
            outs = S.pieces(w.layouts[0], [c_out // groups] * groups, cut)
            self.role(w, 0, "out")
            self.role(w, 1, "grouped")
            self.grouped.append(GroupedContract(w.param_axes[0][0], ins, outs))
            self.ties.extend([ins, outs])
            out = S.normalize(w.layouts[0])
        if isinstance(b, Val):
            S.unify(out, b.layouts[0], fixed_reason)
            if not self.role(b, 0, "carry"):
                self.freeze_all(b, self.reason("fixed_coupling", "bias is computed, not a parameter"))
        self.module_attr(spec, "in", x.layouts[ch])
        self.module_attr(spec, "out", out)
        layouts = x.layouts[:ch] + (out,) + tuple(S.fixed(d) for d in shape[ch + 1:])
        return Val(shape, layouts)

    def _rewrite_groups(self, spec: OpSpec, layout: Layout) -> None:
        node = self.node
        assert node is not None
        names = [n for n, _ in spec.signature]
        if node.op == "call_module":
            self.module_attr(spec, "groups", layout)
        elif names.index("groups") != 6:  # core ATen's convolution: groups after transposed, output_padding
            self.rewrites.append(Rewrite(node.name, "arg", (layout,), names.index("groups"), "groups"))
        else:
            self.rewrites.append(Rewrite(node.name, "groups", (layout,)))

    def _tensor_list(self, a: dict[str, Any]) -> tuple[list[Val], tuple[int, ...], int] | None:
        """The tensors, output shape and normalised dim of cat/stack; None when not all are tensors."""
        tensors = [t for t in a.get("tensors", ()) if isinstance(t, Val)]
        meta = self.out_meta()
        if not tensors or len(tensors) != len(a.get("tensors", ())) or not isinstance(meta, TensorMetadata):
            return None
        shape = tuple(int(d) for d in meta.shape)
        return tensors, shape, _norm_dim(a.get("dim", 0), len(shape))

    def rule_concat(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        parsed = self._tensor_list(a)
        if parsed is None:
            return self.stop(a, {}, self.reason("unsupported_op", "cat of non-tensors"))
        tensors, shape, dim = parsed
        tensors = [t for t in tensors if t.ndim == len(shape)]  # legacy cat skips empty 1-D tensors
        layouts = []
        for k in range(len(shape)):
            if k == dim:
                layouts.append(tuple(s for t in tensors for s in S.normalize(t.layouts[k])))
            else:
                for t in tensors[1:]:
                    S.unify(tensors[0].layouts[k], t.layouts[k], self.reason("fixed_coupling", f"cat axis {k}"))
                layouts.append(S.normalize(tensors[0].layouts[k]))
        return Val(shape, tuple(layouts))

    def rule_stack(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        parsed = self._tensor_list(a)
        if parsed is None:
            return self.stop(a, {}, self.reason("unsupported_op", "stack of non-tensors"))
        tensors, shape, dim = parsed
        layouts = list(self.broadcast(tensors, tensors[0].shape, self.reason("fixed_coupling", "stack")))
        layouts.insert(dim, S.fixed(shape[dim]))
        return Val(shape, tuple(layouts))

    def rule_split(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, (list, tuple)):
            return self.stop(a, {}, self.reason("unsupported_op", "split of a non-tensor"))
        self.freeze_all([v for v in _walk(a) if isinstance(v, Scalar)], self.reason("size_used", "split size"))
        dim = _norm_dim(a.get("dim", 0), x.ndim)
        if spec.options.get("squeeze"):  # unbind: every position of a fixed axis, the axis dropped
            if S.is_spaced(x.layouts[dim]):
                self.freeze_all(Val((1,), (x.layouts[dim],)), self.reason("index_on_space", f"unbinding axis {dim}"))
            rest = x.layouts[:dim] + x.layouts[dim + 1:]
            return tuple(Val(tuple(int(d) for d in m.shape), rest) for m in meta)
        sizes = [int(m.shape[dim]) for m in meta]
        parts = S.pieces(x.layouts[dim], sizes, self.reason("constraint", "split inside a stride-mapped unit"))
        self.rewrites.append(Rewrite(self.node.name, "split_sizes", tuple(parts), dim))
        return tuple(Val(tuple(int(d) for d in m.shape), x.layouts[:dim] + (p,) + x.layouts[dim + 1:]) for m, p in zip(meta, parts))

    def rule_getitem(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        if "index" not in a:
            return self._index_axis(a)
        x, index = a.get("input"), a.get("index")
        if isinstance(x, (list, tuple)):
            return x[index] if isinstance(index, (int, slice)) else self.stop(a, {}, self.reason("unsupported_op", "dynamic index"))
        if isinstance(x, Scalar):
            return x
        meta = self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "indexing"))
        idx = index if isinstance(index, tuple) else (index,)
        if any(isinstance(v, (Val, Scalar)) for v in _walk(idx)) or any(
                not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in idx):
            return self.stop(a, {}, self.reason("unsupported_op", "advanced or dynamic indexing"))
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
                layouts.append(self._slice_piece(lay, *bounds, x.shape[k], p))
            else:
                if S.is_spaced(lay):
                    self.freeze_all(Val((1,), (lay,)), self.reason("index_on_space", f"indexing {i!r} on a space"))
                if isinstance(i, slice):
                    self._computed_bounds(i.start, i.stop, i.step)
                    layouts.append(S.fixed(shape[len(layouts)]))
            k += 1
        return Val(shape, tuple(layouts))

    def _computed_bounds(self, *bounds: Any) -> None:
        """A slice bound computed from a width (h[:, :y.shape[1]]) that stays as written on the
        student would move with that width: the spaces it is computed from are frozen."""
        for b in bounds:
            if isinstance(b, Scalar) and b.taint:
                self.freeze_all(b, self.reason("size_used", "a slice bound is computed from a width"))

    def _slice_piece(self, lay: Layout, start: int, end: int, size: int, where: int) -> Layout:
        """Positions start..end of a spaced axis as a piece of their own (refining the atoms they
        fall in); a Rewrite gives the student the piece's new bounds. `where`: the axis for
        slice/narrow, the index position for getitem."""
        why = self.reason("index_on_space", "a slice bound inside a stride-mapped unit")
        prefix, piece, suffix = S.pieces(lay, [start, end - start, size - end], why)
        self.rewrites.append(Rewrite(self.node.name, "slice_piece", (prefix, piece, suffix), where))
        return piece

    def _start_end(self, a: dict[str, Any], size: int) -> tuple[Any, Any]:
        """slice(input, dim, start, end) or narrow(input, dim, start, length): the bounds as written."""
        start, end = a.get("start"), a.get("end")
        if "narrow" in op_label(self.node, self.gm):
            if not (isinstance(start, int) and isinstance(end, int)):
                return start, Scalar()
            start = start + size if start < 0 else start  # narrow counts a negative start from the end
            end = start + end
        return start, end

    def _index_axis(self, a: dict[str, Any]) -> Any:
        """select / slice / narrow along one axis: a fixed axis may be indexed; a step-1 slice of a
        space with known bounds is a piece of it (see _slice_piece); select or a strided slice of a
        space freezes it."""
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or not isinstance(a.get("dim"), int):
            return self.stop(a, {}, self.reason("unsupported_op", "indexing with a computed axis"))
        dim = _norm_dim(a["dim"], x.ndim)
        shape = tuple(int(d) for d in meta.shape)
        lay, layouts = x.layouts[dim], list(x.layouts)
        if len(shape) == x.ndim - 1:  # select: one position of the axis, dropped
            if S.is_spaced(lay):
                self.freeze_all(Val((1,), (lay,)), self.reason("index_on_space", f"selecting on axis {dim}"))
            del layouts[dim]
        elif not S.is_spaced(lay):
            self._computed_bounds(a.get("start"), a.get("end"), a.get("step"))
            layouts[dim] = lay if shape[dim] == x.shape[dim] else S.fixed(shape[dim])
        elif a.get("step", 1) in (None, 1) and (bounds := _bounds(*self._start_end(a, x.shape[dim]), x.shape[dim], shape[dim])):
            layouts[dim] = self._slice_piece(lay, *bounds, x.shape[dim], dim)
        else:
            self.freeze_all(Val((1,), (lay,)), self.reason("index_on_space", f"strided slice of axis {dim}"))
            self._computed_bounds(a.get("start"), a.get("end"), a.get("step"))
            layouts[dim] = S.fixed(shape[dim])
        return Val(shape, tuple(layouts))

    def rule_reshape(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "reshape of a non-tensor"))
        shape = tuple(int(d) for d in meta.shape)
        node, table, gm = self.node, self.table, self.gm  # asked only by a split that could be heads
        layouts = _fold_batch(x.shape, x.layouts, shape) or reshape_layouts(
            x.shape, x.layouts, shape, self.reason, heads=lambda: _feeds_attention(node, table, gm))
        if "shape" in a:
            sizes = a["shape"]
            for k, (arg, lay) in enumerate(zip(sizes, layouts)):
                if isinstance(arg, Scalar) and S.is_spaced(lay):
                    # checked once the graph is read: SENet's y.view(b, c, 1, 1) sizes a space that a
                    # later `x * y` makes the very space `c` was read from
                    self.sizes.append((lay, arg, self.reason("untracked_size", f"size argument {k} is computed from another space")))
                elif isinstance(arg, Scalar) and arg.taint:
                    # a fixed dim whose size is computed from a width: it would change on the student
                    self.freeze_all(arg, self.reason("size_used", f"size argument {k} depends on a width"))
            self.rewrites.append(Rewrite(self.node.name, "view_shape", layouts))
        return Val(shape, layouts, x.param_axes if shape == x.shape else None)  # a no-op view keeps a parameter

    def rule_permute(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x = a.get("input")
        if not isinstance(x, Val):
            return self.stop(a, {}, self.reason("unsupported_op", "permute of a non-tensor"))
        if "dims" in a:
            perm = [_norm_dim(d, x.ndim) for d in a["dims"]]
        else:
            perm = list(range(x.ndim))
            if x.ndim >= 2:
                d0, d1 = _norm_dim(a.get("dim0", 0), x.ndim), _norm_dim(a.get("dim1", 1), x.ndim)
                perm[d0], perm[d1] = perm[d1], perm[d0]
        pa = tuple(x.param_axes[p] for p in perm) if x.param_axes else None
        return Val(tuple(x.shape[p] for p in perm), tuple(x.layouts[p] for p in perm), pa)

    def rule_reduce(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, meta = a.get("input"), self.out_meta()
        if not isinstance(x, Val) or not isinstance(meta, TensorMetadata):
            return self.stop(a, {}, self.reason("unsupported_op", "reduction"))
        dim = a.get("dim")
        dims = set(range(x.ndim)) if dim is None else {_norm_dim(d, x.ndim) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        keep = bool(a.get("keepdim", False))
        over = spec.options.get("over_space", "freeze")  # mean: uniform; max/min: any g; sum: frozen
        layouts = []
        for k in range(x.ndim):
            if k in dims:
                lay = x.layouts[k]
                if S.is_spaced(lay) and over == "uniform" and not any(isinstance(g, Fixed) for g in S.normalize(lay)):
                    self.uniform.append((self.node.name, lay))
                elif S.is_spaced(lay) and over != "any":
                    self.freeze_all(Val((1,), (lay,)), self.reason("reduced_over", f"reduction over axis {k}"))
                if spec.options.get("shape") == "kept":  # softmax: normalised over dim, not reduced
                    layouts.append(S.fixed(x.shape[k]))
                elif keep:
                    layouts.append(S.fixed(1))
            else:
                layouts.append(x.layouts[k])
        return Val(tuple(int(d) for d in meta.shape), tuple(layouts))

    def rule_shape_query(self, spec: OpSpec, a: dict[str, Any]) -> Any:
        x, node = a.get("input"), self.node
        if isinstance(self.out_meta(), TensorMetadata) or not isinstance(x, Val):
            return self.stop(a, {}, self.reason("unsupported_op", "tensor-valued attribute"))
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

    # ---- U-Net rules (issue 15): GroupNorm, ConvTranspose, pixel (un)shuffle; PReLU, InstanceNorm and
    # interpolate are channelwise entries of the table (PReLU's single slope: the `shared` option)
    def whole_groups(self, spec: OpSpec, a: dict[str, Any], x: Val, ch: int) -> Layout | None:
        """GroupNorm: channel c is unit c // (C/G) of a groups space, each unit C/G channels wide (as
        attention heads are head_dim wide): a copied group brings all its channels, so it keeps its
        teacher's mean and variance. A space that cannot move by whole groups (a stride-1 space
        already bound elsewhere, groups cut by a concat) is frozen. None: G is not a literal divisor."""
        n_groups, c = a.get(spec.options["groups"]), x.shape[ch]
        if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups <= 0 or c % n_groups:
            return None
        node = self.node
        owner = str(node.target) if node.op == "call_module" else node.name
        groups = Atom(n_groups, f"{node.name}:groups", label=f"{owner}.groups", free=True)
        S.unify(x.layouts[ch], (Seg(groups, c // n_groups),),
                self.reason("constraint", f"GroupNorm grows by whole groups of {c // n_groups} channels"))
        self.module_attr(spec, "groups", (Seg(groups),))
        if node.op == "call_function":  # literals of the call: num_groups (core ATen's C too)
            names = [n for n, _ in spec.signature]
            for arg, layout in ((spec.options["groups"], (Seg(groups),)), (spec.options.get("channels"), x.layouts[ch])):
                if arg is not None:
                    self.rewrites.append(Rewrite(node.name, "arg", (layout,), names.index(arg), arg))
        return S.normalize(x.layouts[ch])

    def conv_transposed(self, spec: OpSpec, x: Val, w: Val, b: Any, groups: int, meta: TensorMetadata) -> Any:
        """ConvTranspose: weight (C_in, C_out/groups, *k), so axis 0 is contracted (rows gathered and
        divided by replica counts) and axis 1 produces the output channels; stride, padding,
        output_padding and dilation act on the spatial axes only. Depthwise: output channel
        c*m + j reads input channel c alone (the space passes through, x m)."""
        shape = tuple(int(d) for d in meta.shape)
        ch = x.ndim - (w.ndim - 2) - 1
        fixed_reason = self.reason("fixed_coupling", "conv channels meet a fixed axis")
        for k in range(ch + 1, x.ndim):
            if S.is_spaced(x.layouts[k]):
                self.freeze_all(Val((1,), (x.layouts[k],)), self.reason("pooled_over", "spatial axis is a space"))
        if groups == 1:
            S.unify(x.layouts[ch], w.layouts[0], fixed_reason)
            self.role(w, 0, "contract")
            self.role(w, 1, "out")
            out = S.normalize(w.layouts[1])
        elif groups == x.shape[ch]:
            out = S.stride(x.layouts[ch], w.shape[1])
            S.unify(x.layouts[ch], w.layouts[0], fixed_reason)
            self.role(w, 0, "carry")
            self._rewrite_groups(spec, x.layouts[ch])
        else:
            self.freeze_all(x, self.reason("unsupported_op", f"grouped transposed conv (groups={groups}) has no rule"))
            return self.from_meta(meta)
        if isinstance(b, Val):
            S.unify(out, b.layouts[0], fixed_reason)
            if not self.role(b, 0, "carry"):
                self.freeze_all(b, self.reason("fixed_coupling", "bias is computed, not a parameter"))
        self.module_attr(spec, "in", x.layouts[ch])
        self.module_attr(spec, "out", out)
        return Val(shape, x.layouts[:ch] + (out,) + tuple(S.fixed(d) for d in shape[ch + 1:]))

    def depth_layout(self, spec: OpSpec, x: Val, ch: int, out_channels: int) -> Layout | None:
        """The output channel layout of a space_to_depth op; None when the sizes do not fit it."""
        how, c = spec.options.get("channels", "copies"), x.shape[ch]
        if how == "merge":  # pixel_shuffle: input channel c*r^2 + k -> output channel c
            if c % out_channels:
                return None
            unit = Atom(out_channels, f"{self.node.name}:channels", free=True)
            S.unify(x.layouts[ch], (Seg(unit, c // out_channels),),
                    self.reason("reshape_splits_space", "pixel_shuffle takes whole blocks of r^2 channels"))
            return S.normalize((Seg(unit),))
        if out_channels % c:
            return None
        if how == "stride":  # pixel_unshuffle: input channel c -> output channels c*r^2 .. c*r^2 + r^2 - 1
            return S.stride(x.layouts[ch], out_channels // c)
        return S.normalize(x.layouts[ch]) * (out_channels // c)  # a copy of every channel per patch offset


def _transposed(spec: OpSpec, a: dict[str, Any]) -> bool | None:
    """Is this convolution transposed? The table says so (true) or names the argument that does."""
    flag = spec.options.get("transposed", False)
    flag = a.get(flag) if isinstance(flag, str) else flag
    return flag if isinstance(flag, bool) else None


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


_PASS_THROUGH = ("permute", "reshape", "getitem", "elementwise", "split", "expand", "concat")


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
                if spec.kind in _PASS_THROUGH and user.op != "call_module":
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
                S.freeze(atom, reason("reduced_over", "empty tensor reshape"))
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
                    S.freeze(atom, reason("reshape_splits_space", "a width-1 space is squeezed away"))
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
        elif len(real_in) == 1 and _divisible(lead, _prod(out_shape[k] for k in gj[1:])):  # unflatten
            rest = _prod(out_shape[k] for k in gj[1:])
            out[gj[0]] = tuple(Seg(s.atom, s.inner // rest) if isinstance(s, Seg) else Fixed(s.size // rest)
                               for s in S.normalize(lead))
        elif len(real_in) == 1 and len(gj) == 2 and heads():  # C -> (heads, head_dim)
            out[gj[0]], out[gj[1]] = _split_heads(lead, out_shape[gj[0]], out_shape[gj[1]], reason)
        elif len(real_in) == 1 and len(gj) == 3 and heads():  # fused 3C -> (3, heads, head_dim): q | k | v
            groups, n_heads, head_dim = (out_shape[k] for k in gj)
            why = reason("reshape_splits_space", "fused projection blocks sharing one heads axis")
            blocks = S.pieces(lead, [n_heads * head_dim] * groups, why)
            for b in blocks[1:]:  # one heads axis holds every block: q, k and v heads share one map
                S.unify(blocks[0], b, why)
            out[gj[0]] = S.fixed(groups)
            out[gj[1]], out[gj[2]] = _split_heads(blocks[0], n_heads, head_dim, reason)
        elif len(real_in) == 1 and len(gj) == 2:  # C -> (G, C/G), as in a channel shuffle
            groups, size = out_shape[gj[0]], out_shape[gj[1]]
            why = reason("reshape_splits_space", "group blocks of a space cannot share one map")
            blocks = S.pieces(lead, [size] * groups, why)
            for b in blocks[1:]:  # the G blocks become one space: every block widens by one shared g
                S.unify(blocks[0], b, why)
            out[gj[1]] = S.normalize(blocks[0])
        else:
            detail = "a space would be split across dims" if len(real_in) == 1 else "a space trails other dims in a merge"
            for k in group_spaced:
                for atom in S.atoms_of(in_layouts[k]):
                    S.freeze(atom, reason("reshape_splits_space", detail))
    return tuple(lay if lay is not None else S.fixed(d) for lay, d in zip(out, out_shape))


def _split_heads(lead: Layout, groups: int, size: int, reason) -> tuple[Layout, Layout]:
    """(heads, head_dim) layouts of a projection split for attention: a new heads space, each unit
    `size` wide, named after the projection's parent module; free, so it may join a kv group."""
    param = next((S.find(g.atom).origin for g in S.normalize(lead) if isinstance(g, Seg)), "").split(":")[0]
    owner = _parent_module(param) or param.split(".")[0]
    unit = Atom(groups, "heads", label=f"{owner}.heads" if owner else "", free=True)
    S.unify(lead, (Seg(unit, size),), reason("reshape_splits_space", "a projection split into heads"))
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


_MISSING = object()


def _get_attr(gm: torch.nn.Module, target: str, default: Any = _MISSING) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part) if default is _MISSING else getattr(obj, part, default)
    return obj


def infer(gm: torch.fx.GraphModule, table: RuleTable | None = None) -> Analysis:
    """Run the remapping inference on a traced graph whose nodes carry shape metadata."""
    return Inference(gm, table).run()


__all__ = ["Analysis", "Inference", "Space", "Val", "Scalar", "infer", "op_label"]
