"""A testing kit for growth code (n2n_fx's and yours): checks that raise AssertionError, a property
builder, and Hypothesis strategies over random architectures.

Test your own growth function in one line (pytest collects it; Hypothesis draws random MLPs,
shrinks a failure and prints the falsifying case):

    from n2n_fx.testing import growth_property, architectures

    test_my_grow = growth_property(my_grow)                     # my_grow(model) -> grown model
    test_my_grow_dags = growth_property(lambda m, x: my_grow(m, x), architectures(max_steps=4))

Or write the property yourself: every check is a plain assertion, so it works inside `@given`
(no fixture, no health check):

    from hypothesis import given
    from n2n_fx.testing import assert_preserved, mlps

    @given(mlps())
    def test_my_growth_step(spec):
        model, x = spec.build()
        assert_preserved(model, my_grow(model), x)

Checks
  `assert_preserved(teacher, student, inputs, *, rtol=None, mode="eval", n_random=3, seed=0)`:
      the verdict of `n2n_fx.verify` (float64 twins; the example inputs and `n_random` Gaussian
      ones); returns the Report, or raises AssertionError naming the first module (matched by
      qualified name, same output shape in both, teacher's execution order) whose outputs differ,
      on which input (0: the example inputs) and by how much; modules grown in the student are
      listed as not compared; a difference outside every compared module is said to be so.
  `growth_property(grow_fn, strategy=None, *, rtol=None, mode="eval", max_examples=None)`: a
      Hypothesis test (call it, or let pytest collect it) asserting, for every drawn case, that
      `grow_fn(model)` (or `grow_fn(model, inputs)`) returns a new nn.Module that preserves the
      function (`assert_preserved`), leaves the teacher untouched (`assert_untouched`) and shares no
      storage with it (`assert_independent`). `strategy`: objects with `.build() -> (model, inputs)`
      (`mlps()`, the default, or `architectures()`) or (model, inputs) pairs.
  `fingerprint(model, values=True)`: everything a call could change in a module tree (Python
      attributes, hooks, flags; every tensor's identity, storage, version counter and values).
  `assert_untouched(model, before)`: AssertionError naming the first attribute that differs from
      a `fingerprint`.
  `assert_independent(teacher, student)`: AssertionError if a student tensor shares storage with
      the teacher's.

Strategies and their contracts (everything they build is float64, seeded, deterministic)
  `mlps(max_depth=4, max_width=8, activations=ACTIVATIONS, norms=MLP_NORMS, max_batch=4)` draws an
      `MLPSpec`; `.build(dtype=float64, seed=0)` gives (nn.Sequential in eval mode with children
      fc1, [norm1], act1, [drop1], ..., out; x of shape (batch, d_in)). 1..max_depth hidden layers
      of width 1..max_width, an activation each (keys of `ACTIVATIONS`), one norm for all hidden
      layers (`MLP_NORMS`: none, LayerNorm, BatchNorm1d with random running statistics and
      affine parameters), dropout p in {0, 0.1, 0.5}, d_in 1..6, d_out 1..4, batch 1..max_batch.
  `architectures(max_steps=8, activations=ACTIVATIONS)` draws an `Arch`: a small program over
      feature maps (N, C, H, W), one step a line when printed (convs, transposed convs, norms,
      GroupNorm, PReLU, attention, residual adds, concats, splits, hooks, ...; see its
      docstring). `.build(dtype=float64, batch=3, seed=0)` gives (`ArchNet`, x of shape (batch,
      in_channels, size, size)), output (batch, classes=3); the model is in train mode when `arch.train` (compare it in mode="eval" or
      "train" as you mean to grow it), else eval. Forward hooks in `HOOKS`.
  `widen_requests()` draws a `WidenRequest`; `.kwargs(plan.spaces)` gives valid arguments for
      n2n_fx.plan / widen (a factor in [1, 3], or per-space growth in [0, 2]; symmetry none or split).
      `invalid_request(kind, plan.spaces)` gives an invalid one for each of `INVALID_KINDS`.
  `grow_pairs()` draws a `GrowPair` of `StackSpec`s (a residual stack and a bigger one of its
      family, with a layer_map for n2n_fx.grow); `StackSpec.build(dtype=float64, seed=0)` gives
      the model alone, whose input is (batch, d_in); `.identity_possible` says whether grow can be
      exact. Branch ends in `BRANCH_ENDS`.
  `deepen_points(model, max_points=3)`: lists of node names of the model's traced graph.

Helpers for n2n_fx's own tests: `plan_signature(plan)` (what a plan decides, without node
names) and `stale_literals(plan, student)` (slices left with the teacher's bounds).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

__all__ = [
    "ACTIVATIONS", "BRANCH_ENDS", "HOOKS", "INVALID_KINDS", "MLP_NORMS", "Arch", "ArchNet", "GrowPair", "MLPSpec",
    "StackSpec", "WidenRequest", "architectures", "assert_independent", "assert_preserved", "assert_untouched",
    "deepen_points", "fingerprint", "grow_pairs", "growth_property", "invalid_request", "mlps", "plan_signature",
    "stale_literals", "widen_requests",
]

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
        for m in model.modules():  # non-trivial BatchNorm statistics, GroupNorm gains, PReLU slopes
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, (nn.GroupNorm, nn.PReLU)):
                with torch.no_grad():
                    for t in m.parameters():
                        t.uniform_(-1.0, 1.5)
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
            elif op == "gn_act":  # GroupNorm + activation, as in U-Nets
                _, src, groups, act = step
                self.layers[str(i)] = nn.Sequential(nn.GroupNorm(groups, chans[src]), ACTIVATIONS[act]())
                chans.append(chans[src])
            elif op == "up":  # a transposed conv (stride 1, odd kernel: the size is kept)
                _, src, cout, k, groups = step
                self.layers[str(i)] = nn.ConvTranspose2d(chans[src], cout, k, padding=k // 2, groups=groups)
                chans.append(cout)
            elif op == "prelu":  # one slope per channel or one for all
                _, src, per_channel = step
                self.layers[str(i)] = nn.PReLU(chans[src] if per_channel else 1)
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
            if op in ("conv", "bn_act", "gn_act", "up", "prelu"):
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


# ---------------------------------------------------------------- the kit: checks for users' own growth code
def assert_preserved(teacher: nn.Module, student: nn.Module, inputs: Any, *, rtol: float | None = None,
                     mode: str = "eval", n_random: int = 3, seed: int = 0) -> Any:
    """Assert that `student` computes `teacher`'s function; return the `n2n_fx.Report` if it does.

    The verdict is `n2n_fx.verify`'s (float64 twins, the example inputs and `n_random` Gaussian
    inputs shaped like them). If it fails, raises `AssertionError` (so it works inside `@given`,
    without fixtures, and Hypothesis shrinks and prints the falsifying example) whose message
    localises the failure: both models run side by side in float64 on the failing input, with
    forward hooks on the modules matched by qualified name, and the first module (in the teacher's
    execution order) whose output has the same shape in both and differs beyond `rtol` is named,
    with the input index (0: the example inputs, 1..n_random: the random ones) and the max
    abs / rel error there. Modules whose outputs are wider in the student (the grown spaces) are
    listed as not compared. If every compared module agrees, the message says the outputs part
    only after them (functional code outside the matched modules). Neither model is modified.
    """
    from .verification import verify

    __tracebackhide__ = True  # pytest shows the caller's line, not the kit's
    report = verify(teacher, student, inputs, mode=mode, rtol=rtol, n_random=n_random, seed=seed)
    if report.ok:
        return report
    try:
        where = _localise(teacher, student, inputs, report, mode=mode, n_random=n_random, seed=seed)
    except Exception as exc:  # the localisation is a help: the verdict stands without it
        where = f"(could not localise: {type(exc).__name__}: {exc})"
    raise AssertionError(f"n2n_fx: the student does not preserve the teacher's function: {report}\n{where}")


def _hooked_run(model: nn.Module, batch: Any, seed: int) -> tuple[list[tuple[str, int, str, list[torch.Tensor]]],
                                                                  list[torch.Tensor] | None, str]:
    """Every module's output, in the order the modules return (a shared module: one entry per call)."""
    from .verification import _flat, _seeded_run

    records: list[tuple[str, int, str, list[torch.Tensor]]] = []
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            k = calls[name] = calls.get(name, 0) + 1
            records.append((name, k, type(module).__name__, [t.detach().clone() for t in _flat(out)]))
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in model.named_modules() if name]
    try:
        return records, [t.detach() for t in _flat(_seeded_run(model, batch, seed))], ""
    except Exception as exc:
        return records, None, f"{type(exc).__name__}: {exc}"
    finally:
        for h in handles:
            h.remove()


