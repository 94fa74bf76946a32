"""The next-size pairs people grow, where the ratios are not integers: norm-bound streams grow by
filling (LayerNorm: the mean, RMSNorm: zeros, every value times sqrt(new/old)), heads by whole
copies, blocks as identities. The default suite runs each pair at small sizes with the same ratios;
`pytest -m zoo` runs the published sizes (ViT-B/16 -> ViT-L/16's, a 576-wide tied Llama -> 960)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torchvision

import n2n_fx
from n2n_fx.testing import assert_independent, assert_untouched, fingerprint

transformers = pytest.importorskip("transformers")


def _vit(image: int, patch: int, layers: int, heads: int, hidden: int, mlp: int):
    return torchvision.models.VisionTransformer(image_size=image, patch_size=patch, num_layers=layers,
                                                num_heads=heads, hidden_dim=hidden, mlp_dim=mlp, num_classes=10)


def _grow_vit(small: tuple, big: tuple, image: int, patch: int, batch: int) -> None:
    torch.manual_seed(0)
    teacher = _vit(image, patch, *small).double().eval()
    torch.nn.init.normal_(teacher.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    before = fingerprint(teacher)
    with torch.device("meta"):
        target = _vit(image, patch, *big)
    x = torch.randn(batch, 3, image, image, dtype=torch.float64)
    grown = n2n_fx.grow(teacher, target, x)
    assert_untouched(teacher, before)
    assert_independent(teacher, grown)
    assert type(grown) is torchvision.models.VisionTransformer and grown.hidden_dim == big[2]
    assert grown.n2n_report.max_rel_err <= 1e-10, grown.n2n_report
    native = n2n_fx.verify(teacher.float(), grown.float(), x.float())
    assert native.ok and native.native_ok, native


def test_vit_grows_by_the_vit_b_to_vit_l_ratios() -> None:
    # ViT-B/16 -> ViT-L/16: hidden x4/3, heads 12 -> 16 (head size kept), MLP x4/3, 12 -> 24 blocks
    _grow_vit((2, 3, 48, 192), (4, 4, 64, 256), image=32, patch=8, batch=2)


@pytest.mark.zoo
def test_vit_b_16_grows_into_vit_l_16_sizes() -> None:
    _grow_vit((12, 12, 768, 3072), (24, 16, 1024, 4096), image=64, patch=16, batch=1)


def _llama(hidden: int, heads: int, kv: int, mlp: int, layers: int, head_dim: int):
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers.LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=mlp,
                                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                    head_dim=head_dim, max_position_embeddings=64, tie_word_embeddings=True,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _grow_llama(small: tuple, changes: dict, tmp_path, batch: int, length: int) -> None:
    from n2n_fx.hf import grow

    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(_llama(*small)).double().eval()
    before = fingerprint(teacher)
    ids = torch.randint(3, 128, (batch, length))
    grown = grow(teacher, example_inputs=(ids,), rtol=1e-6, **changes)  # RMSNorm computes in float32 inside
    assert_untouched(teacher, before)
    assert grown.lm_head.weight is grown.model.embed_tokens.weight
    grown.save_pretrained(tmp_path)
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert n2n_fx.verify(teacher, back, (ids,), rtol=1e-6).ok
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(teacher.generate(ids, **kw), back.generate(ids, **kw))
    half = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    # fill rounds every weight on the stream once to 16 bits: the plan check's bound is 2 eps (grow's)
    report = n2n_fx.verify(teacher.to(torch.bfloat16), half, (ids[:1],), rtol=2 * torch.finfo(torch.bfloat16).eps)
    assert report.ok and report.native_ok, report


def test_llama_grows_by_the_576_to_960_ratios(tmp_path) -> None:
    # hidden x5/3 (RMSNorm-bound: zero fill), heads 9 -> 15 and kv 3 -> 5, MLP x5/3, more layers, tied
    _grow_llama((72, 9, 3, 96, 3, 8), dict(hidden_size=120, num_attention_heads=15, num_key_value_heads=5,
                                           intermediate_size=160, num_hidden_layers=4), tmp_path, batch=2, length=9)


@pytest.mark.zoo
def test_llama_576_grows_into_the_960_release_sizes(tmp_path) -> None:
    _grow_llama((576, 9, 3, 1536, 30, 64), dict(hidden_size=960, num_attention_heads=15, num_key_value_heads=5,
                                                intermediate_size=2560, num_hidden_layers=32), tmp_path,
                batch=1, length=8)


def test_bert_base_to_large_sizes_are_refused_with_the_reason() -> None:
    """Post-LN (BERT): the norm's output is the residual stream, so neither the mean nor zeros can
    fill a non-multiple width (proofs: the post-norm counterexample), and a new post-norm block is
    not the identity at a zero branch."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, num_attention_heads=3, max_position_embeddings=16, num_hidden_layers=2)
    teacher = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=48, intermediate_size=192, **cfg)).double().eval()
    ids = torch.randint(0, 40, (2, 6))
    with torch.device("meta"):
        wider = transformers.BertForSequenceClassification(transformers.BertConfig(
            hidden_size=64, intermediate_size=256, **{**cfg, "num_attention_heads": 4}))
    with pytest.raises(n2n_fx.ConstraintError, match="post-norm residual"):
        n2n_fx.grow(teacher, wider, (ids,))
