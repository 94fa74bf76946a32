"""The ops of U-Nets (issue 15): GroupNorm, ConvTranspose, PReLU, InstanceNorm, interpolate /
Upsample, pixel (un)shuffle, and a tiny diffusers UNet2DModel that uses them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx.testing import assert_independent, assert_untouched, fingerprint
from proofs import symbolic as sym
from proofs.rules import (
    ConvTransposeNet,
    GroupNormNet,
    InstanceNormNet,
    PixelShuffleNet,
    PReLUNet,
    StraddleNet,
    TwoGroupNorms,
    _affine,
)


class UpsampleNet(nn.Module):
    """Resampling between convs: nn.Upsample modules and F.interpolate by scale_factor and size."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b, self.how = nn.Conv2d(2, 3, 1), nn.Conv2d(3, 2, 3, padding=1), how
        self.up = {"nearest": nn.Upsample(scale_factor=2), "bilinear2d": nn.UpsamplingBilinear2d(scale_factor=2),
                   "nearest2d": nn.UpsamplingNearest2d(size=(5, 6))}.get(how, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        if self.how == "size":
            h = F.interpolate(h, size=(5, 3), mode="bilinear", align_corners=False)
        elif self.how == "scale":
            h = F.interpolate(h, scale_factor=1.5, mode="bicubic")
        else:
            h = self.up(h)
        return self.b(h)


class ShuffleConv(nn.Module):
    """pixel_shuffle feeding a conv, with a GroupNorm on the shuffled channels (ESRGAN-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(2, 16, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv2d(4, 2, 3, padding=1)
        self.shuffle, self.act = nn.PixelShuffle(2), nn.PReLU(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.norm(self.shuffle(self.a(x)))))


class MiniUNet(nn.Module):
    """conv - GroupNorm - SiLU down, ConvTranspose up, a concat skip, InstanceNorm and PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.inc, self.n1 = nn.Conv2d(2, 8, 3, padding=1), nn.GroupNorm(4, 8)
        self.down, self.n2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.n3, self.act = nn.InstanceNorm2d(16, affine=True, track_running_stats=True), nn.PReLU(16)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.n1(self.inc(x)))
        d = F.silu(self.n2(self.down(h)))
        u = torch.cat([self.up(d), h], dim=1)
        return self.out(self.act(self.n3(u)))


CASES: dict[str, Callable[[], nn.Module]] = {
    "groupnorm_g2": lambda: GroupNormNet(2),
    "groupnorm_g1": lambda: GroupNormNet(1),
    "groupnorm_gC": lambda: GroupNormNet(4),
    "groupnorm_functional": lambda: GroupNormNet(2, functional=True),
    "instancenorm_running": lambda: InstanceNormNet(),
    "instancenorm_functional": lambda: InstanceNormNet(functional=True),
    "prelu_per_channel": lambda: PReLUNet(3),
    "prelu_single": lambda: PReLUNet(1),
    "prelu_functional": lambda: PReLUNet(3, functional=True),
    "convtranspose2d_output_padding": lambda: ConvTransposeNet(),
    "convtranspose2d_functional": lambda: ConvTransposeNet(functional=True),
    "convtranspose2d_depthwise": lambda: ConvTransposeNet(groups=3, mult=2),
    "convtranspose1d": lambda: ConvTransposeNet(dims=1),
    "convtranspose3d": lambda: ConvTransposeNet(dims=3),
    "upsample_nearest": lambda: UpsampleNet("nearest"),
    "upsample_bilinear2d": lambda: UpsampleNet("bilinear2d"),
    "upsample_nearest2d_size": lambda: UpsampleNet("nearest2d"),
    "interpolate_size": lambda: UpsampleNet("size"),
    "interpolate_scale_factor": lambda: UpsampleNet("scale"),
    "pixel_shuffle_unshuffle": lambda: PixelShuffleNet(),
    "pixel_shuffle_functional": lambda: PixelShuffleNet(functional=True),
    "pixel_shuffle_into_conv": ShuffleConv,
    "mini_unet": MiniUNet,
}


def _input(model: nn.Module, batch: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    first = next(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    dims = first.weight.ndim - 2
    size = {1: (4,), 2: (4, 4), 3: (2, 2, 4)}[dims]
    return torch.randn(batch, first.in_channels, *size, generator=torch.Generator().manual_seed(batch), dtype=dtype)


def _model(name: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return _affine(CASES[name]()).to(dtype)


def _hidden_widened(plan: n2n_fx.Plan) -> list[str]:
    """Hidden spaces (not bound to the output) that kept their width."""
    return [p.name for p in plan.spaces if p.new_width == p.width and not (p.reasons and p.reasons[0].code == "model_output")]


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CASES))
def test_op_widens_every_hidden_space_exactly(name: str, batch: int, mode: str, frontend: str) -> None:
    model = _model(name).train(mode == "train")
    x = _input(model, batch)
    before = fingerprint(model)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend=frontend, mode=mode)
    assert not _hidden_widened(plan), plan
    student = n2n_fx.apply_plan(plan)
    report = n2n_fx.verify(model, student, (x,), mode=mode)
    assert report.ok and report.max_rel_err <= 1e-10, report
    assert_untouched(model, before)
    assert_independent(model, student)


