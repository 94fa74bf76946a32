"""Property tests over random architectures: exactness, immutability, widths, compositions."""

from __future__ import annotations

import torch
from hypothesis import example, given
from hypothesis import strategies as st

import n2n_fx
from n2n_fx.testing import Arch, architectures, widen_requests

from .helpers import assert_unchanged, snapshot

EDGE = Arch(1, 2, (("conv", 0, 1, 1, 1), ("bn_act", 1, "relu"), ("add", 2, 1)), "flatten")  # width-1 layers
# found by the long profile: depthwise x2 multiplier, grouped conv, splits of stride-mapped spaces
DW_GROUPED_ADD = Arch(2, 2, (("conv", 0, 4, 1, 2), ("conv", 1, 2, 1, 2), ("add", 2, 0)), "flatten")
WIDTH1_FLATTEN = Arch(1, 2, (("conv", 0, 2, 1, 1), ("chunk", 1)), "flatten")  # a width-1 space into flatten
BROADCAST1 = Arch(1, 2, (("add", 0, 0), ("conv", 0, 2, 1, 1), ("chunk", 2), ("add", 0, 3), ("conv", 5, 1, 1, 1)),
                  "flatten")  # a width-1 space added to a size-1 input axis
DW_CHUNKS = Arch(2, 2, (("conv", 0, 4, 1, 2), ("conv", 1, 4, 1, 2), ("chunk", 2), ("chunk", 3),
                        ("bn_act", 0, "relu"), ("conv", 2, 2, 1, 2)), "flatten")


@given(architectures(), widen_requests())
@example(EDGE, n2n_fx.testing.WidenRequest(1.0, "none", 0))
@example(EDGE, n2n_fx.testing.WidenRequest(2.0, "split", 1))  # every unit replicated
@example(DW_GROUPED_ADD, n2n_fx.testing.WidenRequest(1.0, "none", 0))
@example(BROADCAST1, n2n_fx.testing.WidenRequest(2.0, "none", 0))
@example(WIDTH1_FLATTEN, n2n_fx.testing.WidenRequest(2.0, "none", 0))
@example(DW_CHUNKS, n2n_fx.testing.WidenRequest(1.5, "none", 0))
@example(DW_CHUNKS, n2n_fx.testing.WidenRequest(2.0, "split", 3))
def test_widen_preserves_random_architectures(arch, req):
    model, x = arch.build()
    snap = snapshot(model)
    plan = n2n_fx.plan(model, x, factor=req.factor, symmetry=req.symmetry, seed=req.seed)
    student = n2n_fx.apply_plan(plan)
    report = n2n_fx.verify(model, student, x, n_random=1)
    assert report.ok, f"{report}\n{arch}"
    assert_unchanged(model, snap)
    for p in plan.spaces:
        assert p.new_width == (p.width if p.reasons else max(p.width, int(p.width * req.factor + 0.5)))


@given(architectures(activations=("relu", "relu6")), st.data())
def test_deepen_then_widen_random_architectures(arch, data):
    model, x = arch.build()
    names = [n.name for n in torch.fx.symbolic_trace(model).graph.nodes
             if n.op in ("call_module", "call_function", "call_method") and n.name not in ("fc2",)]
    after = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
    try:
        deeper = n2n_fx.deepen(model, x, after=after, batch_norm=data.draw(st.booleans()))
    except n2n_fx.DeepenError:
        return  # refused with a typed error (e.g. after a size query): never a wrong student
    assert n2n_fx.verify(model, deeper, x, n_random=1).ok
    wider = n2n_fx.widen(deeper, x, factor=data.draw(st.floats(1.0, 2.5)))
    assert n2n_fx.verify(model, wider, x, n_random=1).ok
