"""Property tests over random architectures: exactness, immutability, widths, compositions,
invalid plans, and students that re-trace and train."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import n2n_fx
from n2n_fx.testing import (
    INVALID_KINDS,
    Arch,
    WidenRequest,
    architectures,
    deepen_points,
    invalid_request,
    plan_signature,
    stale_literals,
    widen_requests,
)

from .helpers import assert_unchanged, snapshot

EDGE = Arch(1, 2, (("conv", 0, 1, 1, 1), ("bn_act", 1, "relu"), ("add", 2, 1)), "flatten")  # width-1 layers
# found by the long profile: depthwise x2 multiplier, grouped conv, splits of stride-mapped spaces
DW_GROUPED_ADD = Arch(2, 2, (("conv", 0, 4, 1, 2), ("conv", 1, 2, 1, 2), ("add", 2, 0)), "flatten")
BROADCAST1 = Arch(1, 2, (("add", 0, 0), ("conv", 0, 2, 1, 1), ("chunk", 2), ("add", 0, 3), ("conv", 5, 1, 1, 1)),
                  "flatten")  # a width-1 space added to a size-1 input axis
WIDTH1_FLATTEN = Arch(1, 2, (("conv", 0, 2, 1, 1), ("chunk", 1)), "flatten")  # a width-1 space into flatten
SHUFFLE2 = Arch(1, 2, (("conv", 0, 2, 1, 1), ("shuffle", 1)), "flatten")  # view(n, 2, c // 2, ...): size-1 dim
NORM = Arch(2, 2, (("conv", 0, 4, 1, 1), ("norm", 1, "layer")), "mean")  # LayerNorm: uniform k, or fill
NORM_RMS = Arch(2, 2, (("conv", 0, 4, 1, 1), ("norm", 1, "rms")), "mean")  # RMSNorm: zero fill off the multiples
NARROW_WREAD = Arch(2, 2, (("conv", 0, 3, 1, 1), ("narrow", 1, "negative"), ("wread", 2, 2, "amax"),
                           ("narrow", 3, "slice")), "flatten")  # issue 11: literal narrows, a weight read
DW_CHUNKS = Arch(2, 2, (("conv", 0, 4, 1, 2), ("conv", 1, 4, 1, 2), ("chunk", 2), ("chunk", 3),
                        ("bn_act", 0, "relu"), ("conv", 2, 2, 1, 2)), "flatten")
# fused q | k | v cut by constant slices, packed (3, heads, head_dim) + unbind, a map cut in two pieces
FUSED = Arch(2, 2, (("conv", 0, 4, 1, 1), ("sdpa", 1, 2, "slice"), ("sdpa", 2, 2, "packed"), ("slices", 3, 1, "narrow"),
                    ("slices", 3, 3, "getitem"), ("conv", 4, 4, 1, 1), ("add", 8, 3), ("cat", (9, 5, 6))), "mean")
TIED = Arch(2, 2, (("conv", 0, 3, 1, 1), ("bn_act", 1, "relu"), ("add", 2, 1)), "tied")  # tied table behind a gain
TIED_SHARED = Arch(2, 2, (("conv", 0, 3, 1, 1),), "tied_shared")  # ... whose gain is read twice: the tie freezes
# a grouped conv's piece is an attention's embed, its mate is normalised with another grouped conv's piece:
# a request for that conv's other piece reaches the attention through a tie, a norm group and a tie
TWO_TIES = Arch(3, 3, (("conv", 0, 8, 1, 1), ("conv", 1, 8, 1, 2), ("chunk", 2), ("conv", 0, 8, 1, 1),
                       ("conv", 5, 8, 1, 2), ("chunk", 6), ("attention", 3, 2), ("cat", (4, 7)), ("norm", 10, "layer"),
                       ("cat", (11, 9, 8))), "mean")


def grow(arch: Arch, req: WidenRequest, built=None):
    model, x = built or arch.build()
    spaces = n2n_fx.plan(model, x, heads=req.heads).spaces
    try:
        plan = n2n_fx.plan(model, x, **req.kwargs(spaces))
    except n2n_fx.ConstraintError:
        return model, x, None, None  # per-space widths that split a grouped conv's groups: refused
    return model, x, plan, n2n_fx.apply_plan(plan)


@given(architectures(), widen_requests())
@example(EDGE, WidenRequest(1.0, None, "none", 0))
@example(EDGE, WidenRequest(2.0, None, "split", 1))  # every unit replicated
@example(DW_GROUPED_ADD, WidenRequest(1.0, None, "none", 0))
@example(BROADCAST1, WidenRequest(2.0, None, "none", 0))
@example(WIDTH1_FLATTEN, WidenRequest(2.0, None, "none", 0))
@example(SHUFFLE2, WidenRequest(2.0, None, "none", 0))
@example(DW_CHUNKS, WidenRequest(1.5, None, "none", 0))
@example(NORM, WidenRequest(2.0, None, "none", 0))
@example(NORM, WidenRequest(None, (0.5,), "none", 0, True))  # LayerNorm-bound 4 -> 9 by fill
@example(NORM, WidenRequest(None, (0.5,), "split", 1, True))
@example(NORM_RMS, WidenRequest(None, (0.5,), "none", 0, True))
@example(NARROW_WREAD, WidenRequest(2.0, None, "none", 0))
@example(DW_CHUNKS, WidenRequest(None, (1.0, 0.0), "split", 3))
@example(FUSED, WidenRequest(2.0, None, "none", 0))
@example(FUSED, WidenRequest(1.5, None, "split", 2))
@example(TIED, WidenRequest(1.5, None, "none", 0))
@example(TIED, WidenRequest(2.0, None, "split", 1))
@example(TIED_SHARED, WidenRequest(2.0, None, "none", 0))
@example(FUSED, WidenRequest(1.5, None, "none", 0, heads="dim"))  # wider heads: q, k rows rescaled
@example(FUSED, WidenRequest(None, (0.5, 1.0), "split", 3, heads="dim"))
@example(TWO_TIES, WidenRequest(None, (1.0,), "none", 0, subset=(False,) * 6 + (True,)))  # layers.4[4:8] alone
def test_widen_preserves_random_architectures(arch, req):
    model, x = arch.build()
    snap = snapshot(model)
    model, x, plan, student = grow(arch, req, (model, x))
    if plan is None:
        return
    report = n2n_fx.verify(model, student, x, n_random=1)
    assert report.ok, f"{report}\n{arch}"
    assert_unchanged(model, snap)
    assert stale_literals(plan, student) == [], arch  # slices of spaces follow the new widths
    asked = req.kwargs(plan.spaces)
    for p in plan.spaces:
        if p.reasons:
            assert p.new_width == p.width
        elif p.space.attention:  # heads follow the embed width; off the head_dim grid both stay
            assert p.new_width >= p.width
        elif "factor" in asked and p.space.uniform:  # one integer k per norm group
            assert p.new_width == p.width * max(1, int(asked["factor"] + 1e-9))
        elif "factor" in asked:
            assert p.new_width == max(p.width, int(p.width * asked["factor"] + 0.5))
        elif p.name in asked["widths"]:
            assert p.new_width >= asked["widths"][p.name]  # ties may raise a group to its widest


@settings(max_examples=25)  # three plans per example
@given(architectures(), st.sampled_from([1.5, 2.0]))
@example(SHUFFLE2, 2.0)
@example(BROADCAST1, 2.0)
def test_plan_does_not_depend_on_the_batch_size(arch, factor):
    """Size-1 axes never change a plan: a batch of one plans like a batch of two or three."""
    model, _ = arch.build()
    plans = [plan_signature(n2n_fx.plan(model, arch.build(batch=b)[1], factor=factor)) for b in (1, 2, 3)]
    assert plans[0] == plans[1] == plans[2], arch


@given(architectures(), widen_requests(), widen_requests())
def test_widen_twice_composes(arch, first, second):
    model, x, plan, student = grow(arch, first)
    if plan is None:
        return
    spaces = n2n_fx.plan(student, x, heads=second.heads).spaces
    try:
        again = n2n_fx.widen(student, x, **second.kwargs(spaces))
    except n2n_fx.ConstraintError:
        return
    assert n2n_fx.verify(model, again, x, n_random=1).ok, arch


@given(architectures(activations=("relu", "relu6")), st.data())
def test_deepen_then_widen_random_architectures(arch, data):
    model, x = arch.build()
    snap = snapshot(model)
    after = data.draw(deepen_points(model))
    try:
        deeper = n2n_fx.deepen(model, x, after=after, batch_norm=data.draw(st.booleans()))
    except n2n_fx.DeepenError:
        assert_unchanged(model, snap)
        return  # refused with a typed error (e.g. after a size query): never a wrong student
    assert n2n_fx.verify(model, deeper, x, n_random=1).ok
    wider = n2n_fx.widen(deeper, x, factor=data.draw(st.floats(1.0, 2.5)))
    assert n2n_fx.verify(model, wider, x, n_random=1).ok
    assert_unchanged(model, snap)


@given(architectures(activations=("relu", "relu6", "tanh")), widen_requests(), st.data())
def test_widen_then_deepen_random_architectures(arch, req, data):
    model, x, plan, student = grow(arch, req)
    if plan is None:
        return
    after = data.draw(deepen_points(student))
    try:
        deeper = n2n_fx.deepen(student, x, after=after, batch_norm=data.draw(st.booleans()),
                               kernel_size=data.draw(st.sampled_from([1, 2, 3])))
    except n2n_fx.DeepenError:
        return  # e.g. after tanh or a size query: refused, never a wrong student
    assert n2n_fx.verify(model, deeper, x, n_random=1).ok, arch


@given(architectures(), st.sampled_from(INVALID_KINDS))
def test_invalid_plans_raise_typed_errors(arch, kind):
    model, x = arch.build()
    snap = snapshot(model)
    request = invalid_request(kind, n2n_fx.plan(model, x).spaces)
    try:
        student = n2n_fx.widen(model, x, **request)
    except n2n_fx.N2NError:
        assert_unchanged(model, snap)
        return
    if kind == "not_uniform":  # fill grew the normalised space: allowed only where exact
        assert n2n_fx.verify(model, student, x, n_random=1).ok, (arch, request)
        assert_unchanged(model, snap)
        return
    raise AssertionError(f"{kind} {request} returned a student: {student}")


@given(architectures(activations=("relu", "tanh", "gelu")), widen_requests())
def test_student_retraces_and_takes_an_optimizer_step(arch, req):
    model, x, plan, student = grow(arch, req)
    if plan is None:
        return
    retraced = torch.fx.symbolic_trace(student)
    assert torch.equal(retraced(x), student(x))
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    student(x).square().mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in student.parameters())