@pytest.mark.parametrize("name", ["groupnorm_g2", "convtranspose2d_output_padding", "prelu_per_channel",
                                  "instancenorm_running", "pixel_shuffle_into_conv", "mini_unet"])
def test_float32_student_within_dtype_tolerance(name: str) -> None:
    model = _model(name, torch.float32).eval()
    x = _input(model, 2, torch.float32)
    student = n2n_fx.widen(model, (x,), factor=1.5, seed=3)
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    report = n2n_fx.verify(model, student, (x,))
    assert report.ok, report
    assert report.native_ok and report.native_max_rel_err <= report.native_rtol, report
    assert report.max_rel_err <= 4 * torch.finfo(torch.float32).eps, report  # weights w / c rounded once


def test_groupnorm_grows_by_whole_groups_and_rewrites_num_groups() -> None:
    model = _model("groupnorm_g2")
    x = _input(model, 2)
    plan = n2n_fx.plan(model, (x,), factor=1.5)
    space = next(p for p in plan.spaces if p.name == "norm.groups")
    assert (space.width, space.new_width) == (2, 3)
    student = n2n_fx.apply_plan(plan)
    norm = student.get_submodule("norm")
    assert (norm.num_groups, norm.num_channels, norm.weight.shape[0]) == (3, 6, 6)
    # every new group is a whole teacher group: its two channels' gains in order
    g = space.g
    assert torch.equal(norm.weight.detach(), model.norm.weight.detach().view(2, 2)[g].reshape(-1))
    assert n2n_fx.verify(model, student, (x,)).ok


def test_functional_groupnorm_num_groups_literal_is_rewritten() -> None:
    model = _model("groupnorm_functional")
    x = _input(model, 2)
    student = n2n_fx.widen(model, (x,), factor=2.0, frontend="fx")
    calls = [n for n in student.graph.nodes if n.target is F.group_norm]
    assert calls and calls[0].args[1] == 4, calls
    assert n2n_fx.verify(model, student, (x,)).ok


def test_groupnorms_of_two_group_sizes_grow_by_common_blocks() -> None:
    model = _affine(TwoGroupNorms()).double()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0)
    (space,) = [p for p in plan.spaces if not p.reasons]
    assert (space.width, space.new_width) == (1, 2)  # one block of lcm(3, 2) = 6 channels
    student = n2n_fx.apply_plan(plan)
    assert (student.n2.num_groups, student.n3.num_groups, student.a.out_channels) == (4, 6, 12)
    assert n2n_fx.verify(model, student, (x,)).ok


def test_group_straddling_a_concat_freezes_with_a_reason() -> None:
    model = StraddleNet().double()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0)
    frozen = [p for p in plan.spaces if p.reasons and p.reasons[0].code != "model_output"]
    assert [p.name for p in frozen] == ["a", "c[0:2]"], plan  # group 0: a's 2 channels and c's first 2
    assert all(p.reasons[0].code == "constraint" and "whole groups" in p.reasons[0].detail for p in frozen)
    with pytest.raises(n2n_fx.FrozenSpaceError, match="whole groups"):
        n2n_fx.plan(model, (x,), widths={"a": 3})
    assert n2n_fx.verify(model, n2n_fx.apply_plan(plan), (x,)).ok


def test_groupnorm_space_counts_groups_any_factor_gives_whole_groups() -> None:
    model = _model("groupnorm_g2")
    x = _input(model, 2)
    for factor, groups in ((1.25, 3), (1.2, 2), (3.0, 6)):  # round(2 * factor) groups of 2 channels
        student = n2n_fx.widen(model, (x,), factor=factor)
        assert student.get_submodule("norm").num_groups == groups
        assert student.get_submodule("a").out_channels == 2 * groups
        assert n2n_fx.verify(model, student, (x,)).ok
    # the conv's channels are the groups' space now: asking for them by the conv's name is a typed error
    with pytest.raises(n2n_fx.UnknownSpaceError, match="norm.groups"):
        n2n_fx.plan(model, (x,), widths={"a": 6})


