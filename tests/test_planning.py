"""n2n_fx.planning pinned exactly on small models: seeds, fingerprints, widths, the norm, tie and
head-link constraints, the maps a plan hands the passes, and its report.

The fast stage of the mutation tool's run over planning.py (proofs/mutation_tool.py,
docs/mutation_tool.md): each value here is derived from the maps' definitions, not read off a run.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from torch import nn

import n2n_fx
from n2n_fx import indexmaps as im
from n2n_fx import planning as P
from n2n_fx import spaces as S
from n2n_fx.spaces import Atom, Fixed, Seg

X = torch.randn(2, 3, dtype=torch.float64)


class MLP(nn.Module):
    """3 -> a(4) -> b(5) -> c(2): spaces a and b open, c the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class TwoNormed(nn.Module):
    """Two spaces (a: 4, b: 2) normalised together by one LayerNorm over their concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.ln, self.out = nn.Linear(3, 4), nn.Linear(3, 2), nn.LayerNorm(6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(torch.cat([self.a(x), self.b(x)], -1)))


class Normed(nn.Module):
    """One space (a: 4) under a LayerNorm, then a plain hidden space h (3)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.h, self.out = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.h(self.ln(self.a(x)))))


class Attn(nn.Module):
    """nn.MultiheadAttention with embed 4 = 2 heads x head_dim 2."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.att, self.out = nn.Linear(3, 4), nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.out(self.att(h, h, h, need_weights=False)[0])


class Grouped(nn.Module):
    """A grouped conv (2 groups): its input's two pieces conv[0:2] and conv[2:4] need one width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.g, self.o = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1, groups=2), nn.Conv2d(6, 2, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.o(torch.relu(self.g(torch.relu(self.conv(y)))))


