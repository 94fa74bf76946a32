"""An adversarial audit of the passes that cannot be misused, the optimizer/scheduler hand-over and
grow's parallel stacks: each test is a way a user's model or pipeline made them silently wrong."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
from torch import nn

import n2n_fx
from n2n_fx.testing import assert_untouched, fingerprint


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class _ReadsTransposed(nn.Linear):
    """A Linear whose forward reads its (square) weight as (in, out): the same names and shapes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


# ---------------------------------------------------------------- stale plans
@pytest.mark.parametrize("batch", [1, 3])
def test_a_plan_refuses_a_graph_whose_module_was_swapped_for_another_class(batch: int) -> None:
    """Same node names, targets, parameter names and shapes; the module computes something else.
    The plan used to widen `b.weight` as a Linear's (out, in): a wrong student, no error."""
    torch.manual_seed(0)
    teacher, x = _MLP().double().eval(), _x(batch)
    plan = n2n_fx.plan(torch.fx.symbolic_trace(teacher), x, factor=2.0)
    gm = torch.fx.symbolic_trace(teacher)
    swapped = _ReadsTransposed(4, 4).double()
    with torch.no_grad():
        swapped.weight.copy_(teacher.b.weight.T)
        swapped.bias.copy_(teacher.b.bias)
    gm.b = swapped
    torch.testing.assert_close(gm(x), teacher(x), rtol=1e-12, atol=1e-14)  # the same function, another module
    with pytest.raises(n2n_fx.StalePlanError, match="_ReadsTransposed") as info:
        n2n_fx.Net2WiderNet(plan)(gm)
    assert info.value.node == "b"
    # re-planned on the graph it gets, the pass widens it exactly
    student = n2n_fx.Net2WiderNet(factor=2.0, example_inputs=x)(gm).graph_module
    report = n2n_fx.verify(gm, student, x)
    assert report.ok and report.max_rel_err <= 1e-10, report


@pytest.mark.parametrize("planned_tied", [True, False])
def test_a_plan_refuses_a_graph_tied_otherwise(planned_tied: bool) -> None:
    """Same nodes, names and shapes; only the tie of head.weight to emb.weight differs. A plan for
    the untied model applied to the tied one gave a student with the tie silently broken."""
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (2, 3), generator=torch.Generator().manual_seed(2))
    tied, untied = _Tied().double().eval(), _Tied().double().eval()
    untied.head.weight = nn.Parameter(untied.emb.weight.detach().clone())
    planned, other = (tied, untied) if planned_tied else (untied, tied)
    plan = n2n_fx.plan(planned, (ids,), factor=2.0)
    with pytest.raises(n2n_fx.StalePlanError, match="head.weight"):
        n2n_fx.Net2WiderNet(plan)(torch.fx.symbolic_trace(other))
    student = n2n_fx.Net2WiderNet(plan)(torch.fx.symbolic_trace(planned)).graph_module
    assert (student.head.weight is student.emb.weight) == planned_tied


def test_a_plan_of_an_exported_program_applies_to_its_module() -> None:
    """plan(ep) then Net2WiderNet(plan)(ep.module()) was refused as stale: the plan's graph holds the
    program's constant as a buffer, ep.module() as a plain attribute (a misleading StalePlanError)."""

    class Scaled(_MLP):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.tensor(0.5, dtype=torch.float64)  # a constant of the program

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * self.scale

    torch.manual_seed(0)
    teacher, x = Scaled().double().eval(), _x()
    ep = torch.export.export(teacher, (x,))
    plan = n2n_fx.plan(ep, x, factor=2.0)
    student = n2n_fx.Net2WiderNet(plan)(ep.module()).graph_module
    report = n2n_fx.verify(teacher, student, x)
    assert report.ok and report.max_rel_err <= 1e-10, report


