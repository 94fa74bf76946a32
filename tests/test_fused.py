"""Fused projections: one Linear whose rows are q | k | v (or gate | up), cut by constant slices
(Phi-3) or packed as (3, heads, head_dim) and unbound (timm's ViT). Each piece is a space of its
own, so heads and MLP units widen; the student's slice bounds are the pieces' new offsets."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

import n2n_fx
from n2n_fx.testing import plan_signature
from tests.helpers import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")


def _phi3(dtype: torch.dtype = torch.float64) -> nn.Module:
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    cfg = transformers.Phi3Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False,
                                  tie_word_embeddings=False)
    return transformers.Phi3ForCausalLM(cfg).to(dtype).eval()


def _ids(batch: int, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(batch))


def _hidden(plan: n2n_fx.Plan) -> list:
    return [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]


@pytest.mark.parametrize("batch", [1, 2])
def test_phi3_fused_qkv_and_gate_up_widen_every_hidden_space(batch: int) -> None:
    model = _phi3()
    snap = snapshot(model)
    plan = n2n_fx.plan(model, (_ids(batch),), factor=2.0)
    hidden = _hidden(plan)
    assert len(hidden) == 5 and all(p.new_width == 2 * p.width for p in hidden), str(plan)
    heads = [p for p in hidden if p.name.endswith(".heads")]
    assert len(heads) == 2 and all(len(p.space.producers) == 3 for p in heads), str(plan)  # q | k | v pieces
    student = n2n_fx.apply_plan(plan)
    report = n2n_fx.verify(model, student, (_ids(batch),))
    assert report.ok and report.max_rel_err < 1e-10, report
    assert student.get_submodule("model.layers.0.self_attn.qkv_proj").weight.shape == (128, 64)  # 2 x (32 + 16 + 16)
    assert_unchanged(model, snap)


def test_phi3_plan_does_not_depend_on_batch_or_length() -> None:
    model = _phi3()
    plans = [plan_signature(n2n_fx.plan(model, (_ids(b, t),), factor=2.0)) for b in (1, 2, 3) for t in (5, 9)]
    assert all(p == plans[0] for p in plans), plans


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2])
def test_phi3_at_the_dtypes_users_run(dtype: torch.dtype, batch: int) -> None:
    model = _phi3(dtype)
    student = n2n_fx.widen(model, (_ids(batch),), factor=2.0)
    assert {p.dtype for p in student.parameters()} == {dtype}
    report = n2n_fx.verify(model, student, (_ids(batch),))
    assert report.ok, report


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("batch", [1, 2])
def test_timm_vit_packed_qkv_widens_its_heads(frontend: str, batch: int) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=2, num_classes=10).double().eval()
    x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)
    snap = snapshot(model)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend=frontend)
    hidden = _hidden(plan)
    assert len(hidden) == 5 and all(p.new_width == 2 * p.width for p in hidden), str(plan)
    student = n2n_fx.apply_plan(plan)
    assert student.get_submodule("blocks.0.attn.qkv").weight.shape == (3 * 384, 384)
    report = n2n_fx.verify(model, student, (x,))
    assert report.ok and report.max_rel_err < 1e-10, report
    assert_unchanged(model, snap)


def test_timm_vit_in_float32_and_train_mode() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=2, num_classes=10).train()
    x = torch.randn(1, 3, 32, 32)
    student = n2n_fx.widen(model, (x,), factor=2.0)
    assert student.training
    for mode in ("eval", "train"):
        report = n2n_fx.verify(model, student, (x,), mode=mode)
        assert report.ok, report


class ComputedBound(nn.Module):
    """A slice bound read from another space's width: it would move on the student."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.a(x), self.b(x)
        return self.c(torch.cat([g[:, :h.shape[1]], g[:, 4:]], 1)) + h.sum(1, keepdim=True)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_slice_bound_computed_from_a_width_freezes_that_width(frontend: str) -> None:
    model = ComputedBound().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, (x,), factor=2.0, frontend=frontend)
    student = n2n_fx.apply_plan(plan)
    assert n2n_fx.verify(model, student, (x,)).ok