def _errors(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    from .verification import _max_abs

    abs_err = max((_max_abs(x, y) for x, y in zip(a, b) if x.numel()), default=0.0)
    scale = max((float(x.double().abs().max()) for x in a if x.numel()), default=0.0)
    return abs_err, abs_err / scale if scale > 0 else abs_err


def _names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _localise(teacher: nn.Module, student: nn.Module, inputs: Any, report: Any, *, mode: str, n_random: int,
              seed: int) -> str:
    """Where teacher and student part: see assert_preserved."""
    from .frontend import as_inputs, map_inputs
    from .verification import _cast, _float_dtype, _less_precise, prepare, random_like

    dtype = torch.float64
    native = _float_dtype(student)
    low = native if _less_precise(native, dtype) else None
    given_inputs = as_inputs(inputs)
    drawn = [map_inputs(given_inputs, lambda x: _cast(x, low or dtype))] + \
        random_like(given_inputs, n_random, seed, low or dtype)
    batches = [map_inputs(b, lambda x: _cast(x, dtype)) for b in drawn]  # verify's inputs, in its order
    failing = [k for k, (_, rel) in enumerate(report.per_input) if rel > report.rtol]
    if failing:
        k = failing[0]
    elif len(report.per_input) < len(batches):  # the student raised (or its outputs' structure differs) here
        k = len(report.per_input)
    else:  # the float64 plan check passed on every input: the native-dtype check failed
        k = max(range(len(report.per_input)), key=lambda i: report.per_input[i][1])
    which = "the example inputs" if k == 0 else f"random input {k} of {n_random}, seed {seed}"
    t_model, s_model = prepare(teacher, mode, dtype), prepare(student, mode, dtype)
    with torch.no_grad():
        t_rec, t_out, _ = _hooked_run(t_model, batches[k], seed + k)
        s_rec, s_out, s_exc = _hooked_run(s_model, batches[k], seed + k)
    s_by = {(name, call): (kind, outs) for name, call, kind, outs in s_rec}
    agreed: list[str] = []
    skipped: list[str] = []
    absent: list[str] = []
    for name, call, kind, outs in t_rec:
        label = name if call == 1 else f"{name} (call {call})"
        if (name, call) not in s_by:
            absent.append(label)
            continue
        s_kind, s_outs = s_by[(name, call)]
        if len(outs) != len(s_outs) or any(a.shape != b.shape for a, b in zip(outs, s_outs)) or not outs:
            skipped.append(label)
            continue
        abs_err, rel_err = _errors(outs, s_outs)
        if rel_err > report.rtol:
            lines = [f"first difference: module {label!r} ({kind}) on input {k} ({which}): max abs err "
                     f"{abs_err:.3e}, max rel err {rel_err:.3e} (rtol {report.rtol:.0e})"]
            if agreed:
                lines.append(f"agreed before it: {_names(agreed[::-1])} (latest first)")
            if skipped:
                lines.append(f"not compared before it (output shape differs in the student: grown): {_names(skipped)}")
            return "\n".join(lines)
        agreed.append(label)
    lines = []
    if s_exc:
        lines.append(f"the student raised on input {k} ({which}): {s_exc}")
    elif t_out is not None and s_out is not None and len(t_out) == len(s_out) and \
            all(a.shape == b.shape for a, b in zip(t_out, s_out)):
        abs_err, rel_err = _errors(t_out, s_out)
        lines.append(f"on input {k} ({which}) no matched module's output differs beyond rtol {report.rtol:.0e}, yet "
                     f"the final outputs do (max abs err {abs_err:.3e}, max rel err {rel_err:.3e}): they part in code "
                     f"outside the compared modules (the forward's own functional ops, or a module whose output "
                     f"is grown)")
    else:
        lines.append(f"on input {k} ({which}) the outputs differ in structure")
    lines.append(f"compared ({len(agreed)}, all agree): {_names(agreed) or 'none'}")
    if skipped:
        lines.append(f"not compared (output shape differs in the student: grown): {_names(skipped)}")
    if absent:
        lines.append(f"teacher modules not called under the same name in the student: {_names(absent)}")
        if not agreed and not skipped:
            lines.append("the student calls none of the teacher's modules (an exported graph inlines their ops; a "
                         "wrapper renames them): no module to localise to")
    return "\n".join(lines)


def growth_property(grow_fn: Callable[..., nn.Module], strategy: st.SearchStrategy | None = None, *,
                    rtol: float | None = None, mode: str = "eval", max_examples: int | None = None) -> Callable[[], None]:
    """A Hypothesis test of a user's growth function: `test_my_grow = growth_property(my_grow)`.

    `grow_fn(model)` (or `grow_fn(model, inputs)`, when it takes two positional arguments) returns
    the grown model. The test draws cases from `strategy` (default `mlps()`; any strategy of
    objects with `.build() -> (model, inputs)`, such as `architectures()`, or of (model, inputs)
    pairs) and asserts, for each: the result is an nn.Module other than the teacher, the teacher is
    untouched (`assert_untouched`, checked after growth and after the comparison), the student
    shares no tensor storage with it (`assert_independent`), and it computes the teacher's function
    (`assert_preserved`, in `mode`, with `rtol`). A failure raises AssertionError naming where the
    functions part, and Hypothesis prints the shrunk falsifying case. Runs with deadline=None
    (tracing is slow on its first call); `max_examples` overrides the active settings profile's.
    """
    from hypothesis import given
    from hypothesis import settings as _settings

    cases = mlps() if strategy is None else strategy
    label = getattr(grow_fn, "__qualname__", None) or repr(grow_fn)
    with_inputs = _positional_arity(grow_fn) >= 2

    def check(case: Any) -> None:
        teacher, inputs = case.build() if hasattr(case, "build") else case
        before = fingerprint(teacher)
        student = grow_fn(teacher, inputs) if with_inputs else grow_fn(teacher)
        assert isinstance(student, nn.Module), f"{label} returned {type(student).__name__}, not an nn.Module"
        assert student is not teacher, f"{label} returned the teacher itself (growth must build a new model)"
        try:
            assert_untouched(teacher, before)
        except AssertionError as exc:
            raise AssertionError(f"{label} modified the teacher: {exc}") from None
        try:
            assert_independent(teacher, student)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from None
        assert_preserved(teacher, student, inputs, rtol=rtol, mode=mode)
        try:
            assert_untouched(teacher, before)
        except AssertionError as exc:
            raise AssertionError(f"running the student modified the teacher: {exc}") from None

    check.__name__ = "growth_property_" + re.sub(r"\W", "_", getattr(grow_fn, "__name__", "grow_fn"))
    check.__qualname__ = f"growth_property[{label}]"
    check.__module__ = getattr(grow_fn, "__module__", __name__) or __name__
    # every property shares check's source: without this, Hypothesis' example database would key
    # them all alike and replay one growth function's failures on another's
    check._hypothesis_internal_add_digest = f"{check.__module__}.{label}:{cases!r}".encode()  # type: ignore[attr-defined]
    extra = {} if max_examples is None else {"max_examples": max_examples}
    return _settings(deadline=None, **extra)(given(cases)(check))


def _positional_arity(fn: Callable[..., Any]) -> int:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


# ---------------------------------------------------------------- MLPs
MLP_NORMS = ("none", "layer", "batch")


@dataclass(frozen=True)
class MLPSpec:
    """A random MLP (see `mlps`): `d_in` -> hidden widths -> `d_out`, each hidden layer
    Linear -> norm (none / LayerNorm / BatchNorm1d) -> activation -> Dropout(p) (when p > 0)."""

    d_in: int
    widths: tuple[int, ...]
    activations: tuple[str, ...]  # one per hidden layer, keys of ACTIVATIONS
    norm: str  # "none" | "layer" | "batch"
    dropout: float
    d_out: int
    batch: int

    def __repr__(self) -> str:
        layers = " -> ".join(f"{w}:{a}" for w, a in zip(self.widths, self.activations))
        extras = "".join(f", {k}={getattr(self, k)!r}" for k in ("norm", "dropout") if getattr(self, k) not in ("none", 0.0))
        return f"MLPSpec({self.d_in} -> {layers} -> {self.d_out}, batch={self.batch}{extras})"

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Sequential, torch.Tensor]:
        """(model, x): an nn.Sequential in eval mode with children fc1, norm1, act1, drop1, fc2, ...,
        out (norm/drop only where present), in `dtype`; x of shape (batch, d_in), standard normal."""
        from collections import OrderedDict

        torch.manual_seed(seed)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = self.d_in
        for i, (w, act) in enumerate(zip(self.widths, self.activations), 1):
            layers[f"fc{i}"] = nn.Linear(width, w)
            if self.norm == "layer":
                layers[f"norm{i}"] = nn.LayerNorm(w)
            elif self.norm == "batch":
                layers[f"norm{i}"] = nn.BatchNorm1d(w)
            layers[f"act{i}"] = ACTIVATIONS[act]()
            if self.dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(self.dropout)
            width = w
        layers["out"] = nn.Linear(width, self.d_out)
        model = nn.Sequential(layers).to(dtype).eval()
        with torch.no_grad():  # trained-looking norms: statistics and gains are not the defaults
            for m in model.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        return model, torch.randn(self.batch, self.d_in, dtype=dtype)


