"""The testing kit for users' own growth code: assert_preserved, growth_property, mlps, the fixture."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import n2n_fx
import n2n_fx.testing as kit
from n2n_fx.testing import MLPSpec, assert_preserved, growth_property, mlps

FAST = settings(max_examples=6, deadline=None)


def _widen_layer(model: nn.Sequential, fc: str, nxt: str, extra: int, divide: bool) -> nn.Sequential:
    """A hand-written Net2WiderNet of one hidden layer of an MLPSpec model: `fc` gains `extra`
    replicated units (with its norm's parameters and statistics), `nxt` copies their columns and,
    unless `divide=False` (the classic bug), divides them by the replica counts."""
    student = copy.deepcopy(model)
    a, b = getattr(student, fc), getattr(student, nxt)
    n = a.out_features
    g = torch.cat([torch.arange(n), torch.arange(extra) % n])
    counts = torch.bincount(g, minlength=n).to(a.weight.dtype)
    new_a = nn.Linear(a.in_features, n + extra).to(a.weight.dtype)
    new_b = nn.Linear(n + extra, b.out_features).to(b.weight.dtype)
    with torch.no_grad():
        new_a.weight.copy_(a.weight[g])
        new_a.bias.copy_(a.bias[g])
        new_b.weight.copy_(b.weight[:, g] / counts[g] if divide else b.weight[:, g])
        new_b.bias.copy_(b.bias)
    setattr(student, fc, new_a)
    setattr(student, nxt, new_b)
    norm = getattr(student, fc.replace("fc", "norm"), None)
    if isinstance(norm, nn.BatchNorm1d):
        new = nn.BatchNorm1d(n + extra).to(a.weight.dtype).eval()
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, name).copy_(getattr(norm, name)[g])
        setattr(student, fc.replace("fc", "norm"), new)
    elif isinstance(norm, nn.LayerNorm):
        new = nn.LayerNorm(n + extra).to(a.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(norm.weight[g])
            new.bias.copy_(norm.bias[g])
        setattr(student, fc.replace("fc", "norm"), new)
    return student


def _last_hidden(model: nn.Sequential) -> str:
    return [name for name, m in model.named_children() if isinstance(m, nn.Linear)][-2]


def forgets_to_divide(model: nn.Sequential) -> nn.Sequential:
    """Widens the last hidden layer by 3 replicas and forgets to divide the next layer's columns."""
    return _widen_layer(model, _last_hidden(model), "out", 3, divide=False)


def divides(model: nn.Sequential) -> nn.Sequential:
    """The same, correct (no norm: a LayerNorm's statistics would change under non-uniform replicas)."""
    return _widen_layer(model, _last_hidden(model), "out", 3, divide=True)


def _plain_mlp(batch: int = 3) -> tuple[nn.Sequential, torch.Tensor]:
    return MLPSpec(3, (4, 5), ("tanh", "sigmoid"), "none", 0.0, 2, batch).build()


def test_a_correct_student_passes_and_returns_the_report():
    model, x = _plain_mlp()
    report = assert_preserved(model, _widen_layer(model, "fc1", "fc2", 3, divide=True), x)
    assert report.ok and report.max_rel_err < 1e-12


def test_forgetting_to_divide_names_the_module_where_the_outputs_first_differ():
    model, x = _plain_mlp()
    student = _widen_layer(model, "fc1", "fc2", 3, divide=False)
    with pytest.raises(AssertionError) as info:
        assert_preserved(model, student, x)
    text = str(info.value)
    assert "NOT preserved" in text
    # fc1 and act1 are wider in the student (not compared); fc2 is the first module that parts
    first = re.search(r"first difference: module '([^']+)' \((\w+)\) on input (\d+) .*max abs err (\S+), max rel err (\S+)",
                      text)
    assert first, text
    assert first.group(1, 2, 3) == ("fc2", "Linear", "0"), text
    assert float(first.group(4)) > 1e-3 and float(first.group(5)) > 1e-3
    assert "'fc1', 'act1'" in text  # listed as not compared (grown)


def test_a_later_error_is_localised_past_agreeing_modules():
    """A student from n2n_fx.widen, then broken in its output layer: the widened modules are skipped,
    the earlier equal-shape ones agree, and 'out' is named."""
    model, x = MLPSpec(2, (3, 4), ("relu", "gelu"), "layer", 0.0, 2, 2).build()
    student = n2n_fx.widen(model, x, factor=2.0)
    assert_preserved(model, student, x)
    with torch.no_grad():
        student.out.bias.add_(1e-6)
    with pytest.raises(AssertionError, match=r"first difference: module 'out' \(Linear\) on input 0"):
        assert_preserved(model, student, x)


def test_agreeing_modules_are_listed_before_the_first_difference():
    model, x = _plain_mlp()
    student = copy.deepcopy(model)
    with torch.no_grad():
        student.fc2.weight.mul_(1.01)
    with pytest.raises(AssertionError) as info:
        assert_preserved(model, student, x)
    text = str(info.value)
    assert "first difference: module 'fc2'" in text
    assert "agreed before it: 'act1', 'fc1'" in text, text


def test_a_difference_outside_every_module_is_said_to_be_so():
    model, x = _plain_mlp()
    gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        shifted = gm.graph.call_function(torch.add, (out.args[0], 1e-3))
    out.args = (shifted,)
    gm.recompile()
    with pytest.raises(AssertionError) as info:
        assert_preserved(model, gm, x)
    text = str(info.value)
    assert "first difference" not in text
    assert "no matched module's output differs" in text and "outside the compared modules" in text, text
    assert "compared (5, all agree)" in text, text


def test_a_student_that_raises_is_reported_with_where_it_raised():
    model, x = _plain_mlp()
    student = copy.deepcopy(model)
    student.fc2 = nn.Linear(7, 5).double()  # wrong input width: raises in fc2
    with pytest.raises(AssertionError, match=r"(?s)raised.*the student raised on input 0"):
        assert_preserved(model, student, x)


@FAST
@given(mlps())
def test_assert_preserved_inside_given(spec):
    """No fixture: the check runs in a plain @given test over the MLP strategy."""
    model, x = spec.build()
    assert_preserved(model, n2n_fx.widen(model, x, factor=2.0), x)


def test_growth_property_passes_a_correct_growth_function():
    growth_property(lambda model, x: n2n_fx.widen(model, x, factor=2.0), max_examples=6)()
    growth_property(divides, mlps(norms=("none", "batch")), max_examples=6)()


def test_growth_property_catches_the_missing_division_with_a_falsifying_example():
    with pytest.raises(AssertionError) as info:
        growth_property(forgets_to_divide, max_examples=20)()
    assert "first difference: module 'out' (Linear)" in str(info.value), str(info.value)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert re.search("Falsifying example|Failing test case", notes) and "MLPSpec(" in notes, notes


def test_growth_property_catches_a_grow_that_writes_into_the_teacher():
    def in_place(model):
        student = copy.deepcopy(model)
        with torch.no_grad():
            model.out.bias.zero_()  # the bug: the teacher's own tensor
            student.out.bias.zero_()
        return student

    with pytest.raises(AssertionError, match=r"in_place modified the teacher: out\._parameters changed"):
        growth_property(in_place, max_examples=5)()


def test_growth_property_catches_shared_storage_and_returning_the_teacher():
    with pytest.raises(AssertionError, match="share storage"):
        growth_property(copy.copy, max_examples=5)()  # a shallow copy: the same tensors
    with pytest.raises(AssertionError, match="returned the teacher itself"):
        growth_property(lambda model: model, max_examples=5)()


def test_growth_property_runs_over_architectures_too():
    grow = growth_property(lambda model, x: n2n_fx.widen(model, x, factor=1.5),
                           kit.architectures(max_steps=3).filter(lambda a: not a.train), max_examples=4)
    grow()


@FAST
@given(mlps())
def test_the_mlp_contract(spec):
    model, x = spec.build()
    assert x.shape == (spec.batch, spec.d_in) and x.dtype == torch.float64
    assert not model.training and all(p.dtype == torch.float64 for p in model.parameters())
    assert len(spec.widths) == len(spec.activations) >= 1
    assert model(x).shape == (spec.batch, spec.d_out)
    kinds = {nn.LayerNorm: "layer", nn.BatchNorm1d: "batch"}
    assert {kinds[type(m)] for m in model.modules() if type(m) in kinds} <= {spec.norm}
    assert model[0] is model.fc1 and model[-1] is model.out


def test_the_mlp_strategy_reaches_batch_one_each_norm_and_dropout():
    from hypothesis import find

    assert find(mlps(), lambda s: s.batch == 1).batch == 1
    for norm in kit.MLP_NORMS:
        spec = find(mlps(), lambda s, norm=norm: s.norm == norm and s.dropout > 0)
        model, _ = spec.build()
        assert any(isinstance(m, nn.Dropout) for m in model.modules())


def test_all_public_names_exist_and_are_documented():
    doc = kit.__doc__
    for name in kit.__all__:
        assert hasattr(kit, name), name
        assert f"`{name}" in doc, f"{name} is not in n2n_fx.testing's docstring"
    for name in ("assert_preserved", "growth_property", "mlps", "architectures", "grow_pairs", "widen_requests",
                 "fingerprint", "assert_untouched", "assert_independent"):
        assert name in kit.__all__


@FAST
@given(mlps(max_depth=2))
def test_the_fixture_works_inside_given(n2n_check, spec):
    """A session-scoped fixture: no function-scoped-fixture health check."""
    model, x = spec.build()
    assert n2n_check(model, n2n_fx.widen(model, x, factor=2.0), x).ok


def test_the_fixture_checker_shows_the_falsifying_example():
    from n2n_fx.pytest_plugin import check

    @settings(max_examples=10, deadline=None, database=None)
    @given(mlps(max_depth=2, norms=("none",)))
    def inner(spec):
        model, x = spec.build()
        check(model, forgets_to_divide(model), x)

    with pytest.raises(AssertionError, match="first difference: module 'out'") as info:
        inner()
    assert re.search("Falsifying example|Failing test case", "\n".join(getattr(info.value, "__notes__", [])))


def test_assert_preserved_leaves_both_models_untouched_when_it_fails():
    from n2n_fx.testing import assert_untouched, fingerprint

    model, x = _plain_mlp()
    student = _widen_layer(model, "fc1", "fc2", 3, divide=False)
    before = fingerprint(model), fingerprint(student)
    with pytest.raises(AssertionError):
        assert_preserved(model, student, x)
    assert_untouched(model, before[0])
    assert_untouched(student, before[1])  # the hooks went on private copies


def test_one_line_in_a_users_test_file_is_collected_and_shows_the_falsifying_case(tmp_path):
    """What a user writes: pytest collects the property, passes a correct grow, and reports a
    broken one with the shrunk case and the module where the functions part."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_user.py").write_text(
        "import n2n_fx\n"
        "from n2n_fx.testing import growth_property\n"
        "from tests.test_kit import forgets_to_divide\n"
        "test_widen = growth_property(lambda m, x: n2n_fx.widen(m, x, factor=2.0), max_examples=3)\n"
        "test_broken = growth_property(forgets_to_divide, max_examples=10)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                          str(tmp_path / "test_user.py")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "PASSED test_user.py::test_widen" in out and "FAILED test_user.py::test_broken" in out, out
    assert re.search("Falsifying example|Failing test case", out) and "MLPSpec(" in out, out
    assert "first difference: module 'out' (Linear)" in out, out


def test_an_exported_student_is_said_to_call_no_matched_module():
    model, x = _plain_mlp()
    student = n2n_fx.widen(model, x, factor=2.0, frontend="export")
    with torch.no_grad():
        list(student.parameters())[-1].add_(1e-3)
    with pytest.raises(AssertionError, match="calls none of the teacher's modules"):
        assert_preserved(model, student, x)


def test_each_growth_property_has_its_own_example_database_key():
    from hypothesis.internal.reflection import function_digest

    def grow_a(model):
        return copy.deepcopy(model)

    def grow_b(model):
        return copy.deepcopy(model)

    keys = {function_digest(growth_property(f).hypothesis.inner_test) for f in (grow_a, grow_b)}
    keys.add(function_digest(growth_property(grow_a, mlps(max_depth=1)).hypothesis.inner_test))
    assert len(keys) == 3
