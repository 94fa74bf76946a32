"""One proof per proof name in specs/ops.toml.

Each proof builds a tiny model that exercises its rule, lets the engine trace, infer and plan it
(so the index maps and scales are the engine's own), applies `remap_tensor` to symbolic weights,
evaluates teacher and student on symbolic inputs with undefined activations, and reduces every
output entry of teacher - student with expand/cancel. Where an identity fails without a constraint
of the table, the proof exhibits a concrete counterexample.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
import torch.nn.functional as F
from sympy.core.function import AppliedUndef
from torch import nn

import n2n_fx
from n2n_fx import indexmaps as im
from n2n_fx.deeper import identity_conv, identity_linear, identity_tap, undo_batch_norm, zero_residual
from n2n_fx.inference import Role

from . import symbolic as sym


@dataclass
class Claim:
    statement: str
    holds: bool  # teacher - student reduced to zero
    expect: bool = True  # False: a counterexample that justifies a constraint of the table
    counterexample: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.holds == self.expect and (self.expect or self.counterexample is not None)


@dataclass
class ProofResult:
    name: str
    claims: list[Claim] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.claims) and all(c.ok for c in self.claims)

    @property
    def verdict(self) -> str:
        if not self.ok:
            return "FAILED"
        if any(not c.expect for c in self.claims):
            return "proved; counterexample justifies constraint"
        return "proved"


PROOFS: dict[str, Callable[[], list[Claim]]] = {}


def proof(name: str) -> Callable:
    def register(fn: Callable[[], list[Claim]]) -> Callable[[], list[Claim]]:
        if name in PROOFS:
            raise ValueError(f"proof {name!r} registered twice")
        PROOFS[name] = fn
        return fn

    return register


def concrete_counterexample(diffs: list[Any], seed: int = 0) -> dict[str, Any] | None:
    """Values (activations made concrete: f(v) = v**3 + v) at which teacher - student != 0."""
    rng = random.Random(seed)
    for expr in diffs:
        has_f = bool(expr.atoms(AppliedUndef))
        concrete = expr.replace(lambda e: isinstance(e, AppliedUndef), lambda e: e.args[0] ** 3 + e.args[0])
        for _ in range(30):
            values = {s: sympy.Rational(rng.randint(-4, 4), rng.randint(1, 3)) for s in concrete.free_symbols}
            value = sympy.nsimplify(concrete.subs(values))
            if value != 0:
                shown = dict(sorted((str(k), str(v)) for k, v in values.items())[:6])
                found = {"values": shown, "difference": str(value)}
                return {**found, "activation": "f(v) = v**3 + v"} if has_f else found
    return None


def widen_claim(statement: str, model: nn.Module, x: torch.Tensor, **kw: Any) -> Claim:
    """Holds when teacher - student reduces to 0 *and* every hidden space was really widened (a
    proof over frozen spaces would hold vacuously)."""
    torch.manual_seed(0)
    plan, diffs = sym.widen_symbolically(model.double(), x.double(), **kw)
    vacuous = [p.name for p in plan.spaces if p.new_width == p.width and
               not (p.reasons and p.reasons[0].code == "model_output")]
    if vacuous:
        statement += f" [NOT WIDENED: {vacuous}]"
    return Claim(statement, not diffs and not vacuous, counterexample=concrete_counterexample(diffs) if diffs else None)


def aten_claims(statement: str, model: nn.Module, x: torch.Tensor, *, core: bool = True, dynamic: bool = False,
                **kw: Any) -> list[Claim]:
    """widen_claim on the graphs torch.export hands over: the exported (ATen) module and (core) its
    core ATen decomposition, so that the table's ATen spellings are proved as its Python ones are.
    dynamic: the batch axis exported as a dynamic dim, so that sizes read from it are sym_size calls."""
    torch.manual_seed(0)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    ep = torch.export.export(model.double().eval(), (x.double(),), dynamic_shapes=shapes)
    export = "torch.export, dynamic batch" if dynamic else "torch.export"
    forms = [(export, ep.module())] + ([("core ATen", ep.run_decompositions().module())] if core else [])
    return [widen_claim(f"{statement} [{form}]", gm, x, **kw) for form, gm in forms]


def broken_claim(statement: str, diffs: list[Any]) -> Claim:
    return Claim(statement, not diffs, expect=False, counterexample=concrete_counterexample(diffs))


# ------------------------------------------------------------------------------ models
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class TwoHeads(nn.Module):
    """One hidden space read by two consumers: each must divide by the replica counts."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h) + self.c(h)


class MatmulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(x @ self.w))


class ConvNet(nn.Module):
    def __init__(self, groups: int = 1, depthwise_mult: int = 0) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.mid = nn.Conv2d(4, 4 * max(depthwise_mult, 1), 3, padding=1,
                             groups=4 if depthwise_mult else groups)
        self.b = nn.Conv2d(4 * max(depthwise_mult, 1), 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.mid(torch.relu(self.a(x)))))


class BNNet(nn.Module):
    """conv -> BatchNorm2d -> relu -> conv; functional: F.batch_norm on the module's tensors ("eval":
    its running statistics, "train": batch statistics, no running ones)."""

    def __init__(self, functional: str | None = None) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, bn = self.a(x), self.bn
        if self.functional == "eval":
            h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias)
        elif self.functional == "train":
            h = F.batch_norm(h, None, None, bn.weight, bn.bias, training=True)
        else:
            h = bn(h)
        return self.b(torch.relu(h))


class FunctionalConvNet(nn.Module):
    """Conv1d/2d/3d weights applied by F.conv1d/2d/3d (a 3-tap kernel, padding 1, then 1x1)."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.a, self.b, self.fn = conv(2, 4, 3), conv(4, 2, 1), (F.conv1d, F.conv2d, F.conv3d)[dims - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fn(x, self.a.weight, self.a.bias, 1, 1))
        return self.fn(h, self.b.weight, self.b.bias)


class PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.max, self.avg = nn.Conv2d(1, 3, 1), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        pooled = self.avg(self.max(y) + F.adaptive_avg_pool2d(y, 1))
        return self.b(torch.flatten(pooled, 1) + y.mean((2, 3)))  # mean over spatial dims: reduce


class PoolNdNet(nn.Module):
    """1d or 3d pools in module and function spellings (adaptive max: the module only, which
    torch.export spells as adaptive_max_pool*d, an op the table does not list)."""

    def __init__(self, dims: int, adaptive_max: bool = True) -> None:
        super().__init__()
        d = f"{dims}d"
        self.a, self.b = (nn.Conv1d, None, nn.Conv3d)[dims - 1](1, 3, 1), nn.Linear(3, 2)
        self.max, self.avg = getattr(nn, f"MaxPool{d}")(2), getattr(nn, f"AvgPool{d}")(2)
        self.gavg = getattr(nn, f"AdaptiveAvgPool{d}")(1)
        self.gmax = getattr(nn, f"AdaptiveMaxPool{d}")(1) if adaptive_max else None
        self.fns = tuple(getattr(F, f"{name}{d}") for name in ("max_pool", "avg_pool", "adaptive_avg_pool"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        y = self.max(y) + self.avg(y) + self.fns[0](y, 2) + self.fns[1](y, 2)
        z = self.gavg(y) + self.fns[2](y, 1) + (self.gmax(y) if self.gmax is not None else 0)
        return self.b(torch.flatten(z, 1))


class PadNet(nn.Module):
    """Every padding module of the table's 2d spellings and F.pad in reflect mode: per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 1), nn.Linear(3, 2)
        self.pads = nn.ModuleList([nn.ZeroPad2d((1, 1, 1, 1)), nn.ConstantPad2d(1, 0.5), nn.ReflectionPad2d(1),
                                   nn.ReplicationPad2d((1, 1, 1, 1)), nn.CircularPad2d(1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.a(x))
        z = F.pad(y, (1, 1, 1, 1), mode="reflect")
        for pad in self.pads:
            z = z + pad(y)
        return self.b(z.mean((2, 3)))


class ReduceNet(nn.Module):
    """Sums and maxima over the spatial axes (fixed): the channel space passes through each."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 1), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        z = y.sum((2, 3)) + torch.sum(y, (2, 3)) + y.amax((2, 3)) + torch.amax(y, (2, 3)) + torch.amin(y, (2, 3))
        return self.b(z)


class ResampleNet(nn.Module):
    """Per-channel ops over the spatial dims: nearest upsampling, a spatial pad, a softmax over
    positions, and dtype casts; each must carry the channel space through unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 1), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x)).to(torch.float64).type_as(x)
        y = F.pad(F.interpolate(y, scale_factor=2), (1, 0, 0, 1))
        y = F.softmax(y.flatten(2), dim=-1)
        return self.b(y.mean(2))


class UpsampleNet(nn.Module):
    """nn.Upsample, nearest and bilinear: per-channel maps of positions (the module spellings)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 2, 1)
        self.near, self.bilinear = nn.Upsample(scale_factor=2), nn.Upsample(size=(3, 3), mode="bilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.bilinear(self.near(torch.relu(self.a(x)))))


class GateNet(nn.Module):
    """SENet's gate: sizes read at run time (b, c = x.size()) size views of the gated space."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc, self.b = nn.Conv2d(1, 3, 1), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        b, c, _, _ = h.size()
        g = self.fc(h.mean((2, 3)).view(b, c)).view(b, c, 1, 1)
        return self.b((h * g.expand_as(h)).mean((2, 3)))


