"""Op spellings and edge cases: each either widens exactly or freezes with the right reason code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx

from .helpers import assert_preserved, assert_unchanged, snapshot


def grow(model, x, **kw):
    model, x = model.double().eval(), x.double()
    snap = snapshot(model)
    plan = n2n_fx.plan(model, x, factor=kw.pop("factor", 2.0), seed=kw.pop("seed", 0), **kw)
    student = n2n_fx.apply_plan(plan)
    assert_preserved(model, student, x)
    assert_unchanged(model, snap)
    return plan, student


def spaces(plan):
    return {p.name: p for p in plan.spaces}


class FunctionalNet(nn.Module):
    """Parameters used through get_attr and functional calls, not modules."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.b1 = nn.Parameter(torch.randn(6))
        self.dw = nn.Parameter(torch.randn(6, 1, 3, 3))
        self.scale = nn.Parameter(torch.randn(1, 6, 1, 1))  # layer scale: a per-channel parameter
        self.w2 = nn.Parameter(torch.randn(4, 6 * 16))
        self.w3 = nn.Parameter(torch.randn(4, 5))

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        y = F.conv2d(y, self.dw, None, 1, 1, 1, 6)  # depthwise, positional groups
        y = y * self.scale + 1.0
        y = F.max_pool2d(y, 2)
        y = y.view(-1, 96)  # literal size rewritten on the student
        y = torch.sigmoid(F.linear(y, self.w2))
        return y @ self.w3


def test_functional_spellings_and_literals():
    plan, student = grow(FunctionalNet(), torch.randn(2, 3, 8, 8))
    sp = spaces(plan)
    assert sp["w1"].new_width == 12 and not sp["w1"].reasons
    assert sp["w2"].new_width == 8
    assert student.w2.shape == (8, 12 * 16)
    assert student.dw.shape == (12, 1, 3, 3)
    view = next(n for n in student.graph.nodes if n.target == "view")
    assert view.args[1:] == (-1, 12 * 16)


class SplitChunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.a(x)
        u, v = torch.split(y, [3, 5], dim=1)
        p, q = y.chunk(2, dim=1)
        g = p * torch.sigmoid(q)  # GLU-style gating: the two chunks share one g
        z = torch.cat([u, v], 1) + torch.cat([self.b(g), g], 1)
        return self.c(z)


def test_split_and_chunk_cut_spaces():
    plan, student = grow(SplitChunk(), torch.randn(2, 3, 6, 6), factor=1.5)
    names = sorted(spaces(plan))
    assert any(n.startswith("a[") for n in names), names  # the conv's space was cut into pieces
    assert student.a.out_channels > 8
    split_nodes = [n for n in student.graph.nodes if n.target in (torch.split, "split")]
    assert len(split_nodes) == 2  # chunk was rewritten to split with the new sizes


