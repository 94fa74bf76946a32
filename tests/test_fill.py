"""Fill: LayerNorm/RMSNorm-bound spaces grown to widths that are not multiples, exactly.

The new units hold the mean of the old ones (a LayerNorm's input) or zero (an RMSNorm's input,
every norm's output), and every value on the space is s = sqrt(new / old) times the teacher's, so
the norms' statistics and eps are the teacher's (n2n_fx/fill.py, proofs `normalize`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import n2n_fx
from n2n_fx.fill import Fill, NewRows
from n2n_fx.testing import assert_untouched, fingerprint

VOCAB, D = 11, 4


class WrittenRMSNorm(nn.Module):
    """RMSNorm as Hugging Face models write it: x * rsqrt(mean(x * x, -1) + eps) * w."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class WrittenLayerNorm(nn.Module):
    """LayerNorm written out: (x - mean) / sqrt(var + eps) * w + b."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x - x.mean(-1, keepdim=True)
        return c / torch.sqrt((c * c).mean(-1, keepdim=True) + self.eps) * self.weight + self.bias


NORMS = {"layer_norm": nn.LayerNorm, "rms_norm": nn.RMSNorm, "written_rms": WrittenRMSNorm,
         "written_ln": WrittenLayerNorm}


class Block(nn.Module):
    """A pre-norm transformer block (a token-mixing attention stand-in and an MLP branch)."""

    def __init__(self, d: int, norm: type) -> None:
        super().__init__()
        self.n1, self.n2 = norm(d), norm(d)
        self.q, self.o = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.up, self.down = nn.Linear(d, 3 * d), nn.Linear(3 * d, d, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.q(self.n1(h))
        h = h + self.o(torch.softmax(a, dim=1) * a)  # mixes positions, not units
        return h + self.down(F.gelu(self.up(self.n2(h))))


class PreNormLM(nn.Module):
    def __init__(self, norm: type = nn.LayerNorm, tied: bool = False, positions: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.randn(1, 5, D)) if positions else None
        self.blocks = nn.ModuleList([Block(D, norm) for _ in range(2)])
        self.final = norm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        if self.pos is not None:
            h = h + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(self.final(h))


class PostNorm(nn.Module):
    """BERT's order: LN(x + f(x)): a norm's zero-filled output meets the mean-filled stream."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.f, self.ln1, self.ln2 = nn.Linear(3, D), nn.Linear(D, D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(self.a(x))
        return self.head(self.ln2(h + self.f(h)))


def _model(norm: str, tied: bool = False, dtype: torch.dtype = torch.float64, **kw) -> nn.Module:
    torch.manual_seed(0)
    m = PreNormLM(NORMS[norm], tied, **kw).to(dtype)
    with torch.no_grad():  # norms off their init (gain 1, bias 0), so a wrong gain or bias shows
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _ids(batch: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, 5), generator=torch.Generator().manual_seed(batch))


def _stream(plan) -> str:
    [name] = [p.name for p in plan.spaces if p.space.uniform and not p.frozen]
    return name


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("norm", list(NORMS))
def test_pre_norm_lm_grows_to_a_non_multiple_exactly(norm: str, tied: bool, frontend: str) -> None:
    model, ids = _model(norm, tied), _ids(2)
    before = fingerprint(model)
    plan = n2n_fx.plan(model, (ids,), frontend=frontend)
    stream = _stream(plan)
    plan = n2n_fx.plan(model, (ids,), widths={stream: 7}, frontend=frontend)
    assert set(plan.fills) == {stream}
    assert plan.fills[stream].fill is (Fill.MEAN if "ln" in norm or norm == "layer_norm" else Fill.ZERO)
    student = n2n_fx.widen(model, (ids,), widths={stream: 7}, frontend=frontend)
    report = n2n_fx.verify(model, student, (ids,), rtol=1e-10)
    assert report.ok, report
    assert_untouched(model, before)
    params = dict(student.named_parameters(remove_duplicate=False))
    assert any(p.shape[-1] == 7 for p in params.values())
    if tied and frontend == "fx":  # one table still: the head's input gains took the extra 1/s^2
        assert student.get_parameter("head.weight") is student.get_parameter("emb.weight")