class ActivationsNet(nn.Module):
    """The table's unary ops in each spelling family (modules, functions, Tensor methods) on one
    widened space; exported, their ATen spellings."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 2)
        self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU6(), nn.Hardtanh(), nn.LeakyReLU(), nn.ELU(), nn.GELU(), nn.SiLU(),
                                   nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(), nn.Dropout(),
                                   nn.Identity()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = h.relu() + h.sigmoid() + h.tanh() + h.clamp(-1.0, 1.0) + h.clone() + h.exp() + h.pow(2) + torch.pow(h, 2)
        y = y + F.relu6(h) + F.hardtanh(h) + F.leaky_relu(h) + F.elu(h) + F.gelu(h) + F.silu(h) + F.hardswish(h)
        y = y + F.hardsigmoid(h) + F.dropout(h, training=False) + torch.clone(h) + torch.exp(h) + torch.neg(h)
        for act in self.acts:
            y = y + act(h)
        return self.b(y)


class WhereNet(nn.Module):
    """Masks of comparisons (eq, ne, against a literal or a tensor) choosing elements with where
    (tensor or literal operands): one g for the mask and both operands."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.b = nn.Linear(2, 3), nn.Linear(2, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, k = torch.tanh(self.a(x)), self.c(x)
        y = torch.where(torch.ne(h, 0.5), h, k) + torch.where(h.eq(k), k, 0.0) + torch.where(torch.eq(h, 1.0), 2.0, h)
        return self.b(y + torch.where(h.ne(k), h, k))


class LikeNet(nn.Module):
    """Constants shaped like a space (full_like, zeros_like, ones_like) and torchvision's stochastic
    depth (eval: the identity) on it."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.a, self.b, self.drop = nn.Linear(2, 3), nn.Linear(3, 2), StochasticDepth(0.5, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = h * torch.full_like(h, 0.5) + torch.zeros_like(h) + torch.ones_like(h) * torch.tanh(h)
        return self.b(y + self.drop(h))


class BinaryNet(nn.Module):
    """The table's binary ops in each spelling family: two spaces made one by the first add, a
    per-unit divisor and a literal."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.b = nn.Linear(2, 3), nn.Linear(2, 3), nn.Linear(3, 2)
        self.g = nn.Parameter(torch.rand(3) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, k = self.a(x), self.c(x)
        y = h.add(k) + h.sub(k) + h.mul(k) + h.div(self.g) + torch.div(h, self.g) + h / 2 + torch.mul(h, k)
        return self.b(y + torch.sub(h, k) + torch.add(h, k))


class SpellingsNet(nn.Module):
    """Function and method spellings of the structural and contracting ops around two spaces."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 2)
        self.w, self.bias = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3))
        self.w2, self.w3 = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3, 3))
        self.flat, self.soft = nn.Flatten(), nn.Softmax(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.relu(torch.addmm(self.bias, h, self.w))
        h = torch.relu(self.bias.addmm(h, self.w2).matmul(self.w3))
        t = torch.permute(torch.transpose(torch.squeeze(torch.reshape(h, (2, 3, 1)), 2), 0, 1), (1, 0))
        y = t + torch.broadcast_to(torch.mean(t, 0), (2, 3))
        y = y + self.soft(y) + y.softmax(0)
        c1, c2 = torch.chunk(y, 2, 0)
        y = torch.stack(torch.unbind(torch.cat([c1, c2], 0), 0), 0)
        return self.b(self.flat(y.unsqueeze(2)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.r, self.c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h + self.r(torch.relu(h)) * self.scale + 0.5  # residual add, per-unit parameter, constant
        h = torch.stack([h, h - 1.0], 0).mean(0)  # stack: every input on one space
        return self.c(torch.relu(h) * torch.sigmoid(h))  # gating mul: one space


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p, self.q, self.c = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 3, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(torch.cat([self.p(x), self.q(x)], 1)))


class Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.u, self.v = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 2, 1), nn.Conv2d(3, 2, 1)
        self.c, self.w = nn.Conv2d(1, 4, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(torch.relu(self.a(x)), [1, 3], dim=1)
        r, s = torch.relu(self.c(x)).chunk(2, dim=1)  # chunk: the student calls split with new sizes
        return self.u(p) + self.v(q) + self.w(r * s)[:, :, :, :]


class SliceNet(nn.Module):
    """A space cut by constant slices (h[..., :2], narrow(h, -1, 2, 2), h[..., 4:]): each piece its
    own space, as a fused gate | up projection is."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.u, self.v, self.w = nn.Linear(3, 5), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        return self.u(h[..., :2]) * self.v(h.narrow(-1, 2, 2)) + self.w(h[:, 4:])


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 3, 1), nn.Linear(12, 2), nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x)).unsqueeze(1).squeeze(1)
        return self.b(y.view(y.size(0), 12)) + self.c(torch.flatten(y, 1))  # literal 12 is rewritten


class UnflattenNet(nn.Module):
    """A conv map flattened (a stride map) and unflattened back, by function and by method."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 3, 1), nn.Conv2d(3, 2, 1), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x)).flatten(1)
        z = self.b(torch.unflatten(y, 1, (3, 2, 2)))  # literal 3 is rewritten
        return z.sum((2, 3)) + self.c(y.unflatten(-1, (3, 4)).mean(-1))


class ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.lin, self.b = nn.Conv2d(1, 3, 1), nn.Linear(3, 3), nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x)).permute(0, 2, 3, 1)
        return self.b(torch.relu(self.lin(y)).transpose(1, 3).transpose(2, 3))


class NormNet(nn.Module):
    """A residual stream under LayerNorm and RMSNorm (module and functional), with an MLP branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.up, self.down = nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 3), nn.Linear(3, 2)
        self.rms, self.g, self.head = nn.RMSNorm(2), nn.Parameter(torch.randn(2)), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.a(x))
        h = h + self.down(torch.relu(self.up(h)))
        h = F.layer_norm(self.rms(h), (2,), self.g, None, 1e-5)
        return self.head(h)


class WrittenRMS(nn.Module):
    """RMSNorm as exported Hugging Face graphs spell it: w * (x * rsqrt(mean(x * x) + eps))."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2))
        self.register_buffer("eps", torch.tensor(1e-6))  # a symbol in the proof: any eps, exactly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class FillNet(nn.Module):
    """A pre-norm residual stream (a looked-up table plus a linear), one MLP block, a final norm
    and a head, tied to the table or not; norm: LayerNorm, RMSNorm or RMSNorm written out."""

    def __init__(self, norm: str = "ln", tied: bool = False) -> None:
        super().__init__()
        make = {"ln": lambda: nn.LayerNorm(2), "rms": lambda: nn.RMSNorm(2), "written": WrittenRMS}[norm]
        self.norm = norm
        self.emb, self.a, self.up, self.down = nn.Embedding(4, 2), nn.Linear(3, 2), nn.Linear(2, 2), nn.Linear(2, 2)
        self.n1, self.nf = make(), make()
        self.head = None if tied else nn.Linear(2, 4, bias=False)  # tied: the table itself (F.linear)
        self.register_buffer("ids", torch.tensor([[2]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (1, 1, 3), one position keeps sympy quick
        h = self.emb(self.ids) + self.a(x)
        # a LayerNorm inside the block too makes the final one's radicand too big to expand in minutes
        h = h + self.down(torch.relu(self.up(h if self.norm == "ln" else self.n1(h))))
        return self.head(self.nf(h)) if self.head is not None else F.linear(self.nf(h), self.emb.weight)


class PostNormNet(nn.Module):
    """BERT's order, LN(h + f(h)): a norm's output added to the stream before the next norm."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.f, self.ln1, self.ln2, self.head = (nn.Linear(3, 2), nn.Linear(2, 2), nn.LayerNorm(2),
                                                         nn.LayerNorm(2), nn.Linear(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(self.a(x))
        return self.head(self.ln2(h + self.f(h)))


class AttnNet(nn.Module):
    """A residual stream through self-attention (embed 4, 2 heads of 2) and out."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(h + self.attn(h, h, h, need_weights=False)[0])


class TokenNet(nn.Module):
    """ViT's class token and position embedding: parameters broadcast into the hidden space."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 2), nn.Linear(2, 2)
        self.cls, self.pos = nn.Parameter(torch.randn(1, 1, 2)), nn.Parameter(torch.randn(1, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.a(x)], dim=1) + self.pos
        return self.head(torch.tanh(tokens))


class EmbedNet(nn.Module):
    """Token embeddings (fixed ids) added to a projected input, as a transformer's first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.a, self.head = nn.Embedding(4, 2), nn.Linear(3, 2), nn.Linear(2, 2)
        self.register_buffer("ids", torch.tensor([[2, 0, 2]]))
        self.register_buffer("other", torch.tensor([[1, 3, 0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the module and F.embedding on its table
        return self.head(torch.tanh(self.emb(self.ids) + F.embedding(self.other, self.emb.weight) + self.a(x)))


class ConstantNet(nn.Module):
    """A bias built from constants sized by literals (T5's zero position bias), added across a space
    (the batch size read at run time keeps fx from folding them into tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        return self.head(h * torch.ones((x.shape[0], 2, 2)) + torch.zeros((x.shape[0], 1, 2)))


class TiedNet(nn.Module):
    """One table looked up into the hidden space and used as the head's matrix (tied embeddings),
    with a per-unit gain and shift (or a LayerNorm) producing the head's input."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.emb, self.a = nn.Embedding(4, 2), nn.Linear(3, 2)
        self.gain, self.shift = nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(2))
        self.norm = nn.LayerNorm(2) if norm else None
        self.register_buffer("ids", torch.tensor([[2, 0, 3]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.emb(self.ids) + self.a(x))
        return F.linear(self.norm(h) if self.norm is not None else h * self.gain + self.shift, self.emb.weight)


class PatchNet(nn.Module):
    """Swin's patch merging: 2x2 channels-last patches concatenated into 4 copies of the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 2), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.models.swin_transformer import _patch_merging_pad
        return self.head(_patch_merging_pad(torch.tanh(self.a(x))))


class SdpaNet(nn.Module):
    """Functional attention: q, k, v projections split into 2 heads of 2 by a view, causal sdpa
    (its default scale 1/sqrt(head_dim), or a literal `scale`)."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.a, self.q, self.k, self.v = nn.Linear(3, 2), nn.Linear(2, 4), nn.Linear(2, 4), nn.Linear(2, 4)
        self.proj, self.head = nn.Linear(4, 2), nn.Linear(2, 2)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        q, k, v = (p(h).view(1, 2, 2, 2).transpose(1, 2) for p in (self.q, self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale).transpose(1, 2).reshape(1, 2, 4)
        return self.head(h + self.proj(o))


class GqaNet(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads (repeat_kv: expand, reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.q, self.k, self.v = nn.Linear(3, 2), nn.Linear(2, 4), nn.Linear(2, 2), nn.Linear(2, 2)
        self.proj, self.head = nn.Linear(4, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        q = self.q(h).view(1, 2, 4, 1).transpose(1, 2)
        k, v = (p(h).view(1, 2, 2, 1).transpose(1, 2)[:, :, None].expand(1, 2, 2, 2, 1).reshape(1, 4, 2, 1)
                for p in (self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 2, 4)
        return self.head(h + self.proj(o))


class FusedSliceNet(nn.Module):
    """Phi-3's fused projections: one Linear's rows are q | k | v cut by constant slices (2 query
    heads share 1 key/value head, head_dim 2), another's are gate | up."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.qkv, self.proj = nn.Linear(3, 2), nn.Linear(2, 8), nn.Linear(4, 2)
        self.gate_up, self.down, self.head = nn.Linear(2, 4), nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        qkv = self.qkv(h)
        q = qkv[..., :4].view(1, 2, 2, 2).transpose(1, 2)
        k, v = (t.view(1, 2, 1, 2).transpose(1, 2)[:, :, None].expand(1, 1, 2, 2, 2).reshape(1, 2, 2, 2)
                for t in (qkv.narrow(-1, 4, 2), qkv[:, :, 6:]))
        h = h + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 2, 4))
        gu = self.gate_up(h)
        return self.head(h + self.down(torch.tanh(gu[..., :2]) * gu[..., 2:]))


class PackedQkvNet(nn.Module):
    """timm's ViT attention: one Linear to 3 x heads x head_dim, viewed as (B, N, 3, H, D), permuted
    and unbound into q, k, v (2 heads, head_dim 2; sdpa's default scale, or a literal `scale`)."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.a, self.qkv, self.proj, self.head = nn.Linear(3, 2), nn.Linear(2, 12), nn.Linear(4, 2), nn.Linear(2, 2)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        q, k, v = self.qkv(h).reshape(1, 2, 3, 2, 2).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.head(h + self.proj(o.transpose(1, 2).reshape(1, 2, 4)))


class BmmNet(nn.Module):
    """Attention as core ATen decomposes it: heads folded into bmm's batch ((B, H, L, D) ->
    (B*H, L, D)), softmax over keys, and an output projection as bmm with its weight broadcast."""

    def __init__(self, heads: int = 2, head_dim: int = 1) -> None:
        super().__init__()
        c = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.a, self.qkv, self.head = nn.Linear(3, c), nn.Linear(c, 3 * c), nn.Linear(c, 2)
        self.proj = nn.Parameter(torch.randn(c, c) / c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        c, d = self.heads * self.head_dim, self.head_dim
        h = self.a(x)
        qkv = self.qkv(h).split(c, -1)
        q, k, v = (qkv[i].view(b, n, self.heads, d).transpose(1, 2).reshape(-1, n, d) for i in range(3))
        o = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1), v)
        o = o.view(b, self.heads, n, d).transpose(1, 2).reshape(b, n, c)
        return self.head(h + o.bmm(self.proj.expand(b, c, c)))  # the method spelling


class FunctionalRMSNet(nn.Module):
    """F.rms_norm (a gain, a literal eps) and torch.rms_norm (no gain, the default eps) on one space."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head, self.g = nn.Linear(3, 2), nn.Linear(2, 2), nn.Parameter(torch.randn(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(F.rms_norm(h, (2,), self.g, 1e-6) + torch.rms_norm(h, (2,)))