class TanhStream(nn.Module):
    """A LayerNorm-bound stream a (4) through tanh: fill is refused there (no fill rule for tanh)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.f, self.head = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.head(torch.tanh(h + self.f(self.ln(h))))


Y = torch.randn(2, 3, 2, 2, dtype=torch.float64)
XS = torch.randn(2, 5, 3, dtype=torch.float64)


def _plan(model: nn.Module, x: torch.Tensor = X, **kw) -> P.Plan:
    return n2n_fx.plan(model.double(), x, **kw)


def _widths(plan: P.Plan) -> dict[str, int]:
    return {p.name: p.new_width for p in plan.spaces}


# ------------------------------------------------------------------ seeds, names, fingerprints
def test_seeded_is_the_documented_mix_of_seed_and_key():
    for seed, keys in [(0, ("g", "a")), (3, ("alpha", ("w", 1), 0)), (2**40, ())]:
        want = (seed * 1_000_003 + zlib.crc32(repr(keys).encode())) % 2**63
        assert P.seeded(seed, *keys).initial_seed() == want
    assert P.seeded(1, "g", "a").initial_seed() != P.seeded(1, "g", "b").initial_seed()


def test_target_and_arg_names():
    assert P._target("relu") == "relu"
    assert P._target(torch.relu) == "torch.relu"
    odd = object()
    assert P._target(odd) == repr(odd)  # no qualified name: its repr
    node = torch.fx.symbolic_trace(MLP()).graph.find_nodes(op="placeholder")[0]
    assert P._arg(node) == "x" and P._arg(torch.zeros(2, 3)) == "tensor(2, 3)" and P._arg(7) == 7


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("zbuf", torch.zeros(2))
        self.abuf = torch.ones(3, 1)  # a plain tensor attribute


def test_fingerprint_lists_modules_parameters_ties_and_tensors_sorted():
    assert P.fingerprint(Holder()) == (
        "module emb: torch.nn.modules.sparse.Embedding",
        "module head: torch.nn.modules.linear.Linear",
        "parameter emb.weight: (5, 3)",
        "parameter head.weight: (5, 3) = emb.weight",
        "tensor abuf: (3, 1)",
        "tensor zbuf: (2,)",
    )


def test_fingerprint_of_a_graph_names_each_node():
    fp = P.fingerprint(torch.fx.symbolic_trace(MLP()))
    assert fp[:3] == ("node x: placeholder x ((), {})", "node a: call_module a (('x',), {})",
                      "node relu: call_function torch.relu (('a',), {})")
    assert "module a: torch.nn.modules.linear.Linear" in fp and "parameter c.bias: (2,)" in fp


def test_check_fingerprint_names_what_differs():
    gm = torch.fx.symbolic_trace(MLP())
    fp = P.fingerprint(gm)
    P.check_fingerprint(fp, gm, "Net2WiderNet")  # the same graph: no error
    other = list(fp)
    other[2] = "node relu: call_function torch.tanh (('a',), {})"
    with pytest.raises(n2n_fx.StalePlanError) as info:
        P.check_fingerprint(tuple(other), gm, "Net2WiderNet")
    msg = str(info.value)
    assert "the plan's \"node relu: call_function torch.tanh (('a',), {})\" is not in it; it has " in msg
    assert "(1 planned entries missing, 1 new;" in msg and info.value.node == "relu"
    with pytest.raises(n2n_fx.StalePlanError, match="the plan's .* is not in it \\(1 planned entries missing, 0 new"):
        P.check_fingerprint((*fp, "node extra: x"), gm, "w")
    with pytest.raises(n2n_fx.StalePlanError, match=r"graph other than .*: it has .*\(0 planned entries missing, 1 new"):
        P.check_fingerprint(fp[1:], gm, "w")
    with pytest.raises(n2n_fx.StalePlanError, match=r"\(0 planned entries missing, 0 new"):
        P.check_fingerprint(tuple(reversed(fp)), gm, "w")


# ------------------------------------------------------------------ widths
@pytest.mark.parametrize("n, factor, want", [(4, 1.5, 6), (5, 1.5, 8), (3, 1.1, 3), (3, 1.0, 3), (1, 1.4, 1),
                                             (1, 1.5, 2), (7, 0.5, 7), (10, 1.25, 13), (2, 2.0, 4)])
def test_scaled_width_rounds_half_up_and_never_shrinks(n, factor, want):
    assert P.scaled_width(n, factor) == want


def test_a_factor_widens_the_open_spaces_with_seeded_random_maps():
    plan = _plan(MLP(), factor=1.5, seed=4)
    assert _widths(plan) == {"a": 6, "b": 8, "c": 2}
    for p in plan.spaces:
        assert torch.equal(p.g, im.random_map(p.width, p.new_width, P.seeded(4, "g", p.name)))
        assert p.width == p.space.width and p.name == p.space.name and p.frozen == p.space.frozen
    assert plan.spaces[2].frozen and plan.spaces[2].reasons[0].code == S.Code.MODEL_OUTPUT
    assert repr(plan) == "<Plan: 3 spaces, 2 widened, 1 frozen>"
    assert _widths(_plan(MLP(), factor=1)) == {"a": 4, "b": 5, "c": 2}


def test_uniform_replication_copies_every_unit_k_times_and_needs_multiples():
    plan = _plan(MLP(), factor=2.0, replication="uniform")
    assert [p.g.tolist() for p in plan.spaces[:2]] == [[0, 1, 2, 3] * 2, [0, 1, 2, 3, 4] * 2]
    with pytest.raises(n2n_fx.WidthError, match="multiple of 4; got 6"):
        _plan(MLP(), factor=1.5, replication="uniform")
    assert _widths(_plan(MLP(), widths={"a": 8}, replication="uniform")) == {"a": 8, "b": 5, "c": 2}


@pytest.mark.parametrize("kw, match", [({"symmetry": "copy"}, "symmetry must be one of"),
                                       ({"replication": "even"}, "replication must be one of"),
                                       ({"factor": 0.5}, "factor must be a real number >= 1"),
                                       ({"factor": float("inf")}, "factor must be"),
                                       ({"factor": float("nan")}, "factor must be"),
                                       ({"factor": "2"}, "factor must be")])
def test_bad_modes_and_factors_are_width_errors(kw, match):
    with pytest.raises(n2n_fx.WidthError, match=match):
        _plan(MLP(), **kw)


def test_requested_widths_are_checked_one_by_one():
    assert _widths(_plan(MLP(), widths={"b": 7})) == {"a": 4, "b": 7, "c": 2}
    assert _widths(_plan(MLP(), widths={"b": 5, "c": 2})) == {"a": 4, "b": 5, "c": 2}  # a frozen one at its width
    assert _widths(_plan(MLP(), factor=1.5, widths={"a": 4})) == {"a": 4, "b": 8, "c": 2}  # a request beats the factor
    with pytest.raises(n2n_fx.UnknownSpaceError, match="no space named 'z'") as info:
        _plan(MLP(), widths={"z": 4})
    assert info.value.node == "z" and "a, b, c" in str(info.value)
    for bad in (True, 6.0, "6"):
        with pytest.raises(n2n_fx.WidthError, match="must be an int"):
            _plan(MLP(), widths={"a": bad})
    with pytest.raises(n2n_fx.WidthError, match="width 3 for space 'a' is below its current width 4"):
        _plan(MLP(), widths={"a": 3})
    with pytest.raises(n2n_fx.FrozenSpaceError, match="space 'c' cannot be widened: model_output") as info:
        _plan(MLP(), widths={"c": 3})
    assert info.value.node == "output"


def test_a_layernorm_space_grows_by_floor_of_the_factor():
    for factor, want in [(1.5, 4), (2.0, 8), (2.5, 8), (2.9999999999, 12), (3.0, 12)]:
        plan = _plan(Normed(), factor=factor)
        assert _widths(plan)["a"] == want and not plan.fills, factor
        assert _widths(plan)["h"] == P.scaled_width(3, factor)
    assert _widths(_plan(Normed(), widths={"a": 12})) == {"a": 12, "h": 3, "out": 2}


def test_spaces_normalised_together_share_one_k():
    assert [_widths(_plan(TwoNormed(), factor=f))[n] for f in (2.7, 1.2) for n in ("a", "b")] == [8, 4, 4, 2]
    assert _widths(_plan(TwoNormed(), widths={"a": 12}))["b"] == 6  # the other follows the request's k
    assert _widths(_plan(TwoNormed(), widths={"a": 12, "b": 6}))["a"] == 12
    with pytest.raises(n2n_fx.ConstraintError, match=r"need one replication factor; got \[2, 3\]"):
        _plan(TwoNormed(), widths={"a": 8, "b": 6})
    with pytest.raises(n2n_fx.ConstraintError, match="normalised together at ln: fill"):
        _plan(TwoNormed(), widths={"a": 6})


def test_a_non_multiple_for_a_normalised_space_is_a_fill():
    plan = _plan(Normed(), widths={"a": 6})
    assert set(plan.fills) == {"a"} and _widths(plan)["a"] == 6
    assert plan.spaces[0].g.tolist()[:4] == [0, 1, 2, 3]
    with pytest.raises(n2n_fx.ConstraintError, match="can only be replicated uniformly, so its width must be a "
                                                     "multiple of 4; got 6"):
        _plan(Normed(), widths={"a": 6}, replication="uniform")
    opt_in = _plan(Normed(), factor=1.5, norm_fill=True)  # the factor's own width, by fill
    assert set(opt_in.fills) == {"a"} and _widths(opt_in)["a"] == 6
    assert not _plan(Normed(), factor=2.0, norm_fill=True).fills  # a multiple: replication


def test_norm_fill_falls_back_to_floor_of_the_factor_where_fill_is_refused():
    plan = _plan(TanhStream(), factor=2.5, norm_fill=True)
    assert not plan.fills and _widths(plan)["a"] == 8
    assert _widths(_plan(TanhStream(), factor=1.5, norm_fill=True))["a"] == 4
    with pytest.raises(n2n_fx.ConstraintError, match="tanh"):
        _plan(TanhStream(), widths={"a": 6})


def test_attention_heads_follow_the_embed_width():
    plan = _plan(Attn(), XS, factor=1.5)
    assert _widths(plan) == {"a": 6, "att.heads": 3, "att.out_proj": 6, "out": 2}
    kept = _plan(Attn(), XS, factor=1.25)  # 5 is off the head_dim grid: the attention keeps its widths
    assert _widths(kept)["a"] == 4 and _widths(kept)["att.heads"] == 2
    assert _widths(_plan(Attn(), XS, widths={"a": 8}))["att.heads"] == 4
    with pytest.raises(n2n_fx.ConstraintError, match=r"embed width 5 must equal heads x head_dim \(2 x 2\)") as info:
        _plan(Attn(), XS, widths={"a": 5})
    assert info.value.node == "att"
    with pytest.raises(n2n_fx.ConstraintError, match=r"embed width 4 must equal heads x head_dim \(3 x 2\)"):
        _plan(Attn(), XS, widths={"att.heads": 3})
    assert _widths(_plan(Attn(), XS, widths={"a": 6, "att.heads": 3}))["att.heads"] == 3


def test_grouped_conv_pieces_get_one_width():
    assert {n: w for n, w in _widths(_plan(Grouped(), Y, widths={"conv[0:2]": 5})).items() if "conv" in n} == {
        "conv[0:2]": 5, "conv[2:4]": 5}
    assert _widths(_plan(Grouped(), Y, factor=2.0))["conv[2:4]"] == 4
    with pytest.raises(n2n_fx.ConstraintError, match=r"need one width; got \[5, 6\]"):
        _plan(Grouped(), Y, widths={"conv[0:2]": 5, "conv[2:4]": 6})


# ------------------------------------------------------------------ maps
def _space(plan: P.Plan, name: str) -> P.SpacePlan:
    return next(p for p in plan.spaces if p.name == name)


def test_layout_maps_of_a_fixed_run_and_a_strided_space():
    plan = _plan(MLP(), factor=1.5, seed=2)
    a = _space(plan, "a")
    g = a.g
    atom = S.find(a.space.atom)
    lay = (Fixed(2), Seg(atom, 3))  # two fixed positions, then a's units three positions each
    assert plan.new_width(lay) == 2 + 6 * 3
    idx = [0, 1] + [2 + 3 * int(u) + r for u in g for r in range(3)]
    assert plan.layout_index(lay).tolist() == idx
    counts = torch.bincount(g, minlength=4)[g].to(torch.float64)
    assert torch.equal(plan.layout_scale(lay, "k"),
                       torch.cat([torch.ones(2, dtype=torch.float64), (1 / counts).repeat_interleave(3)]))
    assert torch.equal(plan.layout_counts(lay), torch.cat([torch.ones(2, dtype=torch.float64),
                                                           counts.repeat_interleave(3)]))
    assert plan.replicated_mask(lay).tolist() == [False, False] + [c > 1 for c in counts.tolist() for _ in range(3)]
    assert plan.layout_index(lay) is plan.layout_index(lay)  # cached: one gather per layout
    assert plan.layout_scale(lay, "k") is plan.layout_scale(lay, "other")  # 1/count does not depend on the consumer


def test_atoms_that_are_no_space_map_to_themselves():
    plan = _plan(MLP(), factor=1.5)
    stray = Atom(3, "stray")
    g, n = plan.leaf_map(stray)
    assert g.tolist() == [0, 1, 2] and n == 3 and plan.new_width((Seg(stray, 2), Fixed(1))) == 7
    assert plan.layout_index((Seg(stray),)).tolist() == [0, 1, 2]
    assert plan.axis_fill(("a.weight", 0)) is None


def test_split_symmetry_draws_alpha_per_consumer_tensor():
    plan = _plan(MLP(), factor=1.5, seed=5, symmetry="split")
    a = _space(plan, "a")
    lay = (Fixed(1), Seg(S.find(a.space.atom)))
    want = im.split_scale(a.g, 4, P.seeded(5, "alpha", "k", 1))  # segment 1 of the layout
    assert torch.equal(plan.layout_scale(lay, "k"), torch.cat([torch.ones(1, dtype=torch.float64), want]))
    assert not torch.equal(plan.layout_scale(lay, "k"), plan.layout_scale(lay, "j"))
    assert plan.layout_scale(lay, "k") is not plan.layout_scale(lay, "k")  # drawn, not cached


def test_the_token_depends_on_everything_the_maps_do():
    base = _plan(MLP(), factor=1.5).token
    assert len(base) == 16 and base == _plan(MLP(), factor=1.5).token
    for kw in ({"seed": 1}, {"symmetry": "split"}, {"noise_std": 0.02}, {"factor": 2.0}, {"norm_fill": True}):
        assert _plan(MLP(), **{"factor": 1.5, **kw}).token != base, kw


# ------------------------------------------------------------------ report
def test_short_lists_three_then_counts_the_rest():
    assert P._short([]) == "-"
    assert P._short(["a", "b", "a"]) == "a, b"
    assert P._short(["a", "b", "c"]) == "a, b, c"
    assert P._short(["a", "b", "c", "d", "e", "b"]) == "a, b, c, +2"
    assert P._short(["a", "b"], limit=1) == "a, +1"


def test_format_plan_is_the_table_and_the_summary():
    assert str(_plan(MLP(), factor=1.5)) == "\n".join([
        "space  producers  consumers  width   frozen",
        "-----  ---------  ---------  ------  ----------------------",
        "a      a          b          4 -> 6",
        "b      b          c          5 -> 8",
        "c      c          -          2       model_output at output",
        "2 of 3 spaces widened; frozen: model_output 1 (traced with fx)"])


def test_format_plan_notes_why_an_open_space_kept_its_width():
    text = str(_plan(Normed(), factor=1.5))
    assert "(integer factors only: normalised at ln)" in text
    assert "1 of 3 spaces widened, 1 open but kept; frozen: model_output 1 (traced with fx)" in text
    assert "(filled: " in str(_plan(Normed(), widths={"a": 6}))
    assert "(embed width = heads x head_dim at att)" in str(_plan(Attn(), XS, factor=1.25))
    assert "normalised at" not in str(_plan(Normed(), factor=2.0))


class Codes(nn.Module):
    """Spaces frozen for three reasons: two reductions, a pad, the model's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.e, self.d = nn.Linear(3, 4), nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 5)
        self.c = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.c(torch.relu(self.a(x))) + self.b(x).sum(-1, keepdim=True) + self.e(x).sum(-1, keepdim=True)
                + nn.functional.pad(self.d(x), (0, 1))[..., :1])


