"""Symbolic evaluation for the proofs: sympy arrays, the engine's remap on them, an FX interpreter.

The student's parameters are produced by `n2n_fx.wider.remap_tensor`, the very function the pass
runs, given the engine's own Plan (index maps and consumer scales), on arrays of sympy symbols.
Consumer scales arrive from the engine as float64; `exact` turns them back into the rationals
they approximate (1/3 -> Rational(1, 3)), so a wrong scale in the engine is a wrong scale here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import sympy
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx import indexmaps as im
from n2n_fx.fill import NewRows
from n2n_fx.planning import Plan
from n2n_fx.wider import remap_tensor

Array = np.ndarray  # dtype=object, entries are sympy expressions


def exact(v: float) -> sympy.Rational:
    """The rational an engine float stands for (denominators are replica counts, small)."""
    frac = Fraction(v).limit_denominator(10_000)
    return sympy.Rational(frac.numerator, frac.denominator)


class SympyArrays:
    """The array backend remap_tensor uses for proofs (numpy object arrays of sympy expressions)."""

    @staticmethod
    def take(x: Array, axis: int, index: torch.Tensor) -> Array:
        return np.take(x, index.numpy(), axis=axis)

    @staticmethod
    def scale(x: Array, axis: int, factor: Any, fresh: bool) -> Array:
        f = np.array([exact(float(v)) if isinstance(v, (float, torch.Tensor)) else v for v in list(factor)],
                     dtype=object)
        shape = [1] * x.ndim
        shape[axis] = -1
        return x * f.reshape(shape)

    def scale_root4(self, x: Array, axis: int, fourth: Any, inverse: bool) -> Array:
        """TorchArrays.scale_root4 on symbols: f = (f^4)^(1/4) stays an exact surd."""
        f = [sympy.root(exact(float(v)), 4) ** (-1 if inverse else 1) for v in list(fourth)]
        return self.scale(x, axis, f, True)

    @staticmethod
    def per_old_unit(n: int, index: torch.Tensor, scale: torch.Tensor) -> Array:
        out = np.array([sympy.Integer(1)] * n, dtype=object)
        for i, v in zip(index.tolist(), scale.tolist()):
            out[i] = exact(v)
        return out

    @staticmethod
    def split_rows(x: Array, sizes: list[int]) -> list[Array]:
        return np.split(x, np.cumsum(sizes)[:-1], axis=0)

    @staticmethod
    def fill(x: Array, axis: int, index: torch.Tensor, n: int, new: NewRows, power: int, ratio: Any) -> Array:
        """TorchArrays.fill on symbols: s = sqrt(new / old) stays an exact surd."""
        y = np.moveaxis(np.take(x, index.numpy(), axis=axis), axis, 0).copy()
        if new is NewRows.ZERO:
            y[n:] = sympy.Integer(0)
        elif new is NewRows.MEAN:
            y[n:] = np.moveaxis(x, axis, 0).sum(axis=0) / n
        factor = im.fill_factor(sympy.Rational(ratio.numerator, ratio.denominator), power, sympy.sqrt)
        return np.moveaxis(y * factor, 0, axis)

    @staticmethod
    def cat_rows(parts: list[Array]) -> Array:
        return np.concatenate(parts, axis=0)


SYMPY = SympyArrays()


def symbols_like(name: str, shape: tuple[int, ...], **assumptions: Any) -> Array:
    flat = [sympy.Symbol(f"{name}_{'_'.join(map(str, idx))}", real=True, **assumptions)
            for idx in np.ndindex(*shape)] if shape else [sympy.Symbol(name, real=True, **assumptions)]
    return np.array(flat, dtype=object).reshape(shape)


def teacher_params(gm: torch.nn.Module) -> dict[str, Array]:
    """A symbol per parameter entry; BatchNorm running variances are positive symbols."""
    out: dict[str, Array] = {}
    for name, t in (*gm.named_parameters(), *gm.named_buffers()):
        if t.is_floating_point():
            out[name] = symbols_like(name.replace(".", "_"), tuple(t.shape), positive=name.endswith("running_var"))
    return out


def student_params(plan: Plan, params: dict[str, Array], arrays: Any = SYMPY) -> dict[str, Array]:
    """The engine's remap_tensor applied to every symbolic parameter."""
    an = plan.analysis
    grouped = {g.param: g for g in an.grouped}
    out = dict(params)
    for param, ax in an.axes_by_param().items():
        if param in params:
            out[param] = remap_tensor(params[param], param, ax, plan, arrays, grouped.get(param))
    return out


# ------------------------------------------------------------------------------ interpreter
F_ACT = {}  # undefined elementwise functions, one per activation class: identities hold for any f


def undefined(name: str) -> Callable[[Any], Any]:
    fn = F_ACT.setdefault(name, sympy.Function(f"f_{name}"))
    return np.vectorize(lambda v: fn(v), otypes=[object])


def relu(x: Array) -> Array:
    return np.vectorize(lambda v: sympy.Max(0, v), otypes=[object])(x)


