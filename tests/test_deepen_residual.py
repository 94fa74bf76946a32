"""deepen(block='residual'): x + W2 phi(W1 x) with W2 = 0 is exact after any activation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import n2n_fx
from tests.helpers import assert_preserved


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 6, 3, padding=1), nn.SiLU()
        self.fc, self.gelu, self.out = nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x)).mean((2, 3))
        return self.out(torch.tanh(self.gelu(self.fc(h))))


def test_residual_block_after_non_idempotent_activations() -> None:
    torch.manual_seed(0)
    model, x = Mixed().double().eval(), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(n2n_fx.DeepenError, match="not idempotent"):
        n2n_fx.deepen(model, x, after=["gelu"])
    deeper = n2n_fx.deepen(model, x, after=["act", "gelu", "tanh"], block="residual", hidden=5, seed=1)
    inserted = {n: type(m).__name__ for n, m in deeper.named_modules() if n.startswith("n2n_deepen") and "." in n}
    assert inserted["n2n_deepen_act.residual_in"] == "Conv2d" and inserted["n2n_deepen_act.residual_act"] == "SiLU"
    assert inserted["n2n_deepen_gelu.residual_act"] == "GELU"
    assert deeper.get_submodule("n2n_deepen_gelu.residual_in").out_features == 5
    assert float(deeper.get_submodule("n2n_deepen_gelu.residual_in").weight.detach().abs().sum()) > 0  # W1 drawn
    report = assert_preserved(model, deeper, x)
    assert report.max_abs_err == 0.0  # x + 0 exactly
    wider = n2n_fx.widen(deeper, x, factor=1.5)  # the inserted blocks are table ops: they widen too
    assert wider.get_submodule("n2n_deepen_gelu.residual_in").out_features > 5
    assert_preserved(model, wider, x)


def test_residual_block_trains_off_zero() -> None:
    torch.manual_seed(0)
    model, x = Mixed().double(), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    deeper = n2n_fx.deepen(model, x, after=["gelu"], block="residual").train()
    deeper(x).square().mean().backward()
    assert float(deeper.get_submodule("n2n_deepen_gelu.residual_out").weight.grad.abs().sum()) > 0


def test_residual_options_are_checked() -> None:
    model, x = Mixed().double(), torch.randn(1, 3, 5, 5, dtype=torch.float64)
    with pytest.raises(n2n_fx.DeepenError, match="block"):
        n2n_fx.deepen(model, x, after=["gelu"], block="zero")
    with pytest.raises(n2n_fx.DeepenError, match="BatchNorm"):
        n2n_fx.deepen(model, x, after=["gelu"], block="residual", batch_norm=True)


def test_gated_post_ln_block() -> None:
    torch.manual_seed(0)
    model, x = Mixed().double().eval(), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    deeper = n2n_fx.deepen(model, x, after=["gelu"], block="gated", seed=2)
    assert isinstance(deeper.get_submodule("n2n_deepen_gelu.norm"), nn.LayerNorm)
    assert float(deeper.get_submodule("n2n_deepen_gelu.residual_out").weight.detach().abs().sum()) > 0  # W2 real
    assert_preserved(model, deeper, x)
    wider = n2n_fx.widen(deeper, x, factor=2.0)  # the block's LayerNorm widens its space uniformly
    assert_preserved(model, wider, x)
    deeper.train()
    deeper(x).square().mean().backward()
    assert float(deeper.get_submodule("n2n_deepen_gelu.gate").alpha.grad.abs().sum()) > 0  # the gate learns
    with pytest.raises(n2n_fx.DeepenError, match="channels-first"):
        n2n_fx.deepen(model, x, after=["act"], block="gated")
