"""Adversarial audit of wider heads (heads='dim'): the ways a model made the rescaled q and k rows
silently wrong before the engine refused them (each test failed against the first version), and
the neighbours that were already right, kept so that they stay so (default-mode reshapes, sizes of
one, grow's scale pairing). Every verdict compares outputs in float64, batch 1 and > 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import n2n_fx
from n2n_fx import spaces
from n2n_fx.frontend import trace
from n2n_fx.growth import GrowError
from n2n_fx.inference import infer
from n2n_fx.testing import assert_untouched, fingerprint


def _x(batch: int, *shape: int) -> torch.Tensor:
    return torch.randn(batch, *(shape or (4, 5)), generator=torch.Generator().manual_seed(batch), dtype=torch.float64)


@torch.no_grad()
def _rel(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    t, s = teacher(x), student(x)
    return float((t - s).abs().max() / t.abs().max())


def _head_dims(plan: n2n_fx.Plan) -> dict[str, tuple[int, int, str | None]]:
    return {p.name: (p.width, p.new_width, p.frozen) for p in plan.spaces if "head_dim" in p.name}


class Attn(nn.Module):
    """Separate q, k, v projections into sdpa (default scale); `variant` inserts one op on q."""

    def __init__(self, variant: str = "", embed: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.h, self.d, self.variant = heads, embed // heads, variant
        self.emb = nn.Linear(5, embed)
        self.q, self.k, self.v = (nn.Linear(embed, embed) for _ in range(3))
        self.o, self.head = nn.Linear(embed, embed), nn.Linear(embed, 3)
        self.kb = nn.Parameter(torch.randn(self.d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, self.h, self.d).transpose(1, 2) for p in (self.q, self.k, self.v))
        extra = 0.0
        half = self.d // 2
        if self.variant == "reduce_half":  # a sum over half of head_dim freezes that piece only
            extra = q[..., :half].sum(-1).mean()
        elif self.variant == "reduce_half_gelu":  # ... and the other piece meets an activation
            extra = q[..., :half].sum(-1).mean()
            q = torch.cat([q[..., :half], F.gelu(q[..., half:])], -1)
        elif self.variant == "int_cast":  # a cast that rounds each element
            q = q.to(torch.int64).to(q.dtype)
        elif self.variant == "k_linear":  # k also read by a second Linear: its columns take 1/(c f)
            extra = self.o(k.transpose(1, 2).reshape(b, n, -1)).mean()
        elif self.variant == "bias_buffer":  # a parameter added over head_dim takes the factor too
            k = k + self.kb
        elif self.variant == "shape":  # reading q's sizes reads no value of it
            batch, heads, length, dim = q.shape
            q = q.reshape(batch, heads, length, dim)
        elif self.variant == "size_factor":  # ... but a size used as a factor is a computed value
            q = q * q.size(-1) ** -0.5
        a = F.scaled_dot_product_attention(q, k, v)
        return self.head(h + self.o(a.transpose(1, 2).reshape(b, n, -1))) + extra


@pytest.mark.parametrize("variant", ["reduce_half", "reduce_half_gelu"])
def test_a_partly_frozen_head_dim_freezes_whole(variant: str) -> None:
    """A piece of head_dim frozen by another op skipped the commuting check for the whole space:
    the other piece widened with rescaled rows, and the frozen piece took sqrt(r) (rel err ~1e-2)."""
    torch.manual_seed(0)
    teacher = Attn(variant).double().eval()
    before = fingerprint(teacher)
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    dims = _head_dims(plan)
    qk = {n: v for n, v in dims.items() if n.startswith("q.")}
    assert len(qk) == 2 and all(new == old and frozen for old, new, frozen in qk.values()), dims
    assert any("part of this one is frozen" in (f or "") for _, _, f in qk.values()), dims
    student = n2n_fx.apply_plan(plan)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12
    assert_untouched(teacher, before)


def test_a_cast_to_an_integer_dtype_freezes_head_dim() -> None:
    """.to(int64) is an identity entry of the table ('pass'), but rounding does not commute with
    a factor: it froze nothing and the student was wrong (rel err ~7e-3)."""
    torch.manual_seed(0)
    teacher = Attn("int_cast").double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    (q_dim,) = [v for n, v in _head_dims(plan).items() if n.startswith("q.")]
    assert q_dim[0] == q_dim[1] and "int64" in (q_dim[2] or ""), q_dim
    student = n2n_fx.apply_plan(plan)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12


@pytest.mark.parametrize("variant", ["k_linear", "bias_buffer", "shape"])
def test_other_linear_uses_of_the_rescaled_rows_stay_exact(variant: str) -> None:
    torch.manual_seed(0)
    teacher = Attn(variant).double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    qk = [(spaces.width(link.layout), plan.new_width(link.layout)) for link in plan.analysis.qk]
    assert qk and all(new > old for old, new in qk), _head_dims(plan)  # the rescaled space itself widens
    student = n2n_fx.apply_plan(plan)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12


def test_a_size_used_as_a_factor_freezes_head_dim() -> None:
    torch.manual_seed(0)
    teacher = Attn("size_factor").double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    assert all(new == old and f for n, (old, new, f) in _head_dims(plan).items() if n.startswith("q.")), _head_dims(plan)
    assert _rel(teacher, n2n_fx.apply_plan(plan), _x(3)) < 1e-12


@pytest.mark.parametrize("embed,heads", [(2, 2), (8, 1), (1, 1)])
def test_sizes_of_one(embed: int, heads: int) -> None:
    torch.manual_seed(0)
    teacher = Attn(embed=embed, heads=heads).double().eval()
    student = n2n_fx.widen(teacher, _x(2), factor=2.0, heads="dim")
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12


def test_a_frozen_head_dim_takes_no_factor_for_another_scale() -> None:
    """A frozen head_dim whose student computes with another scale (grow's target) would have had
    its q and k rows rescaled though the check never cleared them: refused, naming the call."""
    torch.manual_seed(0)
    teacher = Attn("int_cast").double().eval()
    an = infer(trace(teacher, _x(2)), heads="dim")
    (link,) = an.qk
    with pytest.raises(n2n_fx.ConstraintError, match="frozen"):
        n2n_fx.Plan(an, factor=2.0, qk_scales={link.node: 0.25})


def test_net2widernet_takes_heads() -> None:
    """The pass planned from the graph it receives had no heads option (a TypeError)."""
    torch.manual_seed(0)
    teacher = Attn().double().eval()
    gm = torch.fx.symbolic_trace(teacher)
    wider = n2n_fx.Net2WiderNet(factor=2.0, example_inputs=_x(2), heads="dim")
    student = wider(gm).graph_module
    assert _head_dims(wider.last_plan) and not any(p.name.endswith("heads") for p in wider.last_plan.spaces)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12
    with pytest.raises(n2n_fx.WidthError):
        n2n_fx.Net2WiderNet(wider.last_plan, heads="dim")


class Block(nn.Module):
    def __init__(self, embed: int, heads: int, scale: float | None) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.scale = heads, embed // heads, scale
        self.qkv, self.o = nn.Linear(embed, 3 * embed), nn.Linear(embed, embed)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return h + self.o(a.transpose(1, 2).reshape(b, n, -1))


class Net(nn.Module):
    """A fused-qkv block stack whose attention scale is a constructor literal (a config multiplier)."""

    def __init__(self, embed: int = 8, heads: int = 2, layers: int = 1, scale: float | None = None) -> None:
        super().__init__()
        self.emb, self.head = nn.Linear(5, embed), nn.Linear(embed, 3)
        self.blocks = nn.ModuleList(Block(embed, heads, scale) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


@pytest.mark.parametrize("check", [True, False])
def test_grow_refuses_a_target_scale_on_a_kept_head_dim(check: bool) -> None:
    """Whole heads (head_dim kept) into a target whose attention multiplies by another literal:
    with check=False the student was silently wrong (rel err ~2e-3); now a GrowError names sdpa."""
    torch.manual_seed(0)
    teacher = Net(scale=0.1).double().eval()
    with torch.device("meta"):
        target = Net(embed=16, heads=4, scale=0.2).double()
    with pytest.raises(GrowError, match="scales its scores by 0.1 in the teacher and by 0.2"):
        n2n_fx.grow(teacher, target, _x(2), check=check)


@pytest.mark.parametrize("ours,theirs", [(0.125, 0.125), (None, 0.2), (0.3, None), (0.1, 0.2)])
@pytest.mark.parametrize("check", [True, False])
def test_grow_wider_heads_reads_the_target_scale(ours: float | None, theirs: float | None, check: bool) -> None:
    """head_dim 4 -> 8 into a target whose scale is its own literal (or sdpa's default): exact,
    whatever the two scales, with and without the verification."""
    torch.manual_seed(0)
    teacher = Net(scale=ours, layers=2).double().eval()
    with torch.device("meta"):
        target = Net(embed=16, heads=2, scale=theirs, layers=3).double()
    student = n2n_fx.grow(teacher, target, _x(2), check=check)
    assert type(student) is Net and student.blocks[0].head_dim == 8 and student.blocks[0].scale == theirs
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12


class ChannelsLast(nn.Module):
    """Default mode: the reshape cases wider heads added, where models used to freeze. (B, H, W, C)
    -> (B, H*W*C) into a Linear; (B, C) -> (B, G1, G2, s) blocks with a Linear per block."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.fc, self.out = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 5 * 5, 6), nn.Linear(6, 12)
        self.blk, self.head = nn.Linear(3, 4), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x).relu().permute(0, 2, 3, 1)
        z = self.out(self.fc(y.reshape(y.shape[0], -1)).relu()).relu().view(x.shape[0], 2, 2, 3)
        return self.head(self.blk(z).relu().permute(0, 2, 1, 3).reshape(x.shape[0], -1))


def test_default_mode_reshapes_widen_exactly() -> None:
    torch.manual_seed(0)
    teacher = ChannelsLast().double().eval()
    plan = n2n_fx.plan(teacher, _x(2, 3, 5, 5), factor=2.0)
    grown = {p.name for p in plan.spaces if p.new_width > p.width}
    assert {"c", "fc", "blk"} <= grown, plan
    student = n2n_fx.apply_plan(plan)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch, 3, 5, 5)) < 1e-12