# ---------------------------------------------------------------- compiler graphs
@pytest.mark.parametrize("grad", [True, False])
def test_an_aot_autograd_backend_that_widens_is_refused_not_a_no_op(grad: bool) -> None:
    """torch.compile(backend=aot_autograd(fw_compiler=...)) hands over a graph of primals_N (or
    arg0_1 under no_grad) fake tensors, none an nn.Parameter: widen returned it unchanged and plan
    was '0 of 0 spaces widened', a silent no-op."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch.manual_seed(0)
    teacher, x = _MLP().double(), _x()
    calls = {"widen": lambda gm, ins: n2n_fx.widen(gm, ins), "plan": lambda gm, ins: n2n_fx.plan(gm, ins),
             "pass": lambda gm, ins: n2n_fx.Net2WiderNet(factor=2.0, example_inputs=ins)(gm)}
    caught: dict[str, object] = {}

    def fw(gm: torch.fx.GraphModule, ins: list) -> object:
        for name, call in calls.items():
            try:
                caught[name] = call(gm, tuple(ins))
            except n2n_fx.N2NError as exc:
                caught[name] = exc
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    try:
        with torch.set_grad_enabled(grad):
            torch.compile(teacher, backend=aot_autograd(fw_compiler=fw))(x)
    finally:
        torch._dynamo.reset()
    assert set(caught) == set(calls)
    for name, got in caught.items():
        assert isinstance(got, n2n_fx.LiftedGraphError), (name, got)
        assert "aot_autograd" in str(got) and "before compiling" in got.fix


def test_a_lifted_graph_given_every_input_is_refused_not_a_no_op() -> None:
    """ep.graph_module run as the program runs it, parameters first (plain tensors, not nn.Parameter):
    widen returned it unchanged, the plan was '0 of 0 spaces widened'."""
    torch.manual_seed(0)
    teacher, x = _MLP().double().eval(), _x()
    ep = torch.export.export(teacher, (x,))
    flat = (*(v.detach() for v in ep.state_dict.values()), x)
    torch.testing.assert_close(ep.graph_module(*flat)[0], teacher(x))  # these are its inputs
    for call in (n2n_fx.widen, n2n_fx.plan, lambda gm, ins: n2n_fx.Net2WiderNet(factor=2.0, example_inputs=ins)(gm)):
        with pytest.raises(n2n_fx.LiftedGraphError, match=r"holds no parameter and takes \['p_a_weight'") as info:
            call(ep.graph_module, flat)
        assert info.value.node == "p_a_weight"


# ---------------------------------------------------------------- the optimizer hand-over
class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mid = nn.Embedding(10, 4), nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, i: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.emb(i))))


def _train_handed_over(teacher: nn.Module, x: torch.Tensor, opt: torch.optim.Optimizer, sched, exact: bool,
                       steps: int = 3) -> torch.optim.Optimizer:
    """Widen 2x (uniform), hand optimizer and scheduler over, train the student `steps` steps; the
    student's optimizer (its scheduler has stepped with it)."""
    plan = n2n_fx.plan(teacher, x, factor=2.0, replication="uniform")
    student = n2n_fx.apply_plan(plan)
    new = n2n_fx.widen_optimizer(plan, teacher, opt, student, exact=exact)
    new_sched = n2n_fx.widen_scheduler(sched, new)
    for _ in range(steps):
        new.zero_grad()
        student(x).sum().backward()
        new.step()
        new_sched.step()
    return new


def _tied_setup(kind: str) -> tuple:
    torch.manual_seed(0)
    teacher, ids = _Tied().double(), torch.randint(0, 10, (2, 3), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1) if kind == "sgd" else torch.optim.Adam(teacher.parameters())
    teacher(ids).square().mean().backward()
    opt.step()
    plan = n2n_fx.plan(teacher, (ids,), factor=2.0, untie=True)
    return teacher, ids, opt, plan, n2n_fx.apply_plan(plan)


def test_widen_optimizer_trains_every_untied_copy_of_a_tied_parameter() -> None:
    """untie=True: the student holds emb.weight and head.weight apart, the teacher's optimizer one
    tensor; the new optimizer left head.weight out of every group (never trained, no error)."""
    teacher, ids, opt, plan, student = _tied_setup("sgd")
    assert student.emb.weight is not student.head.weight
    new = n2n_fx.widen_optimizer(plan, teacher, opt, student)
    held = {id(p) for g in new.param_groups for p in g["params"]}
    assert [n for n, p in student.named_parameters() if id(p) not in held] == []
    before = student.head.weight.detach().clone()
    student(ids).square().mean().backward()
    new.step()
    assert not torch.equal(before, student.head.weight)


def test_widen_optimizer_refuses_state_for_an_untied_copy() -> None:
    """Adam's moments of a tied tensor are those of the sum of both uses' gradients: neither copy's."""
    teacher, ids, opt, plan, student = _tied_setup("adam")
    snap = copy.deepcopy(opt.state_dict())
    with pytest.raises(n2n_fx.ConstraintError, match="untied in the student") as info:
        n2n_fx.widen_optimizer(plan, teacher, opt, student)
    assert info.value.node == "emb.weight" and "afresh" in info.value.fix
    assert str(opt.state_dict()) == str(snap)


# ---------------------------------------------------------------- the scheduler hand-over
class _Warmup:
    """A stateful lr lambda (a callable object, kept in LambdaLR's state_dict)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, epoch: int) -> float:
        self.calls += 1
        return min(1.0, (epoch + 1) / 5)


@pytest.mark.parametrize("exact", [False, True])
def test_widen_scheduler_leaves_the_teachers_stateful_lambdas_alone(exact: bool) -> None:
    """The student's scheduler called the teacher's lambda objects: every student step changed the
    teacher scheduler's state (its state_dict saves their __dict__)."""
    torch.manual_seed(0)
    teacher, x = _MLP().double(), _x()
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _Warmup())
    for _ in range(2):
        opt.zero_grad()
        teacher(x).sum().backward()
        opt.step()
        sched.step()
    before = copy.deepcopy(sched.state_dict())
    snap = fingerprint(teacher)
    new = _train_handed_over(teacher, x, opt, sched, exact)
    assert str(sched.state_dict()) == str(before)
    assert sched.lr_lambdas[0].calls == before["lr_lambdas"][0]["calls"]
    assert_untouched(teacher, snap)
    lr = 0.1 * min(1.0, 6 / 5)
    for group, (_, factor) in zip(new.param_groups, new.n2n_group_sources):
        assert group["lr"] == pytest.approx(lr * factor, rel=1e-15)


