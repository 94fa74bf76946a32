"""Hand the teacher's optimizer over to the student: its state remapped through the same plan.

Widening maps the teacher's parameters linearly: theta' = gather(theta) / b, where b is the product
of replica counts over a tensor's contracted axes (1 elsewhere). Because the student computes the
same function, its gradient at theta' is g' = gather(g) / a, where a is the product of replica
counts over the tensor's other (copied) axes: a unit copied c times receives 1/c of the gradient.

State is remapped as the state the student would hold had it seen those gradients:
first moments (SGD momentum, Adam exp_avg) gather(m) / a, second moments (exp_avg_sq,
max_exp_avg_sq) gather(v) / a^2, step counters copied.

`exact=True` also makes the student's next step equal to the teacher's next step, widened:
step'(widen(theta)) == widen(step(theta)). That needs one a and one b per tensor (every unit of
a space copied equally: plan with replication='uniform', symmetry='none') and these per-tensor
hyperparameters, each parameter in its own group:

    SGD     lr * a / b     weight_decay * b / a
    Adam    lr / b         eps / a     weight_decay * b / a
    AdamW   lr / b         eps / a     weight_decay * b

(every learning rate a scheduler keeps in a group, initial_lr, max_lr, min_lr, scales as lr does).

A learning-rate scheduler hands over with `widen_scheduler(scheduler, new_optimizer)`: the same
class over the student's optimizer, its per-group state (base_lrs, lr_lambdas, ...) expanded to
the student's groups and scaled as their lr, last_epoch and step counts kept, so that after k more
steps every student group's lr is its teacher group's lr after k steps, times the group's factor
(1 without exact).
"""

from __future__ import annotations

import copy
import functools
import weakref
from typing import Any

import torch

from .errors import ConstraintError, N2NError
from .inference import Role
from .planning import Plan
from .wider import TorchArrays, remap_tensor

FIRST_MOMENTS = ("momentum_buffer", "exp_avg")
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class _GatherOnly(TorchArrays):
    """remap_tensor without the consumer scales: the plain gather of a tensor shaped like a parameter."""

    @staticmethod
    def scale(x: torch.Tensor, axis: int, factor: torch.Tensor, fresh: bool) -> torch.Tensor:
        return x


GATHER = _GatherOnly()


def gradient_divisor(plan: Plan, param: str, axes: list[int], ndim: int) -> torch.Tensor:
    """a for one parameter, broadcastable to the student's shape (size 1 on every other axis): the
    product of replica counts along its copied axes, which divides its gradient."""
    an = plan.analysis
    a = torch.ones([1] * ndim, dtype=torch.float64)
    for axis in axes:
        roles = an.roles.get((param, axis), {Role.CARRY})
        if roles & {Role.CONTRACT, Role.DIVIDE, Role.GROUPED}:
            continue
        view = [1] * ndim
        view[axis] = -1
        a = a * plan.layout_counts(an.param_layouts[(param, axis)]).reshape(view)
    return a


def exact_divisors(plan: Plan, param: str, axes: list[int], grouped: Any = None) -> tuple[float, float]:
    """(a, b) of one parameter as the numbers exact=True needs: one gradient divisor and one
    parameter divisor for the whole tensor (ConstraintError where replica counts differ). Read off
    the per-axis maps (the pass's scales: replica counts along copied axes, 1/scale along divided
    ones and grouped pieces), never a tensor of the parameter's size."""
    an = plan.analysis
    a = b = 1.0
    for axis in axes:
        roles = an.roles.get((param, axis), {Role.CARRY})
        layout = an.param_layouts[(param, axis)]
        if Role.GROUPED in roles:
            continue
        if roles & {Role.CONTRACT, Role.DIVIDE}:
            b *= _uniform(1.0 / plan.layout_scale(layout, (param, axis)), "parameter divisor", param)
        else:
            a *= _uniform(plan.layout_counts(layout), "gradient divisor", param)
    if grouped is not None:  # every group's columns are divided by its input piece's counts
        b *= _uniform(torch.cat([1.0 / plan.layout_scale(piece, (param, "group", k))
                                 for k, piece in enumerate(grouped.in_pieces)]), "parameter divisor", param)
    return a, b


