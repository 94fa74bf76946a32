"""The contraction rules pinned where the mutation sample found them loose: bmm of two
activations with heads folded into the batch (the attention of older transformer code)."""

from __future__ import annotations

import torch
from torch import nn

import n2n_fx

from .helpers import assert_preserved
from .test_structure_mutants import _consistent

E, H, D = 8, 2, 4


class BmmAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, E)
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))

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
