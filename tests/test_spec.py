"""The rule table: well-formed, complete for the issue's op list, duplicates rejected."""

from __future__ import annotations

import tomllib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from n2n_fx.errors import SpecError
from n2n_fx.spec import FILL_RULES, KINDS, load_table, parse_table, specs_dir
from proofs import RESERVED


def raw():
    with open(specs_dir() / "ops.toml", "rb") as fh:
        return tomllib.load(fh)


def test_table_loads_and_documents_every_kind():
    table = load_table()
    assert set(table.kinds) == set(KINDS)
    assert {op.kind for op in table.ops} <= set(KINDS)


def test_every_entry_names_a_reserved_proof_and_every_proof_is_used():
    ops = load_table().ops
    used = {op.proof for op in ops} | ({"norm_fill"} if any(op.fill for op in ops) else set())  # fill codes
    assert used <= set(RESERVED), used - set(RESERVED)
    assert set(RESERVED) <= used, set(RESERVED) - used


def test_fill_codes_are_a_documented_closed_set():
    table = load_table()
    assert {op.fill for op in table.ops} - {""} <= set(FILL_RULES)
    assert {op.fill for op in table.ops if op.kind == "normalize"} == {"layer_norm", "rms_norm"}
    data = raw()
    data["op"][0] = {**data["op"][0], "fill": "affine"}
    with pytest.raises(SpecError, match="fill"):
        parse_table(data)
    data = raw()
    del data["fill"]["power"]
    with pytest.raises(SpecError, match=r"\[fill\]"):
        parse_table(data)


def test_duplicate_spelling_across_entries_rejected():
    data = raw()
    data["op"].append({**data["op"][0], "name": "linear_again"})
    with pytest.raises(SpecError, match="already covered"):
        parse_table(data)


def test_unknown_kind_rejected():
    data = raw()
    data["op"][0] = {**data["op"][0], "kind": "magic"}
    with pytest.raises(SpecError, match="kind"):
        parse_table(data)


def test_stop_entries_give_reasons_and_proofs_are_required():
    data = raw()
    data["op"][0] = {k: v for k, v in data["op"][0].items() if k != "proof"}
    with pytest.raises(SpecError, match="proof"):
        parse_table(data)
    assert all(op.reason for op in load_table().ops if op.kind == "stop")


MUST_COVER = {
    "modules": [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                nn.Hardsigmoid, nn.Hardtanh, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.Flatten],
    "functions": [F.linear, F.conv2d, F.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.hardswish, F.dropout,
                  F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.add, torch.sub, torch.mul, torch.div,
                  torch.cat, torch.split, torch.chunk, torch.flatten, torch.reshape, torch.mean, F.batch_norm],
    "methods": ["add", "sub", "mul", "div", "relu", "view", "reshape", "flatten", "split", "chunk", "mean",
                "sigmoid", "tanh", "size"],
}


def test_issue_op_list_is_covered_in_every_spelling():
    import operator

    table = load_table()
    for cls in MUST_COVER["modules"]:
        assert cls in table.by_module, cls
    for fn in MUST_COVER["functions"] + [operator.add, operator.sub, operator.mul, operator.truediv]:
        assert fn in table.by_function, fn
    for m in MUST_COVER["methods"]:
        assert m in table.by_method, m


def test_idempotence_flags_match_the_math():
    """The table's idempotent flag is checked numerically: phi(phi(v)) == phi(v) on many v."""
    table = load_table()
    v = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    for cls, spec in table.by_module.items():
        if not spec.activation:
            continue
        phi = cls().to(v.dtype)  # PReLU holds a (float32) slope
        idem = torch.allclose(phi(phi(v)), phi(v), atol=0, rtol=0)
        assert idem == spec.idempotent, (cls, idem)


def test_unknown_call_is_not_in_the_table():
    table = load_table()
    assert torch.cumsum not in table.by_function
    assert nn.ChannelShuffle not in table.by_module


def test_no_stage_module_is_shadowed_by_a_public_function():
    """`import n2n_fx.X` must give the module: public functions may not reuse module names."""
    from pathlib import Path

    import n2n_fx

    modules = {p.stem for p in Path(n2n_fx.__file__).parent.glob("*.py")}
    clashes = [name for name in n2n_fx.__all__ if name in modules and callable(getattr(n2n_fx, name))]
    assert not clashes, clashes


def test_every_kind_has_exactly_one_registered_rule():
    from n2n_fx import inference

    assert inference.check_kinds(load_table()) == []
    assert set(inference.RULES) == set(KINDS)
    assert inference.lookup("dense").fn is inference.rules.linear.dense


def test_an_unknown_kind_or_a_second_rule_is_a_typed_error(monkeypatch):
    from n2n_fx import N2NError, inference

    with pytest.raises(inference.UnknownRuleError, match="no rule is registered for kind 'wobble'") as err:
        inference.lookup("wobble")
    assert isinstance(err.value, N2NError)
    with pytest.raises(inference.UnknownRuleError, match="two rules"):
        inference.rule("dense")(lambda ctx, spec, a: None)
    monkeypatch.setitem(inference.RULES, "wobble", inference.RULES["dense"])
    assert inference.check_kinds(load_table()) == ["rule 'wobble' (n2n_fx.inference.rules.linear) has no entry in [kinds]"]
    monkeypatch.delitem(inference.RULES, "wobble")
    monkeypatch.delitem(inference.RULES, "dense")
    assert inference.check_kinds(load_table()) == ["kind 'dense' of [kinds] has no registered rule"]


def test_a_table_entry_whose_kind_has_no_rule_fails_typed(monkeypatch):
    """The driver dispatches through the registry: a kind without a rule is no silent stop."""
    import n2n_fx
    from n2n_fx import inference

    monkeypatch.delitem(inference.RULES, "dense")
    with pytest.raises(n2n_fx.N2NError, match="dense"):
        n2n_fx.plan(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(2, 3))


def test_every_rewrite_kind_has_a_pass_and_an_unknown_one_raises():
    import n2n_fx
    from n2n_fx import wider
    from n2n_fx.inference import Rewrite, RewriteKind

    assert set(wider.REWRITES) == set(RewriteKind)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    plan = n2n_fx.plan(model, torch.randn(2, 3), factor=2.0)
    node = next(n.name for n in plan.analysis.gm.graph.nodes if n.op == "call_module")
    plan.analysis.rewrites.append(Rewrite(node, "view_shpae", ()))  # a misspelled kind
    with pytest.raises(n2n_fx.InternalError, match="view_shpae"):
        n2n_fx.apply_plan(plan)


def test_every_fill_code_has_exactly_one_rule():
    from n2n_fx import fill

    assert set(fill.FILL_DISPATCH) == set(fill.Rule) == set(FILL_RULES)


def test_every_subpackage_ships_in_a_non_editable_install() -> None:
    """pyproject lists packages explicitly: a new subpackage missing there installs as a broken n2n_fx."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "n2n_fx").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