class SharedGroupNorm(nn.Module):
    """One GroupNorm module on two branches (its gains bind both), with a forward hook on it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c, self.norm, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), \
            nn.Conv2d(8, 2, 1)
        self.norm.register_forward_hook(lambda m, args, out: out * 1.5 + 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.a(x)), inplace=True)
        return self.b(torch.cat([h, self.norm(self.c(x))], dim=1))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_shared_hooked_groupnorm_widens_both_branches_alike(frontend: str) -> None:
    model = _affine(SharedGroupNorm()).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend=frontend)
    assert not _hidden_widened(plan), plan
    assert len([p for p in plan.spaces if not p.reasons]) == 1, plan  # the shared gains make both one space
    assert n2n_fx.verify(model, n2n_fx.apply_plan(plan), (x,)).ok


class ComputedGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(F.group_norm(h, h.shape[1] // 2))


def test_computed_num_groups_freezes_with_a_reason() -> None:
    model = ComputedGroups().double()
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend="fx")
    codes = {r.code for p in plan.spaces for r in p.reasons}
    assert not [p for p in plan.spaces if p.new_width > p.width], plan
    assert codes & {"unsupported_op", "size_used"}, plan


class GroupedTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.up, self.b = nn.Conv2d(2, 4, 1), nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.up(torch.relu(self.a(x)))))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_grouped_conv_transpose_freezes_with_a_reason_and_the_rest_widens(frontend: str) -> None:
    model = GroupedTranspose().double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend=frontend)
    a = next(p for p in plan.spaces if p.name == "a")
    assert a.reasons and a.reasons[0].code == "unsupported_op" and "grouped transposed" in a.reasons[0].detail
    student = n2n_fx.apply_plan(plan)
    assert n2n_fx.verify(model, student, (x,)).ok


class AtenConvolution(nn.Module):
    """core ATen's one convolution op, transposed=True, written directly."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 1), nn.Conv2d(4, 2, 1)
        self.w, self.bias = nn.Parameter(torch.randn(3, 4, 2, 2)), nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h = torch.ops.aten.convolution.default(h, self.w, self.bias, [2, 2], [0, 0], [1, 1], True, [1, 1], 1)
        return self.b(torch.tanh(h))


def test_aten_convolution_transposed_widens() -> None:
    model = AtenConvolution().double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend="fx")
    assert not _hidden_widened(plan), plan
    assert n2n_fx.verify(model, n2n_fx.apply_plan(plan), (x,)).ok


def test_prelu_single_slope_is_shared_and_per_channel_slopes_are_copied() -> None:
    for n, new in ((1, 1), (3, 6)):
        model = _model("prelu_single" if n == 1 else "prelu_per_channel")
        x = _input(model, 2)
        student = n2n_fx.widen(model, (x,), factor=2.0)
        act = student.get_submodule("act")
        assert (act.num_parameters, act.weight.shape[0]) == (new, new)
        assert n2n_fx.verify(model, student, (x,)).ok


def test_pixel_shuffle_moves_whole_blocks() -> None:
    model = _model("pixel_shuffle_into_conv")
    x = _input(model, 2)
    plan = n2n_fx.plan(model, (x,), factor=1.5)
    shuffled = next(p for p in plan.spaces if p.name == "norm.groups")
    assert (shuffled.width, shuffled.new_width) == (2, 3)  # groups of 2 channels, each 4 conv outputs
    student = n2n_fx.apply_plan(plan)
    assert student.get_submodule("a").out_channels == 24
    assert n2n_fx.verify(model, student, (x,)).ok


# ------------------------------------------------------------------ the proofs' symbolic twins are torch's ops
def _as_objects(t: torch.Tensor) -> np.ndarray:
    return np.array(t.tolist(), dtype=object)


def _close(got: np.ndarray, want: torch.Tensor) -> bool:
    return torch.allclose(torch.tensor(np.asarray(got, dtype=float).tolist(), dtype=torch.float64), want,
                          rtol=1e-12, atol=1e-12)


