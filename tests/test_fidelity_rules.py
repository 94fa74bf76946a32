"""Issue 11, rules half: literal full-width slices follow the new width, parameters read off their
table role freeze, grouped-conv ties meeting a norm settle, deepening odd ranks is a typed error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx

from .helpers import assert_unchanged, snapshot


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))


def widen_exact(model: nn.Module, x: torch.Tensor, frontend: str = "fx", **kw) -> tuple[n2n_fx.Plan, nn.Module]:
    model = model.double().eval()
    snap = snapshot(model)
    plan = n2n_fx.plan(model, x, factor=kw.pop("factor", 2.0), frontend=frontend, **kw)
    student = n2n_fx.apply_plan(plan)
    report = n2n_fx.verify(model, student, x)
    assert report.ok and report.max_rel_err < 1e-12, report
    assert_unchanged(model, snap)
    return plan, student


def by_name(plan: n2n_fx.Plan) -> dict:
    return {sp.name: sp for sp in plan.spaces}


class Narrow(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.c1, self.c2, self.mode = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3), mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        if self.mode == "torch.narrow":
            h = torch.narrow(h, 1, 0, 4)
        elif self.mode == "method":
            h = h.narrow(1, 0, 4)
        elif self.mode == "negative_start":
            h = h.narrow(-3, -4, 4)
        elif self.mode == "slice":
            h = h[:, :4]
        elif self.mode == "slice0":
            h = h[:, 0:4]
        elif self.mode == "slice_neg":
            h = h[:, -4:]
        elif self.mode == "slice_past_end":
            h = h[:, :100]
        elif self.mode == "ellipsis":
            h = h[..., :4, :, :]
        elif self.mode == "partial":
            h = torch.cat([h[:, :3], h[:, 3:]], 1)  # two real cuts: the space stays
        return self.c2(h)


WHOLE = ["torch.narrow", "method", "negative_start", "slice", "slice0", "slice_neg", "slice_past_end", "ellipsis"]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("mode", WHOLE)
def test_full_width_literal_narrow_follows_the_new_width(mode, frontend, batch):
    plan, student = widen_exact(Narrow(mode), _x(batch), frontend)
    assert by_name(plan)["c1"].frozen is None
    assert student.c2.weight.shape[1] == 8
    assert old_width_literals(student, 4) == []


def old_width_literals(gm: torch.fx.GraphModule, old: int) -> list[str]:
    """Slicing nodes of the student that still carry the old width as a literal bound."""
    found = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "narrow" in name or "slice" in name:
            if old in [a for a in node.args[2:] if isinstance(a, int)]:
                found.append(node.name)
        elif name == "getitem" and isinstance(node.args[0], torch.fx.Node):
            index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            if any(isinstance(i, slice) and old in (i.start, i.stop) for i in index):
                found.append(node.name)
    return found


def test_whole_slice_rewritten_in_the_student_graph():
    _, student = widen_exact(Narrow("slice"), _x())
    items = [n.args[1] for n in student.graph.nodes if n.op == "call_function" and "getitem" in str(n.target)]
    assert items and all(s == slice(None) for idx in items for s in (idx if isinstance(idx, tuple) else (idx,)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_partial_slices_cut_the_space_into_pieces_that_widen(frontend):
    plan, student = widen_exact(Narrow("partial"), _x(), frontend)
    pieces = {name: sp for name, sp in by_name(plan).items() if name.startswith("c1")}
    assert sorted(pieces) == ["c1[0:3]", "c1[3:4]"], sorted(pieces)
    assert all(sp.frozen is None and sp.new_width == 2 * sp.width for sp in pieces.values())
    assert student.c2.weight.shape[1] == 8


class WeightRead(nn.Module):
    def __init__(self, read: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.read = nn.Linear(3, 4), nn.Linear(4, 5), read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))
        w = self.fc2.weight
        r = {"amax": lambda: w.amax(), "mean1": lambda: w.mean(1).amax(), "amax1": lambda: w.amax(1).amax(),
             "view": lambda: w.view(-1).amax(), "t_amax": lambda: w.t().amax(0).amax(),
             "flatten_mean": lambda: w.flatten().mean()}[self.read]()
        return h * r


@pytest.mark.parametrize("read", ["amax", "mean1", "amax1", "view", "t_amax", "flatten_mean"])
def test_a_contracted_weight_read_by_a_reduction_freezes_with_param_read(read):
    plan, _ = widen_exact(WeightRead(read), _x())
    fc1 = by_name(plan)["fc1"]
    assert "param_read" in [r.code for r in fc1.reasons], fc1.reasons


class RowRead(nn.Module):
    """Reads over fc1's copied rows (its output axis) only: replication keeps max and the copies."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))
        return h * self.fc1.weight.amax()