class DeepViews(Attn):
    """q, k, v reach sdpa past more views than the head-split search looks through: the view rule
    then cuts their projections into blocks, and sdpa met a spaced head_dim in the default mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, self.h, self.d) for p in (self.q, self.k, self.v))
        for _ in range(14):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.head(h + self.o(a.transpose(1, 2).reshape(b, n, -1)))


def test_the_default_mode_keeps_head_dim_where_it_misses_the_head_split() -> None:
    """heads='count' grew head_dim (with rescaled q, k rows) there, against its contract and the
    optimizer hand-over's; now that head_dim stays fixed, as before wider heads, and 'dim' grows it."""
    torch.manual_seed(0)
    teacher = DeepViews().double().eval()
    plan = n2n_fx.plan(teacher, _x(2), factor=2.0)
    assert not plan.analysis.qk and not any(p.name.endswith("head_dim") for p in plan.spaces), plan
    assert any("heads='count' keeps head_dim" in (p.frozen or "") for p in plan.spaces), plan
    assert _rel(teacher, n2n_fx.apply_plan(plan), _x(3)) < 1e-12
    wider = n2n_fx.plan(teacher, _x(2), factor=2.0, heads="dim")
    assert any(new > old for old, new, _ in _head_dims(wider).values()), _head_dims(wider)
    for batch in (1, 3):
        assert _rel(teacher, n2n_fx.apply_plan(wider), _x(batch)) < 1e-12


