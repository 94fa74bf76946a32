"""The student is a normal model: attributes match shapes, it saves, loads, re-traces and trains."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import n2n_fx
from n2n_fx.models import ZOO


def _grown(name="inception", factor=1.5, **kw):
    torch.manual_seed(0)
    model, x = ZOO[name]()
    model, x = model.double().eval(), x.double()
    return model, x, n2n_fx.widen(model, x, factor=factor, **kw)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_module_attributes_match_weights(name):
    _, x, student = _grown(name)
    for mod_name, m in student.named_modules():
        if isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), mod_name
        elif isinstance(m, nn.modules.conv._ConvNd):
            assert m.weight.shape[0] == m.out_channels, mod_name
            assert m.weight.shape[1] * m.groups == m.in_channels, mod_name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.weight.shape == m.running_mean.shape == (m.num_features,), mod_name
    # a module rebuilt from its attributes accepts the student's state_dict
    for m in student.modules():
        if isinstance(m, nn.Conv2d):
            twin = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                             m.groups, m.bias is not None).double()
            twin.load_state_dict(m.state_dict())


def test_state_dict_keys_keep_teacher_names():
    model, _, student = _grown()
    assert set(student.state_dict()) == set(model.state_dict())


def test_save_load_roundtrip():
    model, x, student = _grown()
    buf = io.BytesIO()
    torch.save(student, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), student(x))
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    buf.seek(0)
    again = n2n_fx.widen(model, x, factor=1.5)
    again.load_state_dict(torch.load(buf))
    assert torch.equal(again(x), student(x))


def test_student_retraces_and_trains():
    model, x, student = _grown(symmetry="split")
    retraced = torch.fx.symbolic_trace(student)
    assert torch.equal(retraced(x), student(x))
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    loss = student(x).square().mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in student.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_student_shares_no_storage_with_the_teacher():
    """widen() traces without a deep copy; tensors it did not widen must still be the student's own."""
    model, x = ZOO["resnet"]()
    model = model.double().eval()
    x = x.double()
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    student = n2n_fx.widen(model, x, widths={first_conv: model.get_submodule(first_conv).out_channels + 2})
    teacher_ptrs = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    student_tensors = [*student.parameters(), *student.buffers()]
    assert not any(t.untyped_storage().data_ptr() in teacher_ptrs for t in student_tensors)
    unchanged = [k for k, v in student.state_dict().items() if v.shape == model.state_dict()[k].shape]
    assert unchanged  # the test needs tensors the plan left alone
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for t in student_tensors:
            if t.is_floating_point():
                t.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_deterministic_for_a_seed():
    _, x, a = _grown(seed=7, symmetry="split")
    _, _, b = _grown(seed=7, symmetry="split")
    _, _, c = _grown(seed=8, symmetry="split")
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_noise_mode_is_near_but_not_exact():
    model, x, student = _grown(symmetry="noise")
    report = n2n_fx.verify(model, student, x)
    assert not report.ok and report.max_rel_err < 0.1


def test_split_mode_breaks_symmetry():
    model, x, none = _grown("mlp", factor=2.0)
    _, _, split = _grown("mlp", factor=2.0, symmetry="split")
    # under 'none' replicas of a unit have equal outgoing weights; 'split' makes them differ
    plan = n2n_fx.plan(model, x, factor=2.0)
    g = next(p for p in plan.spaces if p.name == "fc1").g
    j = int(torch.nonzero(g[16:] == g[0]).flatten()[0]) + 16 if (g[16:] == g[0]).any() else None
    if j is not None:
        assert torch.equal(none.fc2.weight[:, 0], none.fc2.weight[:, j])
        assert not torch.equal(split.fc2.weight[:, 0], split.fc2.weight[:, j])
    assert n2n_fx.verify(model, split, x).ok


def test_pass_runs_inside_a_pass_manager():
    from torch.fx.passes.infra.pass_manager import PassManager

    torch.manual_seed(0)
    model, x = ZOO["vgg"]()
    model, x = model.double().eval(), x.double()
    plan = n2n_fx.plan(model, x, factor=2.0)
    import copy

    gm = copy.deepcopy(plan.analysis.gm)
    result = PassManager([n2n_fx.Net2WiderNet(plan), n2n_fx.Net2DeeperNet(["features.3"], (x,))])(gm)
    assert result.modified
    assert n2n_fx.verify(model, result.graph_module, x).ok