def widen_optimizer(plan: Plan, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    student: torch.nn.Module, *, exact: bool = False) -> torch.optim.Optimizer:
    """A new optimizer of the teacher optimizer's class over `student`'s parameters, with its state
    remapped through `plan` (the plan the student was made with). The teacher's optimizer is not
    modified. See the module docstring for what `exact=True` guarantees and needs."""
    if type(optimizer) not in SUPPORTED:
        raise N2NError(f"optimizer {type(optimizer).__name__} has no state mapping",
                       op="widen_optimizer", fix="use SGD, Adam or AdamW, or start the student's optimizer afresh")
    if exact and (plan.symmetry != "none" or plan.replication != "uniform"):
        raise ConstraintError("an exact optimizer hand-over needs every unit of a space copied equally",
                              op="widen_optimizer",
                              fix="plan with replication='uniform' and symmetry='none' (integer factors)")
    meta = getattr(student, "meta", None)  # a GraphModule student carries its plan's stamp
    if isinstance(meta, dict) and meta.get("n2n_plan", plan.token) != plan.token:
        raise ConstraintError("the student was made with another plan than the one given (another seed, factor or "
                              "graph): its maps would remap the state onto the wrong units", op="widen_optimizer",
                              fix="pass the plan the student was made with (n2n_fx.apply_plan(plan) gives both)")
    names: dict[int, list[str]] = {}  # every name of a tied parameter: the student may hold it untied
    for n, p in teacher.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    student_params = dict(student.named_parameters())
    axes_of = plan.analysis.axes_by_param()
    grouped_of = {g.param: g for g in plan.analysis.grouped}
    groups, state, sources = [], {}, []
    for index, group in enumerate(optimizer.param_groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        shared: list[torch.nn.Parameter] = []
        for p, name in _student_names(group["params"], names, student_params, optimizer, exact):
            sp = student_params[name]
            axes = axes_of.get(name, [])
            grouped = grouped_of.get(name)
            a = gradient_divisor(plan, name, axes, p.ndim) if axes else torch.ones(())
            if p in optimizer.state:
                _check_state_mappable(plan, name, axes)
                state[sp] = _remap_state(optimizer.state[p], plan, name, axes, a, grouped)
                _check_shapes(state[sp], sp, name)
            if exact:
                divisors = exact_divisors(plan, name, axes, grouped)
                out, scale = _exact_hyper(type(optimizer), copy.deepcopy(hyper), *divisors)
                groups.append({**out, "params": [sp]})
                sources.append((index, scale))
            else:
                shared.append(sp)
        if not exact:
            # its own copies: a tensor lr (capturable, fused) is filled in place by the student's scheduler
            groups.append({**copy.deepcopy(hyper), "params": shared})
            sources.append((index, 1.0))
    new = type(optimizer)(groups)  # every group carries the teacher's hyperparameters
    new.defaults = copy.deepcopy(optimizer.defaults)
    for sp, st in state.items():
        new.state[sp] = st
    # for widen_scheduler: each group's teacher group and learning-rate factor
    new.n2n_group_sources = sources  # type: ignore[attr-defined]
    new.n2n_teacher_optimizer = weakref.ref(optimizer)  # type: ignore[attr-defined]  # the scheduler must drive it
    return new


def _student_names(params: list[torch.nn.Parameter], names: dict[int, list[str]],
                   student_params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   exact: bool) -> list[tuple[torch.nn.Parameter, str]]:
    """(teacher parameter, student parameter name) for every student parameter a teacher parameter of
    the group became: one, or one per copy of a tied parameter the student holds untied (untie=True)."""
    out = []
    for p in params:
        found = [n for n in names.get(id(p), []) if n in student_params]
        if not found:
            name = (names.get(id(p)) or ["?"])[0]
            raise N2NError(f"optimizer parameter {name} is not a parameter of both models",
                           op="widen_optimizer", fix="pass the teacher module the optimizer was built on")
        if len(found) > 1 and (p in optimizer.state or exact):
            # the teacher's moments are those of the sum of every use's gradient; each untied copy
            # gets one use's gradient only, so no remapping of them is the copy's
            raise ConstraintError(f"{found[0]} is tied in the teacher but untied in the student ({found}): its "
                                  "optimizer state has no mapping onto the separate copies", node=found[0],
                                  op="widen_optimizer", fix="widen without untie=True to hand the state over, "
                                  "or start the student's optimizer afresh")
        out += [(p, n) for n in found]
    return out


def _check_shapes(st: dict, sp: torch.nn.Parameter, name: str) -> None:
    """The remapped state is shaped like the student's parameter, or the plan is not the student's."""
    bad = [k for k, v in st.items() if isinstance(v, torch.Tensor) and v.ndim and v.shape != sp.shape]
    if bad:
        raise ConstraintError(f"{name}: the plan maps its {bad[0]} to {tuple(st[bad[0]].shape)}, but the student's "
                              f"parameter is {tuple(sp.shape)}: the student was made with another plan", node=name,
                              op="widen_optimizer", fix="pass the plan the student was made with")


def _check_state_mappable(plan: Plan, name: str, axes: list[int]) -> None:
    """A space grown by fill (zero or mean rows, a gain) has no moment mapping: its new units' and
    gains' gradients are not gathers of the teacher's, so Adam's v would be scaled wrongly. Nor
    have rescaled q/k rows (wider heads) yet."""
    rescaled = [axis for axis in axes if plan.layout_qk(plan.analysis.param_layouts[(name, axis)]) is not None]
    if rescaled:
        raise ConstraintError(f"{name}: axis {rescaled[0]} lies on a head_dim space whose q and k rows are rescaled "
                              "(heads='dim'), which has no optimizer-state mapping yet", node=name,
                              op="widen_optimizer", fix="grow the heads instead (heads='count'), or start the "
                              "student's optimizer afresh")
    filled = [axis for axis in axes if plan.axis_fill((name, axis)) is not None]
    if filled:
        raise ConstraintError(f"{name}: axis {filled[0]} lies on a space grown by fill (a width that is not a multiple "
                              "of the normalised width), which has no optimizer-state mapping", node=name,
                              op="widen_optimizer", fix="plan multiples of the current widths (norm_fill=False), "
                              "or start the student's optimizer afresh")


def _remap_state(st: dict, plan: Plan, name: str, axes: list[int], a: torch.Tensor, grouped: Any) -> dict:
    out = {}
    for key, value in st.items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
            continue
        if key not in FIRST_MOMENTS + SECOND_MOMENTS:
            raise N2NError(f"optimizer state {key!r} of {name} has no mapping", op="widen_optimizer",
                           fix="use SGD, Adam or AdamW state, or start the student's optimizer afresh")
        teacher_state = value.detach()
        moved = remap_tensor(teacher_state, name, axes, plan, GATHER, grouped) if axes else teacher_state
        if moved is teacher_state:  # nothing gathered: the student still gets its own tensor
            moved = teacher_state.clone()
        if not bool((a == 1).all()):  # in place on the fresh gather: no second student-sized tensor
            moved.div_(a.to(moved.dtype) ** (1 if key in FIRST_MOMENTS else 2))
        out[key] = moved.contiguous()
    return out


def _uniform(t: torch.Tensor, what: str, name: str) -> float:
    lo, hi = float(t.min()), float(t.max())
    if hi - lo > 1e-12 * hi:
        raise ConstraintError(f"{name}: the {what} differs across the tensor ({lo:g} to {hi:g})",
                              node=name, op="widen_optimizer",
                              fix="plan with replication='uniform' so every unit of a space is copied equally")
    return hi


GROUP_LRS = ("lr", "initial_lr", "max_lr", "min_lr")  # learning rates a scheduler keeps in a group


def _exact_hyper(cls: type, hyper: dict, a: float, b: float) -> tuple[dict, float]:
    """The group of one parameter, and its learning-rate factor."""
    out = dict(hyper)
    wd = hyper.get("weight_decay", 0.0)
    if cls is torch.optim.SGD:
        scale = a / b
        out.update(weight_decay=wd * b / a)
    elif cls is torch.optim.Adam:
        scale = 1 / b
        out.update(eps=hyper["eps"] / a, weight_decay=wd * b / a)
    else:  # AdamW: decoupled decay multiplies the parameter by (1 - lr * wd)
        scale = 1 / b
        out.update(eps=hyper["eps"] / a, weight_decay=wd * b)
    out.update({k: hyper[k] * scale for k in GROUP_LRS if k in hyper})
    return out, scale


# ---------------------------------------------------------------- schedulers
_S = torch.optim.lr_scheduler
SCHEDULERS = (_S.StepLR, _S.MultiStepLR, _S.ExponentialLR, _S.CosineAnnealingLR, _S.LambdaLR, _S.MultiplicativeLR,
              _S.OneCycleLR, _S.LinearLR, _S.ConstantLR, _S.PolynomialLR, _S.SequentialLR, _S.ChainedScheduler)
PER_GROUP = {"base_lrs": True, "_last_lr": True, "lr_lambdas": False}  # per-group lists: scaled as lr?


def widen_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> Any:
    """The teacher's learning-rate scheduler handed over to `optimizer`, the one widen_optimizer
    returned: a scheduler of the same class whose per-group state (base_lrs, lr_lambdas, OneCycleLR's
    initial/max/min lr in the groups) follows each student group's teacher group, scaled by the
    group's learning-rate factor (exact=True), with last_epoch and step counts kept. The teacher's
    scheduler is not modified. SequentialLR and ChainedScheduler hand over their schedulers."""
    sources = getattr(optimizer, "n2n_group_sources", None)
    if sources is None:
        raise N2NError("the optimizer was not made by widen_optimizer: its groups cannot be matched to the "
                       "teacher's", op="widen_scheduler", fix="pass the optimizer n2n_fx.widen_optimizer returned")
    teacher_ref = getattr(optimizer, "n2n_teacher_optimizer", None)
    _check_scheduler(scheduler, max(i for i, _ in sources) + 1 if sources else 0,
                     teacher_ref() if teacher_ref is not None else None)
    new = _hand_over(scheduler, optimizer, sources)
    _track_steps(optimizer)
    return new


def _check_scheduler(s: Any, n_groups: int, teacher_optimizer: Any) -> None:
    if type(s) not in SCHEDULERS:
        raise N2NError(f"scheduler {type(s).__name__} has no hand-over", op="widen_scheduler",
                       fix=f"use one of {[c.__name__ for c in SCHEDULERS]}, or build the student's scheduler afresh")
    if teacher_optimizer is not None and s.optimizer is not teacher_optimizer:
        # another optimizer's scheduler (a GAN's other one) with as many groups: its learning rates are not these
        raise N2NError(f"the {type(s).__name__} drives another optimizer than the one widen_optimizer was given",
                       op="widen_scheduler", fix="pass the scheduler of the optimizer that widen_optimizer was given")
    if len(s.optimizer.param_groups) != n_groups:
        raise N2NError(f"the scheduler drives an optimizer of {len(s.optimizer.param_groups)} groups, the new "
                       f"optimizer came from one of {n_groups}", op="widen_scheduler",
                       fix="pass the scheduler of the optimizer that widen_optimizer was given")
    for child in getattr(s, "_schedulers", ()):
        _check_scheduler(child, n_groups, teacher_optimizer)


def _hand_over(s: Any, optimizer: torch.optim.Optimizer, sources: list[tuple[int, float]]) -> Any:
    if isinstance(s, _S.CosineAnnealingLR) and s.eta_min and any(scale != 1 for _, scale in sources):
        raise ConstraintError(f"CosineAnnealingLR's eta_min ({s.eta_min:g}) is one learning rate for every group, "
                              "but the exact hand-over scales each group's learning rate by its own factor",
                              op="widen_scheduler", fix="use eta_min=0, or widen_optimizer(exact=False)")
    new = copy.copy(s)
    for key, value in vars(s).items():
        if key == "optimizer":
            new.optimizer = optimizer
        elif key == "_schedulers":
            new._schedulers = [_hand_over(child, optimizer, sources) for child in value]
        elif key in PER_GROUP:  # a callable object (not a function) may keep state: each group its own copy
            new.__dict__[key] = [value[i] * f if PER_GROUP[key] else copy.deepcopy(value[i]) for i, f in sources]
        else:
            new.__dict__[key] = copy.deepcopy(value)
    return new


def _track_steps(optimizer: torch.optim.Optimizer) -> None:
    """What a scheduler's constructor does to its optimizer (torch's LRScheduler): step marks
    `_opt_called`, so a scheduler stepped before the optimizer warns as it would have."""
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    func, ref = optimizer.step.__func__, weakref.ref(optimizer)  # type: ignore[attr-defined]

    @functools.wraps(func)
    def step(*args: Any, **kwargs: Any) -> Any:
        opt = ref()
        opt._opt_called = True  # type: ignore[union-attr]
        return func.__get__(opt, opt.__class__)(*args, **kwargs)

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = step  # type: ignore[method-assign]
