"""Bad input gets a typed N2NError naming the node, the op and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import n2n_fx
from n2n_fx.models import ZOO


@pytest.fixture
def mlp():
    model, x = ZOO["mlp"]()
    return model.double(), x.double()


def test_width_below_current(mlp):
    model, x = mlp
    with pytest.raises(n2n_fx.WidthError) as info:
        n2n_fx.widen(model, x, widths={"fc1": 8})
    assert info.value.code == "bad_width" and "fc1" in str(info.value) and "Fix:" in str(info.value)


def test_factor_below_one(mlp):
    with pytest.raises(n2n_fx.WidthError):
        n2n_fx.widen(*mlp, factor=0.5)


def test_non_integer_width(mlp):
    with pytest.raises(n2n_fx.WidthError):
        n2n_fx.widen(*mlp, widths={"fc1": 20.5})


def test_unknown_space_name(mlp):
    with pytest.raises(n2n_fx.UnknownSpaceError) as info:
        n2n_fx.widen(*mlp, widths={"nope": 32})
    assert "fc1" in info.value.fix  # the fix lists the real names


def test_widen_space_bound_to_output(mlp):
    with pytest.raises(n2n_fx.FrozenSpaceError) as info:
        n2n_fx.widen(*mlp, widths={"fc3": 10})
    assert "model_output" in str(info.value) and info.value.node == "output"


def test_bad_symmetry(mlp):
    with pytest.raises(n2n_fx.N2NError):
        n2n_fx.widen(*mlp, symmetry="wiggle")


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.a(x)
        return x


def test_untraceable_model_shows_the_line():
    with pytest.raises(n2n_fx.TraceFailure) as info:
        n2n_fx.plan(Untraceable(), torch.randn(2, 3))
    text = str(info.value)
    assert "if x.sum() > 0" in text and "test_errors.py" in text
    assert "leaf_modules" in text and "concrete_args" in text


def test_leaf_module_makes_it_traceable_and_frozen():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.u, self.post = nn.Linear(3, 3), Untraceable(), nn.Linear(3, 2)

        def forward(self, x):
            return self.post(self.u(self.pre(x)))

    plan = n2n_fx.plan(Wrapper().double(), torch.randn(2, 3).double(), leaf_modules=[Untraceable])
    by = {p.name: p for p in plan.spaces}
    assert by["pre"].reasons[0].code == "unknown_op"


def test_identity_layer_before_tanh(mlp):
    with pytest.raises(n2n_fx.DeepenError) as info:
        n2n_fx.deepen(*mlp, after=["tanh"])
    assert info.value.node == "tanh" and info.value.op == "tanh"


def test_deepen_unknown_name(mlp):
    with pytest.raises(n2n_fx.UnknownNodeError):
        n2n_fx.deepen(*mlp, after=["fc9"])


def test_deepen_ambiguous_module_name():
    model, x = ZOO["resnet"]()
    with pytest.raises(n2n_fx.UnknownNodeError) as info:
        n2n_fx.deepen(model, x, after=["layer1.0.relu"])
    assert "layer1_0_relu_1" in str(info.value)


def test_deepen_after_a_non_tensor_refused():
    model, x = ZOO["vgg"]()
    with pytest.raises(n2n_fx.DeepenError) as info:
        n2n_fx.deepen(model, x, after=["size"])  # x.size(0): an int, no channel axis
    assert info.value.node == "size"


def test_deepen_after_the_input_is_exact(mlp):
    student = n2n_fx.deepen(*mlp, after=["x"])
    assert n2n_fx.verify(mlp[0], student, mlp[1]).ok


def test_example_inputs_that_do_not_run(mlp):
    with pytest.raises(n2n_fx.N2NError):
        n2n_fx.plan(mlp[0], torch.randn(2, 7).double())


def test_not_a_module():
    with pytest.raises(n2n_fx.N2NError):
        n2n_fx.plan(lambda x: x, torch.randn(2))


def test_every_error_is_an_n2n_error():
    for cls in (n2n_fx.WidthError, n2n_fx.UnknownSpaceError, n2n_fx.FrozenSpaceError, n2n_fx.TraceFailure,
                n2n_fx.DeepenError, n2n_fx.ConstraintError, n2n_fx.UnknownNodeError, n2n_fx.SpecError):
        assert issubclass(cls, n2n_fx.N2NError) and cls.code != n2n_fx.N2NError.code
