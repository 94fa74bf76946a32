"""Fidelity: the graph n2n_fx reasons about is the model that runs, and the teacher is never touched.

Buffers stay buffers under their own names, Python state written during tracing lands in a private
copy, hooks are traced (or refused), a teacher in train mode is traced in eval semantics and no call
runs it; every student owns its tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

import n2n_fx
from n2n_fx.testing import assert_independent, assert_untouched, fingerprint

FRONTENDS = ["fx", "export"]


def inputs(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, dtype=torch.float64)


class Convs(nn.Module):
    """conv -> relu -> conv -> mean -> linear: one hidden space (c1) that should widen."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3), nn.Linear(6, 4)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(F.relu(h)).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c1(x))


class BufferNorm(Convs):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(3))
        self.register_buffer("std", torch.rand(3) + 1)

    def forward(self, x):
        return self.head(self.c1((x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)))


class LiteralTensor(Convs):
    def forward(self, x):
        return self.head(self.c1(x) * torch.tensor(2.0, dtype=x.dtype))


class FrozenBN(Convs):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops.misc import FrozenBatchNorm2d

        self.bn = FrozenBatchNorm2d(8)
        for name in ("weight", "bias", "running_mean"):
            getattr(self.bn, name).uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.head(self.bn(self.c1(x)))


class Cache(Convs):
    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = 0

    def forward(self, x):
        h = self.c1(x)
        self.cache["h"] = h
        self.calls += 1
        return self.head(h)