def test_summary_orders_frozen_codes_by_count_then_name():
    assert P.summary_line(_plan(Codes(), factor=2.0)) == (
        "1 of 5 spaces widened; frozen: reduced_over 2, model_output 1, padded 1 (traced with fx)")
    assert P.summary_line(_plan(MLP())) == "0 of 3 spaces widened, 2 open but kept; frozen: model_output 1 (traced with fx)"
    assert P.summary_line(_plan(Grouped(), Y, factor=2.0)) == (
        "4 of 5 spaces widened; frozen: model_output 1 (traced with fx)")


# ------------------------------------------------------------------ more, for the sample's survivors
class PieceNormed(nn.Module):
    """A grouped conv's output pieces g[0:4] (under a LayerNorm) and g[4:8] (not): one tie group."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.g, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.g(self.c0(x)).split(4, 1)
        a = nn.functional.layer_norm(a.permute(0, 2, 3, 1), (4,)).permute(0, 3, 1, 2)
        return self.head(torch.cat([a, b], 1))


def test_a_norm_on_one_piece_of_a_tie_group_settles_the_group_at_the_norms_width():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    w = _widths(_plan(PieceNormed(), x, factor=1.5))  # the normalised piece can only keep 4 (k = 1)
    assert (w["g[0:4]"], w["g[4:8]"]) == (4, 4)
    w = _widths(_plan(PieceNormed(), x, factor=2.0))
    assert (w["g[0:4]"], w["g[4:8]"]) == (8, 8)


class AttnTanh(nn.Module):
    """nn.MultiheadAttention (embed 8 = 2 heads x 4) on a LayerNorm-bound stream through tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.ln, self.head = nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        y = self.ln(h)
        return self.head(torch.tanh(h + self.att(y, y, y, need_weights=False)[0]))


