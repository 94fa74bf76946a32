"""The optimizer hand-over: state remapped through the plan; with uniform replication the student's
next step is the teacher's next step, widened."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import n2n_fx


class Net(nn.Module):
    """Conv + BatchNorm, a residual MLP under LayerNorm, a head: copied, contracted and carried axes."""

    def __init__(self) -> None:
        super().__init__()
        # no conv bias: under train-mode BatchNorm its true gradient is 0, and Adam turns the round-off
        # left in it into an update of about lr * 1e-9 that no two summation orders share
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc, self.ln = nn.Linear(4 * 9, 6), nn.LayerNorm(6)
        self.up, self.down, self.head = nn.Linear(6, 5), nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(torch.relu(self.bn(self.conv(x))), 1)
        h = self.ln(self.fc(h))
        h = h + self.down(torch.tanh(self.up(h)))
        return self.head(h)


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01),
    "amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True, eps=1e-6),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 2, 3, 3, generator=gen, dtype=torch.float64), torch.randn(8, 3, generator=gen,
                                                                                      dtype=torch.float64)


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    x, y = _batch(seed)
    opt.zero_grad()
    (model(x) - y).square().mean().backward()
    opt.step()


def _trained(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Net().double().train()
    opt = OPTIMIZERS[kind](model.parameters())
    for seed in range(3):  # non-trivial moments
        _step(model, opt, seed)
    return model, opt


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_exact_hand_over_commutes_with_a_step(kind: str, factor: float) -> None:
    teacher, opt = _trained(kind)
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=factor, replication="uniform")
    student = n2n_fx.apply_plan(plan)
    student.train()
    opt_s = n2n_fx.widen_optimizer(plan, teacher, opt, student, exact=True)
    _step(teacher, opt, 7)
    _step(student, opt_s, 7)
    plan.analysis.gm.load_state_dict(teacher.state_dict())  # widen the stepped teacher with the same maps
    expected = n2n_fx.apply_plan(plan)
    worst = 0.0
    for name, p in student.named_parameters():
        p, q = p.detach(), expected.get_parameter(name).detach()
        assert p.shape == q.shape, name
        worst = max(worst, float((p - q).abs().max() / q.abs().max().clamp_min(1e-300)))
    assert worst < 1e-12, f"{kind}: student step differs from the widened teacher step by {worst:.2e}"
    report = n2n_fx.verify(teacher.eval(), student.eval(), x)
    assert report.ok, report


def test_state_is_gathered_and_divided_by_the_gradient_replicas() -> None:
    teacher, opt = _trained("adam")
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=1.5, seed=3)  # random maps: counts differ per unit
    student = n2n_fx.apply_plan(plan)
    opt_s = n2n_fx.widen_optimizer(plan, teacher, opt, student)
    g_up = plan.layout_index(plan.analysis.param_layouts[("up.weight", 0)])
    counts = plan.layout_counts(plan.analysis.param_layouts[("up.weight", 0)])
    assert counts.max() > 1 and counts.min() == 1
    g_in = plan.layout_index(plan.analysis.param_layouts[("up.weight", 1)])
    m, v = opt.state[teacher.up.weight]["exp_avg"], opt.state[teacher.up.weight]["exp_avg_sq"]
    st = opt_s.state[student.get_parameter("up.weight")]
    torch.testing.assert_close(st["exp_avg"], m[g_up][:, g_in] / counts[:, None], rtol=0, atol=0)
    torch.testing.assert_close(st["exp_avg_sq"], v[g_up][:, g_in] / counts[:, None] ** 2, rtol=0, atol=0)
    assert st["step"] == opt.state[teacher.up.weight]["step"]
    # the teacher's optimizer is untouched and still steps its own model
    assert all(s["exp_avg"].shape == p.shape for p, s in opt.state.items())
    _step(student.train(), opt_s, 5)


def test_exact_needs_uniform_replication() -> None:
    teacher, opt = _trained("sgd")
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    with pytest.raises(n2n_fx.ConstraintError, match="uniform"):
        n2n_fx.widen_optimizer(plan, teacher, opt, n2n_fx.apply_plan(plan), exact=True)
    with pytest.raises(n2n_fx.WidthError, match="multiple"):
        n2n_fx.plan(teacher, x, factor=1.5, replication="uniform")


def test_unsupported_optimizer_is_refused() -> None:
    teacher = Net().double()
    x = _batch(0)[0]
    plan = n2n_fx.plan(teacher, x, factor=2.0)
    opt = torch.optim.RMSprop(teacher.parameters())
    with pytest.raises(n2n_fx.N2NError, match="RMSprop"):
        n2n_fx.widen_optimizer(plan, teacher, opt, n2n_fx.apply_plan(plan))


class TiedNet(Net):
    """Net whose head is a table also looked up into the residual stream (tied embeddings): the
    head's division sits on the LayerNorm's weight and bias, which the hand-over treats as divided."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(3, 6)
        self.register_buffer("ids", torch.arange(3))
        del self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(torch.relu(self.bn(self.conv(x))), 1)
        h = self.fc(h) + self.table(self.ids).sum(0)
        h = h + self.down(torch.tanh(self.up(h)))
        return nn.functional.linear(self.ln(h), self.table.weight)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_exact_hand_over_keeps_a_tied_table_tied(kind: str) -> None:
    torch.manual_seed(0)
    teacher = TiedNet().double().train()
    opt = OPTIMIZERS[kind](teacher.parameters())
    for seed in range(3):
        _step(teacher, opt, seed)
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=2.0, replication="uniform")
    assert [set(t.gains) for t in plan.analysis.tied_heads] == [{("ln.weight", 0), ("ln.bias", 0)}]
    student = n2n_fx.apply_plan(plan)
    student.train()
    opt_s = n2n_fx.widen_optimizer(plan, teacher, opt, student, exact=True)
    _step(teacher, opt, 7)
    _step(student, opt_s, 7)
    plan.analysis.gm.load_state_dict(teacher.state_dict())
    expected = n2n_fx.apply_plan(plan)
    for name, p in student.named_parameters():
        q = expected.get_parameter(name).detach()
        err = float((p.detach() - q).abs().max() / q.abs().max().clamp_min(1e-300))
        assert err < 1e-12, f"{kind} {name}: {err:.2e}"
    assert n2n_fx.verify(teacher.eval(), student.eval(), x).ok