def test_a_read_of_copied_rows_keeps_widening():
    plan, student = widen_exact(RowRead(), _x())
    assert by_name(plan)["fc1"].frozen is None
    assert student.fc1.weight.shape[0] == 8


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1)
        self.gamma = nn.Parameter(torch.randn(4))
        self.w = nn.Parameter(torch.randn(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x) * self.gamma.view(1, -1, 1, 1)
        y = F.linear(h.mean((2, 3)), self.w)
        return self.c2(h) + y.sum()


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_layer_scale_and_functional_linear_keep_widening(frontend):
    plan, _ = widen_exact(LayerScale(), _x(), frontend)
    assert by_name(plan)["c1"].frozen is None


class GroupedPiece(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.c0, self.g, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1)
        self.ln, self.kind = nn.LayerNorm(8), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.g(self.c0(x))
        if self.kind == "layer_norm":
            h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.kind == "mean":
            return self.head(h) + h.mean(1, keepdim=True)
        elif self.kind == "piece_layer_norm":
            a, b = h.split(4, 1)
            h = torch.cat([F.layer_norm(a.permute(0, 2, 3, 1), (4,)).permute(0, 3, 1, 2), b], 1)
        elif self.kind == "piece_mean":
            a, _ = h.split(4, 1)
            return self.head(h) + a.mean(1, keepdim=True)
        return self.head(h)


@pytest.mark.parametrize("factor", [1.25, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("kind", ["layer_norm", "mean", "piece_layer_norm", "piece_mean"])
def test_grouped_conv_tie_meeting_a_norm_is_exact_at_any_factor(kind, factor):
    widen_exact(GroupedPiece(kind), _x(), factor=factor)


def test_grouped_conv_tie_meeting_a_norm_requested_off_grid_is_a_constraint_error():
    model, x = GroupedPiece("piece_layer_norm").double().eval(), _x()
    assert {"g[0:4]", "g[4:8]"} <= set(by_name(n2n_fx.plan(model, x)))
    with pytest.raises(n2n_fx.ConstraintError, match="multiple of 4"):
        n2n_fx.widen(model, x, widths={"g[4:8]": 6})  # the normalised piece g[0:4] allows 8, not 6
    student = n2n_fx.widen(model, x, widths={"g[4:8]": 8})
    assert student.g.weight.shape[0] == 16 and n2n_fx.verify(model, student, x).ok


class SevenD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(torch.relu(self.c(x.reshape(1, 1, 1, 1, 2, 3, 36)[..., :4])))


class SixDChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c(x.reshape(2, 3, 1, 1, 6, 6)[:, :, 0]))
        return h.reshape(2, 4, 1, 1, 1, 36) + 1


@pytest.mark.parametrize("block", ["identity", "residual"])
def test_deepen_after_a_7d_value_with_last_axis_features_is_exact(block):
    model = SevenD().double()
    student = n2n_fx.deepen(model, _x(), after=["c"], block=block)
    assert n2n_fx.verify(model, student, _x()).ok


@pytest.mark.parametrize("block", ["identity", "residual"])
def test_deepen_after_a_6d_channels_first_value_is_a_typed_error(block):
    with pytest.raises(n2n_fx.DeepenError, match="6-D"):
        n2n_fx.deepen(SixDChannels().double(), _x(), after=["add"], block=block)


class PerChannel(nn.Module):
    """Ops over the spatial dims only (or casts): the channel space c1 must widen through them."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.c1, self.c2, self.op = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3), op
        self.up, self.zero_pad, self.softmax = nn.Upsample(scale_factor=2), nn.ZeroPad2d(1), nn.Softmax(dim=2)
        self.refl = nn.ReflectionPad2d((1, 0, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, op = torch.relu(self.c1(x)), self.op
        if op == "interpolate_bilinear":
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        elif op == "interpolate_nearest_size":
            h = F.interpolate(h, size=(5, 7))
        elif op == "upsample":
            h = self.up(h)
        elif op == "pad":
            h = F.pad(h, (1, 1, 2, 0))
        elif op == "pad_reflect":
            h = F.pad(h, (1, 1, 1, 1), mode="reflect")
        elif op == "zero_pad_module":
            h = self.zero_pad(h)
        elif op == "reflection_pad_module":
            h = self.refl(h)
        elif op == "to_dtype":
            h = h.to(torch.float32).to(torch.float64)
        elif op == "type_as":
            h = h.float().type_as(x)
        elif op == "log_softmax_positions":
            h = F.log_softmax(h.flatten(2), -1).view(h.shape)
        elif op == "softmax_module":
            h = self.softmax(h)
        return self.c2(h)


PER_CHANNEL = ["interpolate_bilinear", "interpolate_nearest_size", "upsample", "pad", "pad_reflect",
               "zero_pad_module", "reflection_pad_module", "to_dtype", "type_as", "log_softmax_positions",
               "softmax_module"]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("op", PER_CHANNEL)
def test_per_channel_ops_widen_the_channel_space(op, frontend, batch):
    plan, student = widen_exact(PerChannel(op), _x(batch), frontend)
    assert by_name(plan)["c1"].frozen is None, by_name(plan)["c1"].reasons
    assert student.c2.weight.shape[1] == 8


class OverChannels(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.c1, self.c2, self.op = nn.Conv2d(3, 4, 3), nn.Conv2d(5, 5, 3), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        if self.op == "pad_channels":
            return self.c2(F.pad(h, (0, 0, 0, 0, 0, 1)))  # one zero channel appended: touches the space
        return self.c2(torch.cat([h.softmax(1), h[:, :1]], 1))  # softmax over the space


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("op, code", [("pad_channels", "padded"), ("softmax_channels", "reduced_over")])
def test_pad_or_softmax_over_the_channel_space_freezes_it(op, code, frontend):
    plan, _ = widen_exact(OverChannels(op), _x(), frontend)
    c1 = [sp for name, sp in by_name(plan).items() if name.startswith("c1")]  # h[:, :1] cuts a piece
    assert c1 and all(code in [r.code for r in sp.reasons] for sp in c1)


class SqueezeExcite(nn.Module):
    def __init__(self, expand_as: bool) -> None:
        super().__init__()
        self.c0, self.pool, self.head = nn.Conv2d(3, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 5, 1)
        self.fc = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8), nn.Sigmoid())
        self.expand_as = expand_as

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c0(x)
        b, c, _, _ = x.size()
        y = self.fc(self.pool(x).view(b, c)).view(b, c, 1, 1)
        return self.head(x * (y.expand_as(x) if self.expand_as else y))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("expand_as", [False, True])
def test_senet_view_with_sizes_read_at_run_time_widens(expand_as, frontend, batch):
    plan, student = widen_exact(SqueezeExcite(expand_as), _x(batch), frontend)
    spaces = by_name(plan)
    assert spaces["c0"].frozen is None and spaces["fc.0"].frozen is None
    assert student.c0.weight.shape[0] == 16 and student.get_submodule("fc.0").weight.shape == (8, 16)


class SizeOfAnotherSpace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.a(x).size(1)
        return self.head(self.b(x).mean((2, 3)).view(-1, c))  # b's width sized by a's: held


def test_a_size_read_from_another_space_still_freezes_both():
    plan, _ = widen_exact(SizeOfAnotherSpace(), _x())
    assert by_name(plan)["b"].reasons[0].code == "untracked_size"


class OptionalMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.c(x)
        if mask is not None:
            h = h * mask
        return self.d(h)


class ItemAssignment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c(x)
        h[:, 0] = 0
        return self.d(h)


def test_optional_none_argument_is_named_with_a_fix_that_works():
    with pytest.raises(n2n_fx.TraceFailure) as info:
        n2n_fx.widen(OptionalMask().double(), _x(), factor=2, frontend="fx")
    text = str(info.value)
    assert "'mask'" in text and "default to None" in text and "frontend='export'" in text
    assert "does not run on the example inputs" not in text
    model = OptionalMask().double().eval()  # the fix the message gives works
    assert n2n_fx.verify(model, n2n_fx.widen(model, _x(), factor=2, frontend="export"), _x()).ok
    auto = n2n_fx.plan(model, _x(), factor=2)  # the default front end takes that fix by itself
    assert auto.analysis.gm.meta["n2n_frontend"] == "export"


def test_item_assignment_is_not_called_control_flow():
    with pytest.raises(n2n_fx.TraceFailure) as info:
        n2n_fx.plan(ItemAssignment().double(), _x(), frontend="fx")
    text = str(info.value)
    assert "item assignment" in text and "frontend='export'" in text
    assert "control flow" not in text and "concrete_args" not in text
    model = ItemAssignment().double().eval()
    plan = n2n_fx.plan(model, _x(), frontend="export")
    assert by_name(plan)["c"].reasons[0].code == "index_on_space"  # h[:, 0] = 0 writes one channel
    assert n2n_fx.plan(model, _x()).analysis.gm.meta["n2n_frontend"] == "export"  # auto
    assert n2n_fx.verify(model, n2n_fx.widen(model, _x(), factor=2, frontend="export"), _x()).ok


class Constants(nn.Module):
    """zeros / ones sized by literals (T5's zero position bias) or by a size read from a space."""

    def __init__(self, computed: bool) -> None:
        super().__init__()
        self.a, self.b, self.computed = nn.Linear(3, 4), nn.Linear(4, 2), computed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        width = h.shape[-1] if self.computed else 4
        return self.b(h * torch.ones((x.shape[0], 1, 4)) + torch.zeros((1, x.shape[1], width)))


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("computed", [False, True])
def test_constants_sized_by_literals_take_the_space_they_meet(computed: bool, frontend: str, batch: int) -> None:
    x = torch.randn(batch, 5, 3, dtype=torch.float64)
    plan, student = widen_exact(Constants(computed), x, frontend)
    # a literal width follows the space (export writes h.shape[-1] as a literal too); fx keeps a size
    # read at run time, which the rule does not track: that space freezes (never a wrong student)
    frozen = computed and frontend == "fx"
    assert (by_name(plan)["a"].new_width == 4) == frozen, str(plan)
