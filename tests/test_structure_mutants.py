"""The structure rules (cat, narrow, a view into heads, pixel_shuffle) pinned where the mutation
sample found them loose: each test fails on one of cosmic-ray's surviving mutants."""

from __future__ import annotations

import tomllib

import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx.spec import parse_table, specs_dir

from .helpers import assert_preserved

E, H, D = 8, 2, 4


def _grow(model, x, **kw):
    model, x = model.double().eval(), x.double()
    plan = n2n_fx.plan(model, x, factor=2.0, seed=0, **kw)
    student = n2n_fx.apply_plan(plan)
    for batch in (x[:1], x):  # a batch of one and of more
        assert_preserved(model, student, batch)
    return plan, student


class CatOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(torch.cat([self.a(x)], dim=1))


def test_cat_of_a_single_tensor_passes_its_space_through():
    """cat([h]) is h: the non-cat axes are read from the one tensor there is (not a second)."""
    plan, student = _grow(CatOne(), torch.randn(2, 3, 5, 5))
    (sp,) = [p for p in plan.spaces if p.name == "a"]
    assert not sp.reasons and sp.new_width == 8 and student.b.in_channels == 8


class NarrowEnd(nn.Module):
    """The last two channels of a conv, by a negative narrow start, feed a conv of their own."""

    def __init__(self, start):
        super().__init__()
        self.start = start
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(2, 3, 1), nn.Conv2d(6, 3, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h.narrow(1, self.start, 2)) + self.c(h)


def test_narrow_with_a_negative_start_cuts_the_same_piece_as_its_positive_start():
    """narrow(1, -2, 2) on 6 channels is narrow(1, 4, 2): the same piece, widened alike."""
    x = torch.randn(2, 3, 4, 4)
    widths = []
    for start in (-2, 4):
        torch.manual_seed(0)
        plan, _ = _grow(NarrowEnd(start), x)
        pieces = [p for p in plan.spaces if p.name.startswith("a[")]
        assert len(pieces) == 2 and all(not p.reasons for p in pieces), [(p.name, p.reasons) for p in plan.spaces]
        widths.append(sorted((p.name, p.width, p.new_width) for p in pieces))
    assert widths[0] == widths[1] == [("a[0:4]", 4, 8), ("a[4:6]", 2, 4)]


class ManualAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, E)
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape

        def split(z):
            return z.view(b, t, H, D).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
        return self.o(a.transpose(1, 2).reshape(b, t, E))


def test_a_view_into_attention_splits_whole_heads_when_heads_grow_by_count():
    """heads='count': the view (b, t, E) -> (b, t, H, D) before sdpa makes H the space (whole
    heads, D kept); the student's views read 2H heads of D."""
    torch.manual_seed(0)
    plan, student = _grow(ManualAttention(), torch.randn(2, 5, 3), heads="count")
    heads = [p for p in plan.spaces if p.name.endswith("heads")]
    assert heads and all(p.width == H and p.new_width == 2 * H for p in heads), [(p.name, p.width) for p in plan.spaces]
    views = [n.args[1:] for n in student.graph.nodes if n.target == "view"]
    assert views and all(tuple(v)[-2:] == (2 * H, D) for v in views), views


def test_pixel_shuffle_entry_without_a_channel_axis_reads_channels_at_axis_1():
    """An entry that names no channel_axis: NCHW's axis 1 is the channel axis (the rule's default)."""
    raw = tomllib.loads((specs_dir() / "ops.toml").read_text())
    entry = next(e for e in raw["op"] if e["name"] == "pixel_shuffle")
    del entry["channel_axis"]
    table = parse_table(raw)

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(2, 3, 1)

        def forward(self, x):
            return self.b(F.pixel_shuffle(self.a(x), 2))

    torch.manual_seed(0)
    model = Shuffle().double().eval()
    an = n2n_fx.infer(n2n_fx.trace(model, torch.randn(2, 3, 4, 4, dtype=torch.float64)), table)
    assert an.ops and "pixel_shuffle" in an.ops.values()
    (sp,) = [s for s in an.spaces if s.name == "a"]
    assert sp.width == 2 and not sp.reasons  # 8 channels = 2 output channels x r^2 = 4: each unit 4 wide


def _consistent(an) -> None:
    """Every value the rules produced has one layout per axis, each as wide as the axis."""
    from n2n_fx import spaces as S
    from n2n_fx.inference.values import Val, _walk

    for name, value in an.vals.items():
        for v in _walk(value):
            if isinstance(v, Val):
                assert len(v.layouts) == v.ndim, (name, v)
                assert all(S.width(lay) == d for lay, d in zip(v.layouts, v.shape)), (name, v)


class Unbind(nn.Module):
    """unbind on an odd axis (W of NCHW): every piece keeps the channel space on axis 1."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        p, q, r = h.unbind(3)
        y = p + q * r  # (B, C, H)
        return self.b(y.transpose(1, 2)[:, None])  # a None index: a new axis of size 1


def test_unbind_and_a_none_index_keep_one_layout_per_axis():
    torch.manual_seed(0)
    model, x = Unbind().double().eval(), torch.randn(2, 3, 4, 3, dtype=torch.float64)
    _consistent(n2n_fx.infer(n2n_fx.trace(model, x)))
    plan, student = _grow(model, x)
    (sp,) = [p for p in plan.spaces if p.name == "a"]
    assert not sp.reasons and student.b.in_features == 8


class PixelUnshuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(20, 2, 1)

    def forward(self, x):
        return self.b(F.pixel_unshuffle(self.a(x), 2))


def test_pixel_unshuffle_of_five_channels_is_a_stride_map():
    """20 output channels are whole copies (r^2 = 4) of 5: 20 % 5 == 0 though 20 & 5 != 0."""
    torch.manual_seed(0)
    plan, student = _grow(PixelUnshuffle(), torch.randn(2, 3, 4, 4))
    (sp,) = [p for p in plan.spaces if p.name == "a"]
    assert not sp.reasons and sp.new_width == 10 and student.b.in_channels == 40


class DimRead(nn.Module):
    """x.dim() is a rank, not a width: a size computed from it freezes nothing."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)  # (5, 4)
        n = h.t().dim()  # the space leads the transposed value: a rank read must not taint with it
        return self.b(h.reshape(h.shape[0], 4, n - 1).squeeze(-1))


def test_a_rank_read_does_not_taint_a_size_with_the_space_of_axis_0():
    torch.manual_seed(0)
    plan, _ = _grow(DimRead(), torch.randn(5, 3))
    (sp,) = [p for p in plan.spaces if p.name == "a"]
    assert not sp.reasons and sp.new_width == 8, sp.reasons
