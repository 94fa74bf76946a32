"""Op coverage: no space of a zoo model is frozen because the rule table lacks one of its ops, in
any graph a user may hand over (fx trace, torch.export, core ATen after run_decompositions)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch

import n2n_fx
from n2n_fx.testing import plan_signature
from proofs.rules import BmmNet  # attention written with bmm, as core ATen decomposes sdpa

transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")


def _resnet18() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    return torchvision.models.resnet18(num_classes=10), (torch.randn(2, 3, 32, 32),)


def _llama() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False)
    return transformers.LlamaForCausalLM(cfg), (torch.randint(0, 64, (2, 7)),)


def _bert() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=64)
    return transformers.BertModel(cfg), (torch.randint(0, 64, (2, 7)),)


def _phi3() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    cfg = transformers.Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  pad_token_id=0, use_cache=False)
    return transformers.Phi3ForCausalLM(cfg), (torch.randint(0, 64, (2, 7)),)


def _qwen2() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False)
    return transformers.Qwen2ForCausalLM(cfg), (torch.randint(0, 64, (2, 7)),)


def _distilbert() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    cfg = transformers.DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                        max_position_embeddings=64)
    return transformers.DistilBertModel(cfg), (torch.randint(0, 64, (2, 7)),)


def _vit() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    timm = pytest.importorskip("timm")  # packed qkv: (3, heads, head_dim) + unbind (slice + squeeze in core ATen)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=10), (torch.randn(2, 3, 32, 32),)


# GPT-2 is covered by export (tests/test_export.py): run_decompositions() itself fails on its Conv1D
# (a view of a transposed tensor), before n2n_fx sees the graph
MODELS: dict[str, Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...]]]] = {
    "resnet18": _resnet18, "llama": _llama, "bert": _bert, "phi3": _phi3, "qwen2": _qwen2,
    "distilbert": _distilbert, "vit": _vit}


@cache
def _model(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model in float64 eval mode (verification's precision) and its example inputs."""
    torch.manual_seed(0)
    model, x = MODELS[name]()
    return model.double().eval(), tuple(t.double() if t.is_floating_point() else t for t in x)


@cache
def _graph(name: str, graph: str) -> torch.nn.Module:
    """What the user hands n2n_fx: the model itself (fx), or its exported or core-ATen module."""
    model, x = _model(name)
    if graph == "fx":
        return model
    ep = torch.export.export(model, x)
    return ep.module() if graph == "export" else ep.run_decompositions().module()


def _plan(name: str, graph: str) -> n2n_fx.Plan:
    return n2n_fx.plan(_graph(name, graph), _model(name)[1], factor=2.0, frontend="fx" if graph == "fx" else "auto")


# the Hugging Face models do not symbolic_trace (auto falls back to torch.export: the export rows)
CASES = [("resnet18", "fx"), ("vit", "fx")] + [(m, g) for m in MODELS for g in ("export", "aten")]


@pytest.mark.parametrize(("name", "graph"), CASES, ids=[f"{m}-{g}" for m, g in CASES])
def test_no_space_is_frozen_by_an_unknown_op(name: str, graph: str) -> None:
    unknown = sorted({str(r) for sp in _plan(name, graph).spaces for r in sp.reasons if r.code == "unknown_op"})
    assert not unknown, "ops missing from specs/ops.toml:\n" + "\n".join(unknown)


@pytest.mark.parametrize("name", list(MODELS))
def test_core_aten_widens_as_much_as_export_and_verifies(name: str) -> None:
    widened = {g: sum(sp.new_width > sp.width for sp in _plan(name, g).spaces) for g in ("export", "aten")}
    assert widened["aten"] == widened["export"] > 0, widened
    gm, x = _graph(name, "aten"), _model(name)[1]
    report = n2n_fx.verify(gm, n2n_fx.widen(gm, x, factor=2.0), x)
    assert report.ok, str(report)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_bmm_attention_widens_by_heads_and_verifies(batch: int) -> None:
    model, x = BmmNet(heads=4, head_dim=2).double().eval(), torch.randn(batch, 5, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0, frontend="fx")
    frozen = {sp.name: sp.frozen for sp in plan.spaces if sp.frozen and sp.name != "head"}
    assert not frozen, frozen  # a batch of one folds (B, H) into bmm's batch as any batch does
    assert plan_signature(plan) == plan_signature(n2n_fx.plan(model, torch.randn(4, 3, 3, dtype=torch.float64),
                                                               factor=2.0, frontend="fx"))
    assert n2n_fx.verify(model, n2n_fx.widen(model, x, factor=2.0, frontend="fx"), x).ok


@pytest.mark.parametrize("name", ["llama", "bert", "phi3"])
def test_core_aten_plans_alike_at_a_batch_of_one(name: str) -> None:
    model, (ids,) = _model(name)
    one = ids[:1]
    gm = torch.export.export(model, (one,)).run_decompositions().module()
    assert plan_signature(n2n_fx.plan(gm, (one,), factor=2.0)) == plan_signature(_plan(name, "aten"))
