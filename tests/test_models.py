"""Hand-written architectures: widen every widenable space, deepen, combine; outputs exact."""

from __future__ import annotations

import pytest
import torch

import n2n_fx
from n2n_fx.models import ZOO

from .helpers import assert_preserved, assert_unchanged, snapshot

NAMES = sorted(ZOO)
BN_MODELS = {"mlp", "vgg", "resnet", "inception", "densenet", "mobilenet", "se"}
# points to deepen at, per model (module names, container names or FX node names)
DEEPEN_AT = {
    "mlp": ["relu", "fc2"],
    "vgg": ["features.0.2", "features.3", "classifier.1"],
    "resnet": ["stem", "layer1.0.bn2", "layer2_1_relu_1", "flatten"],
    "inception": ["stem", "inc1", "fc1"],
    "densenet": ["stem", "layers.0.1", "cat_1"],
    "mobilenet": ["stem", "blocks.0.dw.2", "relu_1"],
    "se": ["conv.2", "mul"],
    "shuffle": ["relu", "relu_2"],
    "flatten": ["relu_1", "reshape"],
}


def build(name: str, dtype=torch.float64):
    torch.manual_seed(0)
    model, x = ZOO[name]()
    return model.to(dtype).eval(), x.to(dtype)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("factor", [1.5, 2.0])
@pytest.mark.parametrize("symmetry", ["none", "split"])
def test_widen_exact_float64(name, factor, symmetry):
    model, x = build(name)
    snap = snapshot(model)
    plan = n2n_fx.plan(model, x, factor=factor, seed=1, symmetry=symmetry)
    student = n2n_fx.apply_plan(plan)
    report = assert_preserved(model, student, x)
    assert report.max_rel_err <= 1e-10
    assert_unchanged(model, snap)
    # every non-frozen space reached its planned width, and the planned width is round(n * factor)
    widenable = [p for p in plan.spaces if not p.reasons]
    assert widenable, "the model must have something to widen"
    for p in widenable:
        assert p.new_width == max(p.width, int(p.width * factor + 0.5))
    assert sum(t.numel() for t in student.parameters()) > sum(t.numel() for t in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_widen_exact_float32(name):
    model, x = build(name, torch.float32)
    snap = snapshot(model)
    student = n2n_fx.widen(model, x, factor=1.5, seed=2)
    report = n2n_fx.verify(model, student, x)
    assert report.rtol == 1e-5 and report.ok, report
    assert_unchanged(model, snap)


@pytest.mark.parametrize("name", sorted(BN_MODELS))
def test_widen_train_mode_batchnorm(name):
    model, x = build(name)
    student = n2n_fx.widen(model, x, factor=2.0, symmetry="split")
    assert_preserved(model, student, x, mode="train")


@pytest.mark.parametrize("name", NAMES)
def test_deepen_several_points(name):
    model, x = build(name)
    snap = snapshot(model)
    for kwargs in ({}, {"batch_norm": True}, {"kernel_size": 2}, {"kernel_size": 5, "batch_norm": True}):
        kwargs = dict(kwargs)
        if name in ("mlp",) and "kernel_size" in kwargs:
            continue
        student = n2n_fx.deepen(model, x, after=DEEPEN_AT[name], **kwargs)
        n_new = sum(1 for n in student.graph.nodes if n.op == "call_module" and n.target.startswith("n2n_deepen"))
        assert n_new >= len(DEEPEN_AT[name])
        assert_preserved(model, student, x)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("name", NAMES)
def test_compositions(name):
    model, x = build(name)
    snap = snapshot(model)
    wide = n2n_fx.widen(model, x, factor=1.5, seed=3)
    deep = n2n_fx.deepen(model, x, after=DEEPEN_AT[name], batch_norm=True)
    wide_deep = n2n_fx.deepen(wide, x, after=DEEPEN_AT[name])
    deep_wide = n2n_fx.widen(deep, x, factor=2.0, symmetry="split", seed=4)
    wide_wide = n2n_fx.widen(wide, x, factor=1.5, seed=5)
    for student in (wide_deep, deep_wide, wide_wide):
        assert_preserved(model, student, x)
    # the identity layers inserted by deepen are themselves widened by the later widen
    plan = n2n_fx.plan(deep, x, factor=2.0)
    assert any(p.name.startswith("n2n_deepen") and p.new_width > p.width for p in plan.spaces)
    assert_unchanged(model, snap)


def test_channel_shuffle_is_exact():
    """view(N, G, C/G, H, W) / transpose / reshape: the G blocks share one map, so it widens exactly."""
    model, x = build("shuffle")
    plan = n2n_fx.plan(model, x, factor=2.0)
    by_name = {p.name: p for p in plan.spaces}
    # conv1's two shuffled blocks are one space per grouped-conv group ([0:2] with [4:6], [2:4] with [6:8])
    assert set(by_name["conv1[0:2]"].space.producers) == {"conv1[0:2]", "conv1[4:6]"}
    assert by_name["conv1[0:2]"].new_width == by_name["conv1[2:4]"].new_width == 4
    # the grouped conv after the shuffle is cut into its groups, each widened alike
    assert by_name["conv2[0:4]"].new_width == by_name["conv2[4:8]"].new_width == 8
    assert_preserved(model, n2n_fx.apply_plan(plan), x)
    # a width asked for one group of the grouped conv applies to the other
    plan = n2n_fx.plan(model, x, widths={"conv1[0:2]": 3})
    assert plan.spaces[1].new_width == 3
    assert_preserved(model, n2n_fx.apply_plan(plan), x)


def test_shuffle_of_a_partly_fixed_layout_stays_exact():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 6, 1), torch.nn.Conv2d(3, 6, 1)
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)[:, :3]], 1)  # 9 channels, one block partly fixed
            y = y.view(y.size(0), 3, 3, -1).transpose(1, 2).reshape(y.size(0), 9, -1)
            return self.head(y[:, :6].mean(-1))

    torch.manual_seed(0)
    model, x = M().double().eval(), torch.randn(2, 3, 2, 2).double()
    plan = n2n_fx.plan(model, x, factor=2.0)
    assert_preserved(model, n2n_fx.apply_plan(plan), x)


