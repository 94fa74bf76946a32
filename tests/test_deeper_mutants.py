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


def test_the_identity_tap_of_odd_and_even_kernels() -> None:
    """'same' padding pads an even kernel more on the right: the identity tap is (k - 1) // 2."""
    from n2n_fx.deeper import identity_tap

    assert [identity_tap(k) for k in range(1, 7)] == [0, 0, 1, 1, 2, 2]


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.head = nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)))


@pytest.mark.parametrize("kernel_size", [2, 4])
def test_an_even_kernel_identity_conv_is_exact(kernel_size: int) -> None:
    torch.manual_seed(0)
    model, x = _Conv().double().eval(), torch.randn(2, 2, 5, 5, dtype=torch.float64)
    report = assert_preserved(model, n2n_fx.deepen(model, x, after=["act"], kernel_size=kernel_size), x)
    assert report.max_rel_err <= 1e-15


def test_batch_norm_goes_with_the_identity_block_only() -> None:
    model, x = _net()
    for block in ("residual", "gated"):
        with pytest.raises(n2n_fx.DeepenError, match="exact without a BatchNorm undo"):
            n2n_fx.deepen(model, x, after=["act"], block=block, batch_norm=True)
    conv, image = _Conv().double().eval(), torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert_preserved(conv, n2n_fx.deepen(conv, image, after=["act"], batch_norm=True), image)


class _Seq(nn.Module):
    """(B, T, C) values: features on the last axis, even where axis 1 is a space too (after the transpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)).transpose(1, 2))


@pytest.mark.parametrize("after", ["fc1", "fc2"])
def test_a_sequence_gets_an_identity_linear_on_its_last_axis(after: str) -> None:
    torch.manual_seed(0)
    model, x = _Seq().double().eval(), torch.randn(2, 4, 3, dtype=torch.float64)
    student = n2n_fx.deepen(model, x, after=[after])
    assert isinstance(student.get_submodule(f"n2n_deepen_{after}.layer"), nn.Linear)
    assert_preserved(model, student, x)


def test_deepening_one_node_again_numbers_the_new_layers() -> None:
    model, x = _net()
    student = model
    for _ in range(3):
        student = n2n_fx.deepen(student, x, after=["fc1"], activation=None)
    names = {n.split(".")[0] for n, _ in student.named_modules() if n.startswith("n2n_deepen_fc1")}
    assert names == {"n2n_deepen_fc1", "n2n_deepen_fc1_2", "n2n_deepen_fc1_3"}


def test_an_unknown_name_lists_the_last_six_targets() -> None:
    model, x = _net()
    with pytest.raises(n2n_fx.UnknownNodeError, match=r"e\.g\. \['fc1', 'act', 'block.0', 'block.1', 'block', 'out'\]"):
        n2n_fx.deepen(model, x, after=["nowhere"])