def test_symbolic_twins_match_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 2, generator=gen, dtype=torch.float64)
    w, b = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    assert _close(sym.group_norm(_as_objects(x), 2, _as_objects(w), _as_objects(b), 1e-5),
                  F.group_norm(x, 2, w, b, 1e-5))
    assert _close(sym.instance_norm(_as_objects(x), None, None, _as_objects(w), _as_objects(b), True, 1e-5),
                  F.instance_norm(x, weight=w, bias=b))
    assert _close(sym.prelu(_as_objects(x), _as_objects(w)), F.prelu(x, w))
    assert _close(sym.prelu(_as_objects(x), _as_objects(w[:1])), F.prelu(x, w[:1]))
    for groups, kw in ((1, dict(stride=2, padding=1, output_padding=1)), (2, dict(stride=1, dilation=2))):
        ct = torch.randn(4, 3, 2, 3, generator=gen, dtype=torch.float64)
        cb = torch.randn(3 * groups, generator=gen, dtype=torch.float64)
        got = sym.conv_transpose_nd(_as_objects(x), _as_objects(ct), _as_objects(cb), kw.get("stride", 1),
                                    kw.get("padding", 0), kw.get("output_padding", 0), groups, kw.get("dilation", 1))
        assert _close(got, F.conv_transpose2d(x, ct, cb, groups=groups, **kw))
    y = torch.randn(2, 8, 2, 3, generator=gen, dtype=torch.float64)
    assert _close(sym.pixel_shuffle(_as_objects(y), 2), F.pixel_shuffle(y, 2))
    z = torch.randn(2, 2, 4, 6, generator=gen, dtype=torch.float64)
    assert _close(sym.pixel_unshuffle(_as_objects(z), 2), F.pixel_unshuffle(z, 2))
    up = lambda t: F.interpolate(t, size=(5, 3), mode="bilinear")  # noqa: E731
    assert _close(sym.resample(_as_objects(x), up), up(x))


# ------------------------------------------------------------------ diffusers UNet2DModel
def _unet(attention: bool, sample: int, channels: tuple[int, int], groups: int
          ) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    down = ("DownBlock2D", "AttnDownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    up = ("AttnUpBlock2D", "UpBlock2D") if attention else ("UpBlock2D", "UpBlock2D")
    model = diffusers.UNet2DModel(sample_size=sample, in_channels=3, out_channels=3, block_out_channels=channels,
                                  layers_per_block=1, norm_num_groups=groups, down_block_types=down, up_block_types=up)
    x = torch.randn(2, 3, sample, sample, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model.double().eval(), (x, torch.tensor([10, 500]))


# every frozen hidden space of the tiny UNet2DModel: a GroupNorm group that straddles the two
# halves of an up block's concat (skip connection), whose channels come from different spaces
UNET_FROZEN = "GroupNorm grows by whole groups"


def _check_unet(attention: bool, sample: int, channels: tuple[int, int], groups: int, widened: int,
                n_random: int) -> n2n_fx.Plan:
    model, inputs = _unet(attention, sample, channels, groups)
    before = fingerprint(model)
    plan = n2n_fx.plan(model, inputs, factor=2.0)  # auto: diffusers' asserts fail symbolic_trace, export traces
    assert plan.analysis.gm.meta["n2n_frontend"] == "export"
    hidden = [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]
    frozen = [p for p in hidden if p.reasons]
    assert all(p.new_width == 2 * p.width for p in hidden if not p.reasons), plan
    assert all(p.reasons[0].code == "constraint" and UNET_FROZEN in p.reasons[0].detail for p in frozen), plan
    assert not [p for p in plan.spaces for r in p.reasons if r.code in ("unknown_op", "unsupported_op")], plan
    assert len(hidden) - len(frozen) == widened, plan
    student = n2n_fx.apply_plan(plan)
    report = n2n_fx.verify(model, student, inputs, n_random=n_random)
    assert report.ok and report.max_rel_err <= 1e-10, report
    assert_untouched(model, before)
    assert_independent(model, student)
    return plan


def test_diffusers_unet2d_widens_every_hidden_space_it_can() -> None:
    _check_unet(attention=False, sample=8, channels=(16, 32), groups=4, widened=18, n_random=1)


@pytest.mark.zoo
@pytest.mark.parametrize("attention", [False, True])
def test_diffusers_unet2d_with_and_without_attention_blocks(attention: bool) -> None:
    _check_unet(attention=attention, sample=16, channels=(32, 64), groups=8, widened=22 if attention else 19,
                n_random=3)


@pytest.mark.parametrize("batch", [1, 3])
def test_groupnorm_in_core_aten_rewrites_c_and_group(batch: int) -> None:
    """run_decompositions() spells GroupNorm native_group_norm(x, w, b, N, C, HxW, group, eps)."""
    model = _model("groupnorm_g2").eval()
    x = _input(model, batch)
    graph = torch.export.export(model, (x,)).run_decompositions().module()
    plan = n2n_fx.plan(graph, (x,), factor=2.0)
    assert not _hidden_widened(plan), plan
    student = n2n_fx.apply_plan(plan)
    call = next(n for n in student.graph.nodes if n.target is torch.ops.aten.native_group_norm.default)
    assert (call.args[4], call.args[6]) == (8, 4), call.args
    assert n2n_fx.verify(model, student, (x,)).ok
