"""The torch.export front end: ATen graphs widened and deepened by the same table, for models
that do not symbolic_trace (nn.TransformerEncoder, Hugging Face transformers)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from tests.helpers import assert_preserved


def _space(plan: n2n_fx.Plan, name: str):
    return next(p for p in plan.spaces if p.name == name)


class ShapeBranch(nn.Module):
    """Python control flow on a shape: symbolic_trace fails, torch.export specialises it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if x.shape[-1] > 4:
            h = F.max_pool2d(h, 2)
        return self.fc(h.mean((2, 3)))


def test_a_model_that_only_exports_widens_and_deepens() -> None:
    torch.manual_seed(0)
    model, x = ShapeBranch().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    with pytest.raises(n2n_fx.TraceFailure):
        n2n_fx.plan(model, x, frontend="fx")
    assert n2n_fx.plan(model, x).analysis.gm.meta["n2n_frontend"] == "export"  # auto: fx fails, export traces
    plan = n2n_fx.plan(model, x, factor=2.0, frontend="export")
    assert [p.new_width for p in plan.spaces] == [12, 4]  # conv widened, logits fixed
    assert_preserved(model, n2n_fx.widen(model, x, factor=1.5, frontend="export"), x)
    conv = next(n.name for n in n2n_fx.trace(model, x, frontend="export").graph.nodes if "conv2d" in str(n.target))
    assert_preserved(model, n2n_fx.deepen(model, x, after=[conv], frontend="export"), x)


def test_transformer_encoder_through_export() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False),
        nn.Linear(16, 2)).double().eval()
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0, frontend="export")
    widened = {p.name for p in plan.spaces if p.new_width > p.width}
    assert {"0", "1.layers.0.linear1", "1.layers.1.linear1"} <= widened  # residual stream and MLPs
    assert_preserved(model, n2n_fx.widen(model, x, factor=2.0, frontend="export"), x)


class SdpaBlock(nn.Module):
    """Attention written with F.scaled_dot_product_attention, heads split by a view (fx path)."""

    def __init__(self, heads: int = 2, dim: int = 8) -> None:
        super().__init__()
        self.inp, self.q, self.k, self.v, self.proj, self.o = (
            nn.Linear(3, dim), nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim),
            nn.Linear(dim, 2))
        self.heads, self.dim = heads, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.inp(x)
        q, k, v = (p(h).view(b, n, self.heads, self.dim // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(h + self.proj(a.transpose(1, 2).reshape(b, n, self.dim)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_sdpa_heads_widen(frontend: str) -> None:
    torch.manual_seed(0)
    model, x = SdpaBlock().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0, frontend=frontend)
    heads = [p for p in plan.spaces if p.name.endswith("heads")]
    assert len(heads) == 1 and heads[0].width == 2 and heads[0].new_width == 4
    for factor in (1.5, 2.0, 3.0):
        assert_preserved(model, n2n_fx.widen(model, x, factor=factor, frontend=frontend), x)


# ----------------------------------------------------------------------------- Hugging Face
IDS = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def _hf(name: str, **kw):
    transformers = pytest.importorskip("transformers")
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=24, max_position_embeddings=16, num_labels=3)
        return transformers.BertForSequenceClassification(cfg).double().eval()
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                      use_cache=False, **kw)
        return transformers.GPT2LMHeadModel(cfg).double().eval()
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   use_cache=False, tie_word_embeddings=False)  # grouped-query: 2 q heads per kv
    return transformers.LlamaForCausalLM(cfg).double().eval()