class Counter(Convs):
    """A buffer written in forward: tracing must not step the teacher's."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.seen += 1
        return self.head(self.c1(x))


class PlainTensorAttr(Convs):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.rand(8, 1, 1, dtype=torch.float64) + 0.5  # neither parameter nor buffer

    def forward(self, x):
        return self.head(self.c1(x) * self.scale)


def _check(teacher: nn.Module, x: torch.Tensor, frontend: str = "fx", widened: int = 1, **kw) -> torch.nn.Module:
    """widen 2x: exact, at least `widened` spaces grown, teacher untouched, no shared storage."""
    teacher = teacher.double()
    out = teacher(x)
    before = fingerprint(teacher)
    plan = n2n_fx.plan(teacher, x, factor=2, frontend=frontend, **kw)
    assert sum(1 for s in plan.spaces if s.new_width > s.width) >= widened, plan
    student = n2n_fx.widen(teacher, x, factor=2, frontend=frontend, **kw)
    assert_untouched(teacher, before)
    assert_independent(teacher, student)
    for batch in (x, x[:1]) if frontend == "fx" else (x,):  # export students are specialised to the batch
        report = n2n_fx.verify(teacher, student, batch, n_random=1)
        assert_untouched(teacher, before)
        assert report.ok and report.max_rel_err < 1e-12, report
    assert torch.equal(teacher(x), out)
    return student


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("model", [BufferNorm, LiteralTensor, FrozenBN, PlainTensorAttr],
                         ids=lambda m: m.__name__)
def test_buffers_and_constants_stay_private_and_named(model, frontend):
    torch.manual_seed(0)
    teacher, x = model().double(), inputs()
    keys = set(teacher.state_dict())
    a = _check(teacher, x, frontend, widened=2 if model is FrozenBN else 1)
    b = n2n_fx.widen(teacher, x, factor=2, frontend=frontend)
    assert set(a.state_dict()) == set(b.state_dict()) == keys  # the teacher's names, stable across calls
    # loading into the student leaves the teacher alone (no aliasing)
    out = teacher(x)
    a.load_state_dict({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in a.state_dict().items()})
    assert torch.equal(teacher(x), out)


def test_buffer_normalisation_buffers_are_graph_values():
    gm = n2n_fx.trace(BufferNorm().double(), inputs())
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert {"mean", "std"} <= targets and not any(t.startswith("_tensor_constant") for t in targets)


def test_frozen_batchnorm_widens_per_channel():
    plan = n2n_fx.plan(FrozenBN().double(), inputs(), factor=2)
    (c1,) = [s for s in plan.spaces if s.name == "c1"]
    assert c1.frozen is None and c1.new_width == 16


@pytest.mark.parametrize("model", [Cache, Counter], ids=lambda m: m.__name__)
def test_python_state_written_in_forward_stays_in_a_private_copy(model):
    torch.manual_seed(0)
    teacher = model().double()
    x = inputs()
    before = fingerprint(teacher)
    student = n2n_fx.widen(teacher, x, factor=2)
    n2n_fx.plan(teacher, x)
    n2n_fx.deepen(teacher, x, after=["c1"], activation=None)
    assert_untouched(teacher, before)
    teacher(x)  # the next call works (no Proxy left in the teacher's cache)
    student(x)
    if model is Cache:
        assert isinstance(teacher.cache["h"], torch.Tensor) and teacher.calls == 1


# ----------------------------------------------------------------------------- hooks

def _flip(module, args, out):  # not elementwise: a hook the graph must see
    return out.flip(1)


def _centre(module, args, out):
    return out - out.mean(1, keepdim=True)


def _pre_double(module, args):
    return (args[0] * 2,)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("where,kind,hook", [
    ("c1", "forward", _flip), ("c1", "forward", _centre), ("c2", "pre", _pre_double), ("c1", "pre", _pre_double)])
def test_hooks_are_traced_into_the_graph(where, kind, hook, frontend):
    torch.manual_seed(0)
    teacher = Convs().double()
    module = getattr(teacher, where)
    (module.register_forward_hook if kind == "forward" else module.register_forward_pre_hook)(hook)
    student = _check(teacher, inputs(), frontend, widened=0)
    assert len(teacher.c1._forward_hooks) + len(teacher.c1._forward_pre_hooks) + len(teacher.c2._forward_pre_hooks) == 1
    del student


def test_the_inference_sees_what_a_hook_computes():
    teacher = Convs().double()
    teacher.c1.register_forward_hook(_centre)
    plan = n2n_fx.plan(teacher, inputs(), factor=1.5)
    (c1,) = [s for s in plan.spaces if s.name == "c1"]
    # the hook's mean over the space allows only uniform k-fold replication: 1.5x leaves it alone
    assert c1.space.uniform and c1.new_width == c1.width


def test_hook_on_the_model_itself_is_refused():
    teacher = Convs().double()
    teacher.register_forward_hook(lambda m, a, o: o * 3)
    before = fingerprint(teacher)
    with pytest.raises(n2n_fx.HookError) as info:
        n2n_fx.widen(teacher, inputs())
    assert info.value.code == "hook" and "Fix:" in str(info.value)
    assert_untouched(teacher, before)


def test_global_module_hook_is_refused():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        with pytest.raises(n2n_fx.HookError):
            n2n_fx.plan(Convs().double(), inputs())
    finally:
        handle.remove()


def test_hook_inside_an_opaque_leaf_module_is_refused():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.conv(x)

    class Net(Convs):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.head(self.block(self.c1(x)))

    teacher = Net().double()
    teacher.block.conv.register_forward_hook(_flip)
    with pytest.raises(n2n_fx.HookError) as info:
        n2n_fx.plan(teacher, inputs(), leaf_modules=[Block])
    assert "block.conv" in str(info.value)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("reparam", ["prune", "weight_norm", "spectral_norm", "parametrize_weight_norm"])
def test_reparametrisations_are_exact_or_refused(reparam, frontend, train):
    torch.manual_seed(0)
    teacher = Convs().double()
    if reparam == "prune":
        torch.nn.utils.prune.random_unstructured(teacher.c2, "weight", amount=0.5)
    elif reparam == "weight_norm":
        torch.nn.utils.weight_norm(teacher.c2)
    elif reparam == "spectral_norm":
        torch.nn.utils.spectral_norm(teacher.c2)
    else:
        torch.nn.utils.parametrizations.weight_norm(teacher.c2)
    teacher.train(train)  # spectral_norm's power iteration steps its buffers in train mode: never the teacher's
    x = inputs()
    before = fingerprint(teacher)
    try:
        student = n2n_fx.widen(teacher, x, factor=2, frontend=frontend)
    except n2n_fx.N2NError:
        assert_untouched(teacher, before)
        return
    assert_untouched(teacher, before)
    assert_independent(teacher, student)
    report = n2n_fx.verify(teacher, student, x, n_random=1)
    assert report.ok and report.max_rel_err < 1e-12, report


# ----------------------------------------------------------------------------- mode

class FunctionalBN(Convs):
    """Reads self.training in Python: fixed at trace time."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rm", torch.randn(8))
        self.register_buffer("rv", torch.rand(8) + 0.5)
        self.drop = 0.5

    def forward(self, x):
        h = F.batch_norm(self.c1(x), self.rm, self.rv, training=self.training, momentum=0.1)
        return self.head(F.dropout(h, self.drop, training=self.training))