def test_heads_follow_the_stream_back_when_norm_fill_falls_back():
    w = _widths(_plan(AttnTanh(), XS, factor=1.5, norm_fill=True))  # fill (12) refused: floor(1.5) = 1
    assert (w["a"], w["att.heads"]) == (8, 2)


def test_axis_fill_finds_the_fill_of_a_filled_space():
    plan = _plan(Normed(), widths={"a": 6})
    sf = plan.fills["a"]
    for key in [("a.weight", 0), ("a.bias", 0), ("h.weight", 1)]:
        assert plan.axis_fill(key) == (sf.axes[key], sf)
    assert plan.axis_fill(("out.weight", 0)) is None


def test_split_is_recognised_by_value_not_identity():
    mode = "".join(["sp", "lit"])  # a string built at run time: equal to "split", not the same object
    plan = _plan(MLP(), factor=1.5, symmetry=mode)
    lay = (Seg(S.find(_space(plan, "a").space.atom)),)
    assert not torch.equal(plan.layout_scale(lay, "k"), plan.layout_scale(lay, "j"))


def test_stale_plan_message_names_the_first_missing_and_first_new_entry():
    gm = torch.fx.symbolic_trace(MLP())
    fp = P.fingerprint(gm)
    planned = ("node q: first", "node r: second", *fp[2:])
    with pytest.raises(n2n_fx.StalePlanError) as info:
        P.check_fingerprint(planned, gm, "w")
    assert f"the plan's 'node q: first' is not in it; it has {fp[0]!r} (2 planned entries missing, 2 new" in str(info.value)
    assert info.value.node == "q"


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a  # one module under two names


