"""The proofs pass, agree with the table, and fail when the engine's maps are wrong."""

from __future__ import annotations

import torch

import proofs
from proofs import rules


def test_all_proofs_pass_and_meta_check_is_clean():
    results, problems = proofs.run_all()
    assert not problems, problems
    assert {r.name for r in results} == set(proofs.RESERVED)
    for r in results:
        assert r.ok, [(c.statement, c.holds, c.counterexample) for c in r.claims if not c.ok]


def test_every_counterexample_is_concrete():
    results, _ = proofs.run_all()
    broken = [c for r in results for c in r.claims if not c.expect]
    assert len(broken) >= 10
    assert all(c.counterexample and c.counterexample["values"] for c in broken)


def test_a_wrong_scale_in_the_engine_fails_the_proof(monkeypatch):
    import n2n_fx.indexmaps as im

    monkeypatch.setattr(im, "divide_scale", lambda g, n: torch.ones(g.numel(), dtype=torch.float64))
    claims = rules.dense_matrix()
    assert not claims[0].holds and claims[0].counterexample is not None


def test_meta_check_reports_orphans_and_missing(monkeypatch):
    monkeypatch.setitem(rules.PROOFS, "orphan_proof", lambda: [])
    _, problems = proofs.run_all(names=["stop"])
    assert any("orphan_proof" in p and "orphan" in p for p in problems)


def test_reach_check_reports_entries_no_proof_reaches_and_spares_exempt_and_stop_ones():
    from n2n_fx.spec import load_table
    from proofs import reach

    table = load_table()
    problems = reach.problems(table, reach.Reach())  # nothing reached
    assert any(p.startswith("entry linear (module) is unreached") for p in problems), problems[:3]
    spared = {op.name for op in table.ops if op.proof_reach or op.kind == "stop"}
    assert spared and not [p for p in problems if p.split(" ")[1] in spared]
    reached = reach.Reach({"linear": {"module": {"dense_matrix"}}})
    assert not any(p.startswith("entry linear (module)") for p in reach.problems(table, reached))


def test_reach_records_the_entries_and_spelling_families_a_proof_model_meets():
    import n2n_fx
    from proofs import reach

    seen = reach.Reach()
    with reach.recording(seen, "p"):
        n2n_fx.plan(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()), torch.randn(2, 2))
    assert seen.proofs("linear", "module") == {"p"} and seen.proofs("relu", "module") == {"p"}
    assert not reach.OBSERVERS  # the observer is removed after the block


def _exempted(table, name: str, reason: str):
    """The table with entry `name` given a proof_reach (every lookup map points at the new entry)."""
    import dataclasses

    old = table.entry(name)
    new = dataclasses.replace(old, proof_reach=reason)
    swap = lambda d: {k: (new if v is old else v) for k, v in d.items()}  # noqa: E731
    return dataclasses.replace(table, ops=tuple(new if op is old else op for op in table.ops),
                               by_module=swap(table.by_module), by_function=swap(table.by_function),
                               by_method=swap(table.by_method))


def test_reach_check_flags_an_exemption_that_is_no_longer_needed():
    from n2n_fx.spec import load_table
    from proofs import reach

    real = load_table()
    entry = next(op for op in real.ops if op.kind != "stop"  # one the interpreter evaluates in every family
                 and all(reach.symbolic(op, fam, t) for fam, t in reach.spellings(op, real).items()))
    table = _exempted(real, entry.name, "function: some reason")
    families = reach.spellings(table.entry(entry.name), table)
    everything = reach.Reach({entry.name: {fam: {"some_proof"} for fam in families}})
    stale = [p for p in reach.problems(table, everything) if p.startswith(f"entry {entry.name} says why")]
    assert stale, f"{entry.name}: every family reached, yet its proof_reach was not flagged"
    assert not [p for p in reach.problems(table, reach.Reach()) if "says why" in p]  # nothing reached: none stale
    # the real table's exemptions are all still needed (the meta-check of the full run enforces it)
    assert not [op.name for op in real.ops if op.proof_reach and "left it open" in op.proof_reach]


