"""unflatten (torch.unflatten, Tensor.unflatten, aten.unflatten.int): a view that splits one dim.
Its literal sizes follow the new widths on the student, as view's do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import n2n_fx


class Back(nn.Module):
    """A conv map flattened (a stride map) and unflattened back, then a feature axis split off a size 1."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c, self.d, self.a, self.o = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1), nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c(x).flatten(1)
        if self.how == "function":
            h = torch.unflatten(h, 1, (4, 3, 3))
        elif self.how == "keyword":
            h = h.unflatten(dim=1, sizes=(4, 3, 3))
        elif self.how == "minus_one":
            h = h.unflatten(1, (-1, 3, 3))  # -1 stays -1: it follows by itself
        else:
            h = h.unflatten(1, (h.shape[1] // 9, 3, 3))  # a size computed from the width: it follows too
        y = self.a(self.d(h.relu()).mean((2, 3)))
        return self.o(y.unflatten(-1, (6, 1)).flatten(1))


@pytest.mark.parametrize("how", ["function", "keyword", "minus_one", "computed"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("batch", [1, 3])
def test_unflatten_widens_exactly_and_rewrites_its_sizes(how, frontend, batch):
    model = Back(how).double().eval()
    x = torch.randn(batch, 2, 3, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0, frontend=frontend)
    assert {p.name: p.new_width for p in plan.spaces} == {"c": 8, "d": 6, "a": 12, "o": 2}
    student = n2n_fx.widen(model, x, factor=2.0, frontend=frontend)
    report = n2n_fx.verify(model, student, x)
    assert report.ok and report.max_rel_err < 1e-13, report
    sizes = [n.args[2] if len(n.args) > 2 else n.kwargs["sizes"] for n in student.graph.nodes if "unflatten" in str(n.target)]
    if how in ("function", "keyword") or frontend == "export":  # export records every size as a literal
        assert sizes[0][0] in (8, -1) and tuple(sizes[-1]) == (12, 1), sizes
        assert 4 not in sizes[0] and 6 not in sizes[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unflatten_student_in_user_dtypes_and_train_mode(dtype):
    model = Back("function").to(dtype).train()
    x = torch.randn(2, 2, 3, 3, dtype=dtype)
    student = n2n_fx.widen(model, x, factor=1.5, mode="train")
    report = n2n_fx.verify(model, student, x, mode="train")
    assert report.ok, report


class SplitFeatures(nn.Module):
    """Linear features unflattened into (2, 4): not attention, so the two blocks are one space."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(3, 8), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.a(x).unflatten(-1, (2, 4)).tanh()).sum(1)


def test_unflatten_into_blocks_shares_one_map_like_view():
    x = torch.randn(2, 3, dtype=torch.float64)
    model = SplitFeatures().double()
    plan = n2n_fx.plan(model, x, widths={"a[0:4]": 6})
    assert {p.name: p.new_width for p in plan.spaces}["a[0:4]"] == 6
    student = n2n_fx.widen(model, x, widths={"a[0:4]": 6})
    assert n2n_fx.verify(model, student, x).max_rel_err < 1e-13
    sizes = [n.args[2] for n in student.graph.nodes if n.target == "unflatten"]
    assert sizes == [(2, 6)]


class HeadsByUnflatten(nn.Module):
    """q, k, v split into (heads, head_dim) by unflatten, on the last dim or a positive one, into sdpa."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.q, self.k, self.v, self.o = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (p(x).unflatten(self.dim, (2, 4)).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).flatten(2))


class FixedDim(nn.Module):
    """unflatten of a fixed dim (positions 6 -> (2, 3)): its literal must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.a(x).unflatten(1, (2, 3)).flatten(1, 2)).sum(1)


@pytest.mark.parametrize("model", [HeadsByUnflatten(-1), HeadsByUnflatten(2), FixedDim()], ids=["heads-1", "heads2", "fixed"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("heads", ["count", "dim"])
def test_unflatten_into_heads_and_of_a_fixed_dim(model, frontend, heads):
    model = model.double()
    x = torch.randn(2 if frontend == "fx" else 1, 6 if isinstance(model, FixedDim) else 5, 4, dtype=torch.float64)
    student = n2n_fx.widen(model, x, factor=2.0, frontend=frontend, heads=heads)
    report = n2n_fx.verify(model, student, x)
    assert report.ok and report.max_rel_err < 1e-13, report
    assert sum(p.new_width > p.width for p in n2n_fx.plan(model, x, factor=2.0, frontend=frontend, heads=heads).spaces) >= 1
    if isinstance(model, FixedDim):
        sizes = [tuple(n.args[2]) for n in student.graph.nodes if "unflatten" in str(n.target)]
        assert sizes == [(2, 3)]