class ModuleBN(Convs):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.head(self.bn(self.c1(x)))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("model", [FunctionalBN, ModuleBN], ids=lambda m: m.__name__)
def test_teacher_in_train_mode_is_traced_in_eval_semantics_and_never_run(model, frontend):
    torch.manual_seed(0)
    teacher = model().double().train()
    x = inputs()
    before = fingerprint(teacher)
    student = n2n_fx.widen(teacher, x, factor=2, frontend=frontend)
    assert_untouched(teacher, before)  # num_batches_tracked, running stats, flags
    assert_independent(teacher, student)
    assert all(m.training for m in teacher.modules())
    teacher.eval()
    student_eval = student
    for m in student_eval.modules():
        m.training = False
    with torch.no_grad():
        t, s = teacher(x), student_eval(x)
    assert torch.allclose(t, s, rtol=1e-12, atol=1e-12), float((t - s).abs().max())


def test_train_mode_tracing_on_request():
    torch.manual_seed(0)
    teacher = FunctionalBN().double()
    teacher.drop = 0.0  # dropout masks are random: compare batch statistics only
    teacher.train()
    x = inputs(4)
    before = fingerprint(teacher)
    student = n2n_fx.widen(teacher, x, factor=2, mode="train")
    assert_untouched(teacher, before)
    ops = {str(n.target) for n in student.graph.nodes}
    assert any("batch_norm" in o for o in ops)
    probe = FunctionalBN().double()
    probe.load_state_dict(teacher.state_dict())
    probe.drop = 0.0
    probe.train()
    with torch.no_grad():
        t, s = probe(x), student(x)  # both use batch statistics
    assert torch.allclose(t, s, rtol=1e-12, atol=1e-12)
    with pytest.raises(n2n_fx.N2NError):
        n2n_fx.plan(teacher, x, mode="inference")


def test_student_keeps_the_teachers_training_flags():
    teacher = ModuleBN().double().train()
    student = n2n_fx.widen(teacher, inputs(), factor=2)
    assert student.training and student.get_submodule("bn").training
    teacher.eval()
    assert not n2n_fx.widen(teacher, inputs(), factor=2).training


# ----------------------------------------------------------------------------- every failure typed

@pytest.mark.parametrize("target,call", [
    ("n2n_fx.frontend.propagate_shapes", "widen"), ("n2n_fx.inference.Inference.run", "widen"),
    ("n2n_fx.planning.Plan.__init__", "plan"), ("n2n_fx.wider.Net2WiderNet.call", "widen"),
    ("n2n_fx._api.own_tensors", "widen"), ("n2n_fx.wider.Net2WiderNet.call", "apply_plan"),
    ("n2n_fx.deeper.Net2DeeperNet.call", "deepen"), ("n2n_fx.inference.Inference.run", "infer"),
    ("n2n_fx.frontend._symbolic_trace", "trace"), ("n2n_fx.verification.prepare", "verify"),
])
def test_a_failure_in_any_stage_is_an_n2n_error(monkeypatch, target, call):
    teacher, x = Convs().double(), inputs()
    plan = n2n_fx.plan(teacher, x)

    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(target, boom)
    before = fingerprint(teacher)
    calls = {"widen": lambda: n2n_fx.widen(teacher, x), "plan": lambda: n2n_fx.plan(teacher, x),
             "apply_plan": lambda: n2n_fx.apply_plan(plan), "deepen": lambda: n2n_fx.deepen(teacher, x, after=["c1"]),
             "infer": lambda: n2n_fx.infer(plan.analysis.gm), "trace": lambda: n2n_fx.trace(teacher, x),
             "verify": lambda: n2n_fx.verify(teacher, teacher, x)}
    with pytest.raises(n2n_fx.N2NError) as info:
        calls[call]()
    assert info.value.code == "internal" and "injected" in str(info.value) and "Fix:" in str(info.value)
    assert_untouched(teacher, before)