@st.composite
def mlps(draw, max_depth: int = 4, max_width: int = 8, activations: tuple[str, ...] = tuple(ACTIVATIONS),
         norms: tuple[str, ...] = MLP_NORMS, max_batch: int = 4) -> MLPSpec:
    """Random MLPs (`MLPSpec`; `.build()` gives (model, x)): 1..max_depth hidden layers of width
    1..max_width, each with its own activation from `activations`; one norm for all hidden layers
    from `norms` (none, LayerNorm, BatchNorm1d with random running statistics); dropout p in
    {0, 0.1, 0.5} (inactive: the model is in eval mode); d_in 1..6, d_out 1..4; batch size
    1..max_batch (1 included). x has shape (batch, d_in); model and x are float64."""
    depth = draw(st.integers(1, max_depth))
    widths = tuple(draw(st.integers(1, max_width)) for _ in range(depth))
    acts = tuple(draw(st.sampled_from(activations)) for _ in range(depth))
    return MLPSpec(draw(st.integers(1, 6)), widths, acts, draw(st.sampled_from(norms)),
                   draw(st.sampled_from([0.0, 0.1, 0.5])), draw(st.integers(1, 4)), draw(st.integers(1, max_batch)))


@st.composite
def architectures(draw, max_steps: int = 8, activations: tuple[str, ...] = tuple(ACTIVATIONS)) -> Arch:
    """Random DAGs: convs (grouped, depthwise), transposed convs (groups 1, depthwise), BN or
    GroupNorm + activation, PReLU (per channel or one slope), residual add, gating mul,
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
                                   "norm", "attention", "sdpa", "position", "narrow", "wread", "slices", "gn_act",
                                   "up", "prelu"]))
        divisors = [g for g in range(1, chans[src] + 1) if chans[src] % g == 0]
        if op == "conv":
            groups = draw(st.sampled_from(divisors))
            cout = groups * draw(st.integers(1, 3)) if groups > 1 else draw(st.integers(1, 6))
            steps.append(("conv", src, cout, draw(st.sampled_from([1, 3])), groups))
            chans.append(cout)
        elif op == "up":  # transposed: groups 1 or depthwise (the engine's rule; other groups stop)
            groups = draw(st.sampled_from([1, chans[src]]))
            cout = groups * draw(st.integers(1, 2)) if groups > 1 else draw(st.integers(1, 6))
            steps.append(("up", src, cout, draw(st.sampled_from([1, 3])), groups))
            chans.append(cout)
        elif op == "gn_act":
            steps.append(("gn_act", src, draw(st.sampled_from(divisors)), draw(st.sampled_from(activations))))
            chans.append(chans[src])
        elif op == "prelu":
            steps.append(("prelu", src, draw(st.booleans())))
            chans.append(chans[src])
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
    modules = [i for i, step in enumerate(steps) if step[0] in ("conv", "bn_act", "gate", "norm", "gn_act", "up", "prelu")]
    hooks = draw(st.lists(st.tuples(st.sampled_from(modules), st.sampled_from(sorted(HOOKS))), max_size=2,
                          unique_by=lambda h: h[0])) if modules else []
    hooks = [h for h in hooks if steps[h[0]][0] != "norm" or h[1] == "scale"]  # channels-last: axis 1 is not C
    return Arch(in_ch, size, tuple(steps), draw(st.sampled_from(heads)), hooks=tuple(hooks),
                normalize_input=draw(st.booleans()), cache=draw(st.booleans()), train=draw(st.booleans()))


def stale_literals(plan, student: torch.fx.GraphModule) -> list[str]:
    """Nodes of the student whose slice of a space (a Rewrite of the plan) still holds bounds
    other than the piece's new ones: the student would cut its widened tensor in the wrong place."""
    from .inference import RewriteKind

    nodes = {n.name: n for n in student.graph.nodes}
    stale = []
    for rw in plan.analysis.rewrites:
        node = nodes.get(rw.node)
        if node is None or rw.what != RewriteKind.SLICE_PIECE:
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
    heads: str = "count"  # attention grows by whole heads, or ("dim") by wider heads
    # growth: which open spaces are asked (cycled over them; empty: all). A request for some spaces
    # must spread to what is tied to them (conv ties, norm groups, attention embeds) or be refused
    subset: tuple[bool, ...] = ()

    def kwargs(self, spaces: list) -> dict:
        """Arguments for n2n_fx.plan/widen given the teacher's plan spaces (planned with self.heads)."""
        base = {"symmetry": self.symmetry, "seed": self.seed} | ({"heads": self.heads} if self.heads != "count" else {})
        if self.growth is None:
            return {**base, "factor": self.factor}
        # attention spaces are left to the plan (heads follow the embed width, a multiple of head_dim)
        open_spaces = [p for p in spaces if not p.reasons and not p.space.attention]
        if self.subset:
            open_spaces = [p for i, p in enumerate(open_spaces) if self.subset[i % len(self.subset)]]
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
        st.sampled_from(["count", "dim"]),
        st.one_of(st.just(()), st.lists(st.booleans(), min_size=1, max_size=4).map(tuple)),
    ).map(lambda r: r if r.factor is not None or r.growth is not None
          else WidenRequest(2.0, None, r.symmetry, r.seed, heads=r.heads))


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
