"""verify() must be able to fail: it catches a wrong student, NaNs and shape changes."""

from __future__ import annotations

import torch

import n2n_fx
from n2n_fx.models import ZOO
from n2n_fx.testing import assert_untouched, fingerprint


def _pair():
    model, x = ZOO["resnet"]()
    model, x = model.double().eval(), x.double()
    return model, x, n2n_fx.widen(model, x, factor=2.0)


def test_catches_a_perturbed_weight():
    model, x, student = _pair()
    with torch.no_grad():
        student.get_submodule("layer1.0.conv2").weight[0, 0, 0, 0] += 1e-6
    report = n2n_fx.verify(model, student, x)
    assert not report.ok and report.max_abs_err > 0


def test_catches_a_missing_division():
    """The classic Net2Net bug: consumers copy replicated columns without dividing."""
    model, x, student = _pair()
    plan = n2n_fx.plan(model, x, factor=2.0)
    g = next(p for p in plan.spaces if p.name == "layer1.0.conv1").g
    with torch.no_grad():
        counts = torch.bincount(g)[g].to(torch.float64)  # undo the division on the consumer side
        student.get_submodule("layer1.0.conv2").weight.mul_(counts.reshape(1, -1, 1, 1))
    assert not n2n_fx.verify(model, student, x).ok


def test_nan_fails():
    model, x, student = _pair()
    with torch.no_grad():
        student.fc.bias[0] = float("nan")
    assert not n2n_fx.verify(model, student, x).ok


def test_identical_models_pass_with_zero_error():
    model, x, _ = _pair()
    report = n2n_fx.verify(model, model, x)
    assert report.ok and report.max_abs_err == 0.0 and report.n_inputs == 4


def test_structure_mismatch_is_reported_not_compared():
    class TwoModes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 4)

        def forward(self, x):
            y = self.a(x)
            return (y, y.sum()) if self.training else y  # traced in eval: the student keeps one output

    model = TwoModes().double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    student = n2n_fx.deepen(model, x, after=["a"])
    report = n2n_fx.verify(model, student, x, mode="train")
    assert not report.ok and "structure" in str(report)
    assert n2n_fx.verify(model, student, x).ok


def test_all_zero_teacher_outputs_prove_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)  # a zero-initialised head, as in torchvision's ViT
    x = torch.randn(5, 3, dtype=torch.float64)
    report = n2n_fx.verify(model, n2n_fx.widen(model, x, factor=2.0), x)
    assert not report.ok and "all zero" in str(report)


def test_float32_comparison_for_models_too_big_for_float64():
    model, x, student = _pair()
    report = n2n_fx.verify(model, student, x, dtype=torch.float32)
    assert report.ok and report.dtype == "float32" and report.rtol == 1e-5 and "float32" in str(report)
    assert 0 < report.max_rel_err < 1e-5  # float32 rounding shows, float64's 1e-10 would not hold
    with torch.no_grad():
        student.get_submodule("layer1.0.conv2").weight[0, 0, 0, 0] += 1.0
    assert not n2n_fx.verify(model, student, x, dtype=torch.float32).ok


def _deep_bf16_llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                   num_key_value_heads=2, num_hidden_layers=8)
    return transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def test_a_deep_bfloat16_student_is_judged_against_its_own_rounding():
    """w / 3 stored in bfloat16 is rounded once per weight, and the roundings add up with depth: at 8
    layers the plan error passes eps/4. The bound then follows the model (2x a typical rounding of
    every weight, measured on the student's twin), so a right student passes and a wrong one does not."""
    from n2n_fx.hf import grow

    teacher = _deep_bf16_llama()
    grown = grow(teacher, hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4)
    report = grown.n2n_report
    eps = torch.finfo(torch.bfloat16).eps
    assert report.ok and report.max_rel_err > eps / 4, report  # eps/4 alone would refuse a right student
    assert report.rounding_rel_err > 0 and report.rtol == 2 * report.rounding_rel_err < eps, report
    ids = (torch.randint(0, 64, (2, 6)),)
    before = (fingerprint(teacher), fingerprint(grown))
    again = n2n_fx.verify(teacher, grown, ids)
    assert again.rounding_rel_err == n2n_fx.verify(teacher, grown, ids).rounding_rel_err  # seeded
    assert_untouched(teacher, before[0])  # the measure perturbs the student's private float64 twin
    assert_untouched(grown, before[1])
    with torch.no_grad():  # one block's MLP output doubled: a mistake, not a rounding
        grown.model.layers[3].mlp.down_proj.weight.mul_(2)
    wrong = n2n_fx.verify(teacher, grown, ids)
    assert not wrong.ok and wrong.max_rel_err > wrong.rtol, wrong


def test_the_rounding_measure_perturbs_within_its_bound_reproducibly():
    from n2n_fx.verification import perturbed

    t = torch.randn(300, 7, dtype=torch.bfloat16).t()  # strided, and more than one chunk's worth of keys
    a, b = perturbed(t, 2**-10, "w"), perturbed(t.contiguous(), 2**-10, "w")
    assert a.dtype == torch.float64 and torch.equal(a, b) and not torch.equal(a, perturbed(t, 2**-10, "other"))
    rel = (a / t.double() - 1).abs()
    assert rel.max() <= 2**-10 and rel.mean() > 2**-12  # u spreads over [-rel, rel]
