"""The passes as users run them: on their own symbolic_trace, twice, after other passes, in a
PassManager, on graphs whose parameters are inputs, and before torch.compile / torch.export."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.infra.pass_base import PassResult
from torch.fx.passes.infra.pass_manager import PassManager

import n2n_fx
from n2n_fx.testing import assert_independent, assert_untouched, fingerprint


class Net(nn.Module):
    """Conv + BatchNorm (what fuse folds), a residual add, a buffer and a plain tensor attribute
    read in forward, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.body, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        self.register_buffer("shift", torch.linspace(-1, 1, 4))
        self.scale = torch.tensor(0.5)  # a plain tensor attribute, not in the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(h + self.bn2(self.body(h)))
        return self.head(h.mean((2, 3))) * self.scale + self.shift


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = Net().double()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for bn in (model.bn, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _exact(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> None:
    report = n2n_fx.verify(teacher, student, x)
    assert report.ok and report.max_rel_err <= 1e-10, report
    assert sum(p.numel() for p in student.parameters()) > sum(p.numel() for p in teacher.parameters())


def _fuse(gm: torch.fx.GraphModule) -> PassResult:
    return PassResult(fuse(gm), True)


# ---------------------------------------------------------------- the user's own trace
@pytest.mark.parametrize("batch", [1, 3])
def test_wider_pass_on_the_users_trace_leaves_the_teacher_bit_identical(batch: int) -> None:
    teacher, x = _teacher(), _x(batch)
    gm = torch.fx.symbolic_trace(teacher)  # shares the teacher's submodules
    snap_teacher, snap_gm = fingerprint(teacher), fingerprint(gm)
    plan = n2n_fx.plan(gm, x, factor=2.0)
    student = n2n_fx.Net2WiderNet(plan)(gm).graph_module
    assert_untouched(teacher, snap_teacher)  # every parameter, buffer, attribute: values, storage, version
    assert_untouched(gm, snap_gm)  # the pass's input too: the plan made from it stays valid
    assert_independent(teacher, student)
    assert student.stem.weight.shape == (12, 3, 3, 3) and teacher.stem.weight.shape == (6, 3, 3, 3)
    _exact(teacher, student, x)
    again = n2n_fx.Net2WiderNet(plan)(gm).graph_module  # the same plan on the same graph: the same student
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), again.state_dict().values()))


def test_deeper_pass_on_the_users_trace_leaves_the_teacher_bit_identical() -> None:
    teacher, x = _teacher(), _x()
    gm = torch.fx.symbolic_trace(teacher)
    n2n_fx.plan(gm, x)  # annotate shapes, as a pipeline would have
    gm = n2n_fx.trace(gm, x, share_tensors=True)  # shapes on a graph that still shares the teacher's tensors
    snap = fingerprint(teacher)
    student = n2n_fx.Net2DeeperNet(["body"], x)(gm).graph_module
    assert_untouched(teacher, snap)
    assert_independent(teacher, student)
    assert any("n2n_deepen" in name for name, _ in student.named_modules())
    report = n2n_fx.verify(teacher, student, x)
    assert report.ok and report.max_rel_err <= 1e-10, report


# ---------------------------------------------------------------- stale plans
def _stale(plan: n2n_fx.Plan, gm: torch.fx.GraphModule) -> n2n_fx.N2NError:
    with pytest.raises(n2n_fx.StalePlanError) as info:
        n2n_fx.Net2WiderNet(plan)(gm)
    err = info.value
    assert err.code == "stale_plan" and "re-plan" in str(err) and isinstance(err, n2n_fx.N2NError)
    return err


def test_a_plan_refuses_the_student_it_made() -> None:
    teacher, x = _teacher(), _x()
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    student = n2n_fx.apply_plan(plan)
    err = _stale(plan, student)
    assert "stem.weight" in str(err) and "(6, 3, 3, 3)" in str(err) and "(12, 3, 3, 3)" in str(err)


def test_a_plan_refuses_a_graph_after_another_pass() -> None:
    teacher, x = _teacher(), _x()
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    deeper = n2n_fx.Net2DeeperNet(["body"], x)(plan.analysis.gm).graph_module
    assert "n2n_deepen" in str(_stale(plan, deeper))
    _stale(plan, fuse(plan.analysis.gm))  # the BatchNorms are folded away
    # the same class traced again has the same nodes and shapes: the plan fits it (names, not objects)
    _exact(_teacher(seed=5), n2n_fx.Net2WiderNet(plan)(n2n_fx.trace(_teacher(seed=5), x)).graph_module, x)


def test_a_plan_refuses_another_architecture() -> None:
    teacher, x = _teacher(), _x()
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    other = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()).double()
    _stale(plan, torch.fx.symbolic_trace(other))


# ---------------------------------------------------------------- composing in any order
@pytest.mark.parametrize("order", ["deeper, wider", "wider, deeper", "fuse, wider", "wider, fuse",
                                   "wider, wider"])
