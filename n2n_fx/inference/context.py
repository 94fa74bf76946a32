"""The context the rules work in: the accumulators of one inference run and the helpers every rule
uses (reasons, freezing, parameter values, roles, broadcasting, per-unit tensors, module attrs)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

from .. import spaces as S
from ..spaces import Atom, Code, Layout, Reason, Seg
from ..spec import OpSpec, RuleTable, bind, load_table
from .values import (
    Event,
    GroupedContract,
    HeadGrowth,
    HeadLink,
    ModuleAttr,
    ParamAxis,
    QKLink,
    Rewrite,
    Role,
    Scalar,
    TiedHead,
    Val,
    _get_attr,
    _walk,
    op_label,
)


class Context:
    """What one run of the inference accumulates, and the helpers its rules call (as `ctx`)."""

    def __init__(self, gm: torch.fx.GraphModule, table: RuleTable | None = None,
                 heads: HeadGrowth = HeadGrowth.COUNT) -> None:
        self.gm = gm
        self.heads = HeadGrowth(heads)
        self.table = table or load_table()
        self.vals: dict[str, Any] = {}
        self.param_layouts: dict[ParamAxis, Layout] = {}
        self.roles: dict[ParamAxis, set[Role]] = {}
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
        self._first_only = False  # a tuple-returning op's rule sees only its first output (driver.apply)
        self._roled: set[ParamAxis] = set()  # parameter axes the current call gave a role
        self.reads: dict[ParamAxis, str] = {}  # parameter axis -> first node that read it without a role
        self.sizes: list[tuple[Layout, Scalar, Reason]] = []  # computed view sizes of spaced axes
        self.contractors: dict[ParamAxis, list[torch.fx.Node]] = {}  # the calls that contract each axis
        self.tied_heads: list[TiedHead] = []
        self.events: dict[str, Event] = {}
        self.qk: list[QKLink] = []

    def reason(self, code: Code, detail: str = "") -> Reason:
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

    def role(self, val: Any, axis: int, role: Role) -> bool:
        """Record how a parameter axis is used; False when `val` is not a parameter."""
        if not isinstance(val, Val) or val.param_axes is None or val.param_axes[axis] is None:
            return False
        self.roles.setdefault(val.param_axes[axis], set()).add(role)
        self._roled.add(val.param_axes[axis])
        if role == Role.CONTRACT and self.node is not None:
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
                    self.freeze_all(Val((1,), (v.layouts[j],)), self.reason(Code.BROADCAST, "a width-1 space is broadcast"))
            if k == 0 and nd >= 2 and size == 1 and fixed_one and cands:
                # a leading axis of size 1 is a batch of one: at a batch of two the space would be
                # broadcast against it, so it is here too (a plan never depends on the batch size)
                for c in cands:
                    self.freeze_all(Val((1,), (c,)), self.reason(Code.BROADCAST, "a width-1 space meets a batch of one"))
                cands = []
            if not cands:
                out.append(S.fixed(size))
                continue
            for c in cands[1:]:
                S.unify(cands[0], c, reason)
            out.append(S.normalize(cands[0]))
        return tuple(out)

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
                self.freeze_all(whole, self.reason(Code.UNSUPPORTED_OP, f"{name} is not one value per unit"))
                continue
            S.unify(layout, t.layouts[0], self.reason(Code.FIXED_COUPLING, f"{name} is not a parameter"))
            if not self.role(t, 0, Role.CARRY):
                self.freeze_all(whole, self.reason(Code.FIXED_COUPLING, f"{name} is computed"))
        return shared

    def module_attr(self, spec: OpSpec, role: str, layout: Layout) -> None:
        node = self.node
        if node is not None and node.op == "call_module" and role in spec.attrs:
            child, _, attr = spec.attrs[role].rpartition(".")  # "out_proj.in_features": a child's
            self.module_attrs.append(ModuleAttr(f"{node.target}.{child}" if child else node.target, attr, layout))