def test_fingerprint_lists_a_shared_module_under_each_name():
    fp = P.fingerprint(Shared())
    assert [e for e in fp if e.startswith("module")] == ["module a: torch.nn.modules.linear.Linear",
                                                         "module b: torch.nn.modules.linear.Linear"]
    assert "parameter b.weight: (2, 2) = a.weight" in fp


class PaddedFirst(nn.Module):
    """A pad-frozen space made before the output's: both codes once each."""

    def __init__(self) -> None:
        super().__init__()
        self.d, self.a, self.c = nn.Linear(3, 5), nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(self.d(x), (0, 1))[..., :1] + self.c(torch.relu(self.a(x)))


def test_summary_breaks_equal_counts_by_code_name_not_by_order():
    assert P.summary_line(_plan(PaddedFirst(), factor=2.0)) == (
        "1 of 3 spaces widened; frozen: model_output 1, padded 1 (traced with fx)")


class GroupedAttn(nn.Module):
    """A grouped conv's output piece g[0:4] is an attention's embed (4 = 2 heads x 2); its tie mate
    g[4:8] is not."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.g = nn.Conv1d(3, 8, 1), nn.Conv1d(8, 8, 1, groups=2)
        self.att, self.o, self.p = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2), nn.Conv1d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.g(self.c0(x)).split(4, 1)
        q = a.permute(0, 2, 1)
        return self.o(self.att(q, q, q, need_weights=False)[0]).sum() + self.p(torch.relu(b)).sum()


def test_a_request_that_reaches_an_attention_through_a_tie_is_checked_like_a_direct_one():
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    w = _widths(_plan(GroupedAttn(), x, widths={"g[4:8]": 6}))  # the tie carries 6 to the embed: 3 heads
    assert (w["g[0:4]"], w["g[4:8]"], w["att.heads"]) == (6, 6, 3)
    w = _widths(_plan(GroupedAttn(), x, factor=1.25))  # a factor off the head grid: the tie group keeps 4
    assert (w["g[0:4]"], w["g[4:8]"], w["att.heads"]) == (4, 4, 2)
    for name in ("g[0:4]", "g[4:8]"):  # 5 is off the grid whichever piece asks: an error, never dropped silently
        with pytest.raises(n2n_fx.ConstraintError, match=r"attention att: embed width 5") as info:
            _plan(GroupedAttn(), x, widths={name: 5})
        assert info.value.node == "att"


class TwoNorms(nn.Module):
    """Two LayerNorms on two unrelated spaces (a: 4, b: 2): two norm groups, each with its own k."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.la, self.lb = nn.Linear(3, 4), nn.Linear(3, 2), nn.LayerNorm(4), nn.LayerNorm(2)
        self.oa, self.ob = nn.Linear(4, 1), nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.oa(self.la(self.a(x))) + self.ob(self.lb(self.b(x)))