def test_reach_twins_match_torch():
    """The symbolic twins the reach models run (pools, pads, masks, constants, functional conv / norms,
    Swin and MaxViT attention) compute torch's (torchvision's) values in float64."""
    import numpy as np
    import sympy
    import torch.nn.functional as F
    from torch import nn
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    from proofs import symbolic as sym

    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    obj = lambda t: np.array(t.tolist(), dtype=object)  # noqa: E731

    def close(got, want):
        return torch.allclose(torch.tensor(np.asarray(got, dtype=float)), want, rtol=1e-12, atol=1e-12)

    def module(m, x):
        fn = sym.sym_module_of(type(m))
        return fn(None, m, "", (obj(x),), {})

    x = rand(2, 2, 3, 4)
    for mode in ("constant", "reflect", "replicate", "circular"):
        assert close(sym._pad(None, (obj(x), (1, 2, 2, 1)), {"mode": mode}), F.pad(x, (1, 2, 2, 1), mode=mode)), mode
    for m in (nn.ZeroPad2d((1, 0, 0, 1)), nn.ConstantPad2d(1, 0.5), nn.ReflectionPad2d(1), nn.ReplicationPad2d(2),
              nn.CircularPad2d(1), nn.MaxPool2d(2), nn.AvgPool2d(2, 1)):
        assert close(module(m, x), m(x)), m
    for m, t in ((nn.MaxPool1d(2), rand(1, 2, 5)), (nn.AvgPool1d(2), rand(1, 2, 4)), (nn.MaxPool3d(2), rand(1, 2, 2, 4, 2)),
                 (nn.AvgPool3d(2, 1), rand(1, 2, 3, 2, 2)), (nn.AdaptiveAvgPool1d(1), rand(2, 2, 3)),
                 (nn.AdaptiveMaxPool3d(1), rand(1, 2, 2, 1, 3))):
        assert close(module(m, t), m(t)), m
    t = rand(1, 2, 2, 2, 4)
    aten = torch.ops.aten
    assert close(sym.sym_function_of(aten.max_pool3d.default)(None, (obj(t), [2, 1, 2]), {}), aten.max_pool3d(t, [2, 1, 2]))
    assert close(sym.sym_function_of(F.max_pool1d)(None, (obj(x[0]), 2), {}), F.max_pool1d(x[0], 2))
    c, u = rand(2, 3), rand(2, 3)
    mask = sym._compare(sympy.Ne)(None, (obj(c), obj(u)), {})
    assert close(sym._where(None, (mask, obj(u), 2.0), {}), torch.where(c.ne(u), u, 2.0))
    assert close(sym._full_like()(None, (obj(u), 0.5), {}) + sym._full_like(1)(None, (obj(u),), {}),
                 torch.full_like(u, 0.5) + torch.ones_like(u))
    w, b = rand(4, 2, 3, 3, 3), rand(4)
    t = rand(1, 2, 1, 1, 2)
    assert close(sym._conv(None, (obj(t), obj(w), obj(b), 1, 1), {}), F.conv3d(t, w, b, 1, 1))
    # eps 1/4: one the proofs' exact() keeps (it rounds 1e-5 to 0, for teacher and student alike)
    mean, var, g, h = rand(2), rand(2).abs() + 0.5, rand(2), rand(2)
    t = rand(3, 2, 1, 2)
    assert close(sym._batch_norm(None, (obj(t), obj(mean), obj(var), obj(g), obj(h)), {"eps": 0.25}),
                 F.batch_norm(t, mean, var, g, h, eps=0.25))
    assert close(sym._batch_norm(None, (obj(t), None, None, obj(g), obj(h)), {"training": True, "eps": 0.25}),
                 F.batch_norm(t, None, None, g, h, training=True, eps=0.25))
    assert close(sym._rms_norm(None, (obj(u), (3,), obj(u[0]), 0.25), {}), F.rms_norm(u, (3,), u[0], 0.25))
    for shape, window, shift in (((1, 1, 4, 4), [1, 2], [0, 1]), ((2, 3, 3, 4), [2, 2], [1, 1])):
        m = ShiftedWindowAttention(4, window, shift, 2).double()
        nn.init.normal_(m.relative_position_bias_table)
        t = rand(*shape)
        p = {k: obj(v.detach()) for k, v in m.named_parameters()}
        bias = sym._relative_position_bias(None, (p["relative_position_bias_table"], m.relative_position_index, window), {})
        got = sym._shifted_window_attention(None, (obj(t), p["qkv.weight"], p["proj.weight"], bias, window, 2),
                                            {"shift_size": shift, "qkv_bias": p["qkv.bias"], "proj_bias": p["proj.bias"]})
        assert close(got, m(t).detach()), (shape, window, shift)
    m = RelativePositionalMultiHeadAttention(4, 2, 4).double()
    nn.init.normal_(m.relative_position_bias_table)
    p = {k: obj(v.detach()) for k, v in m.named_parameters()}

    class Params:
        def _p(self, target, name):
            return p[name]

    t = rand(2, 1, 4, 4)
    assert close(sym.sym_module_of(type(m))(Params(), m, "", (obj(t),), {}), m(t).detach())