class ChannelsLast(nn.Module):
    """permute to channels-last, Linear over channels, permute back (ConvNeXt-style)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pw = nn.Linear(8, 16)
        self.pw2 = nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.randn(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv(x)
        z = y.permute(0, 2, 3, 1)
        z = self.pw2(F.gelu(self.pw(z))) * self.gamma
        y = y + z.permute(0, 3, 1, 2)
        return self.head(y.mean((2, 3)))


def test_permute_channels_last_with_layer_scale():
    plan, _ = grow(ChannelsLast(), torch.randn(2, 3, 5, 5))
    sp = spaces(plan)
    assert sp["conv"].new_width == 16 and "pw2" in sp["conv"].space.producers
    assert "gamma" in " ".join(sp["conv"].space.carriers)


class CatNonChannel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(3, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=2)  # along height: channels of a and b are one space
        return self.head(torch.stack([y, y], 0).mean((0, 3, 4)))


def test_concat_on_non_channel_axis_unifies():
    plan, _ = grow(CatNonChannel(), torch.randn(2, 3, 4, 4))
    sp = spaces(plan)
    assert {"a", "b"} <= set(sp["a"].space.producers)


class Stops(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(4, 6)
        self.e = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        a = torch.cumsum(self.a(x), 1)  # not in the table: unknown, never elementwise
        b = self.b(x).sum(1, keepdim=True)  # reduction over the space
        c = self.c(x) * self.c(x).size(1)  # a width-dependent size used as a number
        d = self.d(x) + x.repeat(1, 2)[:, :6]  # aligned with a fixed tensor (model input)
        e = F.softmax(self.e(x), dim=1)  # softmax over the space: it sums over replicas
        return self.head(a + b + c + d + e)


def test_unknown_and_unsupported_ops_freeze_with_reasons():
    plan, _ = grow(Stops(), torch.randn(3, 4))
    codes = {p.name: p.reasons[0].code for p in plan.spaces if p.reasons}
    assert codes["a"] == "unknown_op"
    assert codes["b"] == "reduced_over"
    assert codes["c"] == "size_used"
    assert codes["d"] == "fixed_coupling"  # x.repeat is unknown, so its output is fixed
    assert codes["e"] == "reduced_over"  # softmax has a rule (over positions it widens); over a space it freezes
    # the sum feeding head meets fixed tensors (unknown ops' outputs): head's input is untouched
    assert plan.analysis.gm.head.in_features == 6


class FlattenVariants(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.f = nn.Flatten()
        self.l1, self.l2, self.l3 = nn.Linear(64, 5), nn.Linear(64, 5), nn.Linear(64, 5)

    def forward(self, x):
        y = F.relu(self.conv(x))
        n = y.size(0)
        return self.l1(self.f(y)) + self.l2(y.flatten(1)) + self.l3(y.reshape(n, y.size(1) * 16))


def test_flatten_spellings_share_one_stride_map():
    plan, student = grow(FlattenVariants(), torch.randn(2, 3, 4, 4))
    assert spaces(plan)["conv"].new_width == 8
    assert student.l1.in_features == student.l2.in_features == student.l3.in_features == 128


class ChannelSplitReshape(nn.Module):
    def __init__(self, with_input: bool):
        super().__init__()
        self.with_input = with_input
        self.conv = nn.Conv2d(3, 3 if with_input else 8, 1)
        self.head = nn.Linear(3 if with_input else 4, 2)

    def forward(self, x):
        y = self.conv(x)
        if self.with_input:
            y = torch.cat([x, y], 1)  # block 0 is the model input: fixed
        n, c = y.shape[:2]
        y = y.view(n, 2, c // 2, -1)  # splits the channel axis into (blocks, units)
        return self.head(y.mean((1, 3)))


def test_reshape_splitting_channels_into_blocks_shares_one_map():
    plan, student = grow(ChannelSplitReshape(False), torch.randn(2, 3, 4, 4))
    sp = spaces(plan)
    assert set(sp["conv[0:4]"].space.producers) == {"conv[0:4]", "conv[4:8]"}  # one map for both blocks
    assert student.conv.out_channels == 16 and student.head.in_features == 8


def test_reshape_splitting_a_space_against_a_fixed_block_freezes():
    plan, _ = grow(ChannelSplitReshape(True), torch.randn(2, 3, 4, 4))
    assert spaces(plan)["conv"].reasons[0].code == "reshape_splits_space"


class GroupedConv(nn.Module):
    def __init__(self, groups=4):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=groups)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.g(F.relu(self.a(x)))))


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_widens_each_group_alike(groups):
    plan, student = grow(GroupedConv(groups), torch.randn(2, 3, 5, 5), factor=1.5)
    assert student.g.groups == groups
    per_in, per_out = 8 // groups, 12 // groups
    assert student.g.in_channels == groups * int(per_in * 1.5 + 0.5)
    assert student.g.out_channels == groups * int(per_out * 1.5 + 0.5)
    pieces = [p for p in plan.spaces if p.name.startswith("a[")]
    assert len(pieces) == groups and len({p.new_width for p in pieces}) == 1


def test_grouped_conv_conflicting_widths_refused():
    model, x = GroupedConv(2).double(), torch.randn(2, 3, 5, 5).double()
    with pytest.raises(n2n_fx.ConstraintError):
        n2n_fx.plan(model, x, widths={"a[0:4]": 6, "a[4:8]": 8})
    # a request for one group applies to every group
    plan = n2n_fx.plan(model, x, widths={"a[0:4]": 6})
    assert {p.name: p.new_width for p in plan.spaces if p.name.startswith("a[")} == {"a[0:4]": 6, "a[4:8]": 6}
    assert_preserved(model, n2n_fx.apply_plan(plan), x)


class Conv1d3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(2, 6, 3, padding=1), nn.BatchNorm1d(6)
        self.c3, self.b3 = nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4)
        self.p1, self.p3 = nn.AvgPool1d(2), nn.AdaptiveAvgPool3d(1)
        self.h1, self.h3 = nn.Linear(6 * 4, 3), nn.Linear(4, 3)

    def forward(self, x, v):
        a = self.p1(F.relu6(self.b1(self.c1(x)))).flatten(1)
        b = self.p3(F.hardswish(self.b3(self.c3(v)))).flatten(1)
        return self.h1(a) + self.h3(b)


def test_conv1d_conv3d_and_batchnorm_variants():
    model = Conv1d3d().double().eval()
    x = (torch.randn(3, 2, 8).double(), torch.randn(3, 2, 4, 4, 4).double())
    plan = n2n_fx.plan(model, x, factor=1.5)
    student = n2n_fx.apply_plan(plan)
    assert_preserved(model, student, x)
    assert_preserved(model, student, x, mode="train")
    assert student.b1.num_features == 9 and student.b3.num_features == 6


def test_deepen_conv1d_and_3d():
    model = Conv1d3d().double().eval()
    x = (torch.randn(3, 2, 8).double(), torch.randn(3, 2, 4, 4, 4).double())
    student = n2n_fx.deepen(model, x, after=["b1", "b3", "c1"], batch_norm=True)
    kinds = {type(m).__name__ for n, m in student.named_modules() if n.startswith("n2n_deepen")}
    assert {"Conv1d", "Conv3d", "BatchNorm1d", "BatchNorm3d"} <= kinds
    assert_preserved(model, student, x)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh()])
def test_deepen_repeats_idempotent_activation(act):
    model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2)).double()
    x = torch.randn(5, 4).double()
    student = n2n_fx.deepen(model, x, after=["1"])
    inserted = [type(m) for n, m in student.named_modules() if n.startswith("n2n_deepen_") and "." in n]
    assert type(act) in inserted
    assert_preserved(model, student, x)


@pytest.mark.parametrize("act", [nn.Tanh(), nn.GELU(), nn.SiLU(), nn.LeakyReLU(), nn.ELU(), nn.Sigmoid(),
                                 nn.Hardswish(), nn.Hardsigmoid()])
def test_deepen_refuses_non_idempotent_activation(act):
    model = nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 2)).double()
    x = torch.randn(5, 4).double()
    with pytest.raises(n2n_fx.DeepenError) as info:
        n2n_fx.deepen(model, x, after=["1"])
    assert "activation=None" in str(info.value)
    # the linear identity layer is always exact
    assert_preserved(model, n2n_fx.deepen(model, x, after=["1"], activation=None), x)


def test_broadcast_against_constants_and_scalars():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)
            self.register_buffer("shift", torch.randn(5))

        def forward(self, x):
            y = (self.a(x) * 2.0 - 1.0) / 3.0
            y = torch.add(y, self.shift, alpha=0.5).sub(0.1)
            return self.b(torch.relu(y))

    plan, student = grow(M(), torch.randn(4, 3))
    assert student.shift.shape == (10,)
    assert "shift" in spaces(plan)["a"].space.carriers


def test_model_input_coupling_freezes():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x) + x)  # residual onto the input: the input width is fixed

    plan, _ = grow(M(), torch.randn(3, 4))
    assert spaces(plan)["a"].reasons[0].code == "fixed_coupling"


def test_shared_module_called_twice():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.shared, self.head = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(F.relu(self.shared(F.relu(self.shared(F.relu(self.a(x)))))))

    plan, _ = grow(M(), torch.randn(4, 3), factor=1.5)
    # the shared layer's input and output must be one space (its weight is one tensor)
    sp = spaces(plan)
    assert "shared" in sp["a"].space.producers and not sp["a"].reasons


def test_matmul_with_activation_operands_freezes():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(4, 6), nn.Linear(4, 6)

        def forward(self, x):
            return (self.q(x) @ self.k(x).t()).sum(-1)

    plan, _ = grow(M(), torch.randn(3, 4))
    assert spaces(plan)["q"].reasons[0].code == "activation_matmul"


def test_width_one_space_into_a_one_channel_consumer():
    """A width-1 piece read by a conv with in_channels=1: its weight axis of size 1 is a space too."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.u, self.v = nn.Conv2d(1, 3, 1), nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            p, q = torch.split(torch.relu(self.a(x)), [1, 2], dim=1)
            return self.u(p) + self.v(q)

    plan, student = grow(M(), torch.randn(2, 1, 3, 3))
    assert spaces(plan)["a[0:1]"].new_width == 2 and student.u.in_channels == 2