def test_norm_groups_join_only_when_they_share_a_space():
    plan = _plan(TwoNorms(), widths={"a": 8, "b": 6})  # k = 2 and k = 3: two groups
    assert [(node, [sp.name for sp in spaces]) for node, spaces in plan.uniform_groups()] == [
        ("la", ["a"]), ("lb", ["b"])]
    assert (_widths(plan)["a"], _widths(plan)["b"]) == (8, 6)
    assert [(node, sorted(sp.name for sp in spaces)) for node, spaces in _plan(TwoNormed()).uniform_groups()] == [
        ("ln", ["a", "b"])]


class AttnAfter(nn.Module):
    """A plain space a (6) made before an attention's embed z (4 = 2 heads x 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.z = nn.Linear(3, 6), nn.Linear(6, 4)
        self.att, self.out = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.z(torch.relu(self.a(x)))
        return self.out(self.att(h, h, h, need_weights=False)[0])


def test_an_attention_reset_restores_each_space_to_its_own_width():
    w = _widths(_plan(AttnAfter(), XS, factor=1.25))  # z: 5 is off the grid; a: 6 -> 8 is not the attention's
    assert (w["a"], w["z"], w["att.heads"]) == (8, 4, 2)


class _Sdpa(nn.Module):
    """q, k, v projections split into 2 heads of 2, sdpa with a literal scale or its default."""

    def __init__(self, scale: float | None) -> None:
        super().__init__()
        self.a, self.q, self.k, self.v, self.o = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), \
            nn.Linear(4, 2)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        q, k, v = (p(h).view(1, 2, 2, 2).transpose(1, 2) for p in (self.q, self.k, self.v))
        return self.o(torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
                      .transpose(1, 2).reshape(1, 2, 4))


@pytest.mark.parametrize("teacher,student,want", [
    (None, None, 4 / 2),  # both derived: r^2 = d'/d, head_dim 2 -> 4
    (0.5, None, 0.25 * 4),  # a literal against the student's derived 1/sqrt(4): s^2 d'
    (None, 0.25, (1 / 2) / 0.0625),  # derived 1/sqrt(2) against the target's literal: 1 / (d s'^2)
    (0.5, 0.25, 0.25 / 0.0625),  # literals: (s / s')^2
    (0.5, 0.5, 1.0),  # a literal the student keeps: r = 1
])
def test_wider_heads_ratio_is_the_square_of_the_teacher_scale_over_the_student_scale(teacher, student, want):
    x = torch.randn(1, 2, 3)
    an = n2n_fx.plan(_Sdpa(teacher), x, heads="dim").analysis
    (link,) = an.qk
    plan = P.Plan(an, widths={"q.head_dim": 4}, qk_scales={link.node: student}, replication="uniform")
    (ratio_sq,) = set(plan._qk_ratio.values())
    assert ratio_sq == pytest.approx(want, rel=1e-15)
    # f^4 = r^2 / c^2 on every q row: each of the 2 units copied twice
    assert torch.allclose(plan.layout_qk(an.param_layouts[("q.weight", 0)]), torch.full((8,), want / 4,
                                                                                        dtype=torch.float64))


class TwoTies(nn.Module):
    """Two grouped convs: g1's piece g1[0:4] is an attention's embed (2 heads x 2), its mate g1[4:8] is
    normalised with g2[0:4], whose mate g2[4:8] is not: a request for g2[4:8] reaches the attention
    through a tie, a norm group and a tie again."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(3, 8, 1), nn.Conv1d(3, 8, 1)
        self.g1, self.g2 = nn.Conv1d(8, 8, 1, groups=2), nn.Conv1d(8, 8, 1, groups=2)
        self.att = nn.MultiheadAttention(4, 2, batch_first=True)
        self.o, self.n, self.p = nn.Linear(4, 2), nn.Linear(8, 2), nn.Conv1d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.g1(self.c1(x)).split(4, 1)
        c, d = self.g2(self.c2(x)).split(4, 1)
        q = a.permute(0, 2, 1)
        bc = nn.functional.layer_norm(torch.cat([b, c], 1).permute(0, 2, 1), (8,))
        return self.o(self.att(q, q, q, need_weights=False)[0]).sum() + self.n(bc).sum() + self.p(torch.relu(d)).sum()


