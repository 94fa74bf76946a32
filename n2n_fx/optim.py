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
"""

from __future__ import annotations

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


def factors(plan: Plan, param: str, axes: list[int], shape: torch.Size,
            grouped: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) for one parameter, each broadcastable to the student's shape: a divides the gradient
    (replicas along copied axes), b divides the parameter (replicas along contracted axes).
    `grouped`: the parameter's GroupedContract when it is a grouped conv weight."""
    an = plan.analysis
    ones = torch.ones(shape, dtype=torch.float64)
    inv_b = remap_tensor(ones, param, axes, plan, grouped=grouped)  # the scales the pass applied
    new_shape = inv_b.shape
    a = torch.ones(new_shape, dtype=torch.float64)
    for axis in axes:
        roles = an.roles.get((param, axis), {Role.CARRY})
        if roles & {Role.CONTRACT, Role.DIVIDE, Role.GROUPED}:
            continue
        view = [1] * len(new_shape)
        view[axis] = -1
        a = a * plan.layout_counts(an.param_layouts[(param, axis)]).reshape(view)
    return a, 1.0 / inv_b


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
    names = {id(p): n for n, p in teacher.named_parameters()}
    student_params = dict(student.named_parameters())
    axes_of = plan.analysis.axes_by_param()
    grouped_of = {g.param: g for g in plan.analysis.grouped}
    groups, state = [], {}
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        shared: list[torch.nn.Parameter] = []
        for p in group["params"]:
            name = names.get(id(p))
            if name is None or name not in student_params:
                raise N2NError(f"optimizer parameter {name or '?'} is not a parameter of both models",
                               op="widen_optimizer", fix="pass the teacher module the optimizer was built on")
            sp = student_params[name]
            axes = axes_of.get(name, [])
            grouped = grouped_of.get(name)
            a, b = factors(plan, name, axes, p.shape, grouped) if axes else (torch.ones(()), torch.ones(()))
            if p in optimizer.state:
                state[sp] = _remap_state(optimizer.state[p], plan, name, axes, a, grouped)
            if exact:
                groups.append({**_exact_hyper(type(optimizer), hyper, a, b, name), "params": [sp]})
            else:
                shared.append(sp)
        if not exact:
            groups.append({**hyper, "params": shared})
    new = type(optimizer)(groups)  # every group carries the teacher's hyperparameters
    new.defaults = dict(optimizer.defaults)
    for sp, st in state.items():
        new.state[sp] = st
    return new


def _remap_state(st: dict, plan: Plan, name: str, axes: list[int], a: torch.Tensor, grouped: Any) -> dict:
    out = {}
    for key, value in st.items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
            continue
        if key not in FIRST_MOMENTS + SECOND_MOMENTS:
            raise N2NError(f"optimizer state {key!r} of {name} has no mapping", op="widen_optimizer",
                           fix="use SGD, Adam or AdamW state, or start the student's optimizer afresh")
        moved = remap_tensor(value.detach(), name, axes, plan, GATHER, grouped) if axes else value.detach()
        power = 1 if key in FIRST_MOMENTS else 2
        out[key] = (moved / a.to(moved.dtype) ** power).contiguous() if axes else moved.clone()
    return out


def _uniform(t: torch.Tensor, what: str, name: str) -> float:
    lo, hi = float(t.min()), float(t.max())
    if hi - lo > 1e-12 * hi:
        raise ConstraintError(f"{name}: the {what} differs across the tensor ({lo:g} to {hi:g})",
                              node=name, op="widen_optimizer",
                              fix="plan with replication='uniform' so every unit of a space is copied equally")
    return hi


def _exact_hyper(cls: type, hyper: dict, a_t: torch.Tensor, b_t: torch.Tensor, name: str) -> dict:
    a, b = _uniform(a_t, "gradient divisor", name), _uniform(b_t, "parameter divisor", name)
    out = dict(hyper)
    wd = hyper.get("weight_decay", 0.0)
    if cls is torch.optim.SGD:
        out.update(lr=hyper["lr"] * a / b, weight_decay=wd * b / a)
    elif cls is torch.optim.Adam:
        out.update(lr=hyper["lr"] / b, eps=hyper["eps"] / a, weight_decay=wd * b / a)
    else:  # AdamW: decoupled decay multiplies the parameter by (1 - lr * wd)
        out.update(lr=hyper["lr"] / b, eps=hyper["eps"] / a, weight_decay=wd * b)
    return out