class SwinNet(nn.Module):
    """torchvision's Swin window attention on a residual stream (channels-last (B, 1, 4, C), 2 heads,
    windows of 1 x 2 tokens shifted by one: two windows, the shift's mask)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.swin_transformer import ShiftedWindowAttention

        self.a, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.attn = ShiftedWindowAttention(4, [1, 2], [0, 1], 2)
        nn.init.normal_(self.attn.relative_position_bias_table)  # its init is near zero: make the copy visible

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(h + self.attn(h))


class MaxVitNet(nn.Module):
    """torchvision's MaxViT attention (a leaf: 2 heads of 1 over 4 tokens, a relative position bias)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

        self.a, self.head = nn.Linear(3, 2), nn.Linear(2, 2)
        self.attn = RelativePositionalMultiHeadAttention(2, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(h + self.attn(h))


class MeanSquareNet(nn.Module):
    """RMSNorm written out (mean of squares, rsqrt), as exported Llama models spell it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))


class SelectNet(nn.Module):
    """select / narrow on a fixed axis (a class token, a sequence slice) next to a space."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        y = h.select(1, 0) + h.narrow(1, 1, 1).squeeze(1)
        return self.head(y + torch.select(h, 1, 2) + torch.narrow(h, 1, 0, 1).squeeze(1))


# ------------------------------------------------------------------------------ proofs
@proof("dense_matrix")
def dense_matrix() -> list[Claim]:
    x = torch.randn(2, 3)
    claims = [
        widen_claim("Linear: rows copied through g, columns divided by replica counts (4 -> 7)", MLP(), x,
                    plan_kw={"widths": {"a": 7}, "seed": 1}),
        *aten_claims("Linear: rows copied through g, columns divided by replica counts (4 -> 7)", MLP(), x,
                    plan_kw={"widths": {"a": 7}, "seed": 1}),
        widen_claim("matmul with a parameter: x @ W widened on W's output axis (4 -> 6)", MatmulNet(), x,
                    plan_kw={"factor": 1.5, "seed": 2}),
        *aten_claims("matmul with a parameter: x @ W widened on W's output axis (4 -> 6)", MatmulNet(), x,
                    plan_kw={"factor": 1.5, "seed": 2}),
        widen_claim("two consumers of one space both divide (3 -> 5)", TwoHeads(), x,
                    plan_kw={"factor": 1.7, "seed": 3}),
    ]
    # the `split` symmetry mode: any positive alpha summing to 1 over each unit's replicas
    n, q = 4, 7
    g = im.random_map(n, q, torch.Generator().manual_seed(1))
    alphas = [sympy.Symbol(f"alpha_{j}", positive=True) for j in range(q)]
    constrained = list(alphas)
    for i in range(n):
        reps = [j for j in range(q) if int(g[j]) == i]
        constrained[reps[-1]] = 1 - sum(alphas[j] for j in reps[:-1])
    w1, w2, xs = sym.symbols_like("W1", (n, 3)), sym.symbols_like("W2", (2, n)), sym.symbols_like("x", (3,))
    f = sym.undefined("phi")
    teacher = w2 @ f(w1 @ xs)
    student = lambda a: (np.take(w2, g.numpy(), 1) * np.array(a, dtype=object)) @ f(np.take(w1, g.numpy(), 0) @ xs)  # noqa: E731
    claims.append(Claim("split mode: consumer columns alpha_j W[:, g(j)] with sum alpha = 1 per unit",
                        not sym.difference(teacher, student(constrained))))
    drawn = im.split_scale(g, n, torch.Generator().manual_seed(3))
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, g, drawn)
    claims.append(Claim("the engine's split_scale draws alpha > 0 summing to 1 (to 1e-15)",
                        bool((drawn > 0).all() and (sums - 1).abs().max() < 1e-15)))
    claims.append(broken_claim("without the sum-to-1 constraint (alpha = 1: no division) the function changes",
                               sym.difference(teacher, student([1] * q))))
    return claims


@proof("conv_matrix")
def conv_matrix() -> list[Claim]:
    x = torch.randn(1, 2, 2, 2)
    return [
        widen_claim("Conv2d 3x3 as a matrix over channels (4 -> 6), kernel taps carried", ConvNet(), x,
                    plan_kw={"factor": 1.5, "seed": 1}),
        *aten_claims("Conv2d 3x3 as a matrix over channels (4 -> 6), kernel taps carried", ConvNet(), x,
                    plan_kw={"factor": 1.5, "seed": 1}),
        widen_claim("depthwise conv with multiplier 2: the space passes through, groups follow C_in",
                    ConvNet(depthwise_mult=2), x, plan_kw={"factor": 1.5, "seed": 2}),
        widen_claim("grouped conv (groups=2): each group widened alike, columns gathered per group",
                    ConvNet(groups=2), x, plan_kw={"factor": 2.0, "seed": 3}),
        *[widen_claim(f"F.conv{d}d on a Conv{d}d's weight and bias (3 taps, padding 1; 4 -> 6)", FunctionalConvNet(d),
                      torch.randn(1, 2, *shape), plan_kw={"factor": 1.5, "seed": 3 + d})
          for d, shape in ((1, (3,)), (2, (2, 2)), (3, (1, 1, 2)))],
    ]