X3 = torch.randn(2, 3, 5, dtype=torch.float64)
TWO_TIES = ("g1[0:4]", "g1[4:8]", "g2[0:4]", "g2[4:8]", "att.heads")


@pytest.mark.parametrize("name", ["g2[4:8]", "g2[0:4]", "g1[4:8]"])
def test_a_request_spreads_through_ties_and_norm_groups_until_nothing_new_is_asked(name):
    """It was dropped: the norm group carried 8 to g1[4:8], whose tie-mate (the embed) stayed 4, so the
    grouped-conv settling reset the whole chain, the request included, with no error."""
    model = TwoTies().double()
    plan = _plan(model, X3, widths={name: 8})
    assert tuple(_widths(plan)[n] for n in TWO_TIES) == (8, 8, 8, 8, 4)
    student = n2n_fx.widen(model, X3, widths={name: 8})
    report = n2n_fx.verify(model, student, X3)
    assert report.ok and report.max_rel_err < 1e-12, report
    assert student.att.num_heads == 4 and student.g2.weight.shape[0] == 16


def test_a_reset_that_reaches_a_requested_width_is_an_error_never_a_silent_drop():
    plan = _plan(TwoTies(), X3)
    targets = {sp.name: sp.width for sp in plan.analysis.spaces} | {"g2[4:8]": 8}
    with pytest.raises(n2n_fx.ConstraintError, match=r"requested for \['g2\[4:8\]'\] cannot hold") as info:
        plan._reset(dict(targets), {"g1[0:4]"}, {"g2[4:8]"}, "a test")  # through a tie, a norm group, a tie
    assert info.value.node == "g2[4:8]"
    plan._reset(targets, {"g1[0:4]"}, set(), "a test")  # unrequested: the whole chain keeps its widths
    assert all(targets[n] == 4 for n in TWO_TIES[:4])