def _state_copy(opt: torch.optim.Optimizer) -> list:
    return [(id(p), {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()})
            for p, st in opt.state.items()]


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("factor", [2.0, 3.0])
def test_the_teachers_optimizer_is_bit_identical_after_the_hand_over(exact: bool, factor: float) -> None:
    teacher, opt = _trained("amsgrad")
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=factor, replication="uniform")
    before, groups = _state_copy(opt), [dict(g) for g in opt.param_groups]
    student = n2n_fx.apply_plan(plan)
    opt_s = n2n_fx.widen_optimizer(plan, teacher, opt, student, exact=exact)
    after = _state_copy(opt)
    assert [g for g in opt.param_groups] == groups
    for (i, st), (j, st2) in zip(before, after):
        assert i == j and st.keys() == st2.keys()
        for k in st:
            assert torch.equal(torch.as_tensor(st[k]), torch.as_tensor(st2[k])), k
    teacher_storages = {v.untyped_storage().data_ptr() for _, st in opt.state.items() for v in st.values()
                        if isinstance(v, torch.Tensor)}
    assert not teacher_storages & {v.untyped_storage().data_ptr() for st in opt_s.state.values()
                                   for v in st.values() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------- schedulers
S = torch.optim.lr_scheduler
SCHEDULERS = {
    "step": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
    "cosine": lambda o: S.CosineAnnealingLR(o, T_max=7),
    "lambda": lambda o: S.LambdaLR(o, lambda k: 1.0 / (1 + k)),
    "onecycle": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=20),
    "linear": lambda o: S.LinearLR(o, start_factor=0.25, total_iters=6),
    "sequential": lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.5, total_iters=3),
                                               S.ExponentialLR(o, gamma=0.9)], milestones=[3]),
}