def test_residual_add_shares_one_space():
    model, x = build("resnet")
    plan = n2n_fx.plan(model, x)
    names = {p.name: p for p in plan.spaces}
    # stem, both layer1 blocks' conv2 outputs: one space across the residual adds
    stem = names["stem.0"]
    assert {"layer1.0.conv2", "layer1.1.conv2"} <= set(stem.space.producers)
    # the downsample shortcut and layer2 conv2s form another
    down = names["layer2.0.downsample.0"]
    assert {"layer2.0.conv2", "layer2.1.conv2"} <= set(down.space.producers)


def test_inception_concat_offsets_and_stride_map():
    model, x = build("inception")
    plan = n2n_fx.plan(model, x, factor=1.5)
    fc1_consumed = [p for p in plan.spaces if any(c.startswith("fc1") for c in p.space.consumers)]
    # the four branches of inc1 reach fc1 through the residual add and the flatten stride map
    assert len(fc1_consumed) == 4
    student = n2n_fx.apply_plan(plan)
    assert student.fc1.in_features == sum(p.new_width for p in fc1_consumed) * 16
    assert_preserved(model, student, x)


def test_only_output_spaces_frozen_in_plain_models():
    for name in ("mlp", "vgg", "resnet", "inception", "densenet", "mobilenet", "se", "shuffle", "flatten"):
        model, x = build(name)
        frozen = [p for p in n2n_fx.plan(model, x).spaces if p.reasons]
        assert [p.reasons[0].code for p in frozen] == ["model_output"], (name, [str(p.reasons[0]) for p in frozen])


@pytest.mark.parametrize("name", NAMES)
def test_student_shape_metadata_matches_a_fresh_shape_prop(name):
    """The pass rewrites meta['tensor_meta'] from the layouts; a real run must agree node by node."""
    import copy

    from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

    model, x = build(name)
    student = n2n_fx.widen(model, x, factor=1.5)
    claimed = {n.name: n.meta.get("tensor_meta") for n in student.graph.nodes}
    fresh = copy.deepcopy(student)
    ShapeProp(fresh).propagate(x)
    checked = 0
    for n in fresh.graph.nodes:
        real, said = n.meta.get("tensor_meta"), claimed[n.name]
        if isinstance(real, TensorMetadata):
            assert tuple(said.shape) == tuple(real.shape), n.name
            checked += 1
    assert checked > 5