# ---------------------------------------------------------------- frontend='auto'
class _MaskedEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(4, 8), nn.Linear(8, 2)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor: the default

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x), src_key_padding_mask=mask))


@pytest.mark.parametrize("batch", [1, 2])
def test_auto_keeps_symbolic_trace_where_export_computes_another_function(batch: int) -> None:
    """Without grad in eval mode nn.TransformerEncoder takes its nested-tensor fast path, which zeroes
    padded positions; torch.export traced the general path. frontend='auto' took export's graph
    (fewer opaque parameters) and the default widen gave a student verify rejects (rel err ~1)."""
    torch.manual_seed(0)
    teacher = _MaskedEncoder().double().eval()
    x = torch.randn(batch, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(batch, 5, dtype=torch.bool)
    mask[-1, 3:] = True  # the last sequence is padded
    before = fingerprint(teacher)
    student = n2n_fx.widen(teacher, (x, mask), factor=2.0)
    assert student.meta["n2n_frontend"] == "fx"
    with torch.no_grad():
        torch.testing.assert_close(student(x, mask), teacher(x, mask), rtol=1e-12, atol=1e-14)
    report = n2n_fx.verify(teacher, student, (x, mask))
    assert report.ok and report.max_rel_err <= 1e-10, report
    assert_untouched(teacher, before)


def test_widen_scheduler_refuses_the_scheduler_of_another_optimizer() -> None:
    """Two optimizers of one group each (a GAN's): the other one's scheduler was handed over, and the
    student trained at its learning rate (5.0 instead of 0.1), no error."""
    torch.manual_seed(0)
    teacher, x = _MLP().double(), _x()
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=5.0)
    mine, theirs = torch.optim.lr_scheduler.StepLR(opt, 1), torch.optim.lr_scheduler.StepLR(other, 1)
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    new = n2n_fx.widen_optimizer(plan, teacher, opt, n2n_fx.apply_plan(plan))
    with pytest.raises(n2n_fx.N2NError, match="drives another optimizer"):
        n2n_fx.widen_scheduler(theirs, new)
    assert n2n_fx.widen_scheduler(mine, new).get_last_lr() == [0.1]


@pytest.mark.parametrize("other", ["seed", "factor"])
def test_widen_optimizer_refuses_a_plan_the_student_was_not_made_with(other: str) -> None:
    """Another seed gives the same shapes and other maps: Adam's moments were gathered onto the wrong
    units without an error (another factor: a raw RuntimeError at the first step)."""
    torch.manual_seed(0)
    teacher, x = _MLP().double(), _x()
    opt = torch.optim.Adam(teacher.parameters())
    teacher(x).sum().backward()
    opt.step()
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    student = n2n_fx.apply_plan(n2n_fx.plan(teacher, x, **({"factor": 2.0, "seed": 7} if other == "seed"
                                                             else {"factor": 3.0})))
    with pytest.raises(n2n_fx.ConstraintError, match="another plan"):
        n2n_fx.widen_optimizer(plan, teacher, opt, student)
    same = n2n_fx.widen(teacher, x, factor=2.0)  # made by widen with the plan's arguments: the same maps
    assert n2n_fx.widen_optimizer(plan, teacher, opt, same).state
    # a student that carries no stamp (rebuilt as the teacher's class) is checked by shape
    rebuilt = _MLP().double()
    for name in ("a", "b"):
        setattr(rebuilt, name, nn.Linear(4, 12 if other == "factor" else 8).double())
    with pytest.raises(n2n_fx.ConstraintError, match="another plan"):
        n2n_fx.widen_optimizer(plan, teacher, opt, rebuilt)


@pytest.mark.parametrize("exact", [False, True])
def test_the_students_scheduler_leaves_a_tensor_lr_of_the_teacher_alone(exact: bool) -> None:
    """A tensor learning rate (capturable/fused optimizers) was the teacher group's own tensor in the
    student's group; the student's scheduler fills it in place: the teacher's lr fell with it."""
    torch.manual_seed(0)
    teacher, x = _MLP().double(), _x()
    opt = torch.optim.Adam(teacher.parameters(), lr=torch.tensor(0.01))
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    teacher(x).sum().backward()
    opt.step()
    sched.step()
    lr = opt.param_groups[0]["lr"].clone()
    new = _train_handed_over(teacher, x, opt, sched, exact)
    assert torch.equal(opt.param_groups[0]["lr"], lr) and float(lr) == pytest.approx(0.005)
    assert all(float(g["lr"]) == pytest.approx(0.005 / 8 * f) for g, (_, f) in zip(new.param_groups,
                                                                                     new.n2n_group_sources))