class OddBlock(Block):
    """Its head count under a name head_growth does not read (`nh`), head_dim optional."""

    def __init__(self, embed: int, heads: int, head_dim_attr: bool) -> None:
        super().__init__(embed, heads, None)
        self.nh, self.hd = heads, embed // heads
        del self.num_heads
        if not head_dim_attr:
            del self.head_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.nh, self.hd).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return h + self.o(a.transpose(1, 2).reshape(b, n, -1))


class OddNet(Net):
    def __init__(self, embed: int = 8, heads: int = 2, head_dim_attr: bool = True) -> None:
        super().__init__(embed, heads)
        self.blocks = nn.ModuleList([OddBlock(embed, heads, head_dim_attr)])


@pytest.mark.parametrize("head_dim_attr,embed,heads", [(True, 24, 3), (False, 24, 3), (False, 16, 2)])
@pytest.mark.parametrize("check", [True, False])
def test_grow_refuses_a_target_that_splits_its_heads_otherwise(head_dim_attr: bool, embed: int, heads: int,
                                                               check: bool) -> None:
    """The plan reads the growth kind from head_dim / num_heads attributes; a target whose class
    names them otherwise read the grown rows as other heads, silently with check=False (rel err
    ~1e-2). The student's query shape at every sdpa is now the target's, or a GrowError names it."""
    torch.manual_seed(0)
    teacher = OddNet(head_dim_attr=head_dim_attr).double().eval()
    with torch.device("meta"):
        target = OddNet(embed, heads, head_dim_attr).double()
    with pytest.raises(GrowError, match="the grown query is"):
        n2n_fx.grow(teacher, target, _x(2), check=check)


