"""frontend='auto' (the default): symbolic_trace where it traces, torch.export where it does not."""

from __future__ import annotations

import pytest
import torch

import n2n_fx
from n2n_fx.models import ZOO
from n2n_fx.testing import assert_untouched, fingerprint

transformers = pytest.importorskip("transformers")


def test_a_traceable_model_uses_fx():
    model, x = ZOO["resnet"]()
    plan = n2n_fx.plan(model.double(), x.double())
    assert plan.analysis.gm.meta["n2n_frontend"] == "fx" and str(plan).endswith("(traced with fx)")


def test_a_hugging_face_causal_lm_needs_no_frontend_and_keeps_its_cache_setting():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)  # use_cache: the default, True
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(cfg).double().eval()
    ids = torch.randint(0, 64, (2, 8))
    before = fingerprint(teacher)
    plan = n2n_fx.plan(teacher, (ids,), factor=2)
    assert plan.analysis.gm.meta["n2n_frontend"] == "export" and "(traced with export)" in str(plan)
    student = n2n_fx.widen(teacher, (ids,), factor=2)
    assert_untouched(teacher, before)  # the KV cache is switched off on the private copy only
    assert teacher.config.use_cache
    report = n2n_fx.verify(teacher, student, (ids,))
    assert report.ok and report.max_rel_err < 1e-12, report
    assert sum(p.new_width > p.width for p in plan.spaces) >= 3  # residual stream, heads, MLP


def test_when_neither_front_end_traces_both_reasons_are_given():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else x

    with pytest.raises(n2n_fx.TraceFailure) as info:
        n2n_fx.plan(Branchy(), torch.randn(2, 3))
    text = str(info.value)
    assert "symbolic_trace failed" in text and "torch.export failed too" in text and "x.sum() > 0" in text


def _encoder() -> torch.nn.Module:
    layer = torch.nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True, norm_first=True)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                               torch.nn.Linear(16, 2))


@pytest.mark.parametrize("batch", [1, 2])
def test_an_opaque_torch_nn_leaf_is_looked_into_through_export(batch: int):
    torch.manual_seed(0)
    model = _encoder().double().eval()
    x = torch.randn(batch, 5, 3, dtype=torch.float64)
    before = fingerprint(model)
    fx = n2n_fx.plan(model, (x,), factor=2, frontend="fx")
    assert not any(p.new_width > p.width for p in fx.spaces)  # fx keeps nn.TransformerEncoder a leaf
    plan = n2n_fx.plan(model, (x,), factor=2)
    assert plan.analysis.gm.meta["n2n_frontend"] == "export"
    assert sum(p.new_width > p.width for p in plan.spaces) >= 2  # residual stream and MLP, inside the encoder
    report = n2n_fx.verify(model, n2n_fx.widen(model, (x,), factor=2), (x,))
    assert report.ok and report.max_rel_err < 1e-12, report
    assert_untouched(model, before)


def test_an_op_as_opaque_in_both_graphs_keeps_symbolic_trace():
    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.rnn, self.out = torch.nn.Linear(3, 8), torch.nn.LSTM(8, 8, batch_first=True), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.rnn(self.inp(x))[0])

    model = Recurrent().double().eval()
    plan = n2n_fx.plan(model, (torch.randn(2, 4, 3, dtype=torch.float64),), factor=2)
    assert plan.analysis.gm.meta["n2n_frontend"] == "fx"  # export's aten.lstm hides the same parameters
