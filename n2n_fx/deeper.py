"""Net2DeeperNet as an FX pass: insert identity layers after named nodes.

block="identity" (the paper's): an identity Linear (features on the last axis) or ConvNd (channels
on axis 1; odd or even kernels with 'same' padding, the tap at (k-1)//2), optionally a BatchNorm
set to undo its own normalisation, and a copy of the activation that produced the node when the
table marks it idempotent on its range (phi(phi(v)) = phi(v)). A non-idempotent activation is
refused.

block="residual": x + W2 phi(W1 x + b1) + b2 with W2 = 0 and b2 = 0, the identity for every phi
(GELU, SiLU, tanh, ...); W1 is drawn from the seed, so training moves W2 off zero at once.
block="gated": a post-LN block, x + alpha (LN(x + W2 phi(W1 x + b1) + b2) - x) with alpha = 0 (a
LayerNorm after the sum is never the identity, so the gate closes the whole block).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.shape_prop import TensorMetadata

from . import spaces as S
from .errors import DeepenError, UnknownNodeError, typed
from .frontend import Inputs, as_inputs, own_tensors, positional, private_tree, propagate_shapes
from .inference import infer, op_label
from .spec import load_table

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BNS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def identity_tap(kernel_size: int) -> int:
    """Index of the tap that makes a stride-1 'same'-padded conv the identity (left pad)."""
    return (kernel_size - 1) // 2


def identity_linear(features: int, dtype: torch.dtype) -> nn.Linear:
    layer = nn.Linear(features, features, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(features, dtype=dtype))
        layer.bias.zero_()
    return layer


def identity_conv(channels: int, spatial: int, kernel_size: int, dtype: torch.dtype) -> nn.Module:
    conv = _CONVS[spatial](channels, channels, kernel_size, padding="same", dtype=dtype)
    tap = identity_tap(kernel_size)
    with torch.no_grad():
        conv.weight.zero_()
        idx = torch.arange(channels)
        conv.weight[(idx, idx) + (tap,) * spatial] = 1.0
        conv.bias.zero_()
    return conv


def zero_residual(features: int, hidden: int, spatial: int, dtype: torch.dtype,
                  generator: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """(W1, W2) of x + W2 phi(W1 x + b1) + b2: W1 drawn (fan-in uniform), W2 and b2 zero."""
    if spatial:
        first, last = (_CONVS[spatial](features, hidden, 1, dtype=dtype), _CONVS[spatial](hidden, features, 1, dtype=dtype))
    else:
        first, last = nn.Linear(features, hidden, dtype=dtype), nn.Linear(hidden, features, dtype=dtype)
    bound = features ** -0.5
    with torch.no_grad():
        first.weight.copy_((torch.rand(first.weight.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
        first.bias.copy_((torch.rand(first.bias.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound)
        last.weight.zero_()
        last.bias.zero_()
    return first, last


def undo_batch_norm(value: torch.Tensor, axis: int, spatial: int, mode: str, eps: float = 1e-5) -> nn.Module:
    """A BatchNorm that is the identity on `value`: gamma = sqrt(var + eps), beta = mean.

    eval: running statistics are the value's statistics, so the layer is the identity for every
    input in eval mode. train: gamma and beta come from this batch's (biased) statistics, so the
    layer is the identity on this batch.
    """
    dims = [d for d in range(value.ndim) if d != axis]
    mean = value.mean(dims)
    var_biased = value.var(dims, unbiased=False)
    var_unbiased = value.var(dims, unbiased=True) if value.numel() // value.shape[axis] > 1 else var_biased
    bn = _BNS[max(spatial, 1)](value.shape[axis], eps=eps, dtype=value.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var_unbiased)
        var = var_unbiased if mode == "eval" else var_biased  # the variance the layer divides by
        bn.weight.copy_(torch.sqrt(var + eps))
        bn.bias.copy_(mean)
    return bn


def _channels_first(shape: tuple[int, ...], val: Any) -> bool:
    """Features on axis 1 (N, C, ...) rather than on the last axis: 4-D and up, or a 3-D value
    whose space sits on axis 1 (Conv1d maps)."""
    axis1 = val is not None and S.is_spaced(val.layouts[1]) and not S.is_spaced(val.layouts[-1])
    if len(shape) > 5:  # no ConvNd for 4+ spatial dims: channels-first only where the space says so
        return axis1
    return len(shape) >= 4 or (len(shape) == 3 and axis1)


def _find_node(gm: torch.fx.GraphModule, name: str) -> torch.fx.Node:
    exact = [n for n in gm.graph.nodes if n.name == name]
    if exact:
        return exact[0]
    by_module = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if len(by_module) == 1:
        return by_module[0]
    if len(by_module) > 1:
        raise UnknownNodeError(f"module {name!r} is called {len(by_module)} times", node=name, op="call_module",
                               fix=f"name one call by its node name: {[n.name for n in by_module]}")
    inside = [n for n in gm.graph.nodes if name in _module_names(n)]
    if inside:  # a module traced through (a container, or any module under torch.export): its last node, its output
        return inside[-1]
    names = deepen_targets(gm)
    raise UnknownNodeError(f"no node or module named {name!r}", node=name, op="deepen",
                           fix=f"use a module name (`n2n-fx explain` lists them) or an FX node name, e.g. {names[-6:]}")


def _module_names(node: torch.fx.Node) -> set[str]:
    """The qualified names of the modules a node was traced inside: nn_module_stack's keys under
    symbolic_trace, its values' paths under torch.export (whose keys are L__self__... ids)."""
    stack = node.meta.get("nn_module_stack") or {}
    out = set(stack)
    for value in stack.values():
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            out.add(value[0])
    return out


