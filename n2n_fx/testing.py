"""Hypothesis strategies over random architectures, for this project's tests and for users'.

    from hypothesis import given
    from n2n_fx.testing import architectures

    @given(architectures())
    def test_my_growth_step(arch):
        model, x = arch.build()
        ...

An architecture is a small program over a list of feature maps (N, C, H, W): each step reads
earlier maps and appends one or two. Shrunk failures print the program, one step a line.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU,
               "sigmoid": nn.Sigmoid, "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU}


@dataclass(frozen=True)
class Arch:
    in_channels: int
    size: int
    steps: tuple[tuple, ...]
    head: str  # "flatten" (stride map into Linear), "mean", "merge" (Swin's patch merging, then mean), "tied", "tied_shared"
    classes: int = 3
    # fidelity: what runs besides the steps, which the traced graph must hold too
    hooks: tuple[tuple[int, str], ...] = ()  # (step, kind): a hook from HOOKS on that step's module
    normalize_input: bool = False  # (x - mean) / std with registered buffers, as input pipelines do
    cache: bool = False  # forward writes its last map into a Python dict and counts its calls
    train: bool = False  # the teacher is in train mode (growing mid-training)

    def __repr__(self) -> str:
        extras = [f"{k}={getattr(self, k)}" for k in ("hooks", "normalize_input", "cache", "train") if getattr(self, k)]
        lines = [f"Arch(in={self.in_channels}, size={self.size}, head={self.head}{''.join(', ' + e for e in extras)}):"]
        lines += [f"  m{i + 1} = {step}" for i, step in enumerate(self.steps)]
        return "\n".join(lines)

    def build(self, dtype: torch.dtype = torch.float64, batch: int = 3, seed: int = 0):
        torch.manual_seed(seed)
        model = ArchNet(self).to(dtype).eval()
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        for step, kind in self.hooks:
            module = model.layers[str(step)]
            if kind.startswith("pre_"):
                module.register_forward_pre_hook(HOOKS[kind])
            else:
                module.register_forward_hook(HOOKS[kind])
        model.train(self.train)
        return model, torch.randn(batch, self.in_channels, self.size, self.size, dtype=dtype)


def _hook_scale(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out * 1.5 + 0.25


def _hook_centre(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out - out.mean(1, keepdim=True)  # a mean over the channels: what the inference must see


def _hook_flip(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out.flip(1)  # reverses the channels: not elementwise


def _pre_hook_scale(module: nn.Module, args: tuple) -> tuple:
    return (args[0] * 0.5, *args[1:])


HOOKS = {"scale": _hook_scale, "centre": _hook_centre, "flip": _hook_flip, "pre_scale": _pre_hook_scale}


class ArchNet(nn.Module):
    """Interprets an Arch: the loop unrolls under symbolic_trace (the program is static)."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        self.layers = nn.ModuleDict()
        self.sizes: dict[int, list[int]] = {}
        chans = [arch.in_channels]
        for i, step in enumerate(arch.steps):
            op = step[0]
            if op == "conv":
                _, src, cout, k, groups = step
                self.layers[str(i)] = nn.Conv2d(chans[src], cout, k, padding=k // 2, groups=groups)
                chans.append(cout)
            elif op == "bn_act":
                _, src, act = step
                self.layers[str(i)] = nn.Sequential(nn.BatchNorm2d(chans[src]), ACTIVATIONS[act]())
                chans.append(chans[src])
            elif op == "gate":
                _, src, hidden = step
                self.layers[str(i)] = nn.Sequential(nn.Conv2d(chans[src], hidden, 1), nn.ReLU(),
                                                    nn.Conv2d(hidden, chans[src], 1))
                chans.append(chans[src])
            elif op in ("add", "mul"):
                chans.append(chans[step[1]])
            elif op == "cat":
                chans.append(sum(chans[s] for s in step[1]))
            elif op == "chunk":
                half = chans[step[1]] // 2
                self.sizes[i] = [half, chans[step[1]] - half]  # literal sizes: the student rewrites them
                chans += self.sizes[i]
            elif op in ("pool", "shuffle"):
                chans.append(chans[step[1]])
            elif op == "norm":  # channels-last LayerNorm / RMSNorm, as in ConvNeXt
                _, src, kind = step
                self.layers[str(i)] = nn.LayerNorm(chans[src]) if kind == "layer" else nn.RMSNorm(chans[src])
                chans.append(chans[src])
            elif op == "attention":  # self-attention over the positions, channels as features
                _, src, heads = step
                self.layers[str(i)] = nn.MultiheadAttention(chans[src], heads, batch_first=True)
                chans.append(chans[src])
            elif op == "sdpa":  # the same, written with projections, a heads view and F.sdpa
                _, src, heads, fused = step
                c = chans[src]
                # separate q, k, v; or one fused Linear cut by constant slices (Phi-3) or packed as
                # (3, heads, head_dim) and unbound (timm's ViT)
                projections = [nn.Linear(c, c) for _ in range(4)] if fused == "none" else [nn.Linear(c, 3 * c), nn.Linear(c, c)]
                self.layers[str(i)] = nn.ModuleList(projections)
                self.sizes[i] = [heads, c // heads, c]  # c: the literal bounds of a fused projection's slices
                chans.append(c)
            elif op == "slices":  # a map cut by constant bounds into two pieces, each its own map
                _, src, cut, _ = step
                self.sizes[i] = [cut, chans[src] - cut]
                chans += self.sizes[i]
            elif op == "narrow":  # a literal slice over the whole channel axis: the student rewrites it
                chans.append(chans[step[1]])
            elif op == "wread":  # a 1x1 conv whose output is scaled by a reduction of its own weight
                _, src, cout, _ = step
                self.layers[str(i)] = nn.Conv2d(chans[src], cout, 1)
                chans.append(cout)
            elif op == "position":  # a position table looked up by fixed ids, broadcast over the batch
                self.layers[str(i)] = nn.Embedding(arch.size * arch.size, chans[step[1]])
                self.register_buffer(f"ids{i}", torch.arange(arch.size * arch.size))
                chans.append(chans[step[1]])
        if arch.normalize_input:
            self.register_buffer("in_mean", torch.linspace(-0.5, 0.5, arch.in_channels))
            self.register_buffer("in_std", torch.linspace(0.5, 2.0, arch.in_channels))
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.out_channels = chans[-1]
        self.chans = chans
        if arch.head == "merge":  # 2x2 patches into 4 copies of the channels, reduced back by a Linear
            self.merge = nn.Linear(4 * chans[-1], chans[-1])
        if arch.head in ("tied", "tied_shared"):  # a table looked up into the last map, reused as the head's matrix
            self.tied = nn.Embedding(arch.size * arch.size, chans[-1])
            self.gain, self.shift = nn.Parameter(torch.rand(chans[-1]) + 0.5), nn.Parameter(torch.randn(chans[-1]))
            self.register_buffer("tied_ids", torch.arange(arch.size * arch.size))
        feat = chans[-1] * (arch.size * arch.size if arch.head == "flatten" else 1)
        self.fc1 = nn.Linear(feat, 5)
        self.fc2 = nn.Linear(5, arch.classes)

    def sizes_of(self, k: int) -> int:
        """The teacher's channel count of map k: a literal in the traced graph."""
        return self.chans[k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch.normalize_input:
            x = (x - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)
        maps = [x]
        for i, step in enumerate(self.arch.steps):
            op = step[0]
            if op in ("conv", "bn_act"):
                maps.append(self.layers[str(i)](maps[step[1]]))
            elif op == "gate":
                src = maps[step[1]]
                maps.append(src * torch.sigmoid(self.layers[str(i)](F.adaptive_avg_pool2d(src, 1))))
            elif op == "add":
                maps.append(maps[step[1]] + maps[step[2]])
            elif op == "mul":
                maps.append(maps[step[1]] * maps[step[2]])
            elif op == "cat":
                maps.append(torch.cat([maps[s] for s in step[1]], dim=1))
            elif op == "chunk":
                a, b = torch.split(maps[step[1]], self.sizes[i], dim=1)
                maps += [a, b]
            elif op == "pool":
                maps.append(F.avg_pool2d(maps[step[1]], 3, 1, 1))
            elif op == "norm":
                maps.append(self.layers[str(i)](maps[step[1]].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            elif op == "attention":
                y = maps[step[1]]
                n, c, h, w = y.shape
                tokens = y.flatten(2).transpose(1, 2)
                out = self.layers[str(i)](tokens, tokens, tokens, need_weights=False)[0]
                maps.append(out.transpose(1, 2).reshape(n, -1, h, w))  # -1: the output is its own space
            elif op == "sdpa":
                y = maps[step[1]]
                n, c, h, w = y.shape
                heads, head_dim, c = self.sizes[i]
                *qkv, proj = self.layers[str(i)]
                t = y.flatten(2).transpose(1, 2)
                if step[3] == "packed":
                    q, k, v = qkv[0](t).reshape(n, h * w, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
                    split = [q, k, v]
                else:
                    f = qkv[0](t)
                    parts = [p(t) for p in qkv] if step[3] == "none" else [f[..., :c], f.narrow(-1, c, c), f[:, :, 2 * c:]]
                    split = [p.view(n, h * w, heads, head_dim).transpose(1, 2) for p in parts]
                a = F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(n, h * w, -1)
                maps.append(proj(a).transpose(1, 2).reshape(n, -1, h, w))
            elif op == "slices":
                y, (cut, rest) = maps[step[1]], self.sizes[i]
                if step[3] == "narrow":
                    maps += [y.narrow(1, 0, cut), y.narrow(1, cut, rest)]
                else:
                    maps += [y[:, :cut], y[:, cut:]]
            elif op == "position":
                y = maps[step[1]]
                n, c, h, w = y.shape
                table = self.layers[str(i)](getattr(self, f"ids{i}")).t().reshape(1, -1, h, w)
                maps.append(y + table.expand(n, -1, -1, -1))
            elif op == "narrow":
                y, c, how = maps[step[1]], self.sizes_of(step[1]), step[2]
                if how == "narrow":
                    maps.append(torch.narrow(y, 1, 0, c))
                elif how == "slice":
                    maps.append(y[:, :c])
                else:
                    maps.append(y[:, -c:])
            elif op == "wread":  # reads the contracted (input-channel) axis: that space must freeze
                conv = self.layers[str(i)]
                w = conv.weight
                maps.append(conv(maps[step[1]]) * (w.amax() if step[3] == "amax" else w.mean()))
            elif op == "shuffle":  # ShuffleNet's channel shuffle with 2 groups
                y = maps[step[1]]
                n, c, h, w = y.shape
                maps.append(y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w))
        y = maps[-1]
        if self.arch.cache:  # Python state written during forward (tracing must not reach the teacher's)
            self.cache["last"] = y
            self.calls += 1
        if self.arch.head in ("tied", "tied_shared"):  # logits over the table's rows: gain and shift
            n, c, h, w = y.shape                           # take the division, unless read elsewhere too
            y = y + self.tied(self.tied_ids).t().reshape(1, -1, h, w)
            if self.arch.head == "tied_shared":
                y = y * self.gain.view(1, -1, 1, 1)
            return F.linear(y.mean((2, 3)) * self.gain + self.shift, self.tied.weight)
        if self.arch.head == "merge":
            from torchvision.models.swin_transformer import _patch_merging_pad

            y = self.merge(_patch_merging_pad(y.permute(0, 2, 3, 1))).mean((1, 2))
        else:
            y = torch.flatten(y, 1) if self.arch.head == "flatten" else y.mean((2, 3))
        return self.fc2(F.relu(self.fc1(y)))


def _state(value: Any, depth: int = 0, values: bool = True) -> Any:
    """A comparable picture of a Python value: containers by content, tensors by identity, storage,
    version counter and a copy of their values, anything else by type and identity."""
    if isinstance(value, torch.Tensor):
        data = None if value.device.type == "meta" or not values else value.detach().clone()
        ptr = None if value.device.type == "meta" else value.untyped_storage().data_ptr()
        return ("tensor", id(value), ptr, value._version, value.dtype, tuple(value.shape), value.requires_grad,
                id(value.grad) if value.grad is not None else None, _TensorValue(data))
    if depth > 4:
        return (type(value).__name__, id(value))
    if isinstance(value, dict):
        return ("dict", id(value), tuple((repr(k), _state(v, depth + 1, values)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return (type(value).__name__, id(value), tuple(_state(v, depth + 1, values) for v in items))
    if isinstance(value, (int, float, str, bool, type(None), torch.dtype, torch.device)):
        return value
    if not isinstance(value, (nn.Module, type)) and not callable(value) and hasattr(value, "__dict__"):
        # plain objects (a Hugging Face config, a settings holder): by their attributes too
        return (type(value).__name__, id(value), _state(vars(value), depth + 1, values))
    return (type(value).__name__, id(value))


class _TensorValue:
    """Compares tensor contents exactly (NaNs equal to NaNs in the same places)."""

    def __init__(self, data: torch.Tensor | None) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _TensorValue) or (self.data is None) != (other.data is None):
            return False
        return self.data is None or torch.equal(self.data.nan_to_num(0.0), other.data.nan_to_num(0.0)) \
            and torch.equal(self.data.isnan(), other.data.isnan())

    def __repr__(self) -> str:
        return "<values>"


def fingerprint(model: nn.Module, values: bool = True) -> dict[str, Any]:
    """Everything about a module tree that a call could change: every module's Python attributes
    (caches, counters, hook dicts, training flags), and every parameter's and buffer's identity,
    storage, version counter, dtype, shape and values (`values=False`: no copy of the values, for
    models too big to copy; the version counters still see every in-place write). Compare two with
    `assert_untouched`."""
    return {name or "<root>": {k: _state(v, 0, values) for k, v in vars(m).items()}
            for name, m in model.named_modules(remove_duplicate=False)}


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    """AssertionError naming the first module attribute that differs from `before`."""
    after = fingerprint(model)
    assert set(after) == set(before), f"modules changed: {sorted(set(after) ^ set(before))}"
    for name, attrs in before.items():
        assert set(attrs) == set(after[name]), f"{name}: attributes changed: {sorted(set(attrs) ^ set(after[name]))}"
        for key, value in attrs.items():
            assert after[name][key] == value, f"{name}.{key} changed"


def assert_independent(teacher: nn.Module, student: nn.Module) -> None:
    """AssertionError if any tensor of `student` shares storage with one of `teacher`."""
    from .frontend import _storage

    def storages(m: nn.Module) -> dict[int, str]:
        named = (*m.named_parameters(remove_duplicate=False), *m.named_buffers(remove_duplicate=False))
        return {_storage(t): name for name, t in named if t.numel() and _storage(t) is not None}

    shared = storages(teacher).keys() & storages(student).keys()
    assert not shared, f"student tensors share storage with the teacher's: {[storages(student)[p] for p in shared]}"


@st.composite
def architectures(draw, max_steps: int = 8, activations: tuple[str, ...] = tuple(ACTIVATIONS)) -> Arch:
    """Random DAGs: convs (grouped, depthwise), BN + activation, residual add, gating mul,
    squeeze-excitation, concat, channel split, channel shuffle, pooling, channels-last LayerNorm /
    RMSNorm, multi-head self-attention over positions (nn.MultiheadAttention, or projections, a
    heads view and F.scaled_dot_product_attention; q, k, v as separate projections or one fused
    Linear cut by constant slices or packed as (3, heads, head_dim) and unbound), a position-embedding
    table, literal narrows and slices over the whole channel axis, a map cut by constant slices into
    two pieces, a conv scaled by a reduction of its own weight; a flatten,
    mean, patch-merging or tied head (a table looked up into the last map and reused as the head's
    matrix behind a per-unit gain and shift, the gain possibly read a second time). Around them: forward hooks and pre-hooks on modules (elementwise, a
    mean over channels, a channel flip), buffer normalisation of the input, a Python cache written in
    forward, and teachers in train mode."""
    in_ch = draw(st.integers(1, 3))
    size = draw(st.sampled_from([2, 3, 4]))
    chans: list[int] = [in_ch]
    steps: list[tuple] = []
    for _ in range(draw(st.integers(1, max_steps))):
        n = len(chans)
        src = draw(st.integers(0, n - 1))
        op = draw(st.sampled_from(["conv", "conv", "bn_act", "add", "mul", "cat", "chunk", "pool", "gate", "shuffle",
                                   "norm", "attention", "sdpa", "position", "narrow", "wread", "slices"]))
        if op == "conv":
            cin = chans[src]
            divisors = [g for g in range(1, cin + 1) if cin % g == 0]
            groups = draw(st.sampled_from(divisors))
            cout = groups * draw(st.integers(1, 3)) if groups > 1 else draw(st.integers(1, 6))
            steps.append(("conv", src, cout, draw(st.sampled_from([1, 3])), groups))
            chans.append(cout)
        elif op == "bn_act":
            steps.append(("bn_act", src, draw(st.sampled_from(activations))))
            chans.append(chans[src])
        elif op == "gate":
            steps.append(("gate", src, draw(st.integers(1, 3))))
            chans.append(chans[src])
        elif op in ("add", "mul"):
            same = [i for i in range(n) if chans[i] == chans[src]]
            steps.append((op, src, draw(st.sampled_from(same))))
            chans.append(chans[src])
        elif op == "cat":
            others = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2))
            srcs = tuple([src, *others])
            steps.append(("cat", srcs))
            chans.append(sum(chans[s] for s in srcs))
        elif op == "chunk" and chans[src] >= 2:
            steps.append(("chunk", src))
            chans += [chans[src] // 2, chans[src] - chans[src] // 2]
        elif op == "norm":
            steps.append(("norm", src, draw(st.sampled_from(["layer", "rms"]))))
            chans.append(chans[src])
        elif op in ("attention", "sdpa"):
            heads = draw(st.sampled_from([h for h in range(1, chans[src] + 1) if chans[src] % h == 0]))
            steps.append((op, src, heads) + ((draw(st.sampled_from(["none", "slice", "packed"])),) if op == "sdpa" else ()))
            chans.append(chans[src])
        elif op == "slices" and chans[src] >= 2:
            cut = draw(st.integers(1, chans[src] - 1))
            steps.append(("slices", src, cut, draw(st.sampled_from(["getitem", "narrow"]))))
            chans += [cut, chans[src] - cut]
        elif op == "position":
            steps.append(("position", src))
            chans.append(chans[src])
        elif op == "narrow":
            steps.append(("narrow", src, draw(st.sampled_from(["narrow", "slice", "negative"]))))
            chans.append(chans[src])
        elif op == "wread":
            cout = draw(st.integers(1, 4))
            steps.append(("wread", src, cout, draw(st.sampled_from(["amax", "mean"]))))
            chans.append(cout)
        elif op == "shuffle" and chans[src] % 2 == 0:
            steps.append(("shuffle", src))
            chans.append(chans[src])
        else:
            steps.append(("pool", src))
            chans.append(chans[src])
    heads = ["flatten", "mean", "tied", "tied_shared"] + (["merge"] if _has_torchvision() else [])
    modules = [i for i, step in enumerate(steps) if step[0] in ("conv", "bn_act", "gate", "norm")]
    hooks = draw(st.lists(st.tuples(st.sampled_from(modules), st.sampled_from(sorted(HOOKS))), max_size=2,
                          unique_by=lambda h: h[0])) if modules else []
    hooks = [h for h in hooks if steps[h[0]][0] != "norm" or h[1] == "scale"]  # channels-last: axis 1 is not C
    return Arch(in_ch, size, tuple(steps), draw(st.sampled_from(heads)), hooks=tuple(hooks),
                normalize_input=draw(st.booleans()), cache=draw(st.booleans()), train=draw(st.booleans()))


def stale_literals(plan, student: torch.fx.GraphModule) -> list[str]:
    """Nodes of the student whose slice of a space (a Rewrite of the plan) still holds bounds
    other than the piece's new ones: the student would cut its widened tensor in the wrong place."""
    nodes = {n.name: n for n in student.graph.nodes}
    stale = []
    for rw in plan.analysis.rewrites:
        node = nodes.get(rw.node)
        if node is None or rw.what != "slice_piece":
            continue
        before, piece, after = (plan.new_width(lay) for lay in rw.layouts)
        if node.target is operator.getitem:
            index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            got = index[rw.dim]
            ok = got == (slice(None) if before == after == 0 else slice(before, before + piece))
        elif "narrow" in str(node.target):
            ok = tuple(node.args[1:4]) == (rw.dim, before, piece)
        else:
            ok = tuple(node.args[1:4]) == (rw.dim, before, before + piece)
        if not ok:
            stale.append(node.name)
    return stale


def _has_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class WidenRequest:
    """A random widen plan: a global factor, or a growth per space (fractions of each width)."""

    factor: float | None
    growth: tuple[float, ...] | None
    symmetry: str
    seed: int
    fill: bool = False  # growth: normalised spaces ask for a width that is not a multiple (fill)

    def kwargs(self, spaces: list) -> dict:
        """Arguments for n2n_fx.plan/widen given the teacher's plan spaces."""
        base = {"symmetry": self.symmetry, "seed": self.seed}
        if self.growth is None:
            return {**base, "factor": self.factor}
        # attention spaces are left to the plan (heads follow the embed width, a multiple of head_dim)
        open_spaces = [p for p in spaces if not p.reasons and not p.space.attention]
        k = 1 + int(self.growth[0] + 0.5)  # normalised spaces grow by one integer factor
        widths = {p.name: p.width * k if p.space.uniform else p.width + int(p.width * self.growth[i % len(self.growth)] + 0.5)
                  for i, p in enumerate(open_spaces)}
        if self.fill:  # or to a width that is not a multiple: fill, exact or refused with a ConstraintError
            widths.update({p.name: p.width * k + 1 for p in open_spaces if p.space.uniform})
        return {**base, "widths": widths} if widths else {**base, "factor": 1.0}


def widen_requests() -> st.SearchStrategy[WidenRequest]:
    """Valid requests: a factor in [1, 3], or per-space growth in [0, 2]; symmetry none/split."""
    return st.builds(
        WidenRequest,
        st.one_of(st.none(), st.floats(1.0, 3.0, allow_nan=False)),
        st.one_of(st.none(), st.lists(st.floats(0.0, 2.0, allow_nan=False), min_size=1, max_size=4).map(tuple)),
        st.sampled_from(["none", "split"]),
        st.integers(0, 2**16),
        st.booleans(),
    ).map(lambda r: r if r.factor is not None or r.growth is not None else WidenRequest(2.0, None, r.symmetry, r.seed))


INVALID_KINDS = ("below_current", "unknown_space", "frozen_space", "factor_below_one", "bad_symmetry", "not_int",
                 "not_uniform")


def invalid_request(kind: str, spaces: list) -> dict:
    """An invalid plan request of the given kind (n2n_fx must raise N2NError for it)."""
    open_spaces = [p for p in spaces if not p.reasons]
    frozen = [p for p in spaces if p.reasons]
    if kind == "below_current" and open_spaces:
        return {"widths": {open_spaces[0].name: open_spaces[0].width - 1}}
    if kind == "frozen_space" and frozen:
        return {"widths": {frozen[0].name: frozen[0].width + 1}}
    uniform = [p for p in open_spaces if p.space.uniform and p.width > 1]
    # a normalised space off the multiples of its width: fill (exact) or a typed refusal, never a wrong student
    if kind == "not_uniform" and uniform:
        return {"widths": {uniform[0].name: uniform[0].width + 1}}
    if kind == "not_int" and open_spaces:
        return {"widths": {open_spaces[0].name: open_spaces[0].width + 0.5}}
    if kind == "factor_below_one":
        return {"factor": 0.75}
    if kind == "bad_symmetry":
        return {"factor": 2.0, "symmetry": "jitter"}
    return {"widths": {"no_such_space": 4}}


def deepen_points(model: nn.Module, max_points: int = 3) -> st.SearchStrategy[list[str]]:
    """Node names of `model` (its traced graph) to insert identity layers after."""
    from .frontend import _copy, _symbolic_trace

    # n2n_fx's own tracer on a private copy: hooked modules are traced through (their node names
    # are what deepen sees), and tracing never writes into the model
    names = [n.name for n in _symbolic_trace(_copy(model, True), (), None).graph.nodes if n.op.startswith("call")]
    return st.lists(st.sampled_from(names), min_size=1, max_size=max_points, unique=True)


def plan_signature(plan) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """What a plan decides, without node names: each space's name, width, planned width and frozen
    reason codes. Two plans of one model at different batch sizes or sequence lengths must agree."""
    return sorted((p.name, p.width, p.new_width, tuple(r.code for r in p.reasons)) for p in plan.spaces)


# ---------------------------------------------------------------- grow pairs
BRANCH_ENDS = ("linear", "dropout", "scale", "layer_scale", "view", "bias_after")


@dataclass(frozen=True)
class StackSpec:
    """A residual stack: in -> blocks (x + branch(norm(x))) -> final norm -> out. Each block is
    (hidden width, branch end); `end` says how the branch leaves its last Linear: directly, through
    dropout, a literal scale, a learned per-unit gain (layer scale), a reshape pair, or with a
    constant added after it (then a zero Linear does not zero the branch: the block cannot start
    as the identity and grow must say so). `hook` puts a forward hook scaling the first block's
    branch by 0.5 (it runs in the teacher, so it must run in the grown model too)."""

    d_in: int
    width: int
    blocks: tuple[tuple[int, str], ...]
    norm: str  # "none" | "layer" | "rms"
    act: str
    hook: bool = False

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0, device: str | None = None) -> nn.Module:
        torch.manual_seed(seed)
        if device == "meta":
            with torch.device("meta"):
                return StackNet(self).to(dtype).eval()
        model = StackNet(self).to(dtype).eval()
        with torch.no_grad():
            for m in model.modules():  # trained-looking norms: the gains are not all one
                if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                    m.weight.uniform_(0.5, 1.5)
        return model


class _Branch(nn.Module):
    def __init__(self, width: int, hidden: int, end: str, norm: str, act: str) -> None:
        super().__init__()
        self.norm = {"none": nn.Identity, "layer": nn.LayerNorm, "rms": nn.RMSNorm}[norm](width) \
            if norm != "none" else nn.Identity()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), ACTIVATIONS[act](), nn.Linear(hidden, width)
        self.end, self.drop = end, nn.Dropout(0.0)
        if end == "layer_scale":
            self.gamma = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(x))))
        if self.end == "dropout":
            return self.drop(y)
        if self.end == "scale":
            return y * 0.5
        if self.end == "layer_scale":
            return self.gamma * y
        if self.end == "view":
            return y.reshape(y.shape[0], -1).reshape(y.shape)
        if self.end == "bias_after":
            return y + 1.0
        return y


class StackNet(nn.Module):
    def __init__(self, spec: StackSpec) -> None:
        super().__init__()
        self.spec = spec
        self.inp = nn.Linear(spec.d_in, spec.width)
        self.blocks = nn.ModuleList(_Branch(spec.width, h, end, spec.norm, spec.act) for h, end in spec.blocks)
        self.final = nn.LayerNorm(spec.width) if spec.norm == "layer" else \
            nn.RMSNorm(spec.width) if spec.norm == "rms" else nn.Identity()
        self.out = nn.Linear(spec.width, 3)
        if spec.hook:
            self.blocks[0].register_forward_hook(_half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(self.final(h))


def _half(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out * 0.5


@dataclass(frozen=True)
class GrowPair:
    teacher: StackSpec
    target: StackSpec
    layer_map: Any  # a policy name or {"blocks": [...]}

    @property
    def identity_possible(self) -> bool:
        """Every new block copies a teacher block whose branch a zero Linear (or gain) switches off."""
        order = _placement_preview(len(self.teacher.blocks), len(self.target.blocks), self.layer_map)
        copied = [_copy_of(order, j) for j, src in enumerate(order) if src is None]
        return all(self.teacher.blocks[i][1] != "bias_after" for i in copied)


@st.composite
def grow_pairs(draw) -> GrowPair:
    """A random residual stack and a bigger one of its family: width (k-fold under a norm, any
    without), per-block hidden widths, more blocks, placed by a policy or an explicit layer_map."""
    norm = draw(st.sampled_from(["none", "layer", "rms"]))
    width = draw(st.integers(2, 6))
    n = draw(st.integers(1, 3))
    blocks = tuple((draw(st.integers(1, 6)), draw(st.sampled_from(BRANCH_ENDS))) for _ in range(n))
    teacher = StackSpec(draw(st.integers(1, 4)), width, blocks, norm, draw(st.sampled_from(["relu", "gelu", "tanh"])),
                        draw(st.booleans()))
    wide = width * draw(st.integers(1, 3)) if norm != "none" else width + draw(st.integers(0, 7))
    grown = tuple((h + draw(st.integers(0, 5)), end) for h, end in blocks)
    extra = draw(st.integers(0, 2))
    layer_map: Any = draw(st.sampled_from(["interleave", "append", "explicit"]))
    if layer_map == "explicit":
        slots = sorted(draw(st.permutations(range(n + extra)))[:n])
        layer_map = {"blocks": [slots.index(j) if j in slots else None for j in range(n + extra)]} if extra else "append"
    # a new block copies its structure-mate's hidden width; all blocks here share one structure, so
    # the target's new blocks take the hidden width of the teacher block they will copy
    order = _placement_preview(n, n + extra, layer_map)
    tgt_blocks = tuple(grown[src] if src is not None else grown[_copy_of(order, j)] for j, src in enumerate(order))
    if order[0] != 0:  # a hook belongs to a module: only where teacher block 0 stays block 0
        teacher = StackSpec(teacher.d_in, width, blocks, norm, teacher.act, False)
    target = StackSpec(teacher.d_in, wide, tgt_blocks, norm, teacher.act, teacher.hook)
    return GrowPair(teacher, target, layer_map)


def _placement_preview(n: int, m: int, layer_map: Any) -> list[int | None]:
    from .growth import _placement

    return _placement(n, m, layer_map["blocks"] if isinstance(layer_map, dict) else layer_map, "blocks")


def _copy_of(order: list[int | None], j: int) -> int:
    before = [order[k] for k in range(j - 1, -1, -1) if order[k] is not None]
    after = [order[k] for k in range(j + 1, len(order)) if order[k] is not None]
    return (before + after)[0]