def conv_nd(x: Array, w: Array, b: Array | None, stride, padding, dilation, groups: int) -> Array:
    """Direct convolution on object arrays (N, C, *spatial), tiny sizes only."""
    nsp = w.ndim - 2
    as_t = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nsp  # noqa: E731
    stride, dilation = as_t(stride), as_t(dilation)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in as_t(padding)]
    xp = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=sympy.Integer(0))
    n, cin = x.shape[:2]
    cout, cg = w.shape[:2]
    og = cout // groups
    out_sp = [(xp.shape[2 + d] - dilation[d] * (w.shape[2 + d] - 1) - 1) // stride[d] + 1 for d in range(nsp)]
    out = np.empty((n, cout, *out_sp), dtype=object)
    for idx in np.ndindex(n, cout, *out_sp):
        bi, o, pos = idx[0], idx[1], idx[2:]
        g = o // og
        acc = sympy.Integer(0) if b is None else b[o]
        for c in range(cg):
            for k in np.ndindex(*w.shape[2:]):
                src = tuple(pos[d] * stride[d] + k[d] * dilation[d] for d in range(nsp))
                acc += w[(o, c, *k)] * xp[(bi, g * cg + c, *src)]
        out[idx] = acc
    return out


def batch_norm(x: Array, mean: Array, var: Array, weight: Array | None, bias: Array | None, training: bool,
               eps: float) -> Array:
    shape = [1] * x.ndim
    shape[1] = -1
    eps_r = exact(eps)
    if training:
        dims = tuple(d for d in range(x.ndim) if d != 1)
        count = x.size // x.shape[1]
        mean = x.sum(axis=dims) / count
        var = ((x - mean.reshape(shape)) ** 2).sum(axis=dims) / count
    y = (x - mean.reshape(shape)) / np.vectorize(sympy.sqrt, otypes=[object])(var + eps_r).reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def norm_last(x: Array, weight: Array | None, bias: Array | None, eps: float, rms: bool) -> Array:
    """LayerNorm (rms=False) or RMSNorm over the last axis."""
    n = x.shape[-1]
    sqrt = np.vectorize(sympy.sqrt, otypes=[object])
    if rms:
        y = x / sqrt((x ** 2).sum(axis=-1, keepdims=True) / n + exact(eps))
    else:
        centred = x - x.sum(axis=-1, keepdims=True) / n
        y = centred / sqrt((centred ** 2).sum(axis=-1, keepdims=True) / n + exact(eps))
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def attention(q: Array, k: Array, v: Array, m: nn.MultiheadAttention, w_in: Array, b_in: Array | None,
              w_out: Array, b_out: Array | None) -> Array:
    """nn.MultiheadAttention (packed projection, no masks): softmax(q k^T / sqrt(head_dim)) v per head."""
    if not m.batch_first:
        q, k, v = (np.swapaxes(t, 0, 1) for t in (q, k, v))
    heads, hd = m.num_heads, w_in.shape[1] // m.num_heads
    wq, wk, wv = np.split(w_in, 3, axis=0)
    bq, bk, bv = np.split(b_in, 3) if b_in is not None else (0, 0, 0)
    qp, kp, vp = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
    exp = np.vectorize(sympy.exp, otypes=[object])
    out = np.empty(qp.shape, dtype=object)
    for n, h in np.ndindex(qp.shape[0], heads):
        cols = slice(h * hd, (h + 1) * hd)
        e = exp(qp[n, :, cols] @ kp[n, :, cols].T / sympy.sqrt(hd))
        out[n, :, cols] = (e / e.sum(axis=1, keepdims=True)) @ vp[n, :, cols]
    y = out @ w_out.T + (b_out if b_out is not None else 0)
    return y if m.batch_first else np.swapaxes(y, 0, 1)


def sdpa(q: Array, k: Array, v: Array, is_causal: bool = False, scale: Any = None) -> Array:
    """softmax(q k^T * scale) v over (..., L, head_dim) object arrays; causal: key j <= query i."""
    hd = q.shape[-1]
    scale = exact(scale) if scale is not None else 1 / sympy.sqrt(hd)
    out = np.empty(q.shape[:-1] + (v.shape[-1],), dtype=object)
    for lead in np.ndindex(*q.shape[:-2]):
        for i in range(q.shape[-2]):
            keys = range(i + 1) if is_causal else range(k.shape[-2])
            w = [sympy.exp(sum(q[lead][i, d] * k[lead][j, d] for d in range(hd)) * scale) for j in keys]
            total = sum(w)
            for d in range(v.shape[-1]):
                out[lead][i, d] = sum(wj * v[lead][j, d] for wj, j in zip(w, keys)) / total
    return out


def group_norm(x: Array, groups: int, weight: Array | None, bias: Array | None, eps: float) -> Array:
    """GroupNorm on (N, C, *spatial): mean and variance over each group's C/groups channels and all
    positions; groups = C is InstanceNorm's per-channel statistics."""
    n, c = x.shape[:2]
    flat = x.reshape(n, groups, -1)
    mean = flat.sum(axis=2, keepdims=True) / flat.shape[2]
    var = ((flat - mean) ** 2).sum(axis=2, keepdims=True) / flat.shape[2]
    eps_r = sympy.Rational(str(eps))  # exact() would round 1e-5 to 0 (its denominators are small)
    y = ((flat - mean) / np.vectorize(sympy.sqrt, otypes=[object])(var + eps_r)).reshape(x.shape)
    shape = [1] * x.ndim
    shape[1] = -1
    if weight is not None:
        y = y * weight.reshape(shape)
    return y + bias.reshape(shape) if bias is not None else y


def instance_norm(x: Array, mean: Array | None, var: Array | None, weight: Array | None, bias: Array | None,
                  use_input_stats: bool, eps: float) -> Array:
    """InstanceNorm: per sample and channel over the spatial axes, or the running statistics."""
    if use_input_stats:
        return group_norm(x, x.shape[1], weight, bias, eps)
    return batch_norm(x, mean, var, weight, bias, False, eps)


def prelu(x: Array, weight: Array) -> Array:
    """max(0, v) + a min(0, v); a per channel (axis 1) or one a for all."""
    shape = [1] * x.ndim
    if weight.size > 1:
        shape[1] = -1
    a = weight.reshape(shape)
    return np.vectorize(lambda v: sympy.Max(0, v), otypes=[object])(x) + \
        a * np.vectorize(lambda v: sympy.Min(0, v), otypes=[object])(x)


def conv_transpose_nd(x: Array, w: Array, b: Array | None, stride, padding, output_padding, groups: int,
                      dilation) -> Array:
    """Transposed convolution on (N, C_in, *spatial) with weight (C_in, C_out/groups, *k): input
    position i scatters into output position i*stride - padding + k*dilation."""
    nsp = w.ndim - 2
    as_t = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nsp  # noqa: E731
    stride, padding, output_padding, dilation = map(as_t, (stride, padding, output_padding, dilation))
    n, cin = x.shape[:2]
    og, ig = w.shape[1], cin // groups
    size = [(x.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (w.shape[2 + d] - 1)
            + output_padding[d] + 1 for d in range(nsp)]
    out = np.full((n, og * groups, *size), sympy.Integer(0), dtype=object)
    for bi, c, *pos in np.ndindex(*x.shape):
        g = c // ig
        for o in range(og):
            for k in np.ndindex(*w.shape[2:]):
                dst = tuple(pos[d] * stride[d] - padding[d] + k[d] * dilation[d] for d in range(nsp))
                if all(0 <= dst[d] < size[d] for d in range(nsp)):
                    out[(bi, g * og + o, *dst)] += w[(c, o, *k)] * x[(bi, c, *pos)]
    if b is not None:
        out = out + b.reshape([1, -1] + [1] * nsp)
    return out


def pixel_shuffle(x: Array, r: int) -> Array:
    """(N, C*r^2, H, W) -> (N, C, H*r, W*r): channel c*r^2 + i*r + j lands at (h*r + i, w*r + j)."""
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


def pixel_unshuffle(x: Array, r: int) -> Array:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)


def resample(x: Array, fn: Callable[[torch.Tensor], torch.Tensor]) -> Array:
    """A per-channel linear map of the spatial axes (nearest, bilinear, ... interpolation), as the
    exact rationals of its matrix: torch applies `fn` to every basis image in float64."""
    spatial = x.shape[2:]
    basis = torch.eye(int(np.prod(spatial)), dtype=torch.float64).reshape(-1, 1, *spatial)
    mat = fn(basis).reshape(basis.shape[0], -1)  # row: input position, column: output position
    out_sp = tuple(fn(basis[:1]).shape[2:])
    m = np.array([[exact(float(v)) for v in row] for row in mat.tolist()], dtype=object)
    return (x.reshape(*x.shape[:2], -1) @ m).reshape(*x.shape[:2], *out_sp)


def _pool(x: Array, k: Any, stride: Any, reduce: Callable) -> Array:
    """Max or average pooling over the spatial axes of (N, C, *spatial), no padding; stride None
    (or torch's empty list) is the kernel."""
    nsp = x.ndim - 2
    as_t = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nsp  # noqa: E731
    k = as_t(k)
    stride = as_t(stride) if stride not in (None, [], ()) else k
    n, c = x.shape[:2]
    out_sp = [(x.shape[2 + d] - k[d]) // stride[d] + 1 for d in range(nsp)]
    out = np.empty((n, c, *out_sp), dtype=object)
    for pos in np.ndindex(*out_sp):
        win = x[(slice(None), slice(None), *(slice(p * s, p * s + kk) for p, s, kk in zip(pos, stride, k)))]
        win = win.reshape(n, c, -1)
        for a, b in np.ndindex(n, c):
            out[(a, b, *pos)] = reduce(list(win[a, b]))
    return out


def _global_pool(x: Array, size: Any, reduce: Callable) -> Array:
    """Adaptive pooling to output size 1 (every spatial axis reduced, kept as size 1)."""
    if any(s != 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
        raise NotImplementedError(f"symbolic adaptive pooling to {size}")
    return _pool(x, x.shape[2:], None, reduce)


def _max(v: list) -> Any:
    return sympy.Max(*v)


def _avg(v: list) -> Any:
    return sum(v) / len(v)


def np_pad(x: Array, pad: Any, mode: str = "constant", value: Any = None) -> Array:
    """F.pad on object arrays: (left, right) per trailing dim, last first; torch's reflect,
    replicate and circular are numpy's reflect, edge and wrap."""
    pads = [(0, 0)] * x.ndim
    for k in range(len(pad) // 2):
        pads[-1 - k] = (pad[2 * k], pad[2 * k + 1])
    if mode == "constant":
        return np.pad(x, pads, constant_values=sympy.nsimplify(value or 0))
    return np.pad(x, pads, mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode])


class SymInterpreter(torch.fx.Interpreter):
    """Runs a traced model on object arrays. Activations are undefined functions unless `concrete`."""

    def __init__(self, gm: torch.fx.GraphModule, params: dict[str, Array], *, concrete: bool = False,
                 training: bool = False) -> None:
        super().__init__(gm)
        self.params, self.concrete, self.training = params, concrete, training

    def fetch_attr(self, target: str) -> Any:
        return self.params[target] if target in self.params else super().fetch_attr(target)

    def _p(self, module: str, attr: str) -> Array | None:
        return self.params.get(f"{module}.{attr}" if module else attr)

    def _act(self, name: str, x: Array) -> Array:
        if self.concrete and name == "relu":
            return relu(x)
        return undefined(name)(x)

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        m = self.module.get_submodule(target)
        if type(m).__name__ == "GuardsFn":  # torch.export's input guards: checks, no value
            return None
        for cls, fn in SYM_MODULES.items():  # registration order: the first class that matches
            if isinstance(m, cls):
                return fn(self, m, target, args, kwargs)
        raise NotImplementedError(f"symbolic {type(m).__name__}")

    def run_node(self, n: torch.fx.Node) -> Any:
        spec = n2n_fx.load_table().lookup(n, self.module) if n.op.startswith("call") else None
        if spec is not None and spec.activation and not spec.per_channel:  # an activation: an undefined f
            args, _ = self.fetch_args_kwargs_from_env(n)
            return self._act(spec.name, args[0])
        return super().run_node(n)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        fn = sym_function_of(target)
        if fn is None:
            raise NotImplementedError(f"symbolic {target}")
        return fn(self, args, kwargs)

    def call_method(self, target: str, args: tuple, kwargs: dict) -> Any:
        fn = SYM_METHODS.get(target)
        if fn is None:
            raise NotImplementedError(f"symbolic method {target}")
        return fn(self, args, kwargs)


SymModule = Callable[[SymInterpreter, nn.Module, str, tuple, dict], Any]
SymFn = Callable[[SymInterpreter, tuple, dict], Any]
SYM_MODULES: dict[type, SymModule] = {}  # nn.Module class -> (interp, module, target, args, kwargs)
SYM_FUNCTIONS: dict[Any, SymFn] = {}  # call_function target -> (interp, args, kwargs)
SYM_BY_NAME: dict[str, SymFn] = {}  # a function matched by __name__ (a model-local helper, torch's wrappers)
SYM_METHODS: dict[str, SymFn] = {}  # Tensor method name -> (interp, args, kwargs)


@dataclass(frozen=True)
class ByName:
    """A function key matched by its __name__ (torchvision's local _patch_merging_pad, ...)."""

    name: str


def sym_impl(*keys: Any) -> Callable:
    """Register one symbolic implementation under each key: an nn.Module class (call_module), a
    str (a Tensor method: call_method), ByName(name) or a callable (call_function)."""

    def register(fn: Callable) -> Callable:
        for key in keys:
            if isinstance(key, type):
                table: dict = SYM_MODULES
            elif isinstance(key, str):
                table = SYM_METHODS
            elif isinstance(key, ByName):
                table, key = SYM_BY_NAME, key.name
            else:
                table = SYM_FUNCTIONS
            if key in table and table[key] is not fn:  # aliases (torch.split is torch.functional.split) are one
                raise ValueError(f"two symbolic implementations for {key!r}")
            table[key] = fn
        return fn

    return register


def sym_function_of(target: Any) -> SymFn | None:
    """The symbolic implementation of a call_function target, or None."""
    try:
        fn = SYM_FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        fn = None
    return fn if fn is not None else SYM_BY_NAME.get(getattr(target, "__name__", ""))


def sym_module_of(cls: type) -> SymModule | None:
    return next((fn for c, fn in SYM_MODULES.items() if issubclass(cls, c)), None)


# ---------------------------------------------------------------- modules
@sym_impl(nn.Linear)
def _linear_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    y = args[0] @ it._p(target, "weight").T
    return y + it._p(target, "bias") if m.bias is not None else y


@sym_impl(nn.modules.conv._ConvTransposeNd)  # before _ConvNd, its base class: the first match wins
def _conv_transpose_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return conv_transpose_nd(args[0], it._p(target, "weight"), it._p(target, "bias"), m.stride, m.padding,
                             m.output_padding, m.groups, m.dilation)


@sym_impl(nn.modules.conv._ConvNd)
def _conv_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return conv_nd(args[0], it._p(target, "weight"), it._p(target, "bias"), m.stride, m.padding, m.dilation,
                   m.groups)


@sym_impl(nn.modules.batchnorm._BatchNorm)
def _batch_norm_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return batch_norm(args[0], it._p(target, "running_mean"), it._p(target, "running_var"),
                      it._p(target, "weight"), it._p(target, "bias"), it.training, m.eps)


@sym_impl(nn.GroupNorm)
def _group_norm_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return group_norm(args[0], m.num_groups, it._p(target, "weight"), it._p(target, "bias"), m.eps)


@sym_impl(nn.modules.instancenorm._InstanceNorm)
def _instance_norm_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return instance_norm(args[0], it._p(target, "running_mean"), it._p(target, "running_var"),
                         it._p(target, "weight"), it._p(target, "bias"), it.training or not m.track_running_stats,
                         m.eps)


@sym_impl(nn.PReLU)
def _prelu_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return prelu(args[0], it._p(target, "weight"))


@sym_impl(nn.PixelShuffle)
def _pixel_shuffle_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return pixel_shuffle(args[0], m.upscale_factor)


@sym_impl(nn.PixelUnshuffle)
def _pixel_unshuffle_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return pixel_unshuffle(args[0], m.downscale_factor)


@sym_impl(nn.Upsample)
def _upsample_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return resample(args[0], m)


@sym_impl(nn.LayerNorm, nn.RMSNorm)
def _norm_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    rms = isinstance(m, nn.RMSNorm)
    eps = m.eps if m.eps is not None else torch.finfo(torch.float64).eps
    return norm_last(args[0], it._p(target, "weight"), None if rms else it._p(target, "bias"), eps, rms)


@sym_impl(nn.Embedding)
def _embedding_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return it._p(target, "weight")[np.asarray(args[0])]


@sym_impl(nn.MultiheadAttention)
def _mha_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    q, k, v = args[:3]
    w = attention(q, k, v, m, it._p(target, "in_proj_weight"), it._p(target, "in_proj_bias"),
                  it._p(target, "out_proj.weight"), it._p(target, "out_proj.bias"))
    return w, None


def _maxvit_attention(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    """torchvision's MaxViT RelativePositionalMultiHeadAttention on (B, G, P, D)."""
    x = args[0]
    b, g, p, d = x.shape
    heads, hd = m.n_heads, m.head_dim
    qkv = x @ it._p(target, "to_qkv.weight").T + it._p(target, "to_qkv.bias")
    q, k, v = (t.reshape(b, g, p, heads, hd).transpose(0, 1, 3, 2, 4) for t in np.split(qkv, 3, axis=-1))
    index = np.asarray(m.relative_position_index).reshape(-1)
    bias = it._p(target, "relative_position_bias_table")[index].reshape(p, p, -1).transpose(2, 0, 1)[None]
    o = _heads_attention(q, k * _scale_of(m.scale_factor), v, bias)
    return o.transpose(0, 1, 3, 2, 4).reshape(b, g, p, d) @ it._p(target, "merge.weight").T + it._p(target, "merge.bias")


try:  # torchvision is optional, as in the table
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

    sym_impl(RelativePositionalMultiHeadAttention)(_maxvit_attention)
except ImportError:  # pragma: no cover
    pass


@sym_impl(nn.Identity, nn.Dropout)
def _identity_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return args[0]


@sym_impl(nn.modules.pooling._MaxPoolNd)
def _max_pool_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    _no_padding(m.padding, m.dilation, m.ceil_mode)
    return _pool(args[0], m.kernel_size, m.stride, _max)


@sym_impl(nn.modules.pooling._AvgPoolNd)
def _avg_pool_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    _no_padding(m.padding, 1, m.ceil_mode)
    return _pool(args[0], m.kernel_size, m.stride, _avg)


@sym_impl(nn.modules.pooling._AdaptiveAvgPoolNd)
def _adaptive_avg_pool_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return _global_pool(args[0], m.output_size, _avg)


@sym_impl(nn.modules.pooling._AdaptiveMaxPoolNd)
def _adaptive_max_pool_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    if m.return_indices:
        raise NotImplementedError("symbolic adaptive max pooling with indices")
    return _global_pool(args[0], m.output_size, _max)


def _no_padding(padding: Any, dilation: Any, ceil_mode: bool) -> None:
    if any(v != 0 for v in np.atleast_1d(padding)) or any(v != 1 for v in np.atleast_1d(dilation)) or ceil_mode:
        raise NotImplementedError("symbolic pooling with padding, dilation or ceil_mode")


@sym_impl(nn.modules.padding._ConstantPadNd)
def _constant_pad_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return np_pad(args[0], m.padding, "constant", m.value)


@sym_impl(nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)
def _mode_pad_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    mode = {nn.modules.padding._ReflectionPadNd: "reflect", nn.modules.padding._ReplicationPadNd: "replicate",
            nn.modules.padding._CircularPadNd: "circular"}
    return np_pad(args[0], m.padding, next(v for cls, v in mode.items() if isinstance(m, cls)))


@sym_impl(nn.Flatten)
def _flatten_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return args[0].reshape(args[0].shape[0], -1)


# ---------------------------------------------------------------- functions
def _dim(args: tuple, kwargs: dict, pos: int, default: Any = 0) -> Any:
    return kwargs.get("dim", args[pos] if len(args) > pos else default)


sym_impl(operator.add)(lambda it, args, kwargs: args[0] + args[1])
sym_impl(operator.mul, torch.mul)(lambda it, args, kwargs: args[0] * args[1])
sym_impl(operator.sub, torch.sub)(lambda it, args, kwargs: args[0] - args[1])
sym_impl(torch.mean)(lambda it, args, kwargs: args[0].mean(axis=args[1] if len(args) > 1 else kwargs.get("dim")))
sym_impl(operator.getitem)(lambda it, args, kwargs: args[0][args[1]])
sym_impl(getattr)(lambda it, args, kwargs: getattr(args[0], args[1]))
sym_impl(ByName("scaled_dot_product_attention"))(
    lambda it, args, kwargs: sdpa(*args[:3], is_causal=kwargs.get("is_causal", False), scale=kwargs.get("scale")))
sym_impl(torch.rsqrt)(lambda it, args, kwargs: np.vectorize(lambda v: 1 / sympy.sqrt(v), otypes=[object])(args[0]))
sym_impl(torch.stack)(lambda it, args, kwargs: np.stack(args[0], axis=_dim(args, kwargs, 1)))
sym_impl(torch.cat, torch.concat)(lambda it, args, kwargs: np.concatenate(args[0], axis=_dim(args, kwargs, 1)))
sym_impl(torch.bmm)(lambda it, args, kwargs: np.matmul(args[0], args[1]))
sym_impl(torch.matmul, operator.matmul)(lambda it, args, kwargs: args[0] @ args[1])
sym_impl(F.adaptive_avg_pool2d)(lambda it, args, kwargs: args[0].mean(axis=(2, 3), keepdims=True))


@sym_impl(ByName("_patch_merging_pad"))
def _patch_merging_pad(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    """torchvision's Swin (even H, W): the four 2x2 offsets concatenated on channels."""
    x = args[0]
    parts = [x[..., i::2, j::2, :] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))]
    return np.concatenate(parts, axis=-1)


@sym_impl(torch.split, torch.functional.split)
def _split(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    dim = _dim(args, kwargs, 2)
    sizes, n = args[1], args[0].shape[dim]
    if isinstance(sizes, int):  # split(size): pieces of that size, the last one shorter
        sizes = [min(sizes, n - i) for i in range(0, n, sizes)]
    return tuple(np.split(args[0], np.cumsum(sizes)[:-1], axis=dim))


@sym_impl(torch.flatten)
def _flatten(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    return args[0].reshape(*args[0].shape[:start], -1)


@sym_impl(F.linear)
def _linear(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, weight, bias=None)
    y = args[0] @ args[1].T
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return y if bias is None else y + bias


def _filled(value: int) -> SymFn:
    def fill(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return np.full(tuple(shape), sympy.Integer(value), dtype=object)

    return fill


sym_impl(torch.zeros)(_filled(0))
sym_impl(torch.ones)(_filled(1))


@sym_impl(F.layer_norm)
def _layer_norm(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, normalized_shape, weight, bias, eps)
    full = list(args) + [None] * (5 - len(args))
    return norm_last(full[0], full[2], full[3], kwargs.get("eps", full[4] or 1e-5), rms=False)


@sym_impl(F.interpolate)
def _interpolate(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # any mode, scale_factor or size
    return resample(args[0], lambda t: F.interpolate(t, *args[1:], **kwargs))


@sym_impl(F.group_norm)
def _group_norm(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, num_groups, weight, bias, eps)
    full = list(args) + [None] * (5 - len(args))
    return group_norm(full[0], full[1], full[2] if full[2] is not None else kwargs.get("weight"),
                      full[3] if full[3] is not None else kwargs.get("bias"), kwargs.get("eps", full[4] or 1e-5))


@sym_impl(F.instance_norm)
def _instance_norm(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    full = list(args) + [None] * (8 - len(args))  # (input, running_mean, running_var, weight, bias, use_input_stats, ...)
    use = kwargs.get("use_input_stats", full[5] if full[5] is not None else True)
    return instance_norm(full[0], full[1], full[2], full[3], full[4], use, kwargs.get("eps", full[7] or 1e-5))


# torch.instance_norm: (input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn)
sym_impl(torch.instance_norm)(lambda it, a, k: instance_norm(a[0], a[3], a[4], a[1], a[2], a[5], a[7]))
sym_impl(F.prelu)(lambda it, args, kwargs: prelu(args[0], args[1]))
sym_impl(F.pixel_shuffle)(lambda it, args, kwargs: pixel_shuffle(args[0], args[1]))
sym_impl(F.pixel_unshuffle)(lambda it, args, kwargs: pixel_unshuffle(args[0], args[1]))


@sym_impl(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def _conv_transpose(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    full = list(args) + [None] * (8 - len(args))
    opts = {k: kwargs.get(k, full[i] if full[i] is not None else d) for i, k, d in
            ((3, "stride", 1), (4, "padding", 0), (5, "output_padding", 0), (6, "groups", 1), (7, "dilation", 1))}
    return conv_transpose_nd(args[0], args[1], full[2] if full[2] is not None else kwargs.get("bias"),
                             opts["stride"], opts["padding"], opts["output_padding"], opts["groups"], opts["dilation"])


@sym_impl(F.pad)
def _pad(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, pad, mode="constant", value=None)
    return np_pad(args[0], args[1], _arg(args, kwargs, 2, "mode", "constant"), _arg(args, kwargs, 3, "value"))


def _pool_fn(reduce: Callable) -> SymFn:
    """F.max_pool* / F.avg_pool* and their ATen ops: (input, kernel_size, stride=None, padding=0)."""

    def fn(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
        _no_padding(_arg(args, kwargs, 3, "padding", 0), 1, False)
        return _pool(args[0], _arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride"), reduce)

    return fn


sym_impl(F.max_pool1d, torch.max_pool1d, F.max_pool3d, torch.max_pool3d)(_pool_fn(_max))
sym_impl(torch.avg_pool1d, torch._C._nn.avg_pool3d)(_pool_fn(_avg))
sym_impl(torch.adaptive_avg_pool1d, F.adaptive_avg_pool3d, torch._C._nn.adaptive_avg_pool3d)(
    lambda it, args, kwargs: _global_pool(args[0], _arg(args, kwargs, 1, "output_size"), _avg))


@sym_impl(torch.conv1d, torch.conv2d, torch.conv3d)  # F.conv1d/2d/3d are these
def _conv(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, weight, bias, stride, padding, dilation, groups)
    padding = _arg(args, kwargs, 4, "padding", 0)
    return conv_nd(args[0], args[1], _arg(args, kwargs, 2, "bias"), _arg(args, kwargs, 3, "stride", 1),
                   0 if padding == "valid" else padding, _arg(args, kwargs, 5, "dilation", 1),
                   _arg(args, kwargs, 6, "groups", 1))


@sym_impl(F.batch_norm)
def _batch_norm(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    # (input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5)
    return batch_norm(args[0], args[1], args[2], _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias"),
                      _arg(args, kwargs, 5, "training", False), _arg(args, kwargs, 7, "eps", 1e-5))


@sym_impl(F.rms_norm, torch.rms_norm)
def _rms_norm(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, normalized_shape, weight, eps)
    eps = _arg(args, kwargs, 3, "eps")
    return norm_last(args[0], _arg(args, kwargs, 2, "weight"), None,
                     eps if eps is not None else torch.finfo(torch.float64).eps, rms=True)


sym_impl(F.embedding)(lambda it, args, kwargs: args[1][np.asarray(args[0])])  # (input, weight, ...)


def _number(v: Any) -> Any:
    """A float literal as the rational its shortest repr spells (exact() would round 1e-6 to 0)."""
    return sympy.Rational(repr(v)) if isinstance(v, float) else v


def _compare(rel: Callable[[Any, Any], Any]) -> SymFn:
    """eq / ne of each element: a sympy relation (True or False when it decides at once)."""
    return lambda it, args, kwargs: np.vectorize(lambda u, v: rel(u, _number(v)), otypes=[object])(args[0], args[1])


def _where(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    """where(condition, input, other): an element picked from one of two, as a Piecewise."""
    pick = lambda c, u, v: sympy.Piecewise((_number(u), c), (_number(v), True))  # noqa: E731
    return np.vectorize(pick, otypes=[object])(*args[:3])


def _full_like(value: Any = None) -> SymFn:
    """full_like(input, fill_value) (zeros_like, ones_like: value given): one constant per element."""
    return lambda it, args, kwargs: np.full(np.shape(args[0]), sympy.nsimplify(
        value if value is not None else _arg(args, kwargs, 1, "fill_value")), dtype=object)


sym_impl(torch.eq, "eq")(_compare(sympy.Eq))
sym_impl(torch.ne, "ne")(_compare(sympy.Ne))
sym_impl(torch.where)(_where)
sym_impl(torch.full_like)(_full_like())
sym_impl(torch.zeros_like)(_full_like(0))
sym_impl(torch.ones_like)(_full_like(1))
sym_impl(torch.select)(lambda it, args, kwargs: np.take(args[0], args[2], axis=args[1]))
sym_impl(torch.narrow)(lambda it, args, kwargs: np.take(args[0], range(args[2], args[2] + args[3]), axis=args[1]))


@sym_impl(ByName("stochastic_depth"))
def _stochastic_depth(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (input, p, mode, training=True)
    if _arg(args, kwargs, 3, "training", True) and _arg(args, kwargs, 1, "p") > 0:
        raise NotImplementedError("symbolic stochastic depth in training mode")
    return args[0]


def _scale_of(v: float) -> Any:
    """A float attention scale as the surd it stands for (1/sqrt(d) for an integer d)."""
    d = v ** -2
    return 1 / sympy.sqrt(round(d)) if abs(d - round(d)) < 1e-9 else exact(v)


def _heads_attention(q: Array, k: Array, v: Array, bias: Array, mask: Array | None = None) -> Array:
    """softmax(q k^T + bias (+ mask)) v over (..., heads, N, head_dim) (q already scaled)."""
    attn = q @ np.swapaxes(k, -1, -2) + bias
    if mask is not None:
        attn = attn + mask
    e = _exp(attn)
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def _swin_mask(size: tuple[int, int], window: list[int], shift: list[int]) -> np.ndarray:
    """torchvision's shifted-window attention mask (0 or -100 per window, query, key): sizes only."""
    mask = torch.zeros(size)
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    mask = mask.view(size[0] // window[0], window[0], size[1] // window[1], window[1]).permute(0, 2, 1, 3)
    mask = mask.reshape(-1, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return np.where(mask.numpy() != 0, -100, 0).astype(object)


@sym_impl(ByName("shifted_window_attention"))
def _shifted_window_attention(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    """torchvision's Swin (V1) window attention: pad, cyclic shift, windows, heads with the relative
    position bias (and the shift's mask), projection, and back."""
    names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads", "shift_size",
             "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")
    a = {**dict(zip(names, args)), **kwargs}
    if a.get("logit_scale") is not None:
        raise NotImplementedError("symbolic Swin V2 cosine attention")
    x, window, heads = a["input"], list(a["window_size"]), a["num_heads"]
    b, h, w, c = x.shape
    pads = [(window[0] - h % window[0]) % window[0], (window[1] - w % window[1]) % window[1]]
    x = np.pad(x, [(0, 0), (0, pads[0]), (0, pads[1]), (0, 0)], constant_values=sympy.Integer(0))
    size = x.shape[1:3]
    shift = [0 if window[d] >= size[d] else a.get("shift_size", [0, 0])[d] for d in range(2)]
    x = np.roll(x, (-shift[0], -shift[1]), axis=(1, 2)) if sum(shift) else x
    nh, nw, n = size[0] // window[0], size[1] // window[1], window[0] * window[1]
    x = x.reshape(b, nh, window[0], nw, window[1], c).transpose(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, n, c)
    qkv = x @ a["qkv_weight"].T + (a["qkv_bias"] if a.get("qkv_bias") is not None else 0)
    q, k, v = qkv.reshape(b * nh * nw, n, 3, heads, c // heads).transpose(2, 0, 3, 1, 4)
    mask = None
    if sum(shift):
        mask = np.tile(_swin_mask(size, window, shift)[:, None], (b, 1, 1, 1))
    o = _heads_attention(q / sympy.sqrt(c // heads), k, v, a["relative_position_bias"], mask)
    o = np.swapaxes(o, 1, 2).reshape(b * nh * nw, n, c) @ a["proj_weight"].T
    o = o + (a["proj_bias"] if a.get("proj_bias") is not None else 0)
    o = o.reshape(b, nh, nw, window[0], window[1], c).transpose(0, 1, 3, 2, 4, 5).reshape(b, *size, c)
    o = np.roll(o, tuple(shift), axis=(1, 2)) if sum(shift) else o
    return o[:, :h, :w]


@sym_impl(ByName("_get_relative_position_bias"))
def _relative_position_bias(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:  # (table, index, window_size)
    n = args[2][0] * args[2][1]
    return args[0][np.asarray(args[1])].reshape(n, n, -1).transpose(2, 0, 1)[None]


@sym_impl(F.softmax, torch.softmax)
def _softmax(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    e = np.vectorize(sympy.exp, otypes=[object])(args[0])
    return e / e.sum(axis=_dim(args, kwargs, 1, None), keepdims=True)


# ---------------------------------------------------------------- Tensor methods
def _sizes(args: tuple) -> Any:
    return args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]


sym_impl("view", "reshape")(lambda it, args, kwargs: args[0].reshape(*_sizes(args)))


def _unflatten(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    x, dim, sizes = args[0], _arg(args, kwargs, 1, "dim") % args[0].ndim, _arg(args, kwargs, 2, "sizes")
    return x.reshape(*x.shape[:dim], *sizes, *x.shape[dim + 1:])


sym_impl("unflatten", torch.unflatten)(_unflatten)
sym_impl("permute")(lambda it, args, kwargs: np.transpose(args[0], args[1:] if len(args) > 2 else args[1]))
sym_impl("size")(lambda it, args, kwargs: args[0].shape if len(args) == 1 else args[0].shape[args[1]])
sym_impl("pow")(lambda it, args, kwargs: args[0] ** args[1])
sym_impl("select")(lambda it, args, kwargs: np.take(args[0], args[2], axis=args[1]))
sym_impl("narrow")(lambda it, args, kwargs: np.take(args[0], range(args[2], args[2] + args[3]), axis=args[1]))
sym_impl("split")(lambda it, args, kwargs: _split(it, args, kwargs))
sym_impl("transpose")(lambda it, args, kwargs: np.swapaxes(args[0], args[1], args[2]))
sym_impl("unsqueeze")(lambda it, args, kwargs: np.expand_dims(args[0], args[1]))
sym_impl("squeeze")(lambda it, args, kwargs: np.squeeze(args[0], args[1]))
sym_impl("sub")(lambda it, args, kwargs: args[0] - args[1])
sym_impl("to", "type_as", "float", "double")(lambda it, args, kwargs: args[0])  # casts: symbols stay exact
sym_impl("flatten")(lambda it, args, kwargs: _flatten(it, args, kwargs))
sym_impl("expand_as")(lambda it, args, kwargs: np.broadcast_to(args[0], args[1].shape))


_exp = np.vectorize(sympy.exp, otypes=[object])
sym_impl("clone", "contiguous", "detach")(lambda it, args, kwargs: args[0])
sym_impl(torch.clone)(lambda it, args, kwargs: args[0])
sym_impl("exp", torch.exp)(lambda it, args, kwargs: _exp(args[0]))
sym_impl("neg", torch.neg, operator.neg)(lambda it, args, kwargs: -args[0])
sym_impl(torch.pow, operator.pow)(lambda it, args, kwargs: args[0] ** args[1])
sym_impl("add", torch.add)(lambda it, args, kwargs: args[0] + args[1] * kwargs.get("alpha", 1))
sym_impl("mul")(lambda it, args, kwargs: args[0] * args[1])
sym_impl("div", torch.div, operator.truediv)(lambda it, args, kwargs: args[0] / args[1])


def _reduce(reduce: Callable[[list], Any]) -> SymFn:
    """sum / amax / amin over `dim` (all axes when None), keepdim as torch."""

    def fn(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
        x, dims, keep = args[0], _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False)
        axes = tuple(range(x.ndim)) if dims is None else (dims,) if isinstance(dims, int) else tuple(dims)
        axes = tuple(a % x.ndim for a in axes)
        rest = [a for a in range(x.ndim) if a not in axes]
        flat = np.transpose(x, rest + list(axes)).reshape(*[x.shape[a] for a in rest], -1)
        out = np.empty(flat.shape[:-1], dtype=object)
        for i in np.ndindex(*out.shape):
            out[i] = reduce(list(flat[i]))
        return out.reshape([1 if a in axes else x.shape[a] for a in range(x.ndim)]) if keep else out

    return fn


sym_impl("sum", torch.sum)(_reduce(sum))
sym_impl("amax", torch.amax)(_reduce(lambda v: sympy.Max(*v)))
sym_impl("amin", torch.amin)(_reduce(lambda v: sympy.Min(*v)))


def _dropout(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    if _arg(args, kwargs, 2, "training", True):
        raise NotImplementedError("symbolic dropout in training mode")
    return args[0]


sym_impl(F.dropout)(_dropout)


sym_impl(torch.addmm)(lambda it, args, kwargs: args[0] + args[1] @ args[2])
sym_impl("addmm")(lambda it, args, kwargs: args[0] + args[1] @ args[2])
sym_impl("matmul", "mm")(lambda it, args, kwargs: args[0] @ args[1])
sym_impl("bmm")(lambda it, args, kwargs: np.matmul(args[0], args[1]))
sym_impl(torch.reshape)(lambda it, args, kwargs: args[0].reshape(*args[1]))
sym_impl(torch.squeeze)(lambda it, args, kwargs: np.squeeze(args[0], args[1]))
sym_impl(torch.unsqueeze)(lambda it, args, kwargs: np.expand_dims(args[0], args[1]))
sym_impl(torch.transpose)(lambda it, args, kwargs: np.swapaxes(args[0], args[1], args[2]))
sym_impl(torch.permute)(lambda it, args, kwargs: np.transpose(args[0], args[1]))
sym_impl(torch.broadcast_to)(lambda it, args, kwargs: np.broadcast_to(args[0], tuple(args[1])))
sym_impl(torch.chunk)(lambda it, args, kwargs: _chunk(it, args, kwargs))
sym_impl(torch.unbind)(lambda it, args, kwargs: _unbind(it, args, kwargs))
sym_impl("softmax")(lambda it, args, kwargs: _softmax(it, args, kwargs))


@sym_impl(nn.Softmax)
def _softmax_module(it: SymInterpreter, m: nn.Module, target: str, args: tuple, kwargs: dict) -> Any:
    return _softmax(it, (args[0], m.dim), {})


@sym_impl("mean")
def _mean_method(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    return args[0].mean(axis=tuple(dims) if isinstance(dims, (list, tuple)) else dims,
                        keepdims=kwargs.get("keepdim", False))


@sym_impl("unbind")
def _unbind(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    x, dim = args[0], _dim(args, kwargs, 1)
    return tuple(np.take(x, i, axis=dim) for i in range(x.shape[dim]))


@sym_impl("chunk")
def _chunk(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    x, chunks, dim = args[0], args[1], _dim(args, kwargs, 2)
    size = -(-x.shape[dim] // chunks)
    sizes = [min(size, x.shape[dim] - k * size) for k in range(chunks) if k * size < x.shape[dim]]
    return _split(it, (x, sizes, dim), {})


@sym_impl("expand")
def _expand(it: SymInterpreter, args: tuple, kwargs: dict) -> Any:
    x, sizes = args[0], _sizes(args)
    lead = len(sizes) - x.ndim
    sizes = [x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes)]
    return np.broadcast_to(x, sizes)


def run(gm: torch.fx.GraphModule, params: dict[str, Array], inputs: tuple, **kw: Any) -> Array:
    return SymInterpreter(gm, params, **kw).run(*inputs)


def _visibly_nonzero(expr: Any) -> bool:
    """One exact evaluation at positive rationals: a nonzero value settles it at once (expanding a
    wrong difference under square roots can take minutes). Zero proves nothing; the symbolic check
    decides. Undefined activations f are evaluated as f(v) = v**3 + v."""
    if not isinstance(expr, sympy.Basic):
        return False
    undef = sympy.core.function.AppliedUndef
    expr = expr.replace(lambda e: isinstance(e, undef), lambda e: e.args[0] ** 3 + e.args[0])
    values = {s: sympy.Rational(3 + 5 * k % 11, 7 + k % 5) for k, s in enumerate(sorted(expr.free_symbols, key=str))}
    try:
        value = complex(sympy.N(expr.xreplace(values), 40))
    except (TypeError, ValueError, ZeroDivisionError):
        return False
    return abs(value) > 1e-25


def is_zero(expr: Any) -> bool:
    """teacher - student reduces to 0 by expand/cancel alone (no equality oracle is trusted)."""
    if _visibly_nonzero(expr):
        return False
    e = sympy.expand(expr)
    return e == 0 or sympy.cancel(sympy.together(e)) == 0


def difference(teacher: Array, student: Array) -> list[Any]:
    """The nonzero entries of teacher - student (empty when the identity is proved)."""
    t = np.asarray(teacher, dtype=object).reshape(-1)
    s = np.asarray(student, dtype=object).reshape(-1)
    assert t.shape == s.shape, (t.shape, s.shape)
    return [a - b for a, b in zip(t, s) if not is_zero(a - b)]


def _numeric_gap(teacher: torch.fx.GraphModule, student: torch.fx.GraphModule, x: torch.Tensor) -> float:
    """max |teacher - student| / max |teacher| in float64 at the models' weights (eval mode); 0 where
    either does not run (the symbolic run then reports it). Only ever disproves: 0 proves nothing."""
    try:
        with torch.no_grad():
            t, s = teacher.eval()(x), student.eval()(x)
        t, s = torch.utils._pytree.tree_leaves(t), torch.utils._pytree.tree_leaves(s)
        gaps = [(a.double() - b.double()).abs().max() / a.double().abs().max().clamp_min(1e-300)
                for a, b in zip(t, s, strict=True) if isinstance(a, torch.Tensor) and a.numel()]
    except Exception:  # noqa: BLE001 - any failure here is left to the exact run
        return 0.0
    return float(max(gaps, default=0.0))


def widen_symbolically(model: nn.Module, x: torch.Tensor, *, concrete: bool = False, training: bool = False,
                       plan_kw: dict | None = None) -> tuple[Plan, list[Any]]:
    """Trace + infer + plan with the engine; evaluate teacher and student on symbols; return the
    plan and the nonzero entries of teacher - student."""
    plan = n2n_fx.plan(model, x, **(plan_kw or {}))
    student = n2n_fx.apply_plan(plan)  # the student's graph (rewritten split/view literals)
    if not training and (gap := _numeric_gap(plan.analysis.gm, student, x)) > 1e-8:
        # a counterexample at the model's own float64 weights: the identity fails for these values, so
        # sympy need not expand a wrong difference (minutes, for attention under a broken rule)
        return plan, [sympy.Float(gap, 20)]
    params = teacher_params(plan.analysis.gm)
    sx = symbols_like("x", tuple(x.shape))
    t_out = run(plan.analysis.gm, params, (sx,), concrete=concrete, training=training)
    s_out = run(student, student_params(plan, params), (sx,), concrete=concrete, training=training)
    return plan, difference(t_out, s_out)


# ---------------------------------------------------------------- core ATen (torch.export, run_decompositions)
# The proofs' models exported and decomposed reach the table's ATen spellings; these evaluate them
# on symbols with the same helpers as the Python spellings above.
aten = torch.ops.aten


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any = None) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(name, default)


def _aten_slice(x: Array, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Array:
    index = [slice(None)] * x.ndim
    index[dim] = slice(start, None if end is not None and end >= 2 ** 62 else end, step)
    return x[tuple(index)]


def _aten_convolution(x: Array, w: Array, b: Any, stride: Any, padding: Any, dilation: Any, transposed: bool,
                      output_padding: Any, groups: int) -> Array:
    """core ATen's one convolution op, transposed or not."""
    if transposed:
        return conv_transpose_nd(x, w, b, stride, padding, output_padding, groups, dilation)
    return conv_nd(x, w, b, stride, padding, dilation, groups)


def _aten_conv_transpose(x: Array, w: Array, b: Any = None, stride: Any = 1, padding: Any = 0, output_padding: Any = 0,
                         groups: int = 1, dilation: Any = 1) -> Array:
    return conv_transpose_nd(x, w, b, stride, padding, output_padding, groups, dilation)


def _aten_bn(x: Array, w: Any, b: Any, mean: Array, var: Array, eps: float, training: bool) -> Array:
    return batch_norm(x, mean, var, w, b, training, eps)


_ATEN: dict[Any, SymFn] = {
    aten.linear.default: lambda it, a, k: _linear(it, a, k),
    aten.addmm.default: lambda it, a, k: a[0] + a[1] @ a[2],
    aten.mm.default: lambda it, a, k: a[0] @ a[1],
    aten.matmul.default: lambda it, a, k: a[0] @ a[1],
    aten.bmm.default: lambda it, a, k: np.matmul(a[0], a[1]),
    aten.t.default: lambda it, a, k: a[0].T,
    aten.permute.default: lambda it, a, k: np.transpose(a[0], a[1]),
    aten.transpose.int: lambda it, a, k: np.swapaxes(a[0], a[1], a[2]),
    aten.view.default: lambda it, a, k: a[0].reshape(*a[1]),
    aten.unflatten.int: lambda it, a, k: _unflatten(it, a, k),
    aten.reshape.default: lambda it, a, k: a[0].reshape(*a[1]),
    aten._unsafe_view.default: lambda it, a, k: a[0].reshape(*a[1]),
    aten.flatten.using_ints: lambda it, a, k: _flatten(it, a, k),
    aten.expand.default: lambda it, a, k: _expand(it, (a[0], *a[1]), {}),
    aten.unsqueeze.default: lambda it, a, k: np.expand_dims(a[0], a[1]),
    aten.squeeze.dim: lambda it, a, k: np.squeeze(a[0], a[1]),
    aten.squeeze.dims: lambda it, a, k: np.squeeze(a[0], tuple(a[1])),
    aten.add.Tensor: lambda it, a, k: a[0] + a[1] * _arg(a, k, 2, "alpha", 1),
    aten.sub.Tensor: lambda it, a, k: a[0] - a[1] * _arg(a, k, 2, "alpha", 1),
    aten.mul.Tensor: lambda it, a, k: a[0] * a[1],
    aten.div.Tensor: lambda it, a, k: a[0] / a[1],
    aten.pow.Tensor_Scalar: lambda it, a, k: a[0] ** a[1],
    aten.rsqrt.default: lambda it, a, k: np.vectorize(lambda v: 1 / sympy.sqrt(v), otypes=[object])(a[0]),
    aten.cat.default: lambda it, a, k: np.concatenate(a[0], axis=_arg(a, k, 1, "dim", 0)),
    aten.stack.default: lambda it, a, k: np.stack(a[0], axis=_arg(a, k, 1, "dim", 0)),
    aten.split.Tensor: lambda it, a, k: _split(it, (a[0], a[1], _arg(a, k, 2, "dim", 0)), {}),
    aten.split_with_sizes.default: lambda it, a, k: _split(it, (a[0], list(a[1]), _arg(a, k, 2, "dim", 0)), {}),
    aten.chunk.default: lambda it, a, k: _chunk(it, a, k),
    aten.unbind.int: lambda it, a, k: _unbind(it, a, k),
    aten.slice.Tensor: lambda it, a, k: _aten_slice(*a, **k),
    aten.select.int: lambda it, a, k: np.take(a[0], a[2], axis=a[1]),
    aten.narrow.default: lambda it, a, k: np.take(a[0], range(a[2], a[2] + a[3]), axis=a[1]),
    aten.exp.default: lambda it, a, k: _exp(a[0]),
    aten.add.Scalar: lambda it, a, k: a[0] + a[1],
    aten.sub.Scalar: lambda it, a, k: a[0] - a[1],
    aten.mul.Scalar: lambda it, a, k: a[0] * a[1],
    aten.div.Scalar: lambda it, a, k: a[0] / a[1],
    aten._assert_tensor_metadata.default: lambda it, a, k: None,  # a check, no value
    aten.sym_size.int: lambda it, a, k: a[0].shape[a[1]],  # a dynamic export's size read
    aten.max_pool1d_with_indices.default: lambda it, a, k: (_pool_fn(_max)(it, a, k), None),
    aten.max_pool2d_with_indices.default: lambda it, a, k: (_pool_fn(_max)(it, a, k), None),
    aten.max_pool3d_with_indices.default: lambda it, a, k: (_pool_fn(_max)(it, a, k), None),
    aten.rms_norm.default: lambda it, a, k: norm_last(a[0], _arg(a, k, 2, "weight"), None,
                                                      _arg(a, k, 3, "eps") or torch.finfo(torch.float64).eps,
                                                      rms=True),
    aten.broadcast_to.default: lambda it, a, k: np.broadcast_to(a[0], tuple(a[1])),
    aten.expand_as.default: lambda it, a, k: np.broadcast_to(a[0], a[1].shape),
    aten.full.default: lambda it, a, k: np.full(tuple(a[0]), sympy.nsimplify(a[1]), dtype=object),
    aten.unflatten.int: lambda it, a, k: a[0].reshape(*a[0].shape[:a[1] % a[0].ndim], *a[2],
                                                      *a[0].shape[a[1] % a[0].ndim + 1:]),
    aten.neg.default: lambda it, a, k: -a[0],
    aten.amax.default: lambda it, a, k: _reduce(lambda v: sympy.Max(*v))(it, a, k),
    aten.amin.default: lambda it, a, k: _reduce(lambda v: sympy.Min(*v))(it, a, k),
    aten.mean.dim: lambda it, a, k: a[0].mean(axis=tuple(a[1]), keepdims=_arg(a, k, 2, "keepdim", False)),
    aten.sum.dim_IntList: lambda it, a, k: a[0].sum(axis=tuple(a[1]), keepdims=_arg(a, k, 2, "keepdim", False)),
    aten.clone.default: lambda it, a, k: a[0],
    aten.alias.default: lambda it, a, k: a[0],
    aten.detach.default: lambda it, a, k: a[0],
    aten.contiguous.default: lambda it, a, k: a[0],
    aten._to_copy.default: lambda it, a, k: a[0],
    aten.to.dtype: lambda it, a, k: a[0],
    aten.type_as.default: lambda it, a, k: a[0],
    aten.dropout.default: lambda it, a, k: a[0],  # eval mode (train=False): the identity
    aten.conv1d.default: lambda it, a, k: _conv(it, a, k),
    aten.conv2d.default: lambda it, a, k: _conv(it, a, k),
    aten.conv3d.default: lambda it, a, k: _conv(it, a, k),
    aten.convolution.default: lambda it, a, k: _aten_convolution(*a),
    aten.conv_transpose1d.default: lambda it, a, k: _aten_conv_transpose(*a),
    aten.conv_transpose2d.input: lambda it, a, k: _aten_conv_transpose(*a),
    aten.conv_transpose3d.input: lambda it, a, k: _aten_conv_transpose(*a),
    aten.group_norm.default: lambda it, a, k: group_norm(a[0], a[1], _arg(a, k, 2, "weight"), _arg(a, k, 3, "bias"),
                                                         _arg(a, k, 4, "eps", 1e-5)),
    aten.native_group_norm.default: lambda it, a, k: (group_norm(a[0], a[6], a[1], a[2], a[7]), None, None),
    aten.instance_norm.default: lambda it, a, k: instance_norm(a[0], a[3], a[4], a[1], a[2], a[5], a[7]),
    aten.prelu.default: lambda it, a, k: prelu(a[0], a[1]),
    aten._prelu_kernel.default: lambda it, a, k: prelu(a[0], a[1]),
    aten.pixel_shuffle.default: lambda it, a, k: pixel_shuffle(a[0], a[1]),
    aten.pixel_unshuffle.default: lambda it, a, k: pixel_unshuffle(a[0], a[1]),
    aten.batch_norm.default: lambda it, a, k: _aten_bn(a[0], a[1], a[2], a[3], a[4], a[7], a[5]),
    aten._native_batch_norm_legit_no_training.default:
        lambda it, a, k: (_aten_bn(a[0], a[1], a[2], a[3], a[4], a[6], False), None, None),
    aten.layer_norm.default: lambda it, a, k: norm_last(a[0], _arg(a, k, 2, "weight"), _arg(a, k, 3, "bias"),
                                                        _arg(a, k, 4, "eps", 1e-5), rms=False),
    aten.native_layer_norm.default: lambda it, a, k: (norm_last(a[0], a[2], a[3], a[4], rms=False), None, None),
    aten.embedding.default: lambda it, a, k: a[0][np.asarray(a[1])],
    aten._softmax.default: lambda it, a, k: _softmax(it, (a[0], a[1]), {}),
    aten.softmax.int: lambda it, a, k: _softmax(it, (a[0], a[1]), {}),
    aten.adaptive_avg_pool2d.default: lambda it, a, k: a[0].mean(axis=(2, 3), keepdims=True),
    aten.zeros.default: lambda it, a, k: _filled(0)(it, (a[0],), {}),
    aten.ones.default: lambda it, a, k: _filled(1)(it, (a[0],), {}),
    aten.max_pool2d.default: _pool_fn(_max),
    aten.avg_pool2d.default: _pool_fn(_avg),
    aten.max_pool1d.default: _pool_fn(_max),
    aten.avg_pool1d.default: _pool_fn(_avg),
    aten.max_pool3d.default: _pool_fn(_max),
    aten.avg_pool3d.default: _pool_fn(_avg),
    aten.adaptive_avg_pool1d.default: lambda it, a, k: _global_pool(a[0], a[1], _avg),
    aten.adaptive_avg_pool3d.default: lambda it, a, k: _global_pool(a[0], a[1], _avg),
    aten.pad.default: lambda it, a, k: np_pad(a[0], a[1], _arg(a, k, 2, "mode", "constant"), _arg(a, k, 3, "value")),
    aten.constant_pad_nd.default: lambda it, a, k: np_pad(a[0], a[1], "constant", _arg(a, k, 2, "value", 0)),
    aten.eq.Scalar: _compare(sympy.Eq),
    aten.eq.Tensor: _compare(sympy.Eq),
    aten.ne.Scalar: _compare(sympy.Ne),
    aten.ne.Tensor: _compare(sympy.Ne),
    aten.where.self: _where,
    aten.where.ScalarOther: _where,
    aten.where.ScalarSelf: _where,
    aten.full_like.default: _full_like(),
    aten.zeros_like.default: _full_like(0),
    aten.ones_like.default: _full_like(1),
    aten.scaled_dot_product_attention.default:
        lambda it, a, k: sdpa(*a[:3], is_causal=k.get("is_causal", False), scale=k.get("scale")),
}
def _aten_resample(op: Any) -> SymFn:
    """An ATen upsample op: a per-channel linear map of positions, read off torch's own op."""
    return lambda it, a, k: resample(a[0], lambda t: op(t, *a[1:], **k))


for _op in (aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec, aten.upsample_nearest3d.vec,
            aten.upsample_nearest2d.default, aten.upsample_linear1d.vec, aten.upsample_bilinear2d.vec,
            aten.upsample_bicubic2d.vec, aten.upsample_trilinear3d.vec):
    _ATEN[_op] = _aten_resample(_op)

for _target, _fn in _ATEN.items():
    sym_impl(_target)(_fn)