@proof("batch_norm")
def batch_norm() -> list[Claim]:
    x1, x2 = torch.randn(1, 2, 1, 1), torch.randn(2, 2, 1, 1)
    claims = [
        widen_claim("BatchNorm eval: weight, bias and running statistics copied through g", BNNet().eval(), x1,
                    plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims("BatchNorm eval: weight, bias and running statistics copied through g", BNNet().eval(), x1,
                    plan_kw={"factor": 1.7, "seed": 1}),
        widen_claim("BatchNorm train: a replicated channel has the same batch statistics", BNNet().train(), x2,
                    training=True, plan_kw={"factor": 1.7, "seed": 2}),
        widen_claim("F.batch_norm with the running statistics, weight and bias (eval)", BNNet("eval").eval(), x1,
                    plan_kw={"factor": 1.7, "seed": 3}),
        widen_claim("F.batch_norm on batch statistics (training=True, batch 2), weight and bias", BNNet("train"), x2,
                    plan_kw={"factor": 1.7, "seed": 4}),
    ]
    # deepen: the engine's BatchNorm undo (gamma = sqrt(var + eps), beta = mean) is the identity
    value = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    bn = undo_batch_norm(value, 1, 2, "eval")
    built = bool(torch.equal(bn.weight, torch.sqrt(bn.running_var + bn.eps)) and torch.equal(bn.bias, bn.running_mean))
    m, v = sym.symbols_like("mean", (3,)), sym.symbols_like("var", (3,), positive=True)
    xs = sym.symbols_like("x", (2, 3, 1, 1))
    gamma = np.vectorize(sympy.sqrt, otypes=[object])(v + sym.exact(bn.eps))
    out = sym.batch_norm(xs, m, v, gamma, m, False, bn.eps)
    claims.append(Claim("deepen BN undo: gamma = sqrt(running_var + eps), beta = running_mean is the identity",
                        built and not sym.difference(xs, out)))
    return claims


SUMS = "sum, amax and amin over the (fixed) spatial axes act per channel (3 -> 5)"


@proof("channelwise")
def channelwise() -> list[Claim]:
    return [widen_claim("max / average / adaptive pools and a spatial mean act per channel (3 -> 5)", PoolNet(),
                        torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims("max / average / adaptive pools and a spatial mean act per channel (3 -> 5)", PoolNet(),
                        torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
            widen_claim(SUMS, ReduceNet(), torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
            *aten_claims(SUMS, ReduceNet(), torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
            widen_claim("interpolate, a spatial pad, a softmax over positions and casts act per channel (3 -> 5)",
                        ResampleNet(), torch.randn(1, 1, 1, 2), plan_kw={"factor": 1.7, "seed": 1}),
            widen_claim("nn.Upsample nearest and bilinear act per channel (3 -> 5)", UpsampleNet(),
                        torch.randn(1, 1, 1, 2), plan_kw={"factor": 1.7, "seed": 1}),
            # core ATen spells upsampling as index arithmetic, which freezes: the export form only
            *aten_claims("nn.Upsample nearest and bilinear", UpsampleNet(), torch.randn(1, 1, 1, 2), core=False,
                         plan_kw={"factor": 1.7, "seed": 1}),
            *_pool_nd_claims(),
            widen_claim(PADS, PadNet(), torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 2}),
            # core ATen spells reflect, replicate and circular pads as index arithmetic: the export form only
            *aten_claims(PADS, PadNet(), torch.randn(1, 1, 2, 2), core=False, plan_kw={"factor": 1.7, "seed": 2})]


PADS = "zero, constant (0.5), reflection, replication and circular pads (modules, F.pad) act per channel (3 -> 5)"


def _pool_nd_claims() -> list[Claim]:
    """1d and 3d pools; exported without AdaptiveMaxPool (torch.export's adaptive_max_pool*d is not in the table)."""
    claims = []
    for d, x in ((1, torch.randn(1, 1, 4)), (3, torch.randn(1, 1, 2, 2, 2))):
        what = f"{d}d max / average / adaptive pools, modules and functions, act per channel (3 -> 5)"
        claims += [widen_claim(what, PoolNdNet(d), x, plan_kw={"factor": 1.7, "seed": d}),
                   *aten_claims(what, PoolNdNet(d, adaptive_max=False), x, plan_kw={"factor": 1.7, "seed": d})]
    return claims


ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "relu": lambda v: sympy.Max(0, v),
    "relu6": lambda v: sympy.Min(sympy.Max(0, v), 6),
    "hardtanh": lambda v: sympy.Min(sympy.Max(-1, v), 1),
    "leaky_relu": lambda v: sympy.Max(v, sympy.Rational(1, 100) * v),
    "elu": lambda v: sympy.Piecewise((v, v > 0), (sympy.exp(v) - 1, True)),
    "gelu": lambda v: v * (1 + sympy.erf(v / sympy.sqrt(2))) / 2,
    "silu": lambda v: v / (1 + sympy.exp(-v)),
    "sigmoid": lambda v: 1 / (1 + sympy.exp(-v)),
    "tanh": sympy.tanh,
    "hardswish": lambda v: v * sympy.Min(sympy.Max(0, v + 3), 6) / 6,
    "hardsigmoid": lambda v: sympy.Min(sympy.Max(0, v / 6 + sympy.Rational(1, 2)), 1),
    "prelu": lambda v: sympy.Max(0, v) + sympy.Min(0, v) / 4,  # nn.PReLU()'s initial slope 0.25
}


def _idempotent(phi: Callable[[Any], Any]) -> tuple[bool, dict[str, Any] | None]:
    """phi(phi(v)) - phi(v): folded piecewise and expanded; else a point where it is nonzero."""
    v = sympy.Symbol("v", real=True)
    diff = sympy.piecewise_fold((phi(phi(v)) - phi(v)).rewrite(sympy.Piecewise))
    if sympy.expand(diff) == 0:
        return True, None
    for point in (sympy.Integer(1), sympy.Integer(-1), sympy.Rational(1, 2), sympy.Integer(7)):
        value = sympy.N(diff.subs(v, point), 30)
        if value != 0:
            return False, {"values": {"v": str(point)}, "difference": str(sympy.N(value, 6))}
    return False, None


@proof("elementwise_unary")
def elementwise_unary() -> list[Claim]:
    claims = []
    table = n2n_fx.load_table()
    for op in table.ops:
        if not op.activation or op.name not in ACTIVATIONS:
            continue
        holds, cex = _idempotent(ACTIVATIONS[op.name])
        if op.idempotent:
            claims.append(Claim(f"{op.name} is idempotent: an identity layer may repeat it", holds))
        else:
            claims.append(Claim(f"{op.name}(I {op.name}(v)) != {op.name}(v): deepening must refuse it", holds,
                                expect=False, counterexample=cex))
    missing = [op.name for op in table.ops if op.activation and op.name not in ACTIVATIONS]
    claims.append(Claim(f"every activation of the table has a definition here (missing: {missing or 'none'})",
                        not missing))
    claims += _deepen_identities()
    x = torch.randn(2, 2)
    what = "every unary spelling (modules, functions, Tensor methods) on one space commutes with replication (3 -> 5)"
    claims += [widen_claim(what, ActivationsNet(), x, plan_kw={"factor": 1.7, "seed": 1}),
               *aten_claims(what, ActivationsNet(), x, plan_kw={"factor": 1.7, "seed": 1})]
    like = "full_like, zeros_like and ones_like of a space, and stochastic depth (eval), commute with replication (3 -> 5)"
    claims += [widen_claim(like, LikeNet(), x, plan_kw={"factor": 1.7, "seed": 2}),
               *aten_claims(like, LikeNet(), x, plan_kw={"factor": 1.7, "seed": 2})]
    return claims


def _deepen_identities() -> list[Claim]:
    """The engine's identity Linear and Conv (odd and even kernels) followed by ReLU (Max)."""
    claims = []
    xs = sym.symbols_like("z", (2, 3))
    lin = identity_linear(3, torch.float64)
    w = np.vectorize(sym.exact, otypes=[object])(lin.weight.detach().numpy())
    b = np.vectorize(sym.exact, otypes=[object])(lin.bias.detach().numpy())
    h = sym.relu(xs)
    claims.append(Claim("deepen: relu(I relu(z) + 0) = relu(z) with the engine's identity Linear",
                        not sym.difference(h, sym.relu(h @ w.T + b))))
    for k in (1, 2, 3, 4):
        conv = identity_conv(2, 2, k, torch.float64)
        cw = np.vectorize(sym.exact, otypes=[object])(conv.weight.detach().numpy())
        cb = np.vectorize(sym.exact, otypes=[object])(conv.bias.detach().numpy())
        hs = sym.relu(sym.symbols_like("y", (1, 2, 3, 3)))
        out = sym.relu(sym.conv_nd(hs, cw, cb, 1, "same", 1, 1))
        claims.append(Claim(f"deepen: identity Conv2d k={k} ('same' padding, tap {identity_tap(k)}) then relu",
                            not sym.difference(hs, out)))
    # the residual block: h + W2 f(W1 h + b1) + b2 with the engine's W2 = 0, b2 = 0, for an undefined f
    first, last = zero_residual(3, 4, 0, torch.float64, torch.Generator().manual_seed(0))
    w1, b1, w2, b2 = (np.vectorize(sym.exact, otypes=[object])(t.detach().numpy())
                      for t in (first.weight, first.bias, last.weight, last.bias))
    f = sym.undefined("residual")
    claims.append(Claim("deepen residual: h + W2 f(W1 h + b1) + b2 = h for any f (the engine's W2 = 0, b2 = 0)",
                        not sym.difference(xs, xs + f(xs @ w1.T + b1) @ w2.T + b2)))
    claims.append(broken_claim("with W2 != 0 the residual block changes the function",
                               sym.difference(xs, xs + f(xs @ w1.T + b1) @ (w2 + 1).T + b2)))
    # the gated post-LN block as the engine builds it: x + alpha (LN(x + W2 f(W1 x + b1) + b2) - x)
    gated = n2n_fx.deepen(nn.Sequential(nn.Linear(3, 3)).double(), torch.randn(2, 3, dtype=torch.float64),
                          after=["0"], block="gated")
    block = {name: np.vectorize(sym.exact, otypes=[object])(t.detach().numpy())
             for name, t in gated.named_parameters() if name.startswith("n2n_deepen")}
    base = next(n for n in block if n.endswith(".gate.alpha")).removesuffix(".gate.alpha")
    p = {k.removeprefix(base + "."): v for k, v in block.items()}
    inner = xs @ p["residual_in.weight"].T + p["residual_in.bias"]
    post_ln = sym.norm_last(xs + f(inner) @ p["residual_out.weight"].T + p["residual_out.bias"],
                            p["norm.weight"], p["norm.bias"], 1e-5, False)
    alpha = p["gate.alpha"][0]
    claims.append(Claim(f"deepen gated: x + alpha (LN(x + W2 f(W1 x + b1) + b2) - x) = x with the engine's alpha = "
                        f"{alpha} and a drawn W2, for any f", not sym.difference(xs, xs + alpha * (post_ln - xs))))
    claims.append(broken_claim("a post-LN block with zero W2 is not the identity (LN(x) != x): it needs the gate",
                               sym.difference(xs, sym.norm_last(xs + f(xs @ w1.T + b1) @ w2.T + b2, None, None,
                                                                1e-5, False))))
    return claims


@proof("elementwise_binary")
def elementwise_binary() -> list[Claim]:
    claims = [widen_claim("residual add, per-unit parameter, constant, stack, gating mul: one shared g", Residual(),
                          torch.randn(1, 2), plan_kw={"widths": {"a": 5}, "seed": 1}),
        *aten_claims("residual add, per-unit parameter, constant, stack, gating mul: one shared g", Residual(),
                          torch.randn(1, 2), plan_kw={"widths": {"a": 5}, "seed": 1})]
    # independent maps on the two sides of an add: the classic silent bug
    n = 3  # old width; both maps widen to 5
    g1 = torch.tensor([0, 1, 2, 0, 1])
    g2 = torch.tensor([0, 1, 2, 2, 2])
    w1, w2 = sym.symbols_like("A", (n, 2)), sym.symbols_like("B", (n, 2))
    w3, xs = sym.symbols_like("C", (2, n)), sym.symbols_like("x", (2,))
    f = sym.undefined("phi")
    teacher = w3 @ f(w1 @ xs + w2 @ xs)
    scale = np.array([sym.exact(float(s)) for s in im.divide_scale(g1, n)], dtype=object)
    student = (np.take(w3, g1.numpy(), 1) * scale) @ f(np.take(w1, g1.numpy(), 0) @ xs + np.take(w2, g2.numpy(), 0) @ xs)
    claims.append(broken_claim("independent g on the two operands of an add changes the function",
                               sym.difference(teacher, student)))
    what = "add, sub, mul and div in every spelling, by a per-unit parameter and a literal: one shared g (3 -> 5)"
    claims += [widen_claim(what, BinaryNet(), torch.randn(2, 2), plan_kw={"factor": 1.7, "seed": 1}),
               *aten_claims(what, BinaryNet(), torch.randn(2, 2), plan_kw={"factor": 1.7, "seed": 1})]
    where = "eq / ne masks (of a literal, of two tensors) and where (tensor and literal operands): one g (3 -> 5)"
    # core ATen turns where's literals into scalar_tensor, an op the table does not list: the export form only
    claims += [widen_claim(where, WhereNet(), torch.randn(2, 2), plan_kw={"factor": 1.7, "seed": 2}),
               *aten_claims(where, WhereNet(), torch.randn(2, 2), core=False, plan_kw={"factor": 1.7, "seed": 2})]
    return claims


@proof("concat_offsets")
def concat_offsets() -> list[Claim]:
    return [widen_claim("concat: each input keeps its own g at its offset (2 -> 3, 3 -> 5)", Concat(),
                        torch.randn(1, 1, 1, 1), plan_kw={"widths": {"p": 3, "q": 5}, "seed": 1}),
        *aten_claims("concat: each input keeps its own g at its offset (2 -> 3, 3 -> 5)", Concat(),
                        torch.randn(1, 1, 1, 1), plan_kw={"widths": {"p": 3, "q": 5}, "seed": 1})]


@proof("split_pieces")
def split_pieces() -> list[Claim]:
    return [widen_claim("split [1, 3], chunk, getitem: pieces of a space widened on their own",
                        Split(), torch.randn(1, 1, 1, 1), plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims("split [1, 3], chunk, getitem: pieces of a space widened on their own",
                        Split(), torch.randn(1, 1, 1, 1), plan_kw={"factor": 1.7, "seed": 1}),
            widen_claim("constant slices of a space are pieces widened on their own; the student's bounds are "
                        "their new offsets", SliceNet(), torch.randn(2, 3), plan_kw={"factor": 1.8, "seed": 3}),
        *aten_claims("constant slices of a space are pieces widened on their own; the student's bounds are "
                        "their new offsets", SliceNet(), torch.randn(2, 3), plan_kw={"factor": 1.8, "seed": 3}),
            widen_claim("select and narrow (methods and functions) index a fixed axis; the space beside them widens (2 -> 3)",
                        SelectNet(), torch.randn(1, 3, 3), plan_kw={"widths": {"a": 3}, "seed": 2}),
        *aten_claims("select and narrow (methods and functions) index a fixed axis; the space beside them widens (2 -> 3)",
                        SelectNet(), torch.randn(1, 3, 3), plan_kw={"widths": {"a": 3}, "seed": 2})]


SPELLINGS = ("function and method spellings (addmm, matmul, reshape, squeeze, transpose, permute, mean, broadcast_to, "
             "softmax, chunk, unbind, stack, Flatten) carry two spaces (3 -> 5)")


@proof("flatten_stride")
def flatten_stride() -> list[Claim]:
    return [widen_claim("view / flatten (C, H, W) -> C*H*W: unit c owns an H*W block; squeeze (3 -> 5)", Flatten(),
                        torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims("view / flatten (C, H, W) -> C*H*W: unit c owns an H*W block; squeeze (3 -> 5)", Flatten(),
                        torch.randn(1, 1, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
        # a size read from a dynamic batch is aten.sym_size.int (a static export folds it into a literal)
        *aten_claims("view sized by y.size(0), a dynamic batch (batch 2, 3 -> 5)", Flatten(), torch.randn(2, 1, 2, 2),
                     core=False, dynamic=True, plan_kw={"factor": 1.7, "seed": 1}),
        widen_claim("unflatten C*H*W -> (C, H, W) and -> (C, HW) (3 -> 5)", UnflattenNet(), torch.randn(1, 1, 2, 2),
                    plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims("unflatten C*H*W -> (C, H, W) and -> (C, HW) (3 -> 5)", UnflattenNet(), torch.randn(1, 1, 2, 2),
                     core=False, plan_kw={"factor": 1.7, "seed": 1}),
        widen_claim(SPELLINGS, SpellingsNet(), torch.randn(2, 2), plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims(SPELLINGS, SpellingsNet(), torch.randn(2, 2), plan_kw={"factor": 1.7, "seed": 1})]



@proof("permute_axes")
def permute_axes() -> list[Claim]:
    return [widen_claim("permute to channels-last, Linear over channels, transpose back (3 -> 5)", ChannelsLast(),
                        torch.randn(1, 1, 1, 2), plan_kw={"factor": 1.7, "seed": 1}),
        *aten_claims("permute to channels-last, Linear over channels, transpose back (3 -> 5)", ChannelsLast(),
                        torch.randn(1, 1, 1, 2), plan_kw={"factor": 1.7, "seed": 1}, core=False)]


@proof("normalize")
def normalize() -> list[Claim]:
    """Mean, variance and mean square over the last axis survive k-fold uniform replication only."""
    x = torch.randn(1, 2)
    claims = [widen_claim(f"LayerNorm, RMSNorm and F.layer_norm on a residual stream, uniform x{k} (MLP 3 -> {m})",
                          NormNet(), x, plan_kw={"factor": float(k), "seed": 1}) for k, m in ((2, 6), (3, 9))]
    claims += aten_claims("LayerNorm, RMSNorm and F.layer_norm on a residual stream, uniform x2 (MLP 3 -> 6)",
                          NormNet(), x, plan_kw={"factor": 2.0, "seed": 1})
    claims.append(widen_claim("F.rms_norm (a gain) and torch.rms_norm (no gain) on one space, uniform x2",
                              FunctionalRMSNet(), torch.randn(1, 3), plan_kw={"factor": 2.0, "seed": 2}))
    a, b = sympy.symbols("a b", real=True)
    one = np.array([[a, b]], dtype=object)
    lopsided = np.array([[a, a, b]], dtype=object)  # a replicated, b not: the mean moves
    claims.append(broken_claim("non-uniform replication changes LayerNorm's output",
                               sym.difference(sym.norm_last(one, None, None, 1e-5, False)[:, 1:],
                                              sym.norm_last(lopsided, None, None, 1e-5, False)[:, 2:])))
    try:  # and the planner refuses to make one
        n2n_fx.plan(NormNet(), x, widths={"a": 3})
        refused = False
    except n2n_fx.ConstraintError:
        refused = True
    claims.append(Claim("the planner refuses a non-multiple width where fill cannot be exact either (an RMSNorm's "
                        "zero-filled output normalised by a LayerNorm)", refused))
    claims += [widen_claim(f"mean of squares over a space (RMSNorm written out), uniform x{k}", MeanSquareNet(),
                           torch.randn(1, 3), plan_kw={"factor": float(k)}) for k in (2, 3)]
    at_15 = n2n_fx.plan(NormNet(), x, factor=1.5)
    kept = all(p.new_width == p.width for p in at_15.spaces if p.space.uniform)
    claims.append(Claim("factor 1.5 leaves normalised spaces at k = 1 (exact), others grow", kept and any(
        p.new_width > p.width for p in at_15.spaces)))
    return claims


def _fill_widths(model: nn.Module, x: torch.Tensor, q: int) -> dict[str, int]:
    """The normalised stream asked for q units (not a multiple: fill), every other open space +1."""
    plan = n2n_fx.plan(model.double(), x.double())
    return {p.name: (q if p.space.uniform else p.width + 1) for p in plan.spaces if not p.frozen}


def _filled(x: list[Any], fill: Any, s: Any) -> np.ndarray:
    """One row of units as fill would hold it: s * [x, fill]."""
    return np.array([[s * v for v in (*x, fill)]], dtype=object)


@proof("norm_fill")
def norm_fill() -> list[Claim]:
    """Fill (n2n_fx/fill.py): a normalised space grows to any q > n. With s = sqrt(q/n) every value on
    it is s * [teacher's units, fill]; mean fill on a LayerNorm's input, zero fill on an RMSNorm's,
    and every norm's output zero-filled: mean and variance (mean square) over q units are the
    teacher's over n, so eps is unchanged. The claims run the engine's own plan (its AxisFill per
    parameter axis, its fill_factor) on symbols; the counterexamples justify each refusal."""
    x = torch.randn(1, 1, 3)
    claims = []
    for norm, label in (("ln", "LayerNorm (mean fill)"), ("rms", "RMSNorm (zero fill)"),
                        ("written", "RMSNorm written out (zero fill)")):
        for tied, q in ((False, 3), (True, 3), (False, 5)):
            model = FillNet(norm, tied)
            what = "tied head: the final norm's gain takes an extra 1/s^2" if tied else "untied"
            claims.append(widen_claim(f"{label}, pre-norm residual stream 2 -> {q} (not a multiple), {what}", model,
                                      x, plan_kw={"widths": _fill_widths(model, x, q), "seed": 1}))
    a, b, c, d = sympy.symbols("a b c d", real=True)
    s, eps = sympy.sqrt(sympy.Rational(3, 2)), 1e-5
    teacher = np.array([[a, b]], dtype=object)
    ln = lambda v: sym.norm_last(v, None, None, eps, False)  # noqa: E731
    rms = lambda v: sym.norm_last(v, None, None, eps, True)  # noqa: E731
    claims += [
        broken_claim("growing 2 -> 3 by replication (one unit copied, g = [0, 1, 0]) changes LayerNorm's output",
                     sym.difference(ln(teacher), ln(np.array([[a, b, a]], dtype=object))[:, :2])),
        broken_claim("... and RMSNorm's", sym.difference(rms(teacher), rms(np.array([[a, b, a]], dtype=object))[:, :2])),
        broken_claim("mean fill without the factor s: the variance shrinks by n/q and LayerNorm's output moves "
                     "through eps", sym.difference(ln(teacher), ln(_filled([a, b], (a + b) / 2, 1))[:, :2])),
        broken_claim("zero fill on a LayerNorm's input moves its mean",
                     sym.difference(ln(teacher), ln(_filled([a, b], 0, s))[:, :2] / s)),
        broken_claim("mean fill on an RMSNorm's input changes its mean square",
                     sym.difference(rms(teacher), rms(_filled([a, b], (a + b) / 2, s))[:, :2] / s)),
        # post-norm: h = LN1 output (zero-filled), f = f(h) produced (mean-filled); LN2 reads h + f
        broken_claim("post-norm residual LN(h + f(h)): the norm's zero-filled output plus the mean-filled f "
                     "is neither filling (new unit s * mean(f), not s * mean(h + f)): LN2's output changes",
                     sym.difference(ln(np.array([[a + c, b + d]], dtype=object)),
                                    ln(_filled([a + c, b + d], (c + d) / 2, s))[:, :2] / s)),
    ]
    try:
        n2n_fx.plan(PostNormNet(), torch.randn(1, 3), widths={"a": 3})
        refused = False
    except n2n_fx.ConstraintError as exc:
        refused = exc.node == "add"
    claims.append(Claim("the planner refuses fill on a post-norm residual, naming the add", refused))
    claims.append(broken_claim("a tied head without the extra 1/s^2 on its input gain counts the table's s twice: "
                               "the logits change", _tied_fill_without_gain(x)))
    return claims


def _tied_fill_without_gain(x: torch.Tensor) -> list[Any]:
    """teacher - student for a tied FillNet when the final norm's gain (and bias) keep the untied powers."""
    from n2n_fx.fill import AxisFill

    model = FillNet("ln", tied=True).double()
    plan = n2n_fx.plan(model, x.double(), widths=_fill_widths(model, x, 3), seed=1)
    for sf in plan.fills.values():
        for key in (("nf.weight", 0), ("nf.bias", 0)):
            sf.axes[key] = AxisFill(sf.axes[key].new, sf.axes[key].power + 2)
    params = sym.teacher_params(plan.analysis.gm)
    sx = sym.symbols_like("x", tuple(x.shape))
    t_out = sym.run(plan.analysis.gm, params, (sx,))
    return sym.difference(t_out, sym.run(n2n_fx.apply_plan(plan), sym.student_params(plan, params), (sx,)))


@proof("expand")
def expand() -> list[Claim]:
    """A broadcast parameter (class token) is copied through g like a bias; position embeddings add."""
    x = torch.randn(1, 2, 3)
    return [widen_claim(f"class token expanded and concatenated, position embedding added (2 -> {w})", TokenNet(), x,
                        plan_kw={"widths": {"a": w}, "seed": 3}) for w in (3, 5)] + [
        widen_claim("a gate viewed with sizes read at run time and expand_as'ed onto its space (3 -> 5)", GateNet(),
                    torch.randn(1, 1, 1, 1), plan_kw={"factor": 1.7, "seed": 2}),
        *aten_claims("a gate viewed with sizes read at run time and expand_as'ed onto its space (3 -> 5)", GateNet(),
                    torch.randn(1, 1, 1, 1), plan_kw={"factor": 1.7, "seed": 2}),
        widen_claim("ones and zeros sized by literals meet a space: replicas get the same constant, the literals "
                    "follow (2 -> 3)", ConstantNet(), x, plan_kw={"factor": 1.5, "seed": 4}),
        *aten_claims("ones and zeros sized by literals meet a space: replicas get the same constant, the literals "
                    "follow (2 -> 3)", ConstantNet(), x, plan_kw={"factor": 1.5, "seed": 4}, core=False)]


@proof("embedding")
def embedding() -> list[Claim]:
    """A looked-up table row is copied through g like a producer's output (no division)."""
    x = torch.randn(1, 3, 3)
    claims = [widen_claim(f"embedding rows (nn.Embedding, F.embedding on its table) added to a hidden space (2 -> {w})",
                          EmbedNet(), x,
                          plan_kw={"widths": {"emb": w}, "seed": 2}) for w in (3, 5)]
    # tied: the head reads the looked-up table undivided; the gain and shift before it are divided
    claims += [widen_claim("tied table, head input h * gain + shift: gain and shift divided by replica counts, "
                           "the table kept one tensor (2 -> 3, non-uniform)", TiedNet(), x,
                           plan_kw={"factor": 1.5, "seed": 1}),
        *aten_claims("tied table, head input h * gain + shift: gain and shift divided by replica counts, "
                           "the table kept one tensor (2 -> 3, non-uniform)", TiedNet(), x,
                           plan_kw={"factor": 1.5, "seed": 1}),
               widen_claim("tied table behind a LayerNorm (GPT-2's ln_f): its weight and bias divided (2 -> 4)",
                           TiedNet(norm=True), x, plan_kw={"factor": 2.0, "seed": 2})]
    claims.append(broken_claim("a tied table replicated with nothing divided counts every replica in the head's "
                               "sum: the logits change", _naive_tie(TiedNet(), x)))
    return claims


def _naive_tie(model: nn.Module, x: torch.Tensor) -> list[Any]:
    """teacher - student when the tie is kept but the gains are not divided (the naive tie)."""
    plan = n2n_fx.plan(model.double(), x.double(), factor=1.5, seed=1)
    for tie in plan.analysis.tied_heads:
        for gain in tie.gains:
            plan.analysis.roles[gain].discard(Role.DIVIDE)
    params = sym.teacher_params(plan.analysis.gm)
    sx = sym.symbols_like("x", tuple(x.shape))
    t_out = sym.run(plan.analysis.gm, params, (sx,))
    return sym.difference(t_out, sym.run(n2n_fx.apply_plan(plan), sym.student_params(plan, params), (sx,)))


@proof("space_to_depth")
def space_to_depth() -> list[Claim]:
    """Patch merging: the channel axis becomes 4 copies of the input layout, each widened by one g."""
    x = torch.randn(1, 2, 2, 3)
    return [widen_claim(f"Swin patch merging of a widened space (2 -> {w}, channels 8 -> {4 * w})", PatchNet(), x,
                        plan_kw={"widths": {"a": w}, "seed": 4}) for w in (3, 4)]


@proof("attention_heads")
def attention_heads() -> list[Claim]:
    """Whole heads duplicated: a copy's q, k, v rows are its teacher head's, so its softmax and output
    are too; the output projection divides by the copies. head_dim (and its scale) never changes."""
    x = torch.randn(1, 2, 3)
    claims = [widen_claim(f"self-attention, batch_first={bf}, embed 4 -> {2 * k}, heads 2 -> {k} (seed {seed})",
                          AttnNet(bf), x if bf else x.transpose(0, 1), plan_kw={"factor": k / 2, "seed": seed})
              for bf, k, seed in ((True, 4, 0), (True, 3, 1), (False, 4, 2))]
    claims += [widen_claim(f"F.scaled_dot_product_attention, causal, heads 2 -> {k} split by a view (seed {seed})",
                           SdpaNet(), torch.randn(1, 2, 3), plan_kw={"factor": k / 2, "seed": seed})
               for k, seed in ((4, 0), (3, 5))]
    claims.append(widen_claim("grouped-query sdpa: 2 key/value heads -> 3, each with its 2 query heads",
                              GqaNet(), torch.randn(1, 2, 3), plan_kw={"factor": 1.5, "seed": 2}))
    claims.append(widen_claim("fused q | k | v and gate | up rows cut by constant slices (GQA): 1 key/value head "
                              "-> 2, each piece widened on its own, the student's bounds its new offsets",
                              FusedSliceNet(), torch.randn(1, 2, 3), plan_kw={"factor": 2.0, "seed": 3}))
    claims.append(widen_claim("packed qkv viewed as (3, heads, head_dim) and unbound: heads 2 -> 3, one map for "
                              "q, k and v", PackedQkvNet(), torch.randn(1, 2, 3), plan_kw={"factor": 1.5, "seed": 4}))
    claims += [widen_claim(f"bmm attention, heads folded into the batch (batch {b}): heads 2 -> 3, the output "
                           "projection a bmm of a broadcast weight", BmmNet(), torch.randn(b, 2, 3),
                           plan_kw={"factor": 1.5, "seed": 5}) for b in (1, 2)]
    claims += aten_claims("bmm attention, heads folded into the batch (batch 2): heads 2 -> 3", BmmNet(),
                          torch.randn(2, 2, 3), core=False, plan_kw={"factor": 1.5, "seed": 5})
    claims.append(widen_claim("torchvision Swin shifted-window attention (two windows, the shift's mask): heads "
                              "2 -> 3, the relative position bias table copied with its heads", SwinNet(),
                              torch.randn(1, 1, 4, 3), plan_kw={"factor": 1.5, "seed": 6}))
    claims.append(widen_claim("torchvision MaxViT relative positional attention (4 tokens): heads 2 -> 3, the bias "
                              "table copied with its heads", MaxVitNet(), torch.randn(1, 1, 4, 3),
                              plan_kw={"factor": 1.5, "seed": 7}))
    a, b, c, d = sympy.symbols("a b c d", real=True)
    teacher = (a * c + b * d) / sympy.sqrt(2)  # one head, head_dim 2: a score
    student = (a * c / 2 + a * c / 2 + b * d) / sympy.sqrt(3)  # q dim 0 copied, k halved: head_dim 3
    claims.append(broken_claim("widening inside a head (head_dim 2 -> 3) changes the 1/sqrt(head_dim) scale",
                               sym.difference(np.array([teacher]), np.array([student]))))
    mixed = (a * d + b * c) / sympy.sqrt(2)  # q of one head against k rows of another map
    claims.append(broken_claim("q and k rows of a head under different maps change the score",
                               sym.difference(np.array([teacher]), np.array([mixed]))))
    # fused rows (a, b | c, d) widened as one 4-unit space by g = [0, 1, 2, 3, 0, 2], then cut in halves:
    # q' = (a, b, c), k' = (d, a, c); each piece must be its own space, cut at the teacher's bounds
    fused = (a * d + b * a + c * c) / sympy.sqrt(3)
    claims.append(broken_claim("one map over a fused q | k axis, ignoring the bound between them, mixes q and k rows",
                               sym.difference(np.array([teacher]), np.array([fused]))))
    try:
        n2n_fx.plan(AttnNet(), x, widths={"a": 5})
        refused = False
    except n2n_fx.ConstraintError:
        refused = True
    claims.append(Claim("the planner refuses an embed width off the head_dim grid (5 with head_dim 2)", refused))
    return claims + wider_heads()


def wider_heads() -> list[Claim]:
    """heads='dim': the heads stay, head_dim d -> d' by g. Every q and k row of unit j is scaled by
    f = sqrt(r / c_j), r = s / s' (teacher's scale over the student's: sqrt(d'/d) where sdpa derives
    1/sqrt(head_dim), 1 where the scale is a literal the student keeps): the c_j replicas add
    c_j f^2 q_j k_j s' = s q_j k_j, the teacher's score. v rows sharing the space carry f too, and
    their consumer's columns divide by c f instead of c."""
    x = torch.randn(1, 2, 3)
    claims = [widen_claim(f"wider heads: sdpa head_dim 2 -> {d}, heads kept, {what} (seed {seed})", SdpaNet(scale),
                          x, plan_kw={"widths": {"a": 3, "q.head_dim": d, "v.head_dim": d}, "heads": "dim", "seed": seed})
              for d, scale, what, seed in ((3, None, "the derived scale 1/sqrt(3)", 0), (4, None, "every unit twice", 1),
                                           (3, 0.7, "a literal scale kept", 2))]
    # (a literal scale here: the derived one is proved above; its fourth roots cost this model minutes)
    claims.append(widen_claim("wider heads on packed qkv (3, heads, head_dim): q, k and v share the space, the output "
                              "projection divides by c f", PackedQkvNet(0.5), x,
                              plan_kw={"factor": 1.5, "heads": "dim", "seed": 3}))
    claims += aten_claims("wider heads: sdpa head_dim 2 -> 3", SdpaNet(), x, core=False,
                          plan_kw={"factor": 1.5, "heads": "dim", "seed": 4})
    a, b, c, d, o = sympy.symbols("a b c d o", real=True)
    s = 1 / sympy.sqrt(2)  # head_dim 2 -> 3, unit 0 twice: r = sqrt(3/2)
    r, teacher = sympy.sqrt(sympy.Rational(3, 2)), (a * c + b * d) / sympy.sqrt(2)
    f0, f1 = sympy.sqrt(r / 2), sympy.sqrt(r)
    exact = (f0 * a * f0 * c * 2 + f1 * b * f1 * d) / sympy.sqrt(3)
    claims.append(Claim("q and k rows scaled by sqrt(r / c) give the teacher's score at 1/sqrt(3)",
                        not sym.difference(np.array([teacher]), np.array([exact]))))
    literal = (f0 * a * f0 * c * 2 + f1 * b * f1 * d) * s  # the derived r where the scale is a kept literal
    claims.append(broken_claim("r = sqrt(d'/d) where the student keeps the teacher's literal scale changes the score",
                               sym.difference(np.array([teacher]), np.array([literal]))))
    one = (a * c / 2 + a * c / 2 + b * d) * sympy.sqrt(2) / sympy.sqrt(3) * s  # k divided, no r: 1/sqrt(3) left
    claims.append(broken_claim("k rows divided by the counts without r: the new 1/sqrt(3) remains",
                               sym.difference(np.array([teacher]), np.array([one]))))
    claims.append(broken_claim("v rows carrying f under consumer columns divided by c alone scale the output by f",
                               sym.difference(np.array([o * a]), np.array([2 * (o / 2) * (f0 * a)]))))
    return claims


@proof("stop")
def stop() -> list[Claim]:
    """Why the stop entries stop: normalisations and softmax over a space are not preserved."""
    a, b = sympy.symbols("a b", real=True)
    teacher, student = [a, b], [a, a, b]  # unit a replicated once: non-uniform
    mean_t, mean_s = sum(teacher) / 2, sum(student) / 3
    claims = [broken_claim("mean over a non-uniformly widened space changes (LayerNorm, RMSNorm)",
                           sym.difference(np.array([mean_t]), np.array([mean_s])))]
    uniform = [a, a, b, b]
    var = lambda u: sum((t - sum(u) / len(u)) ** 2 for t in u) / len(u)  # noqa: E731
    claims.append(Claim("uniform k-fold replication keeps mean and variance (the LayerNorm constraint)",
                        not sym.difference(np.array([mean_t, var(teacher)]),
                                           np.array([sum(uniform) / 4, var(uniform)]))))
    soft_t = sympy.exp(a) / (sympy.exp(a) + sympy.exp(b))
    soft_s = sympy.exp(a) / (2 * sympy.exp(a) + sympy.exp(b))
    claims.append(broken_claim("softmax over a widened space changes (replicas count twice)",
                               sym.difference(np.array([soft_t]), np.array([soft_s]))))
    return claims


# ------------------------------------------------------------------------------ U-Net ops (issue 15)
def _affine(model: nn.Module) -> nn.Module:
    """Norm gains and running statistics away from their defaults (a copy through g must show)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        for name in ("weight", "bias", "running_mean"):
            t = getattr(m, name, None)
            if isinstance(m, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU)) and t is not None:
                t.data = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if isinstance(getattr(m, "running_var", None), torch.Tensor):
            m.running_var.data = 0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype)
    return model


class GroupNormNet(nn.Module):
    """conv -> GroupNorm (module or functional) -> activation -> conv."""

    def __init__(self, groups: int, functional: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.groups, self.functional = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1), groups, functional
        self.norm = nn.GroupNorm(groups, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = F.group_norm(h, self.groups, self.norm.weight, self.norm.bias) if self.functional else self.norm(h)
        return self.b(F.silu(h))


class TwoGroupNorms(nn.Module):
    """One space under GroupNorms of 2 and 3 groups (groups of 3 and of 2 channels): it grows by
    blocks of lcm(3, 2) = 6 channels, whole groups of both."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.n2, self.n3, self.b = nn.Conv2d(1, 6, 1), nn.GroupNorm(2, 6), nn.GroupNorm(3, 6), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(self.n2(h) + self.n3(h))


class InstanceNormNet(nn.Module):
    """functional: False (the module), True (F.instance_norm) or "torch" (torch.instance_norm)."""

    def __init__(self, functional: bool | str = False, dims: int = 2) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        norm = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1]
        self.a, self.b, self.functional = conv(2, 3, 1), conv(3, 2, 1), functional
        self.norm = norm(3, affine=True, track_running_stats=not functional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.functional == "torch":
            h = torch.instance_norm(h, self.norm.weight, self.norm.bias, None, None, True, 0.1, 1e-5, False)
        elif self.functional:
            h = F.instance_norm(h, weight=self.norm.weight, bias=self.norm.bias)
        else:
            h = self.norm(h)
        return self.b(torch.relu(h))


class PReLUNet(nn.Module):
    def __init__(self, slopes: int, functional: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.functional = nn.Conv2d(2, 3, 1), nn.Conv2d(3, 2, 1), functional
        self.act = nn.PReLU(slopes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(F.prelu(h, self.act.weight) if self.functional else self.act(h))


class ConvTransposeNet(nn.Module):
    def __init__(self, dims: int = 2, groups: int = 1, mult: int = 1, functional: bool = False) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        self.a, self.b, self.functional = conv(2, 3, 1), conv(3 * mult, 2, 1), functional
        depthwise = groups > 1
        self.up = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1](
            3, 3 * mult, 2 if depthwise else 3, stride=2, padding=0 if depthwise else 1,
            output_padding=0 if depthwise else 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        if self.functional:
            h = F.conv_transpose2d(h, self.up.weight, self.up.bias, 2, 1, 1)
        else:
            h = self.up(h)
        return self.b(torch.tanh(h))


class PixelShuffleNet(nn.Module):
    """Sub-pixel upsampling (conv to C*r^2, pixel_shuffle) and its inverse (pixel_unshuffle, conv)."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c, self.functional = nn.Conv2d(2, 8, 1), nn.Conv2d(2, 3, 1), nn.Conv2d(12, 2, 1), functional
        self.shuffle, self.unshuffle = nn.PixelShuffle(2), nn.PixelUnshuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h = F.pixel_shuffle(h, 2) if self.functional else self.shuffle(h)
        h = torch.tanh(self.b(h))
        return self.c(F.pixel_unshuffle(h, 2) if self.functional else self.unshuffle(h))


class StraddleNet(nn.Module):
    """A group that straddles a concat of two spaces (2 + 6 channels, groups of 4): its channels
    come from two maps."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.norm, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 6, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.norm(torch.cat([self.a(x), self.c(x)], dim=1)))


def _frozen_codes(model: nn.Module, x: torch.Tensor) -> set[str]:
    return {p.reasons[0].code for p in n2n_fx.plan(model, x).spaces if p.reasons}


@proof("group_norm")
def group_norm() -> list[Claim]:
    """A copied group brings all C/G channels of its teacher group: its mean and variance (over its
    channels and positions) are the teacher's; per-group size and eps stay."""
    x = torch.randn(1, 2, 1, 2)
    claims = [widen_claim(f"GroupNorm({g}, 4){' (F.group_norm)' if fn else ''}: groups {g} -> {q}, channels 4 -> "
                          f"{4 * q // g}, num_groups rewritten", _affine(GroupNormNet(g, fn)), x,
                          plan_kw={"factor": q / g, "seed": seed})
              for g, q, fn, seed in ((2, 3, False, 1), (2, 4, True, 2), (1, 2, False, 3), (4, 6, False, 4))]
    claims += aten_claims("GroupNorm(2, 4): groups 2 -> 3", _affine(GroupNormNet(2, False)), x,
                          plan_kw={"factor": 1.5, "seed": 1})
    chans = sym.symbols_like("h", (1, 4, 1, 2))  # groups (h0, h1), (h2, h3)
    teacher = sym.group_norm(chans, 2, None, None, 1e-5)
    per_channel = sym.group_norm(np.take(chans, [0, 1, 2, 3, 0, 2], axis=1), 3, None, None, 1e-5)
    claims.append(broken_claim("per-channel replication that splits groups (g = [0, 1, 2, 3, 0, 2], 3 groups of 2): "
                               "the new group (h0, h2) normalises h0 by other statistics",
                               sym.difference(teacher[:, 0], per_channel[:, 4])))
    claims.append(widen_claim("GroupNorms of groups of 3 and of 2 channels on one map: blocks of 6 channels (6 -> 12)",
                              _affine(TwoGroupNorms()), torch.randn(1, 1, 1, 2), plan_kw={"factor": 2.0}))
    claims.append(Claim("a group straddling a concat of two spaces (2 + 6 channels, groups of 4) freezes them",
                        "constraint" in _frozen_codes(StraddleNet(), torch.randn(1, 1, 1, 2))))
    return claims


@proof("instance_norm")
def instance_norm() -> list[Claim]:
    claims = [widen_claim("InstanceNorm2d eval: running statistics, weight and bias copied through g (3 -> 5)",
                          _affine(InstanceNormNet()).eval(), torch.randn(1, 2, 1, 2), plan_kw={"factor": 1.7, "seed": 1}),
              widen_claim("InstanceNorm2d train (batch 2): a replicated channel has its teacher's per-sample statistics",
                          _affine(InstanceNormNet()).train(), torch.randn(2, 2, 1, 2), training=True,
                          plan_kw={"factor": 1.7, "seed": 2}),
              widen_claim("F.instance_norm with affine parameters (batch 2)", _affine(InstanceNormNet(True)),
                          torch.randn(2, 2, 1, 2), plan_kw={"factor": 1.7, "seed": 3}),
              widen_claim("torch.instance_norm (batch 2)", _affine(InstanceNormNet("torch")), torch.randn(2, 2, 1, 2),
                          plan_kw={"factor": 1.7, "seed": 4})]
    claims += [widen_claim(f"InstanceNorm{d}d (batch 2, per-sample statistics)", _affine(InstanceNormNet(dims=d)),
                           torch.randn(2, 2, *([2] * d)), plan_kw={"factor": 1.7, "seed": 4 + d}) for d in (1, 3)]
    # core ATen spells it as a batch norm over a repeated view, which freezes: the export form only
    claims += aten_claims("InstanceNorm2d eval", _affine(InstanceNormNet()).eval(), torch.randn(1, 2, 1, 2), core=False,
                          plan_kw={"factor": 1.7, "seed": 1})
    return claims


@proof("prelu")
def prelu() -> list[Claim]:
    x = torch.randn(1, 2, 1, 2)
    claims = [widen_claim(f"PReLU({n}){' (F.prelu)' if fn else ''}: {'slopes copied through g' if n > 1 else 'one slope shared'}"
                          " (3 -> 5)", _affine(PReLUNet(n, fn)), x, concrete=True, plan_kw={"factor": 1.7, "seed": seed})
              for n, fn, seed in ((3, False, 1), (1, False, 2), (3, True, 3))]
    # core ATen spells it as where(x > 0, x, a * x): the export form only
    claims += aten_claims("PReLU(3)", _affine(PReLUNet(3, False)), x, core=False, concrete=True,
                          plan_kw={"factor": 1.7, "seed": 1})
    a, b = sympy.symbols("a b", real=True)
    v = np.array([[sympy.Integer(-1)]], dtype=object)  # a negative input, where the slope acts
    claims.append(broken_claim("a replica given another unit's slope changes its output at v = -1",
                               sym.difference(sym.prelu(v, np.array([a], dtype=object)),
                                              sym.prelu(v, np.array([b], dtype=object)))))
    return claims


@proof("conv_transpose")
def conv_transpose() -> list[Claim]:
    """ConvTranspose's weight is (C_in, C_out/groups, *k): rows are contracted (gathered and divided
    by replica counts), columns produced (copied); stride, padding, output_padding act on positions."""
    claims = [widen_claim("ConvTranspose2d k=3, stride 2, padding 1, output_padding 1 (3 -> 5 in and out)",
                          ConvTransposeNet(), torch.randn(1, 2, 2, 2), plan_kw={"factor": 1.7, "seed": 1}),
              widen_claim("F.conv_transpose2d with the same weights", ConvTransposeNet(functional=True),
                          torch.randn(1, 2, 2, 2), plan_kw={"factor": 1.7, "seed": 2}),
              widen_claim("depthwise ConvTranspose2d (groups = C_in = 3, multiplier 2): the space passes through",
                          ConvTransposeNet(groups=3, mult=2), torch.randn(1, 2, 1, 2), plan_kw={"factor": 1.7, "seed": 3}),
              widen_claim("ConvTranspose1d and ConvTranspose3d", ConvTransposeNet(dims=1), torch.randn(1, 2, 2),
                          plan_kw={"factor": 1.7, "seed": 4}),
              widen_claim("ConvTranspose3d", ConvTransposeNet(dims=3), torch.randn(1, 2, 1, 1, 2),
                          plan_kw={"factor": 1.7, "seed": 5}),
              *aten_claims("ConvTranspose2d k=3, stride 2", ConvTransposeNet(), torch.randn(1, 2, 2, 2),
                           plan_kw={"factor": 1.7, "seed": 1})]
    h, w = sym.symbols_like("h", (1, 2)), sym.symbols_like("W", (2, 2))  # a 1x1 transposed conv: h @ W
    g = [0, 1, 0]
    claims.append(broken_claim("the conv rule on a transposed weight (its input rows copied, not divided) counts "
                               "replicas twice", sym.difference(h @ w, np.take(h, g, axis=1) @ np.take(w, g, axis=0))))
    return claims


@proof("pixel_shuffle")
def pixel_shuffle() -> list[Claim]:
    """pixel_shuffle reads input channel c*r^2 + k as output channel c at block offset k: a space on
    its input moves whole blocks of r^2 channels (a stride map); pixel_unshuffle is the inverse."""
    claims = [widen_claim(f"conv -> pixel_shuffle(2) -> conv -> pixel_unshuffle(2) -> conv{' (F.*)' if fn else ''}: "
                          "blocks of 4 channels copied whole", PixelShuffleNet(fn), torch.randn(1, 2, 1, 2),
                          plan_kw={"factor": 1.5, "seed": seed}) for fn, seed in ((False, 1), (True, 2))]
    # core ATen spells both as views and permutes, which freeze the channels: the export form only
    claims += aten_claims("pixel_shuffle / pixel_unshuffle", PixelShuffleNet(False), torch.randn(1, 2, 1, 2), core=False,
                          plan_kw={"factor": 1.5, "seed": 1})
    c = sym.symbols_like("c", (1, 4, 1, 1))
    claims.append(broken_claim("copying one channel of a block (g = [0, 1, 2, 3, 0, 0, 0, 0]) makes an output "
                               "channel that is no teacher channel",
                               sym.difference(sym.pixel_shuffle(c, 2)[:, 0],
                                              sym.pixel_shuffle(np.take(c, [0, 1, 2, 3, 0, 0, 0, 0], axis=1), 2)[:, 1])))
    return claims
