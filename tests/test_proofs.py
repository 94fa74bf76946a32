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
