"""Exact tests for the mutants of n2n_fx/wider.py that the passes' tests let through (the fast stage
of `python -m proofs.mutation_tool test n2n_fx/wider.py`): each pins one line, value by value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx import indexmaps as im
from n2n_fx.planning import seeded
from n2n_fx.wider import _counts, _scale_along


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return MLP().double().eval(), torch.randn(5, 3, dtype=torch.float64)


def test_noise_goes_only_on_the_consumer_columns_of_replicated_units() -> None:
    """symmetry='noise': N(0, (0.01 std(w))^2) from the seeded stream of (param, axis), added to the
    consumer columns of replicated units only, value by value."""
    model, x = _mlp()
    widths = {"fc1": 6}
    plain = n2n_fx.widen(model, x, widths=widths, seed=3)
    noisy = n2n_fx.widen(model, x, widths=widths, seed=3, symmetry="noise")
    g = next(sp.g for sp in n2n_fx.plan(model, x, widths=widths, seed=3).spaces if sp.name == "fc1")
    replicated = im.replica_counts(g, 4)[g] > 1  # the columns of units with more than one copy
    assert 0 < int(replicated.sum()) < 6
    w = plain.fc2.weight.detach()
    draw = torch.randn(w.shape, generator=seeded(3, "noise", ("fc2.weight", 1)), dtype=torch.float64)
    want = w + draw * (0.01 * float(w.std())) * replicated.double().reshape(1, -1)
    assert torch.equal(noisy.fc2.weight.detach(), want)
    for name in ("fc1.weight", "fc1.bias", "fc2.bias"):  # producers and biases are never noised
        assert torch.equal(noisy.state_dict()[name], plain.state_dict()[name])


class _Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(1, 1), nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_noise_when_every_unit_is_replicated() -> None:
    """One unit, two replicas: both consumer columns noised, relative to the gathered weight's std."""
    torch.manual_seed(0)
    model, x = _Scalar().double().eval(), torch.randn(3, 1, dtype=torch.float64)
    plain = n2n_fx.widen(model, x, widths={"fc1": 2}, seed=1)
    noisy = n2n_fx.widen(model, x, widths={"fc1": 2}, seed=1, symmetry="noise")
    w = plain.fc2.weight.detach()  # (1, 2)
    draw = torch.randn(w.shape, generator=seeded(1, "noise", ("fc2.weight", 1)), dtype=torch.float64)
    assert torch.equal(noisy.fc2.weight.detach(), w + draw * (0.01 * float(w.std())))


def test_counts_are_the_exact_reciprocals_only_up_to_float32s_integers() -> None:
    assert torch.equal(_counts(1 / torch.tensor([1.0, 2, 3, 7], dtype=torch.float64)), torch.tensor([1.0, 2, 3, 7]))
    assert _counts(torch.tensor([0.3, 0.7], dtype=torch.float64)) is None  # split's alphas: not 1/c
    assert torch.equal(_counts(torch.tensor([2.0**-24], dtype=torch.float64)), torch.tensor([2.0**24]))
    assert _counts(torch.tensor([1 / (2**24 + 1)], dtype=torch.float64)) is None  # 2**24 + 1 is no float32


def test_float32_division_by_counts_is_the_float64_routes_bits() -> None:
    w = torch.randn(512, 1, generator=torch.Generator().manual_seed(0)).float() * 100
    counts = torch.arange(1, 4097, dtype=torch.float64)
    block = w.expand(-1, 64)
    for start in range(0, 4096, 64):
        c = counts[start:start + 64]
        got = _scale_along(block.clone(), 1, 1 / c, inplace=True)
        assert torch.equal(got, (block.double() * (1 / c)).float()), start