def _linears(model: nn.Module) -> list[str]:
    gm = n2n_fx.trace(model, (IDS,), frontend="export")
    return [n.name for n in gm.graph.nodes if n.op == "call_function" and str(n.target) in ("aten.linear.default",
                                                                                            "aten.addmm.default")]


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_hugging_face_models_widen_and_deepen_through_export(name: str) -> None:
    model = _hf(name, tie_word_embeddings=False) if name == "gpt2" else _hf(name)
    plan = n2n_fx.plan(model, (IDS,), factor=2.0, frontend="export")
    hidden = [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]
    assert hidden and all(p.new_width == 2 * p.width for p in hidden), str(plan)
    assert any(p.name.endswith(".heads") for p in hidden)
    # Llama's RMSNorm computes in float32 whatever the model's dtype: that bounds its error
    rtol = 1e-6 if name == "llama" else 1e-10
    student = n2n_fx.widen(model, (IDS,), factor=2.0, frontend="export")
    assert n2n_fx.verify(model, student, (IDS,), rtol=rtol).ok
    after = _linears(model)[2::4][:2]  # projections inside two blocks (activations there are not idempotent)
    deeper = n2n_fx.deepen(model, (IDS,), after=after, frontend="export")
    assert n2n_fx.verify(model, deeper, (IDS,), rtol=rtol).ok
    assert n2n_fx.verify(model, n2n_fx.widen(deeper, (IDS,), factor=2.0), (IDS,), rtol=rtol).ok


def test_tied_gpt2_widens_its_residual_and_keeps_its_tie() -> None:
    model = _hf("gpt2", tie_word_embeddings=True)
    plan = n2n_fx.plan(model, (IDS,), factor=2.0, frontend="export")
    hidden = [p for p in plan.spaces if not (p.reasons and p.reasons[0].code == "model_output")]
    assert hidden and all(p.new_width == 2 * p.width for p in hidden), str(plan)  # ln_f takes the division
    student = n2n_fx.widen(model, (IDS,), factor=2.0, frontend="export")
    assert student.get_parameter("lm_head.weight") is student.get_parameter("transformer.wte.weight")
    assert_preserved(model, student, (IDS,))


def test_unknown_frontend_is_a_typed_error() -> None:
    with pytest.raises(n2n_fx.N2NError, match="frontend"):
        n2n_fx.plan(nn.Linear(2, 2), torch.randn(1, 2), frontend="jit")


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_rebuilt_student_saves_and_reloads_as_its_family(name: str, tmp_path) -> None:
    from n2n_fx.hf import rebuild

    model = _hf(name, tie_word_embeddings=False) if name == "gpt2" else _hf(name)
    student = n2n_fx.widen(model, (IDS,), factor=2.0, frontend="export")
    rebuilt = rebuild(model, student, (IDS,))
    assert type(rebuilt) is type(model)
    assert rebuilt.config.num_attention_heads == 2 * model.config.num_attention_heads
    assert rebuilt.config.hidden_size == 2 * model.config.hidden_size
    if name == "llama":
        assert rebuilt.config.num_key_value_heads == 2 * model.config.num_key_value_heads
    rebuilt.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert n2n_fx.verify(model, back, (IDS,), rtol=1e-6 if name == "llama" else 1e-10).ok


def test_rebuild_refuses_sizes_no_config_describes() -> None:
    from n2n_fx.hf import rebuild

    model = _hf("bert")  # at 1.5x the MLP grows but heads x head_dim no longer equals hidden_size
    student = n2n_fx.widen(model, (IDS,), factor=1.5, frontend="export")
    with pytest.raises(n2n_fx.N2NError, match="BertConfig"):
        rebuild(model, student, (IDS,))


def test_multi_query_attention_grows_its_single_kv_head() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16,
                                   use_cache=False, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    plan = n2n_fx.plan(model, (IDS,), factor=2.0, frontend="export")
    heads = _space(plan, "model.layers.0.self_attn.heads")
    assert (heads.width, heads.new_width) == (1, 2)  # one kv head (with its 4 query heads) -> 2
    student = n2n_fx.widen(model, (IDS,), factor=2.0, frontend="export")
    assert student.get_parameter("model.layers.0.self_attn.q_proj.weight").shape[0] == 2 * 16
    assert n2n_fx.verify(model, student, (IDS,), rtol=1e-6).ok


def test_sdpa_broadcasts_a_single_key_value_head() -> None:
    class Broadcast(nn.Module):  # k, v with one head broadcast over 4 query heads (no repeat)
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.q, self.k, self.v = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2), nn.Linear(8, 2)
            self.proj, self.o = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            h = self.inp(x)
            q = self.q(h).view(b, n, 4, 2).transpose(1, 2)
            k, v = (p(h).view(b, n, 1, 2).transpose(1, 2) for p in (self.k, self.v))
            return self.o(h + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 8)))

    torch.manual_seed(0)
    model, x = Broadcast().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0)
    assert _space(plan, "q.heads").new_width == 8
    assert _space(plan, "k.heads").reasons[0].code == "broadcast"  # widening it would break the broadcast
    assert_preserved(model, n2n_fx.widen(model, x, factor=2.0), x)


