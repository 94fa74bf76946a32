"""Net2WiderNet as an FX pass: gather every bound parameter axis through its layout's map,
scale contracted axes, sync module attributes, and rewrite width-dependent literals."""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import Any

import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.shape_prop import TensorMetadata

from . import indexmaps as im
from .errors import InternalError, WidthError, typed
from .fill import NewRows
from .frontend import own_tensors, private_tree, trace
from .inference import Rewrite, RewriteKind, Role, Val, _get_attr, infer
from .planning import Plan, check_fingerprint, seeded


class TorchArrays:
    """How remap_tensor touches torch tensors (the proofs pass a sympy twin: proofs/symbolic.py)."""

    @staticmethod
    def take(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        n = x.shape[axis]
        if index.numel() > n and torch.equal(index[:n], torch.arange(n)):
            # g(j) = j for the old units: they are copied whole (a block copy, not a gather)
            return torch.cat([x, x.index_select(axis, index[n:])], dim=axis)
        return x.index_select(axis, index)

    @staticmethod
    def scale(x: torch.Tensor, axis: int, factor: torch.Tensor, fresh: bool) -> torch.Tensor:
        return _scale_along(x, axis, factor, inplace=fresh)

    @staticmethod
    def per_old_unit(n: int, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.ones(n, dtype=torch.float64).index_copy_(0, index, scale)

    def scale_root4(self, x: torch.Tensor, axis: int, fourth: torch.Tensor, inverse: bool) -> torch.Tensor:
        """x times fourth ** (1/4) (inverse: ** -1/4) along axis: wider heads' f from f^4."""
        return self.scale(x, axis, fourth ** (-0.25 if inverse else 0.25), True)

    @staticmethod
    def split_rows(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        return list(x.split(sizes, dim=0))

    @staticmethod
    def fill(x: torch.Tensor, axis: int, index: torch.Tensor, n: int, new: NewRows, power: int,
             ratio: Any) -> torch.Tensor:
        """Fill (fill.py): gather through g, set positions n.. (copied, zero or the mean of the old
        entries), times s**power; computed in float64 and rounded once to the stored dtype."""
        y = x.index_select(axis, index).double()
        tail = y.narrow(axis, n, y.shape[axis] - n)
        if new is NewRows.ZERO:
            tail.zero_()
        elif new is NewRows.MEAN:
            tail.copy_(x.double().mean(axis, keepdim=True).expand_as(tail))
        return (y * float(im.fill_factor(ratio, power, lambda r: math.sqrt(float(r))))).to(x.dtype)

    @staticmethod
    def cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, dim=0)


TORCH = TorchArrays()
DIVIDED = {Role.CONTRACT, Role.DIVIDE}  # roles whose axis is divided by replica counts


def remap_tensor(t: Any, param: str, axes: list[int], plan: Plan, arrays: Any = TORCH,
                 grouped: Any = None, noise: Any = None) -> Any:
    """Net2WiderNet on one parameter: gather every bound axis through its layout's index map and
    scale contracted axes by the consumer factors. Returns `t` itself when nothing changes.

    `arrays` supplies take/scale; the pass uses torch, the proofs a sympy array twin, so both run
    these very lines on the engine's own maps.
    """
    an, new = plan.analysis, t
    # contracted axes first: their scale then touches the smallest tensor
    # a `divide` axis (a tied head's gain) is scaled like a contracted one
    for axis in sorted(axes, key=lambda a: (not an.roles.get((param, a), set()) & DIVIDED, a)):
        layout = an.param_layouts[(param, axis)]
        roles = an.roles.get((param, axis), set())
        if (found := plan.axis_fill((param, axis))) is not None:  # a normalised space grown by fill
            how, sf = found
            new = arrays.fill(new, axis, plan.layout_index(layout), sf.width, how.new, how.power, sf.ratio)
            continue
        if Role.GROUPED in roles:
            continue
        index = plan.layout_index(layout)
        contract = bool(roles & DIVIDED)
        qk = plan.layout_qk(layout)  # wider heads: q and k rows times f, their consumers' columns 1/f
        if qk is None and index.numel() == new.shape[axis] and torch.equal(index, torch.arange(index.numel())):
            continue
        scale = plan.layout_scale(layout, (param, axis)) if contract else None
        if scale is not None and plan.symmetry != "split":
            # 1/count depends only on the old unit: scale the old (smaller) tensor, then gather
            new = arrays.scale(new, axis, arrays.per_old_unit(new.shape[axis], index, scale), new is not t)
            scale = None
        new = arrays.take(new, axis, index)  # a fresh array: safe to scale in place
        if scale is not None:
            new = arrays.scale(new, axis, scale, True)
        if qk is not None:
            new = arrays.scale_root4(new, axis, qk, contract)
        if Role.CONTRACT in roles and noise is not None and plan.symmetry == "noise":
            new = noise(new, axis, plan.replicated_mask(layout), (param, axis))
    if grouped is not None:
        new = _grouped(new, grouped, plan, arrays)
    return new


def _grouped(w: Any, gc: Any, plan: Plan, arrays: Any) -> Any:
    """Grouped conv: rows of group k gather and scale their columns by input piece k."""
    row_sizes = [plan.new_width(p) for p in gc.out_pieces]
    blocks = []
    for k, (rows, piece) in enumerate(zip(arrays.split_rows(w, row_sizes), gc.in_pieces)):
        block = arrays.take(rows, 1, plan.layout_index(piece))
        blocks.append(arrays.scale(block, 1, plan.layout_scale(piece, (gc.param, "group", k)), True))
    return arrays.cat_rows(blocks)


def _owner(gm: torch.nn.Module, qualname: str) -> tuple[torch.nn.Module, str]:
    module_name, _, attr = qualname.rpartition(".")
    return (gm.get_submodule(module_name) if module_name else gm), attr


def _set_tensor(gm: torch.nn.Module, qualname: str, value: torch.Tensor) -> None:
    module, attr = _owner(gm, qualname)
    old = getattr(module, attr)
    if isinstance(old, torch.nn.Parameter):
        setattr(module, attr, torch.nn.Parameter(value, requires_grad=old.requires_grad))
    elif attr in module._buffers:
        module._buffers[attr] = value
    else:
        setattr(module, attr, value)


# counts exactly stored in the dtype (integers up to 2**p), for which w / c runs in the stored dtype
HALF_COUNTS = {torch.bfloat16: 2**8, torch.float16: 2**11}


def _scale_along(t: torch.Tensor, axis: int, scale: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    shape = [1] * t.ndim
    shape[axis] = -1
    if t.dtype == torch.float32 and (counts := _counts(scale)) is not None:
        # IEEE division rounds w / 3 once, to the nearest float32: as exact as the float64 route
        # below, without converting the tensor twice
        return t.div_(counts.reshape(shape)) if inplace else t / counts.reshape(shape)
    if t.dtype in HALF_COUNTS and t.device.type == "cpu" and (counts := _counts(scale)) is not None \
            and counts.max() <= HALF_COUNTS[t.dtype]:
        # torch divides bfloat16/float16 on the CPU in float32 and rounds to the stored dtype: rounding
        # twice is innocuous for a quotient when 24 >= 2p + 2 bits (p = 8, 11), so w / c is the nearest
        # stored value, the float64 route's bits (every value and count: tests/test_dtypes.py), ~9x faster
        counts = counts.to(t.dtype).reshape(shape)
        return t.div_(counts) if inplace else t / counts
    if t.is_floating_point() and t.dtype != torch.float64:
        # w / 3 with 1/3 itself rounded to bfloat16 (or float32) is rounded twice: compute the product
        # in float64 and round once to the stored dtype, so each weight is the nearest one it can be
        return (t.double() * scale.double().reshape(shape)).to(t.dtype)
    factor = scale.to(t.dtype).reshape(shape)
    return t.mul_(factor) if inplace else t * factor


def _counts(scale: torch.Tensor) -> torch.Tensor | None:
    """float32 replica counts c when every factor is exactly 1/c (division by counts; not the random
    alphas of symmetry='split'), else None."""
    counts = torch.reciprocal(scale.double()).round()
    if not torch.equal(torch.reciprocal(counts), scale.double()) or counts.max() > 2**24:
        return None
    return counts.float()


class Net2WiderNet(PassBase):
    """Widen a GraphModule: `Net2WiderNet(plan)` by a Plan made from that very graph (checked by
    fingerprint: nodes, targets, parameter shapes; StalePlanError otherwise), or
    `Net2WiderNet(factor=..., example_inputs=...)` (or widths=...) planned from whatever graph it
    receives, so it composes with other passes in any PassManager order (`last_plan` is the plan it
    made, e.g. for widen_optimizer; `heads` as n2n_fx.plan's: 'dim' grows head_dim).

    The pass never writes into the graph module it is given: `torch.fx.symbolic_trace(model)` shares
    the model's submodules, so the student is a copy of the module tree whose every tensor is its
    own (widened, or cloned); the input graph module, and any model it shares modules with, is
    unchanged. Use `PassResult.graph_module`."""

    def __init__(self, plan: Plan | None = None, *, factor: float | None = None,
                 widths: dict[str, int] | None = None, example_inputs: Any = None, seed: int = 0,
                 symmetry: str = "none", replication: str = "random", norm_fill: bool = False,
                 mode: str = "eval", heads: str = "count") -> None:
        super().__init__()
        if plan is not None and (factor is not None or widths or example_inputs is not None or heads != "count"):
            raise WidthError("Net2WiderNet takes a plan, or factor/widths with example_inputs, not both",
                             op="Net2WiderNet", fix="drop the plan to plan from the graph the pass receives")
        if plan is None and example_inputs is None:
            raise WidthError("Net2WiderNet needs a plan, or example_inputs to plan from the graph it receives",
                             op="Net2WiderNet", fix="Net2WiderNet(factor=2.0, example_inputs=x) or Net2WiderNet(plan)")
        if plan is None and factor is None and not widths:
            factor = 2.0
        self.plan, self.last_plan = plan, plan
        self._options = dict(factor=factor, widths=widths, seed=seed, symmetry=symmetry, replication=replication,
                             norm_fill=norm_fill)
        self._inputs, self._mode, self._heads = example_inputs, mode, heads

    @typed("Net2WiderNet")
    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        if self.plan is None:
            traced = trace(graph_module, self._inputs, share_tensors=True, mode=self._mode)
            plan = Plan(infer(traced, heads=self._heads), **self._options)
            gm = plan.analysis.gm  # a private copy of the module tree, sharing the input's tensors
        else:
            plan = self.plan
            check_fingerprint(plan.fingerprint, graph_module, "Net2WiderNet")
            gm = private_tree(graph_module)
        self.last_plan = plan
        modified = self._widen(gm, plan)
        own_tensors(gm, graph_module)  # what the pass left alone is cloned: the student owns all it holds
        return PassResult(gm, modified)

    def _widen(self, graph_module: torch.fx.GraphModule, plan: Plan) -> bool:
        """Replace (never write into) the tensors of `graph_module`, a private tree."""
        an = plan.analysis
        grouped = {g.param: g for g in an.grouped}
        modified = False
        for param, axes in an.axes_by_param().items():
            t = _get_attr(graph_module, param).detach()
            new = remap_tensor(t, param, axes, plan, TORCH, grouped.get(param), noise=partial(self._noise, plan))
            if new is not t:
                _set_tensor(graph_module, param, new.contiguous())
                for alias in an.aliases.get(param, ()):  # tied weights stay one tensor
                    module, attr = _owner(graph_module, alias)
                    setattr(module, attr, _get_attr(graph_module, param))
                modified = True
        for ma in an.module_attrs:
            module, width = graph_module.get_submodule(ma.module), plan.new_width(ma.layout)
            old = getattr(module, ma.attr)
            # LayerNorm.normalized_shape is a tuple whose last entry is the normalised width
            setattr(module, ma.attr, (*old[:-1], width) if isinstance(old, tuple) else width)
        if _rewrite_graph(graph_module, plan):
            graph_module.recompile()  # only literals in the code changed; attributes need no recompile
            modified = True
        _update_shapes(graph_module, plan)
        graph_module.meta["n2n_plan"] = plan.token  # widen_optimizer checks it is given this plan
        if plan.fills:  # verify's default tolerance for a 16-bit student reads it (every weight rounded once)
            graph_module.meta["n2n_filled"] = sorted(plan.fills)
        return modified

    @staticmethod
    def _noise(plan: Plan, t: torch.Tensor, axis: int, mask: torch.Tensor, key: object) -> torch.Tensor:
        """The paper's symmetry breaking: Gaussian noise (std relative to the weights') on the
        consumer entries of replicated units. Not function-preserving."""
        gen = seeded(plan.seed, "noise", key)
        std = float(t.std()) if t.numel() > 1 else 1.0
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) * (plan.noise_std * std)
        shape = [1] * t.ndim
        shape[axis] = -1
        return t + noise * mask.to(t.dtype).reshape(shape)


def _update_shapes(gm: torch.fx.GraphModule, plan: Plan) -> None:
    """Keep meta['tensor_meta'] true on the student (later passes read it): every axis's new
    size is its layout's new width."""
    vals = plan.analysis.vals
    for node in gm.graph.nodes:
        meta, val = node.meta.get("tensor_meta"), vals.get(node.name)
        if meta is not None and val is not None:
            node.meta["tensor_meta"] = _resized(meta, val, plan)


def _rewrite_graph(gm: torch.fx.GraphModule, plan: Plan) -> bool:
    nodes = {n.name: n for n in gm.graph.nodes}
    changed = False
    for rw in plan.analysis.rewrites:
        apply = REWRITES.get(rw.what)
        if apply is None:  # a kind with no pass would leave the student's literal stale
            raise InternalError(f"rewrite kind {rw.what!r} at {rw.node} has no pass in wider.REWRITES")
        changed |= apply(nodes[rw.node], rw, [plan.new_width(lay) for lay in rw.layouts])
    return changed


def _rewrite_split(node: torch.fx.Node, rw: Rewrite, widths: list[int]) -> bool:
    x = node.args[0] if node.args else node.kwargs["input"]
    node.target = "split" if node.op == "call_method" else torch.split
    node.args, node.kwargs = (x, widths, rw.dim), {}
    return True


def _rewrite_normalized_shape(node: torch.fx.Node, rw: Rewrite, widths: list[int]) -> bool:
    """F.layer_norm(x, (C,), ...): the literal follows the width."""
    node.args = (node.args[0], (*tuple(node.args[1])[:-1], widths[0]), *node.args[2:])
    return True


def _rewrite_arg(node: torch.fx.Node, rw: Rewrite, widths: list[int]) -> bool:
    """A width literal passed to a function (Swin's num_heads), by position or keyword."""
    if len(node.args) > rw.dim:
        node.args = (*node.args[:rw.dim], widths[0], *node.args[rw.dim + 1:])
    else:
        node.kwargs = {**node.kwargs, rw.arg: widths[0]}
    return True


def _rewrite_groups(node: torch.fx.Node, rw: Rewrite, widths: list[int]) -> bool:
    if len(node.args) > 6:  # conv(input, weight, bias, stride, padding, dilation, groups)
        node.args = (*node.args[:6], widths[0], *node.args[7:])
    else:
        node.kwargs = {**node.kwargs, "groups": widths[0]}
    return True


def _rewrite_piece(node: torch.fx.Node, rw: Rewrite, widths: list[int]) -> bool:
    """A slice of a space: the piece's bounds on the student."""
    _rewrite_slice(node, rw.dim, *widths)
    return True


def _resized(meta: Any, val: Any, plan: Plan) -> Any:
    if isinstance(meta, TensorMetadata) and isinstance(val, Val):
        shape = torch.Size(plan.new_width(lay) for lay in val.layouts)
        stride, step = [], 1
        for d in reversed(shape):  # contiguous strides of the new shape
            stride.insert(0, step)
            step *= d
        return meta._replace(shape=shape, stride=tuple(stride))
    if isinstance(meta, (list, tuple)) and isinstance(val, (list, tuple)) and len(meta) == len(val):
        return type(meta)(_resized(m, v, plan) for m, v in zip(meta, val))
    return meta


def _rewrite_slice(node: torch.fx.Node, where: int, before: int, piece: int, after: int) -> None:
    """Positions before .. before + piece: h[..., a:b] (getitem, `where` = the index position, a
    slice keeping the whole axis written `:`), slice(x, dim, a, b) or narrow(x, dim, a, b - a)."""
    x = node.args[0] if node.args else node.kwargs["input"]
    if node.target is operator.getitem:
        index = node.args[1]
        items = list(index) if isinstance(index, tuple) else [index]
        items[where] = slice(None) if before == after == 0 else slice(before, before + piece)
        node.args = (x, tuple(items) if isinstance(index, tuple) else items[0])
    elif "narrow" in str(node.target):
        node.args, node.kwargs = (x, where, before, piece), {}
    else:
        node.args, node.kwargs = (x, where, before, before + piece, 1), {}


def _rewrite_sizes(node: torch.fx.Node, widths: list[int]) -> bool:
    """zeros(sizes) / zeros(*sizes): literal sizes become the new widths (computed ones stay)."""
    packed = len(node.args) == 1 and isinstance(node.args[0], (list, tuple))
    sizes = list(node.args[0]) if packed else list(node.args)
    new = [w if isinstance(v, int) else v for v, w in zip(sizes, widths)]
    if new == sizes:
        return False
    node.args = (type(node.args[0])(new),) if packed else tuple(new)
    return True


def _rewrite_view(node: torch.fx.Node, widths: list[int]) -> bool:
    """Replace literal sizes in view/reshape by the new widths (-1 and computed sizes stay)."""
    packed = len(node.args) == 2 and isinstance(node.args[1], (list, tuple))
    sizes = list(node.args[1]) if packed else list(node.args[1:])
    if not sizes and "shape" in node.kwargs:
        sizes, packed = list(node.kwargs["shape"]), None
    new = _follow_widths(sizes, widths)
    if new == sizes:
        return False
    if packed is None:
        node.kwargs = {**node.kwargs, "shape": tuple(new)}
    elif packed:
        node.args = (node.args[0], tuple(new))
    else:
        node.args = (node.args[0], *new)
    return True


def _follow_widths(sizes: list, widths: list[int]) -> list:
    """Literal sizes replaced by the new widths; -1 and computed sizes (nodes) stay."""
    return [w if isinstance(s, int) and s != -1 else s for s, w in zip(sizes, widths)]


def _rewrite_unflatten(node: torch.fx.Node, rw: Rewrite, widths: list[int]) -> bool:
    """unflatten(x, dim, sizes): literal sizes of the new dims follow the new widths (-1 stays)."""
    sizes = list(node.args[2] if len(node.args) > 2 else node.kwargs["sizes"])
    new = _follow_widths(sizes, widths)
    if new == sizes:
        return False
    if len(node.args) > 2:
        node.args = (*node.args[:2], tuple(new), *node.args[3:])
    else:
        node.kwargs = {**node.kwargs, "sizes": tuple(new)}
    return True


# every kind of Rewrite and the pass that changes its literal (keyed by the enum: a kind missing
# here raises in _rewrite_graph instead of being skipped)
REWRITES = {
    RewriteKind.VIEW_SHAPE: lambda node, rw, widths: _rewrite_view(node, widths),
    RewriteKind.UNFLATTEN_SIZES: _rewrite_unflatten,
    RewriteKind.SPLIT_SIZES: _rewrite_split,
    RewriteKind.NORMALIZED_SHAPE: _rewrite_normalized_shape,
    RewriteKind.ARG: _rewrite_arg,
    RewriteKind.SIZES: lambda node, rw, widths: _rewrite_sizes(node, widths),
    RewriteKind.SLICE_PIECE: _rewrite_piece,
    RewriteKind.GROUPS: _rewrite_groups,
}
if set(REWRITES) != set(RewriteKind):
    raise InternalError(f"rewrite kinds without a pass: {sorted(set(RewriteKind) - set(REWRITES))}")
