"""Wider heads (heads='dim'): the number of heads stays, head_dim grows, and every q and k row of
unit j is scaled by f = sqrt(r / c_j), r = the teacher's scale over the student's (sqrt(d'/d) where
sdpa derives 1/sqrt(head_dim), 1 where the scale is a literal the student keeps), so the scores
are the teacher's (proofs: attention_heads, wider_heads). Exact only through ops that commute with
a per-row factor; rotary embeddings, q/k norms, activations and attention kinds that derive
head_dim inside the op freeze it with the op that breaks it.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

import n2n_fx
from n2n_fx.growth import GrowError
from n2n_fx.hf import grow as hf_grow
from n2n_fx.testing import assert_independent, assert_untouched, fingerprint

logging.getLogger("transformers").setLevel(logging.ERROR)


def _rotate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attn(nn.Module):
    """A pre-norm-free attention block: separate or fused (3, heads, head_dim) projections, sdpa's
    default scale or a literal one, and the variants that must refuse."""

    def __init__(self, embed: int = 8, heads: int = 2, fused: bool = False, scale: float | None = None,
                 variant: str = "", causal: bool = True) -> None:
        super().__init__()
        self.h, self.d, self.fused, self.scale, self.variant, self.causal = heads, embed // heads, fused, scale, variant, causal
        self.emb = nn.Linear(5, embed)
        if fused:
            self.qkv = nn.Linear(embed, 3 * embed)
        else:
            self.q, self.k, self.v = (nn.Linear(embed, embed) for _ in range(3))
        self.qn = nn.RMSNorm(self.d)
        self.register_buffer("cos", torch.randn(4, self.d))
        self.o, self.head = nn.Linear(embed, embed), nn.Linear(embed, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        b, n, _ = h.shape
        if self.fused:
            q, k, v = self.qkv(h).view(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (p(h).view(b, n, self.h, self.d).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.variant == "rotary":
            q, k = q * self.cos + _rotate(q), k * self.cos + _rotate(k)
        elif self.variant == "qk_norm":
            q = self.qn(q)
        elif self.variant == "activation":
            k = F.gelu(k)
        elif self.variant == "product":
            q = q * k
        elif self.variant == "number":
            q = q * 0.5 + k  # a number and a sum of two rescaled operands commute with f
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        return self.head(h + self.o(a.transpose(1, 2).reshape(b, n, -1)))


def _x(batch: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, 4, 5, generator=torch.Generator().manual_seed(batch), dtype=torch.float64).to(dtype)


def _head_dims(plan: n2n_fx.Plan) -> dict[str, tuple[int, int, str | None]]:
    return {p.name: (p.width, p.new_width, p.frozen) for p in plan.spaces if p.name.endswith("head_dim")}


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_wider_heads_are_exact_in_float64(fused: bool, scale: float | None, frontend: str) -> None:
    torch.manual_seed(0)
    teacher = Attn(fused=fused, scale=scale).double().eval()
    before = fingerprint(teacher)
    plan = n2n_fx.plan(teacher, _x(3), factor=1.5, heads="dim", frontend=frontend,
                       dynamic_shapes="auto" if frontend == "export" else None)
    dims = _head_dims(plan)
    assert dims and all(new == 6 and frozen is None for _, new, frozen in dims.values()), dims
    assert not any(p.name.endswith("heads") for p in plan.spaces)
    student = n2n_fx.apply_plan(plan)
    for batch in (1, 3):
        report = n2n_fx.verify(teacher, student, _x(batch), rtol=1e-12)
        assert report.ok, report
    assert_untouched(teacher, before)
    assert_independent(teacher, student)


def test_the_rescaling_is_what_makes_it_exact() -> None:
    """Copying q and k rows as plain Net2Net copies would (no f) changes the scores: the same plan
    with its factors undone is measurably wrong, so the test above cannot pass vacuously."""
    torch.manual_seed(0)
    teacher = Attn().double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    student = n2n_fx.apply_plan(plan)
    sd = student.state_dict()
    for name in ("q.weight", "q.bias", "k.weight", "k.bias"):
        fourth = plan.layout_qk(plan.analysis.param_layouts[(name, 0)])
        shape = [-1] + [1] * (sd[name].ndim - 1)
        sd[name] = sd[name] / fourth.reshape(shape) ** 0.25
    student.load_state_dict(sd)
    assert not n2n_fx.verify(teacher, student, _x(2)).ok


def test_wider_heads_in_train_mode_float32_and_bfloat16() -> None:
    torch.manual_seed(0)
    teacher = Attn(fused=True).double()
    student = n2n_fx.widen(teacher, _x(2), factor=2.0, heads="dim", mode="train")
    assert n2n_fx.verify(teacher, student, _x(2), mode="train").ok
    single = Attn().float().eval()  # float32, at a batch of one
    single_student = n2n_fx.widen(single, _x(1, torch.float32), factor=1.5, heads="dim")
    assert n2n_fx.verify(single, single_student, _x(1, torch.float32)).ok
    low = Attn().to(torch.bfloat16).eval()
    low_student = n2n_fx.widen(low, _x(2, torch.bfloat16), factor=1.5, heads="dim")
    report = n2n_fx.verify(low, low_student, _x(2, torch.bfloat16))
    assert report.ok, report
    assert low_student.q.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("variant,op", [("rotary", "mul"), ("qk_norm", "qn"), ("activation", "gelu"),
                                        ("product", "mul")])
def test_what_does_not_commute_with_the_factor_freezes_head_dim(variant: str, op: str) -> None:
    torch.manual_seed(0)
    teacher = Attn(variant=variant).double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    frozen = [f for _, _, f in _head_dims(plan).values() if f]
    assert frozen and all(op in f for f in frozen[:1]), _head_dims(plan)
    assert n2n_fx.verify(teacher, n2n_fx.apply_plan(plan), _x(2)).ok  # the rest still widens exactly
    with pytest.raises(n2n_fx.FrozenSpaceError):
        n2n_fx.plan(teacher, _x(2), widths={next(n for n, v in _head_dims(plan).items() if v[2]): 8}, heads="dim")


def test_numbers_and_sums_of_rescaled_values_commute() -> None:
    torch.manual_seed(0)
    teacher = Attn(variant="number").double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=1.5, heads="dim")
    assert all(f is None for _, _, f in _head_dims(plan).values()), _head_dims(plan)
    assert n2n_fx.verify(teacher, n2n_fx.apply_plan(plan), _x(2), rtol=1e-12).ok


def test_the_pass_grows_wider_heads_in_a_pass_manager() -> None:
    from torch.fx.passes.infra.pass_manager import PassManager

    torch.manual_seed(0)
    teacher = Attn(fused=True).double().eval()
    wider = n2n_fx.Net2WiderNet(factor=1.5, example_inputs=_x(2), heads="dim")
    student = PassManager([wider])(torch.fx.symbolic_trace(teacher)).graph_module
    assert any(p.name.endswith("head_dim") and p.new_width == 6 for p in wider.last_plan.spaces)
    assert n2n_fx.verify(teacher, student, _x(2), rtol=1e-12).ok


def test_heads_mode_is_checked_and_multihead_attention_keeps_whole_heads() -> None:
    with pytest.raises(n2n_fx.WidthError, match="heads must be one of"):
        n2n_fx.plan(Attn(), _x(1).float(), heads="width")
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.attn, self.head = nn.Linear(5, 8), mha, nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.emb(x)
            return self.head(h + self.attn(h, h, h, need_weights=False)[0])

    plan = n2n_fx.plan(Block().double(), _x(2), factor=2.0, heads="dim")
    assert all(p.new_width == p.width for p in plan.spaces), plan  # nothing grows, nothing is wrong
    assert any("whole heads" in (p.frozen or "") for p in plan.spaces)


def test_an_optimizer_hand_over_refuses_rescaled_rows() -> None:
    torch.manual_seed(0)
    teacher = Attn().double()
    opt = torch.optim.Adam([p for n, p in teacher.named_parameters() if not n.startswith("qn.")])  # qn: unused
    teacher(_x(2)).sum().backward()
    opt.step()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    with pytest.raises(n2n_fx.ConstraintError, match="head_dim"):
        n2n_fx.widen_optimizer(plan, teacher, opt, n2n_fx.apply_plan(plan))


def _gpt2(embed: int, heads: int, layers: int) -> transformers.GPT2Config:
    return transformers.GPT2Config(n_embd=embed, n_head=heads, n_layer=layers, vocab_size=50, n_positions=16,
                                   bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def test_gpt2_grows_into_wider_heads_and_more_layers(tmp_path) -> None:
    """GPT-2 (learned positions, a fused Conv1D q | k | v, sdpa with the literal 1/sqrt(head_dim)):
    n_embd 32 -> 48 with 4 heads kept (head_dim 8 -> 12, a non-integer ratio) and 2 -> 3 layers, into
    the target's own class, whose code computes its scale from its own head_dim."""
    torch.manual_seed(0)
    teacher = transformers.GPT2LMHeadModel(_gpt2(32, 4, 2)).double().eval()
    before = fingerprint(teacher)
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    grown = hf_grow(teacher, n_embd=48, n_layer=3)
    assert type(grown) is transformers.GPT2LMHeadModel and grown.config.n_head == 4
    assert grown.transformer.h[0].attn.head_dim == 12
    for batch in (ids[:1], ids):
        t, s = teacher(batch).logits, grown(batch).logits
        assert ((t - s).abs().max() / t.abs().max()) < 1e-12
    assert_untouched(teacher, before)
    assert_independent(teacher, grown)
    grown.save_pretrained(tmp_path / "grown")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "grown").double().eval()
    assert torch.equal(again(ids).logits, grown(ids).logits)
    teacher.save_pretrained(tmp_path / "src")  # the streamed pass uses the same maps and scales
    n2n_fx.grow_checkpoint(tmp_path / "src", tmp_path / "dst", n_embd=48, n_layer=3, progress=False)
    streamed = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "dst").double().eval()
    assert torch.equal(streamed(ids).logits, grown(ids).logits)


def test_gpt2_in_bfloat16_and_the_refusals() -> None:
    torch.manual_seed(0)
    low = transformers.GPT2LMHeadModel(_gpt2(32, 4, 1)).to(torch.bfloat16).eval()
    grown = hf_grow(low, n_embd=64)
    assert grown.n2n_report.ok and grown.transformer.wte.weight.dtype == torch.bfloat16
    with pytest.raises(GrowError, match="grows both its heads"):
        hf_grow(transformers.GPT2LMHeadModel(_gpt2(32, 4, 1)).eval(), n_embd=96, n_head=6)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=1, head_dim=8)).eval()
    with pytest.raises(GrowError, match="rotary"):
        hf_grow(llama, hidden_size=64, head_dim=16)