def _distilbert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=24,
                                        max_position_embeddings=16, num_labels=3)
    return transformers.DistilBertForSequenceClassification(cfg).double().eval()


def test_rebuild_reads_a_family_s_own_field_names(tmp_path) -> None:
    from n2n_fx.hf import rebuild

    model = _distilbert()  # dim / hidden_dim / n_heads: through attribute_map and the config's own fields
    student = n2n_fx.widen(model, (IDS,), factor=2.0)
    rebuilt = rebuild(model, student, (IDS,))
    assert (rebuilt.config.dim, rebuilt.config.hidden_dim, rebuilt.config.n_heads) == (32, 48, 4)
    rebuilt.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert n2n_fx.verify(model, back, (IDS[:1],), rtol=1e-10).ok and n2n_fx.verify(model, back, (IDS,), rtol=1e-10).ok


def test_rebuild_error_names_the_shapes_no_config_has() -> None:
    from n2n_fx.hf import rebuild

    model = _distilbert()  # at 1.5x the heads grow 2 -> 3 but dim stays 16 (LayerNorm: integer factors only)
    student = n2n_fx.widen(model, (IDS,), factor=1.5)
    with pytest.raises(n2n_fx.N2NError) as info:
        rebuild(model, student, (IDS,))
    text = str(info.value)
    assert "q_lin.weight: student (24, 16), config (16, 16)" in text
    assert "one factor" not in text and "heads x head_dim" in text  # one factor was used: say what broke


def test_rebuild_keeps_fields_that_size_nothing() -> None:
    from n2n_fx.hf import rebuild

    model = _hf("llama")  # max_position_embeddings (16) equals the hidden size but sizes no parameter
    rebuilt = rebuild(model, n2n_fx.widen(model, (IDS,), factor=2.0), (IDS,))
    assert rebuilt.config.max_position_embeddings == model.config.max_position_embeddings
    assert rebuilt.config.hidden_size == 2 * model.config.hidden_size


def _export_cases():
    transformers = pytest.importorskip("transformers")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_decoder_layers=1, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0)).double().eval()
    return [(_hf("llama"), (IDS,)), (_hf("bert"), (IDS,)), (_hf("gpt2", tie_word_embeddings=True), (IDS,)),
            (t5, {"input_ids": IDS, "decoder_input_ids": IDS[:, :3]}),
            (torchvision.models.resnet18(num_classes=4).double().eval(), (torch.randn(2, 3, 32, 32, dtype=torch.float64),))]


def _metas(gm: torch.fx.GraphModule) -> dict:
    # shapes and dtypes, what the engine reads: shape propagation runs meta kernels, whose strides
    # differ from CPU ones (export records those) on some ops (sdpa), and reports requires_grad
    # True for a tied alias it reads from the module itself
    from torch.fx.passes.shape_prop import TensorMetadata

    def plain(v):
        if isinstance(v, TensorMetadata):
            return tuple(v.shape), v.dtype
        return type(v)(plain(x) for x in v) if isinstance(v, (list, tuple)) else v

    return {n.name: plain(n.meta.get("tensor_meta")) for n in gm.graph.nodes}


def test_export_shapes_are_read_from_its_own_records_as_shape_propagation_finds_them() -> None:
    from n2n_fx.frontend import propagate_shapes

    for model, inputs in _export_cases():
        gm = n2n_fx.trace(model, inputs, frontend="export")  # tensor_meta from export's meta['val']
        recorded = _metas(gm)
        assert all(recorded[n.name] is not None for n in gm.graph.nodes if n.op == "placeholder")
        for n in gm.graph.nodes:
            n.meta.pop("tensor_meta", None)
        propagate_shapes(gm, inputs)
        assert recorded == _metas(gm), type(model).__name__
