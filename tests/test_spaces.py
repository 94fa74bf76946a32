"""The space algebra and the index maps, tested directly."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from n2n_fx import indexmaps as im
from n2n_fx import spaces as S
from n2n_fx.spaces import Atom, Fixed, Reason, Seg

WHY = Reason("test", "node", "op")


def test_union_and_find():
    a, b, c = Atom(4, "a"), Atom(4, "b"), Atom(4, "c")
    S.union(a, b)
    assert S.find(a) is S.find(b) and S.find(c) is not S.find(a)


def test_cut_refines_atom_everywhere_it_appears():
    a = Atom(6, "a")
    layout = (Seg(a), Seg(a))  # cat([x, x])
    parts = S.pieces(layout, [2, 4, 6], WHY)
    assert [S.width(p) for p in parts] == [2, 4, 6]
    assert [leaf.width for leaf in S.leaves(a)] == [2, 4]


def test_unify_composite_with_single_refines_the_single():
    a, b, c = Atom(3, "a"), Atom(5, "b"), Atom(8, "c")
    S.unify((Seg(a), Seg(b)), (Seg(c),), WHY)
    leaves = S.leaves(c)
    assert [x.width for x in leaves] == [3, 5]
    assert S.find(leaves[0]) is S.find(a) and S.find(leaves[1]) is S.find(b)


def test_unify_with_fixed_freezes():
    a = Atom(4, "a")
    S.unify((Seg(a),), (Fixed(4),), WHY)
    assert S.find(a).frozen == [WHY]


def test_stride_mismatch_freezes_but_free_parameter_adopts():
    a, b = Atom(2, "a"), Atom(8, "b")
    S.unify((Seg(a, 4),), (Seg(b),), WHY)
    assert S.find(a).frozen and S.find(b).frozen
    c, p = Atom(2, "c"), Atom(8, "p", free=True)
    S.unify((Seg(c, 4),), (Seg(p),), WHY)
    assert not S.find(c).frozen and S.normalize((Seg(p),)) == (Seg(S.find(c), 4),)


def test_cut_inside_a_stride_block_freezes_only_that_unit():
    a = Atom(3, "a")  # units 0, 1, 2 at positions 0-3, 4-7, 8-11; the cut at 6 is inside unit 1
    out = S.cut((Seg(a, 4),), 6, WHY)
    first, middle, last = S.leaves(a)
    assert [x.width for x in (first, middle, last)] == [1, 1, 1]
    assert middle.frozen and not first.frozen and not last.frozen
    assert out == (Seg(first, 4), Fixed(2), Fixed(2), Seg(last, 4))
    b = Atom(1, "b")  # a single unit has nothing to keep: it is frozen
    assert S.cut((Seg(b, 4),), 2, WHY) == (Fixed(2), Fixed(2)) and S.find(b).frozen


@given(st.integers(1, 12), st.integers(0, 12), st.integers(0, 2**31))
def test_divide_and_split_scales_sum_to_one_per_unit(n, extra, seed):
    gen = torch.Generator().manual_seed(seed)
    g = im.random_map(n, n + extra, gen)
    assert torch.equal(g[:n], torch.arange(n)) and int(g.max()) < n
    for scale in (im.divide_scale(g, n), im.split_scale(g, n, gen)):
        sums = torch.zeros(n, dtype=torch.float64).index_add_(0, g, scale)
        assert torch.allclose(sums, torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)
        assert (scale > 0).all()


def test_expand_and_gather_index():
    g = torch.tensor([0, 1, 0])
    assert im.expand(g, 2).tolist() == [0, 1, 2, 3, 0, 1]
    idx = im.gather_index([(g, 2, 2), (torch.arange(3), 3, 1)])
    assert idx.tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6]
    assert im.gather_scale([(torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64), 2)]).tolist() == [
        0.5, 0.5, 1.0, 1.0, 0.5, 0.5]
