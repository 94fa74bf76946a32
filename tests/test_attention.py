"""nn.MultiheadAttention grows by whole heads; expand carries class tokens (ViT)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import n2n_fx
from tests.helpers import assert_preserved

E, H = 8, 2  # head_dim 4


class AttnBlock(nn.Module):
    """Linear -> self-attention -> residual -> MLP, the pre-LN-free core of a transformer block."""

    def __init__(self, batch_first: bool = True, need_weights: bool = False, mask: str | None = None) -> None:
        super().__init__()
        self.inp = nn.Linear(3, E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first)
        self.up, self.down = nn.Linear(E, 6), nn.Linear(E if not need_weights else E, 2)
        self.back = nn.Linear(6, E)
        self.need_weights, self.batch_first, self.mask = need_weights, batch_first, mask
        self.register_buffer("causal", torch.triu(torch.full((4, 4), float("-inf")), 1))
        self.register_buffer("per_head", torch.zeros(3 * H, 4, 4))  # batch 3: one (L, S) slice per head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        kw = {}
        if self.mask == "causal":
            kw["attn_mask"] = self.causal
        elif self.mask == "per_head":
            kw["attn_mask"] = self.per_head
        a, w = self.attn(h, h, h, need_weights=self.need_weights, **kw)
        h = h + a
        h = h + self.back(torch.relu(self.up(h)))
        if not self.batch_first:
            h = h.transpose(0, 1)
        y = self.down(h)
        return y + w.sum() if self.need_weights else y


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 4, 3, dtype=torch.float64)


def _space(plan: n2n_fx.Plan, name: str):
    return next(p for p in plan.spaces if p.name == name)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0])
def test_heads_follow_embed_width(batch_first: bool, factor: float) -> None:
    torch.manual_seed(0)
    model, x = AttnBlock(batch_first).double().eval(), _x()
    plan = n2n_fx.plan(model, x, factor=factor)
    heads, embed = _space(plan, "attn.heads"), _space(plan, "inp")
    assert heads.width == H and embed.width == E
    assert embed.new_width == round(E * factor) and heads.new_width * 4 == embed.new_width
    student = n2n_fx.widen(model, x, factor=factor)
    assert student.attn.num_heads == heads.new_width and student.attn.embed_dim == embed.new_width
    assert student.attn.head_dim == 4 and student.attn.out_proj.in_features == embed.new_width
    assert_preserved(model, student, x)


def test_student_attention_reloads_into_a_fresh_module() -> None:
    torch.manual_seed(0)
    model, x = AttnBlock().double().eval(), _x()
    student = n2n_fx.widen(model, x, factor=2.0)
    fresh = nn.MultiheadAttention(student.attn.embed_dim, student.attn.num_heads, batch_first=True).double()
    fresh.load_state_dict(student.attn.state_dict())  # shapes and config agree
    h = torch.randn(2, 4, student.attn.embed_dim, dtype=torch.float64)
    torch.testing.assert_close(fresh(h, h, h)[0], student.attn(h, h, h)[0], rtol=0, atol=0)


def test_causal_mask_keeps_heads_widenable() -> None:
    torch.manual_seed(0)
    model, x = AttnBlock(mask="causal").double().eval(), _x()
    plan = n2n_fx.plan(model, x, factor=2.0)
    assert _space(plan, "attn.heads").new_width == 2 * H
    assert_preserved(model, n2n_fx.widen(model, x, factor=2.0), x)


@pytest.mark.parametrize("kind", ["per_head", "weights"])
def test_per_head_mask_or_used_weights_freeze_heads_and_embed(kind: str) -> None:
    torch.manual_seed(0)
    model = AttnBlock(mask="per_head") if kind == "per_head" else AttnBlock(need_weights=True)
    model, x = model.double().eval(), _x()
    plan = n2n_fx.plan(model, x, factor=2.0)
    heads, embed = _space(plan, "attn.heads"), _space(plan, "inp")
    assert heads.reasons and heads.reasons[0].code == "constraint" and heads.reasons[0].op == "MultiheadAttention"
    assert embed.reasons and embed.reasons[0].op == "attention"  # embed = heads x head_dim: fixed too
    assert _space(plan, "up").new_width == 12  # the MLP still widens
    assert_preserved(model, n2n_fx.widen(model, x, factor=2.0), x)


def test_factor_off_the_head_grid_leaves_attention_as_is() -> None:
    torch.manual_seed(0)
    model, x = AttnBlock().double().eval(), _x()
    plan = n2n_fx.plan(model, x, factor=1.3)  # 8 * 1.3 = 10: not a multiple of head_dim 4
    assert _space(plan, "inp").new_width == E and _space(plan, "attn.heads").new_width == H
    assert _space(plan, "up").new_width == 8
    assert "heads x head_dim" in str(plan)
    assert_preserved(model, n2n_fx.widen(model, x, factor=1.3), x)


def test_width_requests() -> None:
    torch.manual_seed(0)
    model, x = AttnBlock().double().eval(), _x()
    plan = n2n_fx.plan(model, x, widths={"inp": 12})
    assert _space(plan, "attn.heads").new_width == 3
    assert_preserved(model, n2n_fx.widen(model, x, widths={"inp": 12}), x)
    with pytest.raises(n2n_fx.ConstraintError, match="multiple of 4"):
        n2n_fx.plan(model, x, widths={"inp": 10})
    with pytest.raises(n2n_fx.ConstraintError, match="heads x head_dim"):
        n2n_fx.plan(model, x, widths={"attn.heads": 4})  # embed stays 8: 4 heads cannot fit


class Cross(nn.Module):
    """Query from one stream, key/value from another: the packed columns make them one space."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv = nn.Linear(3, E), nn.Linear(5, E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.out = nn.Linear(E, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kv = self.kv(y)
        return self.out(self.attn(self.q(x), kv, kv, need_weights=False)[0])


