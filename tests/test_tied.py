"""Tied weights (one tensor under two names): a tied embedding + head widens and stays one tensor
when a per-unit gain (the final norm) produces the head's input; otherwise untie=True widens the tied
space with separate copies."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import n2n_fx
from n2n_fx.testing import assert_untouched, fingerprint
from tests.helpers import assert_preserved


def _lm(family: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                      use_cache=False, tie_word_embeddings=True)
        return transformers.GPT2LMHeadModel(cfg).double().eval()
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   use_cache=False, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).double().eval()


HEAD = {"gpt2": ("lm_head.weight", "transformer.wte.weight"), "llama": ("lm_head.weight", "model.embed_tokens.weight")}


class TiedLM(nn.Module):
    """Embedding looked up on input and reused as the output projection (logits = h @ E^T)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(ids))))


def _codes(plan: n2n_fx.Plan) -> set[str]:
    return {p.reasons[0].code for p in plan.spaces if p.reasons}


def _ids(batch: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, 6), generator=torch.Generator().manual_seed(batch))


class GainTied(nn.Module):
    """A tied table whose head reads h * gain + shift: the head's division moves onto gain and shift."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mid = nn.Embedding(11, 6), nn.Linear(6, 6)
        self.gain, self.shift = nn.Parameter(torch.rand(6) + 0.5), nn.Parameter(torch.randn(6))
        self.drop = nn.Dropout(0.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h))
        return nn.functional.linear(self.drop(h * self.gain + self.shift)[:, 1:], self.emb.weight)


GAINS = {"gpt2": {("transformer.ln_f.weight", 0), ("transformer.ln_f.bias", 0)}, "llama": {("model.norm.weight", 0)}}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tied_lm_widens_every_hidden_space_and_stays_tied(family: str, batch: int) -> None:
    model, ids = _lm(family), _ids(batch, 50)
    before = fingerprint(model)
    plan = n2n_fx.plan(model, (ids,), factor=2.0)
    hidden = [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]
    assert hidden and all(p.new_width == 2 * p.width for p in hidden), str(plan)
    assert [set(t.gains) for t in plan.analysis.tied_heads] == [GAINS[family]]
    student = n2n_fx.apply_plan(plan)
    head, emb = (student.get_parameter(n) for n in HEAD[family])
    assert head is emb and emb.shape == (50, 32)
    assert_preserved(model, student, (ids,), rtol=1e-6 if family == "llama" else 1e-10)
    assert_untouched(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tied_lm_at_user_dtypes_batch_one(family: str, dtype: torch.dtype) -> None:
    model, ids = _lm(family).to(dtype), _ids(1, 50)
    student = n2n_fx.widen(model, (ids,), factor=2.0)
    head, emb = (student.get_parameter(n) for n in HEAD[family])
    assert head is emb and emb.dtype == dtype
    report = n2n_fx.verify(model, student, (ids,))
    assert report.ok and report.native_ok, report


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("factor", [1.5, 2.0])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_gain_before_a_tied_head_keeps_the_tie_at_any_factor(frontend: str, factor: float, mode: str) -> None:
    torch.manual_seed(0)
    model, ids = GainTied().double(), _ids(2, 11)
    model.train(mode == "train")
    before = fingerprint(model)
    plan = n2n_fx.plan(model, (ids,), factor=factor, frontend=frontend, mode=mode)
    assert {g for t in plan.analysis.tied_heads for g in t.gains} == {("gain", 0), ("shift", 0)}
    student = n2n_fx.apply_plan(plan)
    assert student.get_parameter("emb.weight").shape == (11, int(6 * factor + 0.5))
    assert_preserved(model, student, (ids,), mode=mode, rtol=1e-10)
    assert_untouched(model, before)


def test_tied_student_rebuilds_tied_and_generates_alike(tmp_path) -> None:
    from n2n_fx.hf import rebuild

    model, ids = _lm("gpt2"), _ids(1, 50)
    student = n2n_fx.widen(model, (ids,), factor=2.0)
    rebuilt = rebuild(model, student, (ids,))
    assert rebuilt.config.tie_word_embeddings and rebuilt.config.n_embd == 32
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight
    rebuilt.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert back.lm_head.weight is back.transformer.wte.weight
    assert n2n_fx.verify(model, back, (ids,), rtol=1e-10).ok
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), back.generate(ids, **kw))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_untie_still_widens_with_separate_copies(family: str) -> None:
    model, ids = _lm(family), _ids(2, 50)
    before = fingerprint(model)
    plan = n2n_fx.plan(model, (ids,), factor=2.0, frontend="export", untie=True)
    hidden = [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]
    assert hidden and all(p.new_width == 2 * p.width for p in hidden), str(plan)
    assert not plan.analysis.tied_heads
    assert_untouched(model, before)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_untied_student_is_exact_and_untied(family: str, batch: int) -> None:
    model, ids = _lm(family), _ids(batch, 50)
    before = fingerprint(model)
    student = n2n_fx.widen(model, (ids,), factor=2.0, frontend="export", untie=True)
    head, emb = (student.get_parameter(n) for n in HEAD[family])
    assert head is not emb and head.shape == emb.shape == (50, 32)
    assert head.untyped_storage().data_ptr() != emb.untyped_storage().data_ptr()
    assert_preserved(model, student, (ids,), rtol=1e-6 if family == "llama" else 1e-10)
    assert_untouched(model, before)
    single = _lm(family).float()  # float32 teacher, widened natively: dtype-derived tolerance
    assert n2n_fx.verify(single, n2n_fx.widen(single, (ids,), factor=2.0, frontend="export", untie=True), (ids,)).ok
    teacher_head, teacher_emb = (model.get_parameter(n) for n in HEAD[family])
    assert teacher_head is teacher_emb  # the teacher keeps its tie


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_tied_head_behind_a_nonlinearity_freezes_unless_untied(frontend: str) -> None:
    torch.manual_seed(0)
    model, ids = TiedLM().double().eval(), _ids(2, 11)
    before = fingerprint(model)
    tied = n2n_fx.plan(model, (ids,), factor=2.0, frontend=frontend)
    assert "param_role_conflict" in _codes(tied) and not tied.analysis.tied_heads
    conflict = next(p for p in tied.spaces if p.reasons and p.reasons[0].code == "param_role_conflict")
    assert "untie=True" in str(conflict.reasons[0])  # the reason names the way out
    kept = n2n_fx.widen(model, (ids,), factor=2.0, frontend=frontend)
    assert kept.get_parameter("head.weight") is kept.get_parameter("emb.weight")
    assert_preserved(model, kept, (ids,), rtol=1e-10)
    student = n2n_fx.widen(model, (ids,), factor=2.0, frontend=frontend, untie=True)
    assert student.get_parameter("head.weight").shape == student.get_parameter("emb.weight").shape == (11, 12)
    assert student.get_parameter("head.weight") is not student.get_parameter("emb.weight")
    assert_preserved(model, student, (ids,), rtol=1e-10)
    assert_untouched(model, before)


def test_untied_student_rebuilds_untied(tmp_path) -> None:
    from n2n_fx.hf import rebuild

    model, ids = _lm("gpt2"), _ids(2, 50)
    student = n2n_fx.widen(model, (ids,), factor=2.0, frontend="export", untie=True)
    rebuilt = rebuild(model, student, (ids,))
    assert not rebuilt.config.tie_word_embeddings and model.config.tie_word_embeddings
    assert rebuilt.lm_head.weight is not rebuilt.transformer.wte.weight
    rebuilt.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert n2n_fx.verify(model, back, (ids,), rtol=1e-10).ok


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_untie_at_user_dtypes_batch_one_train_mode_teacher(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model, ids = TiedLM().to(dtype).train(), _ids(1, 11)
    before = fingerprint(model)
    student = n2n_fx.widen(model, (ids,), factor=2.0, untie=True)
    assert student.get_parameter("head.weight").dtype == dtype and student.training
    report = n2n_fx.verify(model, student, (ids,))
    assert report.ok and report.native_ok, report  # plan exact in float64, native error within its dtype's bound
    assert_untouched(model, before)


class ScaledTied(GainTied):
    """T5's tied head: the normalised stream times a number (d_model ** -0.5) before the table."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        h = h + torch.tanh(self.mid(h))
        return nn.functional.linear((h * self.gain) * 6 ** -0.5, self.emb.weight)


def test_a_number_times_the_head_input_passes() -> None:
    torch.manual_seed(0)
    model, ids = ScaledTied().double(), _ids(2, 11)
    plan = n2n_fx.plan(model, (ids,), factor=2.0)
    assert [t.gains for t in plan.analysis.tied_heads] == [(("gain", 0),)]
    assert_preserved(model, n2n_fx.apply_plan(plan), (ids,), rtol=1e-10)
