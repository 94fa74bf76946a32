"""grow: a teacher into a bigger model of its family, returned as the target's own class.

Pairs: torchvision resnet18 -> resnet34 (new blocks), resnet50 -> wide_resnet50_2 (width),
VisionTransformer with more heads, width and blocks, timm deit_tiny -> deit_small, Hugging Face
Llama (heads and kv heads by a non-integer ratio, MLP to any width, more layers, tied and untied)
saved and reloaded. Each: float64 exactness, the native-dtype check, the teacher untouched and
independent, and the typed refusals.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import n2n_fx
from n2n_fx.growth import GrowError, find_stacks, residual_zeros
from n2n_fx.spec import load_table
from n2n_fx.testing import assert_independent, assert_untouched, fingerprint


def _meta(build, *args, **kw) -> nn.Module:
    with torch.device("meta"):
        return build(*args, **kw)


def _grown_ok(teacher: nn.Module, grown: nn.Module, x, rtol: float = 1e-10) -> n2n_fx.Report:
    report = n2n_fx.verify(teacher, grown, x, rtol=rtol)
    assert report.ok, report
    assert_independent(teacher, grown)
    return report


def test_resnet18_grows_into_resnet34_with_identity_blocks() -> None:
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10).double().eval()
    before = fingerprint(teacher)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grown = n2n_fx.grow(teacher, _meta(torchvision.models.resnet34, num_classes=10), x)
    assert type(grown) is torchvision.models.ResNet and len(grown.layer3) == 6
    assert_untouched(teacher, before)
    _grown_ok(teacher, grown, x)
    assert n2n_fx.verify(teacher, grown, x, mode="train").ok  # batch statistics: a zero BN gain still gives 0
    # interleave: teacher blocks at 0 and floor(6 / 2) = 3; new blocks copy their structure-mates
    assert torch.equal(grown.layer3[3].conv1.weight, teacher.layer3[1].conv1.weight)
    assert torch.equal(grown.layer3[4].conv1.weight, teacher.layer3[1].conv1.weight)
    assert not grown.layer3[4].bn2.weight.any() and not grown.layer3[4].bn2.bias.any()
    assert grown.layer3[3].bn2.weight.abs().sum() > 0
    # what a user does next: the state loads into a fresh resnet34
    fresh = torchvision.models.resnet34(num_classes=10).double().eval()
    fresh.load_state_dict(grown.state_dict())
    assert torch.equal(fresh(x), grown(x))


def test_resnet50_grows_into_wide_resnet50_2_in_float64_and_float32() -> None:
    torch.manual_seed(0)
    teacher = torchvision.models.resnet50(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    grown = n2n_fx.grow(teacher, _meta(torchvision.models.wide_resnet50_2, num_classes=10), x)
    assert grown.layer1[0].conv1.weight.shape == (128, 64, 1, 1) and grown.fc.weight.dtype == torch.float32
    report = n2n_fx.verify(teacher, grown, x)  # float64 plan check and the float32 student as it runs
    assert report.ok and report.native_ok, report


def _vit(layers: int, heads: int, hidden: int, mlp: int) -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=layers, num_heads=heads,
                                                hidden_dim=hidden, mlp_dim=mlp, num_classes=10)


@pytest.mark.parametrize("layer_map", ["interleave", "append"])
def test_vision_transformer_grows_heads_width_mlp_and_blocks(layer_map: str) -> None:
    torch.manual_seed(0)
    teacher = _vit(2, 4, 64, 96).double().eval()
    nn.init.normal_(teacher.heads.head.weight)  # torchvision zero-initialises the head
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grown = n2n_fx.grow(teacher, _meta(_vit, 5, 8, 128, 200), x, layer_map=layer_map)
    _grown_ok(teacher, grown, x)
    new = 4 if layer_map == "append" else 1
    block = grown.encoder.layers[new]
    assert not block.self_attention.out_proj.weight.any() and not block.mlp[3].weight.any()
    assert block.self_attention.in_proj_weight.abs().sum() > 0  # copied, not zeroed: it trains
    assert grown.encoder.layers[0].self_attention.num_heads == 8


def test_timm_deit_tiny_grows_into_deit_small() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    teacher = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    grown = n2n_fx.grow(teacher, _meta(timm.create_model, "deit_small_patch16_224", pretrained=False,
                                       num_classes=10, img_size=32), x)
    assert grown.embed_dim == 384 and grown.blocks[0].attn.num_heads == 6
    report = n2n_fx.verify(teacher, grown, x)
    assert report.ok and report.native_ok, report


transformers = pytest.importorskip("transformers")


def _llama(hidden: int, heads: int, kv: int, mlp: int, layers: int, tied: bool):
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers.LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=mlp,
                                    num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                    head_dim=16, max_position_embeddings=32, tie_word_embeddings=tied,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("tied", [True, False])
def test_llama_grows_into_a_bigger_config_saves_reloads_and_generates_alike(tied: bool, tmp_path) -> None:
    from n2n_fx.hf import grow

    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(_llama(96, 6, 3, 96, 3, tied)).double().eval()
    before = fingerprint(teacher)
    ids = torch.randint(3, 64, (2, 7))
    # heads 6 -> 8 and kv heads 3 -> 4 (x 4/3, whole heads copied), MLP 96 -> 160, 3 -> 5 layers
    grown = grow(teacher, hidden_size=192, num_attention_heads=8, num_key_value_heads=4, intermediate_size=160,
                 num_hidden_layers=5, example_inputs=(ids,), rtol=1e-6)
    assert_untouched(teacher, before)
    assert type(grown) is transformers.LlamaForCausalLM and grown.config.num_hidden_layers == 5
    assert (grown.lm_head.weight is grown.model.embed_tokens.weight) == tied
    # Llama's RMSNorm computes in float32 even in a float64 model: rounding there, not the plan
    _grown_ok(teacher, grown, (ids,), rtol=1e-6)
    grown.save_pretrained(tmp_path)
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    assert n2n_fx.verify(teacher, back, (ids,), rtol=1e-6).ok
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(teacher.generate(ids, **kw), back.generate(ids, **kw))


def test_llama_in_bfloat16_at_a_batch_of_one() -> None:
    from n2n_fx.hf import grow

    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(_llama(96, 6, 3, 96, 2, True)).to(torch.bfloat16).eval()
    ids = torch.randint(3, 64, (1, 6))
    grown = grow(teacher, hidden_size=192, num_attention_heads=8, num_key_value_heads=4, intermediate_size=200,
                 num_hidden_layers=3, example_inputs=(ids,))
    assert grown.model.embed_tokens.weight.dtype == torch.bfloat16
    report = n2n_fx.verify(teacher, grown, (ids,))
    assert report.ok and report.native_ok, report


# ---------------------------------------------------------------- refusals
class Res(nn.Module):
    def __init__(self, width: int = 8, hidden: int = 16, extra: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))
                                    for _ in range(2))
        self.out = nn.Linear(width, 3)
        if extra:
            self.gate = nn.Parameter(torch.ones(width))

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h * self.gate if hasattr(self, "gate") else h)


def _res(**kw) -> nn.Module:
    torch.manual_seed(0)
    return Res(**kw).double().eval()


def test_a_plain_module_with_a_longer_module_list_and_any_widths() -> None:
    teacher, x = _res(), torch.randn(3, 4, dtype=torch.float64)
    target = _meta(Res, width=13, hidden=29)
    target.blocks.append(_meta(lambda: nn.Sequential(nn.Linear(13, 29), nn.ReLU(), nn.Linear(29, 13))))
    grown = n2n_fx.grow(teacher, target, x, layer_map={"blocks": [0, None, 1]})
    assert type(grown) is Res and len(grown.blocks) == 3
    _grown_ok(teacher, grown, x)
    assert not grown.blocks[1][2].weight.any() and torch.equal(grown.blocks[1][0].weight[:, :8][:16],
                                                              grown.blocks[0][0].weight[:, :8][:16])
    again = n2n_fx.grow(teacher, target, x, layer_map={"blocks": [0, None, 1]})
    assert all(torch.equal(a, b) for a, b in zip(grown.state_dict().values(), again.state_dict().values()))
    other = n2n_fx.grow(teacher, target, x, layer_map={"blocks": [0, None, 1]}, seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(grown.state_dict().values(), other.state_dict().values()))


def test_refusals_are_typed_and_name_the_cause() -> None:
    teacher, x = _res(), torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(n2n_fx.WidthError, match="below its current width"):
        n2n_fx.grow(teacher, _meta(Res, width=6), x)
    with pytest.raises(GrowError, match="no counterpart in the teacher"):
        n2n_fx.grow(teacher, _meta(Res, extra=True), x)
    with pytest.raises(GrowError, match="in order"):
        target = _meta(Res)
        target.blocks.append(_meta(lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))))
        n2n_fx.grow(teacher, target, x, layer_map={"blocks": [1, 0, None]})
    with pytest.raises(GrowError, match="layer_map must be"):
        n2n_fx.grow(teacher, _meta(Res), x, layer_map="random")
    # a frozen space the target grows: the logits are a model output
    wide_out = _meta(Res)
    wide_out.out = _meta(nn.Linear, 8, 5)
    with pytest.raises(n2n_fx.FrozenSpaceError, match="model_output"):
        n2n_fx.grow(teacher, wide_out, x)
    # a target whose coupled axes disagree: the residual stream asks for 8 and 10
    odd = _meta(Res)
    odd.blocks[1][2] = _meta(nn.Linear, 16, 10)
    with pytest.raises(GrowError, match="one space, two widths"):
        n2n_fx.grow(teacher, odd, x)


def test_a_post_norm_block_is_refused_as_a_new_block() -> None:
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=32, num_attention_heads=4, intermediate_size=48, max_position_embeddings=16)
    teacher = transformers.BertForSequenceClassification(transformers.BertConfig(**cfg, num_hidden_layers=2)).double().eval()
    ids = torch.randint(0, 40, (2, 6))
    with pytest.raises(GrowError, match="post-norm"):
        n2n_fx.grow(teacher, _meta(transformers.BertForSequenceClassification, transformers.BertConfig(**cfg, num_hidden_layers=3)),
                    (ids,))
    # the same family grows in width (uniform replication: post-LN keeps its statistics at 2x)
    grown = n2n_fx.grow(teacher, _meta(transformers.BertForSequenceClassification, transformers.BertConfig(
        **{**cfg, "hidden_size": 64, "num_attention_heads": 8, "intermediate_size": 96}, num_hidden_layers=2)), (ids,))
    assert n2n_fx.verify(teacher, grown, (ids,)).ok


def test_tying_two_separate_matrices_is_refused() -> None:
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(_llama(48, 3, 3, 64, 1, False)).double().eval()
    with pytest.raises(GrowError, match="ties"):
        n2n_fx.grow(teacher, _meta(transformers.LlamaForCausalLM, _llama(96, 6, 6, 64, 1, True)),
                    (torch.randint(0, 64, (1, 5)),), rtol=1e-6)


def test_residual_zeros_finds_the_last_op_of_each_branch() -> None:
    model = torchvision.models.resnet18().eval()
    gm = n2n_fx.trace(model, torch.randn(1, 3, 32, 32))
    params, table = {n for n, _ in model.named_parameters()}, load_table()
    assert residual_zeros(gm, "layer1.1", params, table) == ["layer1.1.bn2.weight", "layer1.1.bn2.bias"]
    assert residual_zeros(gm, "layer2.0", params, table) == []  # a downsampling shortcut is no identity
    stacks = find_stacks(model, _meta(torchvision.models.resnet34), "append")
    assert [(s.path, s.sources) for s in stacks][:2] == [("layer1", [0, 1, None]), ("layer2", [0, 1, None, None])]


# ---------------------------------------------------------------- property: random stacks and their next size
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from n2n_fx.testing import grow_pairs  # noqa: E402


@settings(max_examples=40)
@given(grow_pairs(), st.integers(1, 3))
def test_random_stacks_grow_into_their_next_size(pair, batch: int) -> None:
    teacher = pair.teacher.build()
    target = pair.target.build(device="meta")
    x = torch.randn(batch, pair.teacher.d_in, dtype=torch.float64)
    before = fingerprint(teacher)
    if not pair.identity_possible:  # a branch that a zero Linear does not switch off: refused, typed
        with pytest.raises(GrowError, match="cannot start as the identity"):
            n2n_fx.grow(teacher, target, x, layer_map=pair.layer_map)
        assert_untouched(teacher, before)
        return
    grown = n2n_fx.grow(teacher, target, x, layer_map=pair.layer_map)
    assert_untouched(teacher, before)
    assert type(grown).__name__ == "StackNet" and len(grown.blocks) == len(pair.target.blocks)
    _grown_ok(teacher, grown, x)
    for name, t in target.state_dict().items():
        assert grown.state_dict()[name].shape == t.shape, name


def test_wider_heads_are_refused_where_not_exact() -> None:
    teacher = _vit(2, 4, 64, 96).double().eval()  # nn.MultiheadAttention grows by whole heads only
    with pytest.raises(n2n_fx.FrozenSpaceError, match="grows only by whole heads"):
        n2n_fx.grow(teacher, _meta(_vit, 2, 4, 128, 96), torch.randn(1, 3, 32, 32, dtype=torch.float64), check=False)
    llama = transformers.LlamaForCausalLM(_llama(64, 4, 2, 96, 1, False)).eval()
    with pytest.raises(GrowError, match="config.head_dim.*rotary"):
        n2n_fx.grow(llama, _meta(transformers.LlamaForCausalLM, transformers.LlamaConfig(
            **{**llama.config.to_dict(), "head_dim": 32})), (torch.randint(0, 64, (1, 5)),))


# ---------------------------------------------------------------- found by an adversarial audit
def test_blocks_keep_their_layer_kind_and_only_sizes_may_change() -> None:
    from n2n_fx.hf import grow

    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                   num_key_value_heads=2, use_sliding_window=True, sliding_window=12,
                                   num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"])
    teacher = transformers.Qwen2ForCausalLM(cfg).double().eval()
    kinds = ["full_attention", "sliding_attention"] * 2
    with pytest.raises(GrowError, match="sliding_attention"):  # interleave: teacher block 1 onto a full layer
        grow(teacher, num_hidden_layers=4, layer_types=kinds)
    grown = grow(teacher, num_hidden_layers=4, layer_types=kinds, layer_map="append")
    long = (torch.randint(0, 64, (2, 30)),)  # longer than the window
    assert n2n_fx.verify(teacher, grown, long).ok
    assert grown.config.layer_types == kinds
    with pytest.raises(n2n_fx.N2NError, match="not a size"):
        grow(teacher, sliding_window=4)
    with pytest.raises(n2n_fx.N2NError, match="not a size"):
        grow(teacher, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
    with pytest.raises(GrowError, match="layer_types"):  # derived anew for 3 layers: block 1 becomes full
        grow(teacher, num_hidden_layers=3, layer_map="append")


def test_flags_requires_grad_dtypes_and_unused_parameters_follow_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=5).double().train()
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # fine-tuning with frozen statistics
    teacher.layer1[0].conv1.weight.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    grown = n2n_fx.grow(teacher, _meta(torchvision.models.resnet34, num_classes=5), x)
    # interleave puts teacher layer3[1] at layer3[3]; new blocks copy a block of their structure
    assert grown.layer3[3].bn1.training is False and grown.layer3[3].conv1.training is True
    assert grown.layer1[2].bn1.training is False and grown.training is True
    assert grown.layer1[0].conv1.weight.requires_grad is False and grown.layer1[1].conv1.weight.requires_grad
    with torch.no_grad():
        assert torch.equal(teacher(x), grown(x))  # both in their own modes
    class Mixed(Res):
        def forward(self, x):
            h = self.inp(x)
            for b in self.blocks:
                h = h + b(h)
            return self.out(h.double())

    teacher = Mixed().float()
    teacher.out.double()
    teacher.spare = nn.Linear(2, 2)  # never called: copied as it is
    target = _meta(Mixed, width=16)
    target.spare = _meta(nn.Linear, 2, 2)
    x = torch.randn(3, 4)
    grown = n2n_fx.grow(teacher, target, x, check=False)  # verify casts a model to one dtype
    assert grown.out.weight.dtype == torch.float64 and grown.inp.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(grown(x), teacher(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(grown.spare.weight, teacher.spare.weight)


def test_hooks_and_misread_residuals_are_refused_by_name() -> None:
    teacher, x = _res(), torch.randn(3, 4, dtype=torch.float64)
    teacher.blocks[0].register_forward_hook(lambda m, a, o: o * 2)
    with pytest.raises(n2n_fx.HookError, match="blocks.0"):
        n2n_fx.grow(teacher, _meta(Res, width=16), x)

    class Twice(Res):  # x + x + f(x): zeroing f leaves 2x
        def forward(self, x):
            h = self.inp(x)
            for b in self.blocks:
                h = h + h + b(h)
            return self.out(h)

    target = _meta(Twice)
    target.blocks.append(_meta(lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))))
    torch.manual_seed(0)
    with pytest.raises((GrowError, n2n_fx.NotPreservedError)):
        n2n_fx.grow(Twice().double().eval(), target, x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed="a"), "seed"), (dict(rtol=float("nan")), "rtol"), (dict(rtol=-1.0), "rtol"),
    (dict(symmetry="noise"), "noise"), (dict(layer_map=[0, 1]), "layer_map"),
    (dict(layer_map={"blocks": None}), "layer_map"), (dict(layer_map={"blocks": [0.0, 1.0]}), "layer_map"),
])
def test_bad_arguments_are_grow_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(GrowError, match=match):
        n2n_fx.grow(_res(), _meta(Res, width=16), torch.randn(2, 4, dtype=torch.float64), **kwargs)
    with pytest.raises(GrowError, match="meta device"):
        n2n_fx.grow(_meta(Res), _meta(Res, width=16), torch.randn(2, 4))


# ---------------------------------------------------------------- stack layouts beyond one list of blocks
class _Parallel(nn.Module):
    """Norms and layers in two parallel lists; the residual sum is in the parent's forward."""

    def __init__(self, d: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        x = self.inp(x)
        for norm, layer in zip(self.norms, self.layers):
            x = x + layer(torch.relu(norm(x)))
        return self.head(x)


class _Stage(nn.Module):
    def __init__(self, d: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


class _Nested(nn.Module):
    def __init__(self, d: int = 8, stages: int = 2, depth: int = 2) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_Stage(d, depth) for _ in range(stages))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


@pytest.mark.parametrize("batch", [1, 3])
def test_parallel_stacks_grow_together_wider_and_deeper(batch: int) -> None:
    torch.manual_seed(0)
    teacher = _Parallel().double().eval()
    before = fingerprint(teacher)
    x = torch.randn(batch, 3, dtype=torch.float64)
    grown = n2n_fx.grow(teacher, _meta(_Parallel, 16, 4).double(), x)
    assert len(grown.layers) == 4 and grown.layers[1].weight.shape == (16, 16)
    assert not grown.layers[1].weight.any() and grown.norms[1].weight.any()  # the layer is zeroed, its norm copied
    _grown_ok(teacher, grown, x)
    assert_untouched(teacher, before)
    assert n2n_fx.verify(teacher, grown, x, mode="train").ok


def test_a_new_block_that_feeds_nothing_zeroed_is_still_refused() -> None:
    torch.manual_seed(0)
    teacher = _Parallel().double().eval()
    target = _meta(_Parallel, 8, 3).double()
    # layers keep 2 blocks while norms get 3: a third norm would feed no zeroed layer
    target.layers = nn.ModuleList(_meta(nn.Linear, 8, 8) for _ in range(2))
    with pytest.raises(GrowError, match="new block norms.2 copies norms.1, which has no residual branch"):
        n2n_fx.grow(teacher, target.double(), torch.randn(2, 3, dtype=torch.float64))


def test_nested_stacks_grow_one_level_per_call() -> None:
    torch.manual_seed(0)
    teacher = _Nested().double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(GrowError, match=r"stacks nested in 'stages' grow too \(stages.0.layers: 2 -> 3") as err:
        n2n_fx.grow(teacher, _meta(_Nested, 8, 3, 3).double(), x)
    assert "two calls" in err.value.fix
    inner = n2n_fx.grow(teacher, _meta(_Nested, 8, 2, 3).double(), x)  # the fix, followed
    grown = n2n_fx.grow(inner, _meta(_Nested, 8, 3, 3).double(), x)
    assert [len(s.layers) for s in grown.stages] == [3, 3, 3]
    _grown_ok(teacher, grown, x)


def test_albert_depth_is_refused_its_layers_share_weights() -> None:
    from transformers import AlbertConfig, AlbertForMaskedLM

    from n2n_fx import hf

    torch.manual_seed(0)
    cfg = AlbertConfig(vocab_size=64, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)
    model = AlbertForMaskedLM(cfg).double().eval()
    with pytest.raises(GrowError, match="num_hidden_layers 2 -> 4 adds no block of weights to AlbertForMaskedLM"):
        hf.grow(model, num_hidden_layers=4)


class _NormShared(nn.Module):
    """h = norm(x); x = h + f(relu(h)): the norm's output is both the residual operand and the
    branch's input, so no zero in the block makes it the identity."""

    def __init__(self, d: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"norm": nn.LayerNorm(d), "fc": nn.Linear(d, d)})
                                    for _ in range(depth))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        for b in self.blocks:
            h = b["norm"](x)
            x = h + b["fc"](torch.relu(h))
        return self.head(x)


@pytest.mark.parametrize("check", [True, False])
def test_a_residual_whose_operand_is_computed_in_the_block_is_refused_even_unchecked(check: bool) -> None:
    torch.manual_seed(0)
    teacher = _NormShared().double().eval()
    with pytest.raises(GrowError, match="no residual branch"):
        n2n_fx.grow(teacher, _meta(_NormShared, 8, 3).double(), torch.randn(2, 8, dtype=torch.float64), check=check)