@pytest.mark.parametrize("norm", ["layer_norm", "written_rms"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_batch_of_one_and_train_mode(norm: str, frontend: str) -> None:
    model = _model(norm, tied=True)
    for batch in (1, 2):
        ids = _ids(batch)
        stream = _stream(n2n_fx.plan(model, (ids,), frontend=frontend))
        for mode in ("eval", "train"):
            student = n2n_fx.widen(model, (ids,), widths={stream: 6}, frontend=frontend, mode=mode)
            report = n2n_fx.verify(model, student, (ids,), mode=mode, rtol=1e-10)
            assert report.ok, (batch, mode, report)


def test_norm_eps_and_gains_are_the_teachers() -> None:
    """eps is unchanged (a grown model reloads with its config's eps); a norm's old gains are kept
    (untied), its bias times s, its new bias entries 0."""
    model, ids = _model("layer_norm"), _ids(2)
    student = n2n_fx.widen(model, (ids,), widths={"emb": 9})
    ln, old = student.get_submodule("blocks.0.n1"), model.blocks[0].n1
    assert ln.eps == old.eps and tuple(ln.normalized_shape) == (9,)
    s = (9 / 4) ** 0.5
    torch.testing.assert_close(ln.weight[:4], old.weight, rtol=0, atol=0)
    torch.testing.assert_close(ln.bias[:4], s * old.bias, rtol=1e-15, atol=0)
    assert torch.all(ln.bias[4:] == 0)
    # the embedding (a producer) is s * [rows, mean of rows]: the mean fill of a LayerNorm's input
    emb = student.get_parameter("emb.weight")
    torch.testing.assert_close(emb[:, 4:], s * model.emb.weight.mean(1, keepdim=True).expand(-1, 5))


def test_integer_multiples_and_factors_keep_uniform_replication() -> None:
    model, ids = _model("rms_norm"), _ids(2)
    plan = n2n_fx.plan(model, (ids,), widths={"emb": 8})
    assert not plan.fills and plan.spaces[0].g.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    plan = n2n_fx.plan(model, (ids,), factor=1.5)  # floor(1.5) = 1 on the normalised space, as before
    assert not plan.fills and next(p for p in plan.spaces if p.name == "emb").new_width == 4
    plan = n2n_fx.plan(model, (ids,), factor=1.5, norm_fill=True)  # opt-in: the factor's width, by fill
    assert set(plan.fills) == {"emb"} and next(p for p in plan.spaces if p.name == "emb").new_width == 6
    student = n2n_fx.widen(model, (ids,), factor=1.5, norm_fill=True)
    assert n2n_fx.verify(model, student, (ids,), rtol=1e-10).ok


def test_fill_with_other_spaces_widened_too() -> None:
    model, ids = _model("layer_norm"), _ids(2)
    student = n2n_fx.widen(model, (ids,), widths={"emb": 5, "blocks.0.up": 17, "blocks.1.q": 9}, seed=3)
    assert n2n_fx.verify(model, student, (ids,), rtol=1e-10).ok


def test_axis_fills_follow_the_construction() -> None:
    plan = n2n_fx.plan(_model("layer_norm", tied=True), (_ids(2),), widths={"emb#2": 7}, frontend="fx")
    axes = plan.fills["emb#2"].axes
    assert axes[("emb.weight", 1)].new is NewRows.MEAN and axes[("emb.weight", 1)].power == 1
    assert axes[("blocks.0.q.weight", 1)].new is NewRows.COPY and axes[("blocks.0.q.weight", 1)].power == -1
    assert axes[("final.weight", 0)].power == -2  # the tied head's input gain: the extra 1/s^2
    assert axes[("final.bias", 0)].new is NewRows.ZERO and axes[("final.bias", 0)].power == -1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_dtypes(dtype: torch.dtype) -> None:
    model, ids = _model("rms_norm", tied=True, dtype=dtype), _ids(2)
    stream = _stream(n2n_fx.plan(model, (ids,)))
    student = n2n_fx.widen(model, (ids,), widths={stream: 7})
    assert student.get_parameter("emb.weight").dtype == dtype
    report = n2n_fx.verify(model, student, (ids,))  # verify's own tolerances for the dtype
    assert report.native_ok, report  # the student as it runs is as accurate as the teacher
    if dtype == torch.float32:
        assert report.ok, report
    else:
        # fill multiplies every weight on the space by s or 1/s (irrational), so each is rounded to
        # bfloat16 once (replication rounds only the divided replicas, which verify's eps/4 assumes):
        # the float64 twins differ by under one bfloat16 eps
        assert report.max_rel_err <= 2 ** -7, report


def test_post_norm_residual_is_refused_naming_the_add() -> None:
    model, x = PostNorm().double(), torch.randn(2, 3, dtype=torch.float64)
    before = fingerprint(model)
    with pytest.raises(n2n_fx.ConstraintError, match="post-norm") as info:
        n2n_fx.widen(model, x, widths={"a": 6})
    assert isinstance(info.value, n2n_fx.N2NError) and info.value.node == "add"
    assert_untouched(model, before)
    assert n2n_fx.verify(model, n2n_fx.widen(model, x, widths={"a": 8}), x).ok  # multiples still replicate


class Tangled(nn.Module):
    """A nonlinearity on the stream itself, and a LayerNorm and an RMSNorm on one space."""

    def __init__(self, mixed: bool) -> None:
        super().__init__()
        self.mixed = mixed
        self.a, self.ln, self.rms, self.f = nn.Linear(3, D), nn.LayerNorm(D), nn.RMSNorm(D), nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = h + self.f(self.ln(h))
        return self.head(self.rms(h) if self.mixed else torch.tanh(h) + self.ln(h))


@pytest.mark.parametrize("mixed, node, why", [(True, "rms", "mean-filled"), (False, "tanh", "no fill rule")])
def test_unjustified_ops_are_refused(mixed: bool, node: str, why: str) -> None:
    model, x = Tangled(mixed).double(), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(n2n_fx.ConstraintError, match=why) as info:
        n2n_fx.plan(model, x, widths={"a": 5})
    assert info.value.node == node


class MHANet(nn.Module):
    """A pre-LN block around nn.MultiheadAttention (embed 8 = 2 heads x 4), a layer-scale scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.lnf, self.head = nn.Linear(3, 8), nn.LayerNorm(8), nn.LayerNorm(8), nn.Linear(8, 2)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = self.ln(h)
        h = h + self.scale * self.att(y, y, y, need_weights=False)[0]
        return self.head(self.lnf(h))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_multihead_attention_block_grows_by_whole_heads_and_fill(frontend: str) -> None:
    model, x = MHANet().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, widths={"a": 12}, frontend=frontend)  # 8 -> 12: one head more, not a multiple
    assert set(plan.fills) == {"a"}
    assert n2n_fx.verify(model, n2n_fx.widen(model, x, widths={"a": 12}, frontend=frontend), x, rtol=1e-10).ok


class TanhStream(MHANet):
    """A nonlinearity on the stream: fill is refused; with norm_fill a factor falls back to floor(factor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = self.ln(h)
        return self.head(self.lnf(torch.tanh(h + self.att(y, y, y, need_weights=False)[0])))


def test_norm_fill_falls_back_to_replication_where_fill_is_refused() -> None:
    model, x = TanhStream().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    plan = n2n_fx.plan(model, x, factor=1.5, norm_fill=True)
    assert not plan.fills and {p.name: p.new_width for p in plan.spaces}["att.heads"] == 2  # heads follow back
    assert n2n_fx.verify(model, n2n_fx.widen(model, x, factor=1.5, norm_fill=True), x, rtol=1e-10).ok
    with pytest.raises(n2n_fx.ConstraintError, match="tanh") as info:  # asked for explicitly: refused
        n2n_fx.plan(model, x, widths={"a": 12})
    assert info.value.node == "tanh"


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_vision_transformer_class_token_and_positions(frontend: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=8, mlp_dim=16, num_classes=5).double().eval()
    with torch.no_grad():  # a class token, position embeddings and norms off their init
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    student = n2n_fx.widen(model, x, widths={"conv_proj": 12}, frontend=frontend)
    report = n2n_fx.verify(model, student, x, rtol=1e-10)
    assert report.ok, report


# ---------------------------------------------------------------- Hugging Face
transformers = pytest.importorskip("transformers")
IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))


def _llama(tied: bool) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   use_cache=False, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _rms_in_input_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm without its float32 upcast (what bounds its error in float64 at ~1e-7)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.mark.parametrize("tied, width", [(False, 96), (True, 96), (True, 80)])
def test_llama_hidden_grows_to_a_non_multiple(tied: bool, width: int, monkeypatch) -> None:
    model = _llama(tied)
    stream = "model.embed_tokens#2" if tied else "model.embed_tokens"
    student = n2n_fx.widen(model, (IDS,), widths={stream: width})
    assert student.get_parameter("model.embed_tokens.weight").shape == (50, width)
    # Llama's RMSNorm computes in float32 whatever the model's dtype: the fill's factor s moves its
    # float32 rounding, so the error is float32's (the teacher's own rounding is as large)
    assert n2n_fx.verify(model, student, (IDS,), rtol=1e-6).ok
    # without the upcast the same construction is exact to float64 rounding
    monkeypatch.setattr(transformers.models.llama.modeling_llama.LlamaRMSNorm, "forward", _rms_in_input_dtype)
    student = n2n_fx.widen(model, (IDS,), widths={stream: width})
    report = n2n_fx.verify(model, student, (IDS,), rtol=1e-10)
    assert report.ok, report


def test_filled_llama_rebuilds_as_its_family_with_the_configs_eps() -> None:
    """What n2n_fx.grow needs: the filled student is a LlamaForCausalLM of hidden 96 whose norms keep
    the config's rms_norm_eps (fill changes no eps), and stays tied."""
    from n2n_fx.hf import rebuild

    model = _llama(True)
    student = n2n_fx.widen(model, (IDS,), widths={"model.embed_tokens#2": 96})
    rebuilt = rebuild(model, student, (IDS,), rtol=1e-6)
    assert type(rebuilt) is type(model) and rebuilt.config.hidden_size == 96
    assert rebuilt.config.rms_norm_eps == model.config.rms_norm_eps and rebuilt.config.tie_word_embeddings
    assert n2n_fx.verify(model, rebuilt, (IDS,), rtol=1e-6).ok


@pytest.mark.parametrize("tied", [False, True])
def test_gpt2_hidden_grows_to_a_non_multiple(tied: bool) -> None:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=64, n_layer=2, n_head=4, n_positions=32, use_cache=False,
                                  tie_word_embeddings=tied)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    before = fingerprint(model)
    stream = "transformer.wte#2" if tied else "transformer.wte"
    student = n2n_fx.widen(model, (IDS,), widths={stream: 96})
    report = n2n_fx.verify(model, student, (IDS,), rtol=1e-10)
    assert report.ok, report
    assert_untouched(model, before)