def deepen_targets(gm: torch.fx.GraphModule) -> list[str]:
    """The module names `after=` takes in this graph (both front ends), in graph order: modules
    whose output (their last node) is a floating tensor with a feature or channel axis."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last: dict[str, torch.fx.Node] = {}
    for n in gm.graph.nodes:
        for name in _module_names(n) | ({n.target} if n.op == "call_module" else set()):
            if name and not name.startswith("L__self__"):
                last[name] = n
    out = []
    for name, node in sorted(last.items(), key=lambda kv: (order[kv[1]], -kv[0].count("."))):
        try:
            if _find_node(gm, name) is node:
                _check_insertable(gm, node)
                out.append(name)
        except (UnknownNodeError, DeepenError):
            continue
    return out


def _check_insertable(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata) or len(meta.shape) < 2 or not meta.dtype.is_floating_point:
        raise DeepenError("an identity layer needs one floating tensor with a feature or channel axis",
                          node=node.name, op=op_label(node, gm) if node.op.startswith("call") else node.op,
                          fix="deepen after a hidden activation, e.g. a ReLU output (not a size or a tuple)")


def _capture(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node], inputs: Inputs, mode: str) -> dict[str, torch.Tensor]:
    """Values of `nodes` on `inputs`, run on a copy (the student's statistics are not touched)."""
    probe = copy.deepcopy(gm)
    probe.train(mode == "train")
    seen: dict[str, torch.Tensor] = {}
    wanted = {n.name for n in nodes}

    class _Probe(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in wanted:
                seen[n.name] = out.detach().clone()
            return out

    with torch.no_grad():
        _Probe(probe).run(*positional(probe, inputs))
    return seen


class Net2DeeperNet(PassBase):
    def __init__(self, after: Sequence[str], example_inputs: Inputs, *, activation: str | None = "auto",
                 batch_norm: bool = False, bn_mode: str = "eval", kernel_size: int = 3, block: str = "identity",
                 hidden: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if block not in ("identity", "residual", "gated"):
            raise DeepenError(f"block must be 'identity', 'residual' or 'gated', got {block!r}", op="deepen",
                              fix="'identity' (the paper's layer), 'residual' (x + W2 phi(W1 x), W2 = 0) or "
                                  "'gated' (a post-LN block behind a zero gate)")
        if block != "identity" and batch_norm:
            raise DeepenError("a residual block is exact without a BatchNorm undo", op="deepen",
                              fix="pass batch_norm=False with block='residual'")
        if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
            raise DeepenError(f"hidden must be a positive int, got {hidden!r}", op="deepen",
                              fix="hidden=None uses the block's feature width")
        self.block, self.hidden, self.seed = block, hidden, seed
        if activation not in ("auto", None, "none"):
            raise DeepenError(f"activation must be 'auto' or None, got {activation!r}", op="deepen",
                              fix="'auto' repeats an idempotent activation; None inserts a linear identity layer")
        if bn_mode not in ("eval", "train"):
            raise DeepenError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}", op="deepen",
                              fix="bn_mode='eval' (running statistics) or 'train' (this batch)")
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise DeepenError(f"kernel_size must be a positive int, got {kernel_size!r}", op="deepen",
                              fix="use kernel_size=3 (odd) or 2 (even; padded on the right)")
        self.after, self.inputs = list(after), as_inputs(example_inputs)
        self.activation = None if activation == "none" else activation
        self.batch_norm, self.bn_mode, self.kernel_size = batch_norm, bn_mode, kernel_size

    @typed("Net2DeeperNet")
    def call(self, graph_module: torch.fx.GraphModule) -> PassResult:
        """Insert the layers into a copy of the module tree (symbolic_trace(model) shares the model's
        submodules; the input is never written); the student owns every tensor it holds."""
        gm, table = private_tree(graph_module), load_table()
        # shapes from this graph, not what an earlier pass left (fuse and user passes keep no tensor_meta)
        propagate_shapes(gm, self.inputs)
        nodes = [_find_node(gm, name) for name in self.after]
        for node in nodes:
            _check_insertable(gm, node)
        analysis = infer(gm, table)
        captured = _capture(gm, nodes, self.inputs, self.bn_mode) if self.batch_norm else {}
        for node in nodes:
            if self.block in ("residual", "gated"):
                self._insert_residual(gm, node, analysis.vals.get(node.name), table)
            else:
                self._insert(gm, node, analysis.vals.get(node.name), captured.get(node.name), table)
        gm.graph.lint()
        gm.recompile()
        own_tensors(gm, graph_module)
        return PassResult(gm, bool(nodes))

    def _insert(self, gm: torch.fx.GraphModule, node: torch.fx.Node, val: Any, value: torch.Tensor | None,
                table) -> None:
        meta = node.meta["tensor_meta"]
        shape, dtype = tuple(meta.shape), meta.dtype
        conv_like = _channels_first(shape, val)
        axis = 1 if conv_like else len(shape) - 1
        layers: list[tuple[str, nn.Module]] = []
        if conv_like and len(shape) - 2 not in _CONVS:
            raise DeepenError(f"a {len(shape)}-D value with features on axis 1 has no identity conv (Conv1d-3d only)",
                              node=node.name, op="deepen", fix="deepen after a layer whose output has at most 3 spatial dims")
        if conv_like:
            layers.append(("layer", identity_conv(shape[1], len(shape) - 2, self.kernel_size, dtype)))
        else:
            layers.append(("layer", identity_linear(shape[-1], dtype)))
        if self.batch_norm:
            if not conv_like and len(shape) >= 3:
                raise DeepenError("BatchNorm1d normalises axis 1, but these features are on the last axis",
                                  node=node.name, op="deepen", fix="pass batch_norm=False here")
            assert value is not None
            layers.append(("bn", undo_batch_norm(value, axis, len(shape) - 2 if conv_like else 1, self.bn_mode)))
        act_node_fn = None
        spec = table.lookup(node, gm) if node.op in ("call_module", "call_function", "call_method") else None
        if self.activation == "auto" and spec is not None and spec.activation:
            if not spec.idempotent:
                raise DeepenError(
                    f"the identity layer would be followed by {spec.name}, which is not idempotent "
                    f"({spec.name}({spec.name}(v)) != {spec.name}(v)), so the function would change",
                    node=node.name, op=op_label(node, gm),
                    fix="pass activation=None to insert a linear identity layer, or deepen after a ReLU-family "
                        "activation")
            if node.op == "call_module":
                layers.append(("act", copy.deepcopy(gm.get_submodule(node.target))))
            else:
                act_node_fn = (node.op, node.target, node.args[1:], dict(node.kwargs))
        # one call_module node per inserted layer, so that the table (not a container) sees each
        base = self._module_name(gm, node)
        prev, first = node, None
        for role, layer in layers:
            gm.add_submodule(f"{base}.{role}", layer)
            with gm.graph.inserting_after(prev):
                prev = gm.graph.call_module(f"{base}.{role}", (prev,))
            prev.meta["tensor_meta"] = meta
            first = first or prev
        if act_node_fn is not None:
            op, target, rest, kwargs = act_node_fn
            with gm.graph.inserting_after(prev):
                prev = gm.graph.create_node(op, target, (prev, *rest), kwargs)
            prev.meta["tensor_meta"] = meta
        last = prev
        node.replace_all_uses_with(last, delete_user_cb=lambda user: user is not first)

    def _insert_residual(self, gm: torch.fx.GraphModule, node: torch.fx.Node, val: Any, table) -> None:
        """residual: x -> x + W2 phi(W1 x + b1) + b2 with W2 = 0.
        gated (post-LN): x -> x + alpha (LN(x + W2 phi(W1 x + b1) + b2) - x) with alpha = 0: a post-LN
        block is not the identity at any W2 (LN(x) != x), so the gate closes the whole block.
        One call node per layer, so the table sees each and the student widens afterwards."""
        meta = node.meta["tensor_meta"]
        shape, dtype = tuple(meta.shape), meta.dtype
        conv_like = _channels_first(shape, val)
        gated = self.block == "gated"
        if gated and conv_like:
            raise DeepenError("a gated post-LN block normalises the last axis, but these features are channels-first",
                              node=node.name, op="deepen", fix="use block='residual' on feature maps")
        if conv_like and len(shape) - 2 not in _CONVS:
            raise DeepenError(f"a {len(shape)}-D value with features on axis 1 has no 1x1 conv (Conv1d-3d only)",
                              node=node.name, op="deepen", fix="deepen after a layer whose output has at most 3 spatial dims")
        features = shape[1] if conv_like else shape[-1]
        hidden = self.hidden or features
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + len(node.name))
        first, last = zero_residual(features, hidden, len(shape) - 2 if conv_like else 0, dtype, gen)
        if gated:  # the gate, not W2, keeps the block closed: W2 starts as a real layer
            with torch.no_grad():
                last.weight.copy_((torch.rand(last.weight.shape, generator=gen, dtype=torch.float64) * 2 - 1) * hidden ** -0.5)
        spec = table.lookup(node, gm) if node.op in ("call_module", "call_function", "call_method") else None
        if self.activation == "auto" and spec is not None and spec.activation and node.op == "call_module":
            act: nn.Module = copy.deepcopy(gm.get_submodule(node.target))  # the model's own nonlinearity
        else:
            act = nn.GELU() if self.activation == "auto" else nn.Identity()
        base = self._module_name(gm, node)
        internal: list[torch.fx.Node] = []

        def after(prev: torch.fx.Node, op: str, target: Any, args: tuple) -> torch.fx.Node:
            with gm.graph.inserting_after(prev):
                new = gm.graph.create_node(op, target, args)
            internal.append(new)
            return new

        prev = node
        for role, layer in (("residual_in", first), ("residual_act", act), ("residual_out", last)):
            gm.add_submodule(f"{base}.{role}", layer)
            prev = after(prev, "call_module", f"{base}.{role}", (prev,))
        out = after(prev, "call_function", operator.add, (node, prev))
        if gated:
            gate = nn.Module()
            gate.register_parameter("alpha", nn.Parameter(torch.zeros(1, dtype=dtype)))
            gm.add_submodule(f"{base}.gate", gate)
            gm.add_submodule(f"{base}.norm", nn.LayerNorm(features, dtype=dtype))
            normed = after(out, "call_module", f"{base}.norm", (out,))
            delta = after(normed, "call_function", operator.sub, (normed, node))
            alpha = after(delta, "get_attr", f"{base}.gate.alpha", ())
            scaled = after(alpha, "call_function", operator.mul, (delta, alpha))
            out = after(scaled, "call_function", operator.add, (node, scaled))
        out.meta["tensor_meta"] = meta
        node.replace_all_uses_with(out, delete_user_cb=lambda user: user not in internal)

    @staticmethod
    def _module_name(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
        base = f"n2n_deepen_{node.name}"
        name, k = base, 2
        existing = dict(gm.named_modules())
        while name in existing:
            name, k = f"{base}_{k}", k + 1
        return name