@pytest.mark.parametrize("head_dim_attr,embed,heads", [(True, 16, 2), (True, 16, 4), (False, 16, 4)])
def test_grow_into_odd_names_where_the_shapes_agree(head_dim_attr: bool, embed: int, heads: int) -> None:
    torch.manual_seed(0)
    teacher = OddNet(head_dim_attr=head_dim_attr).double().eval()
    with torch.device("meta"):
        target = OddNet(embed, heads, head_dim_attr).double()
    student = n2n_fx.grow(teacher, target, _x(2), check=False)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12


class KeywordBlock(Block):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(query=q, key=k, value=v, is_causal=True, scale=self.scale)
        return h + self.o(a.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("embed,heads", [(16, 2), (16, 4)])
def test_grow_reads_a_query_passed_by_name(embed: int, heads: int) -> None:
    torch.manual_seed(0)
    teacher = Net(scale=0.3).double().eval()
    teacher.blocks = nn.ModuleList([KeywordBlock(8, 2, 0.3).double()])
    with torch.device("meta"):
        target = Net(embed, heads, scale=0.3).double()
        target.blocks = nn.ModuleList([KeywordBlock(embed, heads, 0.3).double()])
    student = n2n_fx.grow(teacher.eval(), target, _x(2), check=False)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12


@pytest.mark.parametrize("heads", [4, 2])  # whole heads, wider heads
def test_grow_through_torch_export_into_a_meta_target(heads: int) -> None:
    """grow traces the target for its attention scales; torch.export ran a meta target on the
    example's device and failed (TraceFailure) under wider heads: now it traces on meta inputs."""
    torch.manual_seed(0)
    teacher = Net(layers=2).double().eval()
    with torch.device("meta"):
        target = Net(embed=16, heads=heads, layers=3).double()
    student = n2n_fx.grow(teacher, target, _x(2), frontend="export", dynamic_shapes="auto")
    assert (student.blocks[0].num_heads, student.blocks[0].head_dim) == (heads, 16 // heads)
    for batch in (1, 3):
        assert _rel(teacher, student, _x(batch)) < 1e-12