def _lrs(opt: torch.optim.Optimizer, key: str = "lr") -> list[float]:
    return [float(g[key]) for g in opt.param_groups]


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("sched", list(SCHEDULERS))
def test_scheduler_hands_over(sched: str, kind: str, exact: bool) -> None:
    torch.manual_seed(0)
    teacher = Net().double().train()
    opt = OPTIMIZERS[kind](teacher.parameters())
    scheduler = SCHEDULERS[sched](opt)
    for seed in range(3):  # the scheduler is mid-schedule: last_epoch, _step_count, lrs off their start
        _step(teacher, opt, seed)
        scheduler.step()
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=2.0, replication="uniform")
    student = n2n_fx.apply_plan(plan).train()
    opt_s = n2n_fx.widen_optimizer(plan, teacher, opt, student, exact=exact)
    before = scheduler.state_dict()
    sched_s = n2n_fx.widen_scheduler(scheduler, opt_s)
    assert type(sched_s) is type(scheduler) and sched_s.optimizer is opt_s
    assert sched_s.last_epoch == scheduler.last_epoch
    assert getattr(sched_s, "_step_count", None) == getattr(scheduler, "_step_count", None)
    names = {id(p): n for n, p in teacher.named_parameters()}
    # each student group's teacher group, and its learning-rate factor: the ratio of the lrs now
    src = [next(i for i, g in enumerate(opt.param_groups)
                if any(names[id(p)] == n for p in g["params"])) for n in
           [next(m for m, q in student.named_parameters() if q is g["params"][0]) for g in opt_s.param_groups]]
    ratio = [s / _lrs(opt)[i] for s, i in zip(_lrs(opt_s), src)]
    assert len(set(ratio)) > 1 if exact else set(ratio) == {1.0}  # exact: factors differ by tensor
    if "initial_lr" in opt.param_groups[0]:  # a scheduler's group keys scale with lr (they were copied unscaled)
        for g, i, r in zip(opt_s.param_groups, src, ratio):
            assert g["initial_lr"] == pytest.approx(opt.param_groups[i]["initial_lr"] * r, rel=1e-15)
    for k in range(6):
        _step(teacher, opt, 10 + k)
        _step(student, opt_s, 10 + k)
        scheduler.step()
        sched_s.step()
        want = [_lrs(opt)[i] * r for i, r in zip(src, ratio)]
        assert _lrs(opt_s) == pytest.approx(want, rel=1e-13, abs=0), (sched, k)
        assert sched_s.get_last_lr() == pytest.approx(want, rel=1e-13, abs=0)
        if sched == "onecycle":  # momentum / betas cycle too, unscaled
            key = "momentum" if kind == "sgd" else "betas"
            assert [g[key] for g in opt_s.param_groups] == [opt.param_groups[i][key] for i in src]
    # the teacher's scheduler was not touched by the hand-over (only by its own steps since)
    assert before["last_epoch"] + 6 == scheduler.last_epoch
    # its state round-trips: a scheduler of the class over the student's optimizer loads it
    state = sched_s.state_dict()
    if sched != "sequential":
        fresh = SCHEDULERS[sched](opt_s)
        fresh.load_state_dict(state)
        assert fresh.last_epoch == sched_s.last_epoch and fresh.base_lrs == sched_s.base_lrs


def test_scheduler_hand_over_refusals() -> None:
    teacher, opt = _trained("sgd")
    x = _batch(99)[0]
    plan = n2n_fx.plan(teacher, x, factor=2.0, replication="uniform")
    student = n2n_fx.apply_plan(plan)
    cosine = S.CosineAnnealingLR(opt, T_max=5, eta_min=1e-3)
    with pytest.raises(n2n_fx.ConstraintError, match="eta_min"):
        n2n_fx.widen_scheduler(cosine, n2n_fx.widen_optimizer(plan, teacher, opt, student, exact=True))
    n2n_fx.widen_scheduler(cosine, n2n_fx.widen_optimizer(plan, teacher, opt, student))  # one factor: fine
    with pytest.raises(n2n_fx.N2NError, match="widen_optimizer"):
        n2n_fx.widen_scheduler(S.StepLR(opt, 2), torch.optim.SGD(student.parameters(), lr=0.1))
    with pytest.raises(n2n_fx.N2NError, match="CyclicLR"):
        n2n_fx.widen_scheduler(S.CyclicLR(opt, 0.01, 0.1), n2n_fx.widen_optimizer(plan, teacher, opt, student))


def test_fill_has_no_moment_mapping() -> None:
    from tests.test_fill import _ids, _model

    teacher, ids = _model("layer_norm").train(), _ids(2)
    opt = torch.optim.Adam(teacher.parameters(), lr=0.01)
    teacher(ids).square().mean().backward()
    opt.step()
    plan = n2n_fx.plan(teacher, (ids,), widths={"emb": 7})  # 4 -> 7 under the norms: fill, not replication
    assert plan.fills
    with pytest.raises(n2n_fx.ConstraintError, match="fill"):
        n2n_fx.widen_optimizer(plan, teacher, opt, n2n_fx.apply_plan(plan))
    fresh = torch.optim.Adam(teacher.parameters())  # no state yet: nothing to map, nothing refused
    n2n_fx.widen_optimizer(plan, teacher, fresh, n2n_fx.apply_plan(plan))