def test_bert_post_norm_is_refused() -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).double().eval()
    before = fingerprint(model)
    with pytest.raises(n2n_fx.ConstraintError, match="post-norm") as info:
        n2n_fx.widen(model, (IDS,), widths={"bert.embeddings.word_embeddings": 24})
    assert info.value.node and info.value.node.startswith("add")
    assert_untouched(model, before)


# found by an adversarial audit: only a mean over the units alone, subtracted whole, centres
class _Centred(nn.Module):
    def __init__(self, kind: int, d: int = 8) -> None:
        super().__init__()
        self.inp, self.ln, self.f, self.out = nn.Linear(4, d), nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, 3)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.f(self.ln(h))
        m = h.mean(-1, keepdim=True)
        c = [h - h.mean(dim=(0, 2), keepdim=True), h - m[:, -1:], torch.sub(h, m, alpha=2),
             torch.sub(m, h, alpha=2), h - m][self.kind]
        return self.out(c)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("kind", range(5))
def test_only_a_whole_per_row_mean_centres_the_stream(kind: int, frontend: str) -> None:
    torch.manual_seed(0)
    teacher = _Centred(kind).double().eval()
    student = n2n_fx.widen(teacher, (torch.randn(1, 5, 4, dtype=torch.float64),), widths={"inp": 12},
                           frontend=frontend)
    x = torch.randn(3, 5, 4, dtype=torch.float64)  # not the example's batch: a batch mean differs now
    if frontend == "fx":
        assert (teacher(x) - student(x)).abs().max() <= 1e-12 * teacher(x).abs().max()
    assert n2n_fx.verify(teacher, student, (torch.randn(1, 5, 4, dtype=torch.float64),)).ok


def test_a_bfloat16_filled_student_passes_verify_by_default() -> None:
    torch.manual_seed(0)
    teacher = _Centred(4).to(torch.bfloat16).eval()
    x = torch.randn(2, 5, 4, dtype=torch.bfloat16)
    student = n2n_fx.widen(teacher, (x,), widths={"inp": 12})
    assert student.meta["n2n_filled"]
    report = n2n_fx.verify(teacher, student, (x,))
    assert report.ok and report.native_ok and report.rtol == 2 * torch.finfo(torch.bfloat16).eps, report
