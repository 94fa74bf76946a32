"""Keyword example inputs: a dict of str -> tensor means model(**example_inputs), for models such as
T5 that take input_ids and decoder_input_ids by name."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import n2n_fx
from n2n_fx.frontend import as_inputs
from n2n_fx.verification import random_like
from tests.helpers import assert_preserved, assert_unchanged, snapshot


class KeywordOnly(nn.Module):
    """forward(x, *, scale_input): the second input can only be passed by name."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, *, scale_input: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x * scale_input)))


class TwoInputs(nn.Module):
    """forward(a, b) with a BatchNorm (train-mode verification) and an integer input (an embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1 = nn.Embedding(10, 6), nn.Linear(6, 12)
        self.bn, self.fc2 = nn.BatchNorm1d(12), nn.Linear(12, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(self.emb(b) * a))))


def _keyword_inputs(batch: int) -> dict[str, torch.Tensor]:
    # not in the forward's order: keywords are bound by name
    return {"scale_input": torch.randn(batch, 4, dtype=torch.float64), "x": torch.randn(batch, 4, dtype=torch.float64)}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("batch", [1, 2])
def test_keyword_only_input_widens(frontend: str, batch: int) -> None:
    model, inputs = KeywordOnly().double().eval(), _keyword_inputs(batch)
    snap = snapshot(model)
    plan = n2n_fx.plan(model, inputs, factor=2.0, frontend=frontend)
    assert plan.analysis.gm.meta["n2n_frontend"] == frontend
    assert [p.new_width for p in plan.spaces] == [16, 3]  # hidden doubled, logits fixed
    student = n2n_fx.widen(model, inputs, factor=2.0, frontend=frontend)
    assert student(**inputs).shape == (batch, 3)
    report = assert_preserved(model, student, inputs)
    assert report.max_rel_err <= 1e-10 and report.n_inputs == 4
    assert_unchanged(model, snap)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("batch", [1, 2])
def test_positional_inputs_passed_by_name(frontend: str, batch: int) -> None:
    model = TwoInputs().double().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    inputs = {"b": torch.randint(0, 10, (batch,)), "a": torch.randn(batch, 6, dtype=torch.float64)}
    snap = snapshot(model)
    student = n2n_fx.widen(model, inputs, factor=2.0, frontend=frontend)
    assert student.get_parameter("fc1.weight").shape[0] == 24
    assert_preserved(model, student, inputs)
    if batch > 1:  # BatchNorm's batch statistics need more than one sample; export fixes the traced mode
        trained = n2n_fx.widen(model, inputs, factor=2.0, frontend=frontend, mode="train")
        assert_preserved(model, trained, inputs, mode="train")
    assert_unchanged(model, snap)


def test_deepen_and_trace_take_keywords() -> None:
    model, inputs = KeywordOnly().double().eval(), _keyword_inputs(2)
    gm = n2n_fx.trace(model, inputs, frontend="fx")
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "scale_input"]
    assert all("tensor_meta" in n.meta for n in gm.graph.nodes if n.op != "output")
    deeper = n2n_fx.deepen(model, inputs, after=["relu"], batch_norm=True)  # batch_norm: runs the graph on them
    assert_preserved(model, deeper, inputs)
    wider = n2n_fx.widen(model, inputs, factor=1.5)
    assert_preserved(model, n2n_fx.widen(wider, inputs, factor=2.0), inputs)  # a student re-traced by name


def test_random_inputs_keep_keywords_and_integers() -> None:
    ids, x = torch.randint(0, 9, (2, 5)), torch.randn(2, 3, dtype=torch.float64)
    drawn = random_like({"ids": ids, "x": x}, 2, seed=0)
    assert [list(d) for d in drawn] == [["ids", "x"]] * 2
    assert all(d["ids"] is ids and d["x"].shape == x.shape and not torch.equal(d["x"], x) for d in drawn)
    assert not torch.equal(drawn[0]["x"], drawn[1]["x"])


@pytest.mark.parametrize("bad, said", [
    ({0: torch.zeros(1)}, "not a keyword argument name"),
    ({"x": 1.0}, "not a tensor"),
    ({"x": [torch.zeros(1)]}, "not a tensor"),
    ({}, "empty dict"),
])
def test_a_bad_dict_is_a_typed_error(bad: dict, said: str) -> None:
    model = KeywordOnly().double().eval()
    for call in (lambda: n2n_fx.plan(model, bad), lambda: n2n_fx.widen(model, bad),
                 lambda: n2n_fx.verify(model, model, bad), lambda: n2n_fx.deepen(model, bad, after=["relu"])):
        with pytest.raises(n2n_fx.N2NError, match=said) as info:
            call()
        assert not isinstance(info.value, n2n_fx.InternalError)
        assert info.value.op == "example_inputs" and info.value.fix


def test_keywords_the_forward_does_not_take_are_a_typed_error() -> None:
    model, inputs = KeywordOnly().double().eval(), _keyword_inputs(2)
    with pytest.raises(n2n_fx.N2NError) as info:
        n2n_fx.plan(model, {**inputs, "mask": torch.ones(2, 4)}, frontend="fx")
    assert not isinstance(info.value, n2n_fx.InternalError)
    with pytest.raises(n2n_fx.N2NError, match="teacher does not run"):
        n2n_fx.verify(model, model, {"x": inputs["x"]})


def test_as_inputs_keeps_tuples_and_copies_dicts() -> None:
    x = torch.zeros(1)
    assert as_inputs(x) == (x,) and as_inputs([x, x]) == (x, x)
    d = {"x": x}
    assert as_inputs(d) == d and as_inputs(d) is not d


def _t5(dtype: torch.dtype) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0)
    model = transformers.T5ForConditionalGeneration(config).to(dtype).eval()
    inputs = {"input_ids": torch.randint(0, 64, (2, 7)), "decoder_input_ids": torch.randint(0, 64, (2, 5))}
    return model, inputs


def test_t5_widens_from_keyword_inputs() -> None:
    model, inputs = _t5(torch.float64)
    snap = snapshot(model)
    plan = n2n_fx.plan(model, inputs, factor=2.0)
    assert plan.analysis.gm.meta["n2n_frontend"] == "export"  # auto: symbolic_trace fails on T5
    widened = {p.name for p in plan.spaces if p.new_width > p.width}
    mlps = {f"{stack}.block.{i}.layer.{ffn}.DenseReluDense.wi" for stack, ffn in (("encoder", 1), ("decoder", 2))
            for i in (0, 1)}
    # self-attention heads of each stack are one space (blocks share the relative position bias), and
    # so are the cross-attention heads (they share one zero bias, aten.zeros sized by a heads literal)
    heads = {f"{stack}.block.1.layer.0.SelfAttention.heads" for stack in ("encoder", "decoder")}
    assert widened == mlps | heads | {"decoder.block.1.layer.1.EncDecAttention.heads"}
    assert all(p.reasons[0].code == "model_output" for p in plan.spaces if p.new_width == p.width)
    student = n2n_fx.widen(model, inputs, factor=2.0)
    assert student.get_parameter("encoder.block.0.layer.1.DenseReluDense.wi.weight").shape[0] == 96
    report = assert_preserved(model, student, inputs)
    assert report.max_rel_err <= 1e-10
    assert_unchanged(model, snap)


def test_t5_float32_native_check() -> None:
    model, inputs = _t5(torch.float32)
    report = assert_preserved(model, n2n_fx.widen(model, inputs, factor=2.0), inputs)
    assert report.native_dtype == "float32" and report.native_ok


def test_cli_factory_returning_keyword_inputs(tmp_path, capsys) -> None:
    from n2n_fx.cli import main

    f = tmp_path / "kwmodel.py"
    f.write_text("import torch\n"
                 "from tests.test_kwargs import KeywordOnly\n"
                 "def build():\n"
                 "    return KeywordOnly(), {'x': torch.randn(2, 4), 'scale_input': torch.randn(2, 4)}\n")
    assert main(["check", f"{f}:build", "--float64"]) == 0
    assert "preserved" in capsys.readouterr().out


def test_t5_keyword_inputs_with_dynamic_shapes_run_at_other_sizes() -> None:
    model, inputs = _t5(torch.float64)
    student = n2n_fx.widen(model, inputs, factor=2.0, dynamic_shapes="auto")  # keyed by name, like the inputs
    gen = torch.Generator().manual_seed(3)
    other = {"input_ids": torch.randint(0, 64, (3, 9), generator=gen),
             "decoder_input_ids": torch.randint(0, 64, (3, 4), generator=gen)}
    assert assert_preserved(model, student, other).max_rel_err <= 1e-10
