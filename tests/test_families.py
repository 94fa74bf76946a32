"""The causal-LM families people grow, tied and untied: widened 2x, rebuilt into their own class,
saved, reloaded, checked for function and for greedy generation, and in bfloat16 and float16 at a
batch of one."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

import n2n_fx

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _lm(family: str, tied: bool) -> torch.nn.Module:
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                      tie_word_embeddings=tied)
        return transformers.GPT2LMHeadModel(cfg).eval()
    config, model = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                     "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                     "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}[family]
    return model(config(**COMMON, tie_word_embeddings=tied)).eval()


FAMILIES = [(f, t) for f in ("llama", "qwen2", "phi3", "gpt2") for t in (True, False)]


@pytest.mark.parametrize("family, tied", FAMILIES)
def test_widened_family_rebuilds_reloads_and_generates_alike(family: str, tied: bool, tmp_path) -> None:
    from n2n_fx.hf import rebuild

    model = _lm(family, tied).double()
    ids = torch.randint(3, 50, (1, 6), generator=torch.Generator().manual_seed(1))
    plan = n2n_fx.plan(model, (ids,), factor=2.0)
    hidden = [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]
    assert hidden and all(p.new_width == 2 * p.width for p in hidden), str(plan)
    rebuilt = rebuild(model, n2n_fx.apply_plan(plan), (ids,))
    assert rebuilt.config.tie_word_embeddings == tied
    rebuilt.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert (back.get_output_embeddings().weight is back.get_input_embeddings().weight) == tied
    report = n2n_fx.verify(model, back, (ids,), rtol=1e-6)  # Llama-style RMSNorm computes in float32
    assert report.ok, report
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, **kw), back.generate(ids, **kw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gpt2"])
def test_half_precision_tied_family_at_a_batch_of_one(family: str, dtype: torch.dtype) -> None:
    model = _lm(family, True).to(dtype)
    ids = torch.randint(3, 50, (1, 7), generator=torch.Generator().manual_seed(2))
    student = n2n_fx.widen(model, (ids,), factor=2.0)
    assert {p.dtype for p in student.parameters()} == {dtype}
    report = n2n_fx.verify(model, student, (ids,))
    assert report.ok and report.native_ok, report