class _FunctionalNorm(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        self.shape = shape
        self.w, self.b = nn.Parameter(torch.rand(shape) + 0.5), nn.Parameter(torch.randn(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.layer_norm(self.fc1(x), self.shape, self.w, self.b))


@pytest.mark.parametrize("batch", [1, 3])
def test_functional_layer_norm_shape_literal_follows_the_width(batch: int) -> None:
    torch.manual_seed(0)
    model, x = _FunctionalNorm((4,)).double().eval(), torch.randn(batch, 3, dtype=torch.float64)
    student = n2n_fx.widen(model, x, widths={"fc1": 8})
    norm = next(n for n in student.graph.nodes if n.target is F.layer_norm)
    assert tuple(norm.args[1]) == (8,)
    report = n2n_fx.verify(model, student, x)
    assert report.ok and report.max_rel_err <= 1e-10, report


class _Fused(nn.Module):
    """A fused projection sliced into two pieces by literal bounds: the only literals that change."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.fa, self.fb = nn.Linear(3, 6), nn.Linear(2, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(x))
        return self.fa(h[:, :2]) + self.fb(h[:, 2:])


@pytest.mark.parametrize("batch", [1, 3])
def test_slice_bounds_alone_recompile_the_student(batch: int) -> None:
    torch.manual_seed(0)
    model, x = _Fused().double().eval(), torch.randn(batch, 3, dtype=torch.float64)
    student = n2n_fx.widen(model, x, factor=2.0)
    assert student.proj.weight.shape == (12, 3)
    assert "slice(0, 4, None))]" in student.code and "slice(4, 12, None))]" in student.code  # the code, recompiled
    report = n2n_fx.verify(model, student, x)
    assert report.ok and report.max_rel_err <= 1e-10, report


def test_a_literal_argument_is_replaced_by_position_or_by_keyword() -> None:
    from n2n_fx.inference import Rewrite, RewriteKind
    from n2n_fx.wider import _rewrite_arg

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    by_position = graph.call_function(F.group_norm, (x, 2, None, None, 1e-5))
    by_keyword = graph.call_function(F.group_norm, (x,), {"num_groups": 2, "eps": 1e-5})
    rw = Rewrite(by_position.name, RewriteKind.ARG, ((),), 1, "num_groups")
    assert _rewrite_arg(by_position, rw, [4]) and by_position.args == (x, 4, None, None, 1e-5)
    assert by_position.kwargs == {}
    assert _rewrite_arg(by_keyword, rw, [4]) and by_keyword.args == (x,)
    assert by_keyword.kwargs == {"num_groups": 4, "eps": 1e-5}


def test_the_self_planning_pass_widens_by_two_when_given_no_factor_or_widths() -> None:
    from n2n_fx.wider import Net2WiderNet

    model, x = _mlp()
    result = Net2WiderNet(example_inputs=x)(torch.fx.symbolic_trace(model))
    assert result.modified and result.graph_module.fc1.weight.shape == (8, 3)
    report = n2n_fx.verify(model, result.graph_module, x)
    assert report.ok and report.max_rel_err <= 1e-10, report


def test_the_student_graphs_tensor_meta_holds_the_new_shapes_and_contiguous_strides() -> None:
    """Later passes read meta['tensor_meta']: it must describe the student, not the teacher."""
    from n2n_fx.wider import Net2WiderNet

    model, x = _mlp()
    gm = Net2WiderNet(widths={"fc1": 6}, example_inputs=x)(torch.fx.symbolic_trace(model)).graph_module
    metas = {n.name: n.meta["tensor_meta"] for n in gm.graph.nodes if "tensor_meta" in n.meta}
    assert metas["fc1"].shape == (5, 6) and metas["fc1"].stride == (6, 1)
    assert metas["relu"].shape == (5, 6) and metas["fc2"].shape == (5, 2) and metas["fc2"].stride == (2, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_half_weights_divided_by_counts_round_once_either_way(dtype: torch.dtype, inplace: bool) -> None:
    """The 16-bit fast path, out of place (the teacher's tensor: the pass scales it first) and in place."""
    w = (torch.randn(5, 6, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    scale = 1 / torch.tensor([1.0, 2, 3, 5, 7, 255], dtype=torch.float64)
    before = w.clone()
    got = _scale_along(w, 1, scale, inplace=inplace)
    assert torch.equal(got, (before.double() * scale).to(dtype))
    assert torch.equal(w, got if inplace else before)  # out of place: the input is untouched


def test_a_plan_that_widens_nothing_reports_the_graph_unmodified():
    """_rewrite_graph starts from 'nothing changed': a plan at the teacher's widths (no literal to
    rewrite, no tensor replaced) is a PassResult with modified=False."""
    from n2n_fx.wider import Net2WiderNet

    model, x = MLP().double(), torch.randn(2, 3, dtype=torch.float64)
    result = Net2WiderNet(n2n_fx.plan(model, x))(torch.fx.symbolic_trace(model))
    assert result.modified is False
    assert Net2WiderNet(n2n_fx.plan(model, x, factor=2.0))(torch.fx.symbolic_trace(model)).modified is True