def test_cross_attention_unifies_query_and_key_spaces() -> None:
    torch.manual_seed(0)
    model = Cross().double().eval()
    inputs = (torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64))
    plan = n2n_fx.plan(model, inputs, factor=2.0)
    joint = [p for p in plan.spaces if {"q", "kv"} & set(p.space.producers)]
    assert len(joint) == 1 and {"q", "kv"} <= set(joint[0].space.producers)  # one space
    assert joint[0].new_width == 2 * E and _space(plan, "attn.heads").new_width == 2 * H
    assert_preserved(model, n2n_fx.widen(model, inputs, factor=2.0), inputs)


class ClassToken(nn.Module):
    """ViT's class token and position embedding: parameters broadcast into the residual stream."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(3, E)
        self.cls = nn.Parameter(torch.randn(1, 1, E))
        self.pos = nn.Parameter(torch.randn(1, 5, E))
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.out = nn.Linear(E, 2)
        self.literal = literal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        cls = self.cls.expand(n, 1, E) if self.literal else self.cls.expand(n, -1, -1)
        h = torch.cat([cls, self.inp(x)], dim=1) + self.pos
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out(h[:, 0])


@pytest.mark.parametrize("literal", [False, True])
def test_class_token_and_position_embedding_widen(literal: bool) -> None:
    torch.manual_seed(0)
    model, x = ClassToken(literal).double().eval(), _x(2)
    plan = n2n_fx.plan(model, x, factor=2.0)
    assert all(p.new_width > p.width for p in plan.spaces if not p.reasons)
    student = n2n_fx.widen(model, x, factor=2.0)
    assert student.cls.shape == (1, 1, 2 * E) and student.pos.shape == (1, 5, 2 * E)
    assert_preserved(model, student, x)


def test_unsupported_attention_forms_stop_with_a_reason() -> None:
    class KV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(3, E)
            self.attn = nn.MultiheadAttention(E, H, batch_first=True, add_bias_kv=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.attn(h, h, h, need_weights=False)[0]

    plan = n2n_fx.plan(KV().double().eval(), _x())
    inp = _space(plan, "inp")
    assert inp.reasons and inp.reasons[0].code == "unsupported_op" and "bias_k" in str(inp.reasons[0])


@pytest.mark.parametrize("v2", [False, True])
def test_swin_widens_heads_embed_and_mlp(v2: bool) -> None:
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    torch.manual_seed(0)
    kw = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if v2 else {}
    model = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 4], window_size=[2, 2],
                            num_classes=5, **kw).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0)
    assert [p.name for p in plan.spaces if p.new_width == p.width] == ["head"]  # only the logits stay
    assert _space(plan, "features.3.1.attn.heads").new_width == 8
    for factor in (1.5, 2.0):
        assert_preserved(model, n2n_fx.widen(model, x, factor=factor), x)


class Tokens(nn.Module):
    def __init__(self, tied: bool = False, max_norm: float | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, E, max_norm=max_norm)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.lm = nn.Linear(E, 7, bias=False)
        if tied:
            self.lm.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.lm(h + self.attn(h, h, h, need_weights=False)[0])


def test_token_embedding_widens_and_tied_weights_freeze() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (2, 5))
    model = Tokens().double().eval()
    plan = n2n_fx.plan(model, ids, factor=2.0)
    assert _space(plan, "emb").new_width == 2 * E and _space(plan, "attn.heads").new_width == 2 * H
    student = n2n_fx.widen(model, ids, factor=2.0)
    assert student.emb.embedding_dim == 2 * E and student.emb.weight.shape == (7, 2 * E)
    assert_preserved(model, student, ids)
    teacher = Tokens(tied=True).double().eval()
    tied = n2n_fx.plan(teacher, ids, factor=2.0)
    codes = {p.reasons[0].code for p in tied.spaces if p.reasons}
    assert "param_role_conflict" in codes  # the table's features are copied (lookup) and contracted (head)
    assert all(p.new_width == p.width for p in tied.spaces if p.space.attention)  # the residual holds
    student = n2n_fx.widen(teacher, ids, factor=2.0)
    assert student.lm.weight is student.emb.weight and student.emb.weight is not teacher.emb.weight
    assert_preserved(teacher, student, ids)
    capped = n2n_fx.plan(Tokens(max_norm=1.0).double().eval(), ids, factor=2.0)
    assert _space(capped, "attn.heads").reasons  # the lookup stopped: its output is fixed, so are the heads


def test_maxvit_attention_module_widens_by_heads() -> None:
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1],
                   head_dim=4, stochastic_depth_prob=0.0, num_classes=5).double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=2.0)
    assert [p.name for p in plan.spaces if p.new_width == p.width] == ["classifier.5"]
    student = n2n_fx.widen(model, x, factor=2.0)
    attn = student.get_submodule("blocks.1.layers.0.layers.window_attention.attn_layer.1")
    assert attn.n_heads == 8 and attn.head_dim == 4 and attn.relative_position_bias_table.shape[1] == 8
    assert sum(p.numel() for p in student.parameters()) > 3 * sum(p.numel() for p in model.parameters())
    assert_preserved(model, student, x)
    assert_preserved(model, student, x, mode="train")


def test_wrapped_functions_match_when_the_first_trace_loads_the_table() -> None:
    """fx swaps torch.fx.wrap'ed functions for stand-ins while tracing; the rule table must not be
    first read then (a fresh process, Swin traced before anything else touched the table)."""
    import subprocess
    import sys

    code = ("import torch, n2n_fx\n"
            "from torchvision.models.swin_transformer import SwinTransformer\n"
            "m = SwinTransformer([4, 4], 8, [2], [2], [2, 2], num_classes=3).eval()\n"
            "a = n2n_fx.plan(m, torch.randn(1, 3, 16, 16)).analysis\n"
            "print(sorted(set(v for v in a.ops.values() if v == 'unknown' or 'window' in v)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['shifted_window_attention']", out
