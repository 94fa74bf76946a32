"""The contraction rules pinned where the mutation sample found them loose: bmm of two
activations with heads folded into the batch (the attention of older transformer code)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import n2n_fx

from .helpers import assert_preserved
from .test_structure_mutants import D, E, H, ManualAttention, _consistent


class BmmAttention(ManualAttention):
    """ManualAttention's projections, attention by bmm over the heads folded into the batch."""

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape

        def fold(z):  # (b, t, E) -> (b * H, t, D)
            return z.view(b, t, H, D).transpose(1, 2).reshape(-1, t, D)

        q, k, v = fold(self.q(h)), fold(self.k(h)), fold(self.v(h))
        a = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * D ** -0.5, dim=-1)
        y = torch.bmm(a, v).view(b, H, t, D).transpose(1, 2).reshape(b, t, E)
        return self.o(y)


def test_bmm_of_folded_heads_grows_whole_heads():
    torch.manual_seed(0)
    model, x = BmmAttention().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    _consistent(n2n_fx.infer(n2n_fx.trace(model, x)))
    plan = n2n_fx.plan(model, x, factor=2.0, seed=0)
    heads = [p for p in plan.spaces if p.name.endswith("heads")]
    assert heads and all(p.width == H and p.new_width == 2 * H and not p.reasons for p in heads), [
        (p.name, p.width, p.new_width, p.reasons) for p in plan.spaces]
    student = n2n_fx.apply_plan(plan)
    for batch in (x[:1], x):
        assert_preserved(model, student, batch)


class BroadcastBias(nn.Module):
    """F.linear broadcasts its bias: a (1, out) or 0-d bias parameter is legal torch."""

    def __init__(self, bias_shape):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(bias_shape))
        self.o = nn.Linear(4, 2)

    def forward(self, x):
        return self.o(torch.nn.functional.linear(x, self.w, self.b))


@pytest.mark.parametrize("bias_shape", [(4,), (1, 4), ()])
def test_linear_with_a_broadcast_bias_widens_its_last_axis(bias_shape):
    """Was an InternalError (the rule unified the out-features with the bias's axis 0, of size 1)."""
    torch.manual_seed(0)
    model, x = BroadcastBias(bias_shape).double().eval(), torch.randn(2, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0, seed=0)
    (sp,) = [p for p in plan.spaces if p.name == "w"]
    assert sp.new_width == 8 and not sp.reasons  # a 0-d bias adds one number to every unit: no coupling
    student = n2n_fx.apply_plan(plan)
    assert student.b.shape == ((1, 8) if bias_shape == (1, 4) else (8,) if bias_shape else ())
    for batch in (x[:1], x):
        assert_preserved(model, student, batch)
