"""Full-size layouts (ResNet-50, Inception-BN) in float64: long, so marked `zoo` (tox -e zoo)."""

from __future__ import annotations

import pytest
import torch

import n2n_fx
from n2n_fx.models import InceptionBNLike, ResNet50Like

from .helpers import assert_preserved, assert_unchanged, snapshot

pytestmark = pytest.mark.zoo

BUILDERS = {"resnet50": ResNet50Like, "inception_bn": InceptionBNLike}
DEEPEN = {"resnet50": ["stem", "layer2.0", "layer4.2.conv2"], "inception_bn": ["stem", "blocks.3", "blocks.8"]}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_full_size_widen_and_deepen_exact(name, factor):
    torch.manual_seed(0)
    model = BUILDERS[name](classes=10).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    snap = snapshot(model)
    plan = n2n_fx.plan(model, x, factor=factor, symmetry="split")
    frozen = [p for p in plan.spaces if p.reasons]
    assert [p.reasons[0].code for p in frozen] == ["model_output"]
    student = n2n_fx.apply_plan(plan)
    assert assert_preserved(model, student, x).max_rel_err <= 1e-10
    assert_preserved(model, student, x, mode="train")
    deeper = n2n_fx.deepen(student, x, after=DEEPEN[name], batch_norm=True)
    assert_preserved(model, deeper, x)
    assert_unchanged(model, snap)