def test_self_planning_pass_composes_in_a_pass_manager(order: str) -> None:
    teacher, x = _teacher(), _x()
    gm = torch.fx.symbolic_trace(teacher)
    snap = fingerprint(teacher)
    make = {"deeper": lambda: n2n_fx.Net2DeeperNet(["body"], x), "fuse": lambda: _fuse,
            "wider": lambda: n2n_fx.Net2WiderNet(factor=1.5, example_inputs=x)}
    passes = [make[name]() for name in order.split(", ")]
    result = PassManager(passes)(gm)
    assert result.modified
    assert_untouched(teacher, snap)
    assert_independent(teacher, result.graph_module)
    _exact(teacher, result.graph_module, x)
    wider = next(p for p in passes if isinstance(p, n2n_fx.Net2WiderNet))
    assert sum(s.new_width > s.width for s in wider.last_plan.spaces) >= 1  # it planned, and widened


def test_self_planning_pass_after_fuse_widens_the_fused_conv() -> None:
    teacher, x = _teacher(), _x()
    result = PassManager([_fuse, n2n_fx.Net2WiderNet(widths={"stem": 9}, example_inputs=x)])(
        torch.fx.symbolic_trace(teacher))
    assert result.graph_module.stem.weight.shape[0] == 9 and not hasattr(result.graph_module, "bn")
    _exact(teacher, result.graph_module, x)


def test_pass_arguments_are_checked() -> None:
    plan = n2n_fx.plan(_teacher(), _x(), factor=2.0)
    with pytest.raises(n2n_fx.WidthError, match="not both"):
        n2n_fx.Net2WiderNet(plan, factor=2.0)
    with pytest.raises(n2n_fx.WidthError, match="example_inputs"):
        n2n_fx.Net2WiderNet(factor=2.0)


# ---------------------------------------------------------------- graphs whose parameters are inputs
def test_a_dynamo_backend_that_widens_is_refused_not_a_no_op() -> None:
    teacher, x = _teacher(), _x()
    caught: list[BaseException] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        try:
            n2n_fx.widen(gm, tuple(example_inputs), factor=2.0)
        except n2n_fx.N2NError as exc:
            caught.append(exc)
        try:
            n2n_fx.plan(gm, tuple(example_inputs))
        except n2n_fx.N2NError as exc:
            caught.append(exc)
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(teacher, backend=backend)(x)
    finally:
        torch._dynamo.reset()
    assert len(caught) == 2 and all(isinstance(e, n2n_fx.LiftedGraphError) for e in caught), caught
    assert caught[0].code == "parameters_are_inputs" and "before compiling" in str(caught[0])


def test_a_lifted_graph_module_is_refused() -> None:
    teacher, x = _teacher(), _x()
    ep = torch.export.export(teacher, (x,))
    for call in (lambda: n2n_fx.plan(ep.graph_module, x), lambda: n2n_fx.widen(ep.graph_module, x)):
        with pytest.raises(n2n_fx.LiftedGraphError, match="lifted parameters"):
            call()


@pytest.mark.parametrize("batch", [1, 2])
def test_an_exported_program_is_widened_planned_and_verified(batch: int) -> None:
    teacher, x = _teacher(), _x(batch)
    ep = torch.export.export(teacher, (x,))
    before = {k: v.clone() for k, v in ep.state_dict.items()}
    plan = n2n_fx.plan(ep, x, factor=2.0)
    assert sum(s.new_width > s.width for s in plan.spaces) == 1 and "traced with export" in str(plan)
    student = n2n_fx.widen(ep, x, factor=2.0)
    _exact(teacher, student, x)
    assert n2n_fx.verify(ep, student, x).ok
    assert all(torch.equal(before[k], v) for k, v in ep.state_dict.items())  # the program is untouched
    shared = {t.untyped_storage().data_ptr() for t in ep.state_dict.values()}
    assert not shared & {t.untyped_storage().data_ptr() for t in student.state_dict().values()}


# ---------------------------------------------------------------- the compile recipe (README)
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_recipe_grow_then_compile(backend: str) -> None:
    teacher, x = _teacher(), _x()
    student = n2n_fx.widen(teacher, x, factor=2.0)  # grow first: a model-to-model transform
    assert n2n_fx.verify(teacher, student, x).ok
    torch._dynamo.reset()
    try:
        compiled = torch.compile(student, backend=backend)
        with torch.no_grad():
            got, want = compiled(x), student(x)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, teacher(x), rtol=1e-10, atol=1e-12)


def test_recipe_grow_then_export() -> None:
    teacher, x = _teacher(), _x(3)
    student = n2n_fx.widen(teacher, x, factor=2.0)
    ep = torch.export.export(student, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), student(x), rtol=0, atol=0)
        torch.testing.assert_close(ep.module()(x), teacher(x), rtol=1e-10, atol=1e-12)
