"""Exact tests for the mutants of n2n_fx/deeper.py that the deepen tests let through (the fast stage
of `python -m proofs.mutation_tool test n2n_fx/deeper.py`): each pins one line."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

import n2n_fx
from n2n_fx.deeper import deepen_targets, zero_residual
from tests.helpers import assert_preserved


class Net(nn.Module):
    """A module activation, a function activation, and a container (traced through)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act = nn.Linear(3, 4), nn.ReLU()
        self.block = nn.Sequential(nn.Linear(4, 5), nn.ReLU())
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.act(self.fc1(x)))
        return self.out(self.block(h))


def _net(batch: int = 3) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Net().double().eval(), torch.randn(batch, 3, dtype=torch.float64)


@pytest.mark.parametrize("batch", [1, 3])
def test_the_activation_after_the_layer_is_a_copy_of_a_module_or_the_same_function(batch: int) -> None:
    model, x = _net(batch)
    student = n2n_fx.deepen(model, x, after=["act", "relu"])
    act = student.get_submodule("n2n_deepen_act.act")  # the model's ReLU module, copied
    assert isinstance(act, nn.ReLU) and act is not model.act
    calls = [n for n in student.graph.nodes if n.op == "call_function" and n.target is torch.relu]
    assert len(calls) == 2  # the model's torch.relu and its repeat after the identity layer
    assert [n.args[0].target for n in calls] == ["n2n_deepen_act.act", "n2n_deepen_relu.layer"]
    report = assert_preserved(model, student, x)
    assert report.max_rel_err <= 1e-15


def test_the_inserted_layer_is_what_the_nodes_users_read() -> None:
    """Every user of the node but the first inserted layer reads the block's last node, so the
    layers are on the path (an identity that nothing reads would pass any preservation check)."""
    model, x = _net()
    student = n2n_fx.deepen(model, x, after=["fc1"], activation=None)
    fc1 = next(n for n in student.graph.nodes if n.name == "fc1")
    assert [u.target for u in fc1.users] == ["n2n_deepen_fc1.layer"]
    layer = next(iter(fc1.users))
    assert [u.target for u in layer.users] == ["act"]
    with torch.no_grad():  # the layer is live: changing it changes the output
        student.get_submodule("n2n_deepen_fc1.layer").weight.mul_(2)
    assert not torch.allclose(student(x), model(x))


@pytest.mark.parametrize("after", ["block", "block.1"])
def test_deepen_after_a_container_or_a_dotted_module_name(after: str) -> None:
    model, x = _net()
    student = n2n_fx.deepen(model, x, after=[after])
    # after the container's last node, its ReLU (block_1): the identity, then the ReLU copied
    assert isinstance(student.get_submodule("n2n_deepen_block_1.layer"), nn.Linear)
    assert isinstance(student.get_submodule("n2n_deepen_block_1.act"), nn.ReLU)
    report = assert_preserved(model, student, x)
    assert report.max_rel_err <= 1e-15


def test_deepen_targets_lists_the_module_names_in_graph_order() -> None:
    model, x = _net()
    gm = torch.fx.symbolic_trace(model)
    from n2n_fx.frontend import propagate_shapes

    propagate_shapes(gm, n2n_fx.frontend.as_inputs(x))
    assert deepen_targets(gm) == ["fc1", "act", "block.0", "block.1", "block", "out"]


def test_zero_residual_draws_w1_fan_in_uniform_and_zeros_w2() -> None:
    gen, want = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first, last = zero_residual(9, 4, 0, torch.float64, gen)
    bound = 9 ** -0.5
    w = (torch.rand((4, 9), generator=want, dtype=torch.float64) * 2 - 1) * bound
    b = (torch.rand((4,), generator=want, dtype=torch.float64) * 2 - 1) * bound
    assert torch.equal(first.weight.detach(), w) and torch.equal(first.bias.detach(), b)
    assert float(first.weight.detach().abs().max()) <= bound
    assert not last.weight.any() and not last.bias.any()


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc(x)
        return h, h.sum(1), (h > 0).long()


@pytest.mark.parametrize("name", ["sum_1", "long"])
def test_no_identity_layer_after_a_vector_or_an_integer_tensor(name: str) -> None:
    torch.manual_seed(0)
    model, x = _Odd().double().eval(), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(n2n_fx.DeepenError, match="one floating tensor with a feature or channel axis"):
        n2n_fx.deepen(model, x, after=[name])


def test_the_residual_blocks_default_seed_is_zero() -> None:
    from n2n_fx.deeper import Net2DeeperNet

    model, x = _net()
    w = [Net2DeeperNet(["act"], x, block="residual", **kw)(torch.fx.symbolic_trace(model)).graph_module
         .get_submodule("n2n_deepen_act.residual_in").weight for kw in ({}, {"seed": 0}, {"seed": 1})]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


class _Abs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).abs()  # a call_method node named abs_1 (abs is a builtin), target "abs"


def test_a_method_name_is_not_a_node_or_module_name() -> None:
    """after= takes node and module names: "abs" (the target of node abs_1) is neither."""
    torch.manual_seed(0)
    model, x = _Abs().double().eval(), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(n2n_fx.UnknownNodeError, match="no node or module named 'abs'"):
        n2n_fx.deepen(model, x, after=["abs"])
    assert_preserved(model, n2n_fx.deepen(model, x, after=["abs_1"]), x)


def test_the_gated_blocks_w2_is_drawn_uniform_in_plus_minus_one_over_sqrt_hidden() -> None:
    """The gate keeps a gated block closed, so its W2 starts as a real layer: the seeded draw after W1's."""
    model, x = _net()
    student = n2n_fx.deepen(model, x, after=["act"], block="gated", hidden=6, seed=2)
    gen = torch.Generator().manual_seed(2 * 1_000_003 + len("act"))
    w1 = (torch.rand((6, 4), generator=gen, dtype=torch.float64) * 2 - 1) * 4 ** -0.5
    torch.rand((6,), generator=gen, dtype=torch.float64)  # b1
    w2 = (torch.rand((4, 6), generator=gen, dtype=torch.float64) * 2 - 1) * 6 ** -0.5
    assert torch.equal(student.get_submodule("n2n_deepen_act.residual_in").weight.detach(), w1)
    assert torch.equal(student.get_submodule("n2n_deepen_act.residual_out").weight.detach(), w2)
    assert_preserved(model, student, x)
