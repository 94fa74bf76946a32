"""The space algebra and the index maps, tested directly."""

from __future__ import annotations

import dataclasses

import pytest
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


# ---------------------------------------------------------------------------------------------
# The algebra pinned piece by piece: each function's result on small layouts, values exact.
# Written for the survivors of the mutation tool's run over spaces.py (docs/mutation_tool.md).

OTHER = Reason("other", "n2", "op2", "why")


def _widths(a: Atom) -> list[int]:
    return [leaf.width for leaf in S.leaves(a)]


def test_reason_prints_its_detail_only_when_it_has_one():
    assert str(Reason(S.Code.PADDED, "pad_1", "pad")) == "padded at pad_1 (pad)"
    assert str(Reason(S.Code.PADDED, "pad_1", "pad", "reaches dim 1")) == "padded at pad_1 (pad): reaches dim 1"


def test_find_compresses_every_link_of_the_path_to_the_root():
    a, b, c, d = (Atom(2, x) for x in "abcd")
    b.parent, c.parent, d.parent = a, b, c  # d -> c -> b -> a
    assert S.find(d) is a and S.find(a) is a
    assert d.parent is a and c.parent is a and b.parent is a and a.parent is None


def test_refine_splits_into_pieces_that_inherit_frozen_and_free_and_name_their_offset():
    a = Atom(7, "w", frozen=[WHY], free=True)
    S._refine_at(a, 3)
    left, right = a.children
    assert (left.width, right.width) == (3, 4) and left.piece_of == (a, 0) and right.piece_of == (a, 3)
    assert left.frozen == [WHY] and right.frozen == [WHY] and left.frozen is not a.frozen
    assert left.free and right.free and left.origin == right.origin == "w"
    S._refine_at(a, 5)  # inside the right piece, at its own unit 2
    assert _widths(a) == [3, 2, 2] and right.children[1].piece_of == (right, 2)
    S._refine_at(a, 1)  # inside the left piece
    assert _widths(a) == [1, 2, 2, 2]
    for edge in (1, 3, 5):  # an existing boundary: nothing changes, no empty piece appears
        S._refine_at(a, edge)
    assert _widths(a) == [1, 2, 2, 2] and S._cut_points(a) == [1, 3, 5]
    b = Atom(8, "b")  # a second piece at offset 2, 6 wide: the cut at 5 falls in it (2 + 6, not 2 ^ 6)
    S._refine_at(b, 2)
    S._refine_at(b, 5)
    assert _widths(b) == [2, 3, 3]
    S._refine_at(b, 7)  # in the last piece (offset 5 = 2 + 3, 3 wide): its unit 2
    assert _widths(b) == [2, 3, 2, 1]
    c = Atom(1000, "c")  # an existing boundary past the small-int cache: equal, not identical offsets
    S._refine_at(c, 600)
    S._refine_at(c, int("600"))
    assert _widths(c) == [600, 400]


def test_refine_of_a_piece_reached_through_a_union_cuts_the_root():
    a, b = Atom(4, "a"), Atom(4, "b")
    S.union(a, b)
    S._refine_at(b, 1)  # b's root is a
    assert _widths(a) == [1, 3] and _widths(b) == [1, 3] and b.children is None


def test_union_of_plain_atoms_merges_reasons_once_and_keeps_free_only_if_both_are():
    a = Atom(3, "a", frozen=[WHY], free=True, label="attn.heads")
    b = Atom(3, "b", frozen=[WHY, OTHER], free=False, label="other.heads")
    S.union(a, b)
    assert b.parent is a and S.find(b) is a
    assert a.frozen == [WHY, OTHER] and not a.free and a.label == "attn.heads"
    c, d = Atom(2, "c", free=True), Atom(2, "d", free=True, label="d.groups")
    S.union(c, d)
    assert c.free and c.label == "d.groups"
    S.union(c, d)  # already one: a no-op
    assert S.find(d) is c and c.parent is None


def test_union_of_refined_atoms_cuts_both_to_the_common_pieces_and_pairs_them():
    a, b = Atom(6, "a"), Atom(6, "b")
    S._refine_at(a, 2)  # a: 2 | 4
    S._refine_at(b, 4)  # b: 4 | 2
    held = S.leaves(b)  # the pieces layouts already hold (a Seg of b's first 4 units)
    S.union(a, b)
    assert _widths(a) == [2, 2, 2] and _widths(b) == [2, 2, 2]
    assert [S.find(x) for piece in held for x in S.leaves(piece)] == [S.find(x) for x in S.leaves(a)]
    assert [S.find(x) for x in S.leaves(a)] == [S.find(y) for y in S.leaves(b)]
    assert len({S.find(x).id for x in S.leaves(a)}) == 3 and S.find(b) is S.find(a)


def test_union_of_different_widths_is_a_bug_that_asserts():
    for wa, wb in ((2, 3), (3, 2)):
        with pytest.raises(AssertionError):
            S.union(Atom(wa, "a"), Atom(wb, "b"))
    a, b = Atom(1000, "a"), Atom(int("1000"), "b")  # equal widths, two int objects (past the small-int cache)
    S.union(a, b)
    assert S.find(b) is a


def test_freeze_reaches_every_leaf_once_and_keeps_at_most_eight_reasons():
    a = Atom(4, "a")
    S._refine_at(a, 1)
    S.freeze(a, WHY)
    S.freeze(a, WHY)
    assert [leaf.frozen for leaf in S.leaves(a)] == [[WHY], [WHY]]
    b = Atom(1, "b")
    many = [Reason(S.Code.CONSTRAINT, f"n{i}", "op") for i in range(12)]
    for r in many:
        S.freeze(b, r)
    assert b.frozen == many[:8]


def test_fixed_width_and_segment_sizes():
    a = Atom(3, "a")
    assert S.fixed(0) == () and S.fixed(5) == (Fixed(5),)
    assert Seg(a).size == 3 and Seg(a, 4).size == 12
    assert S.width(()) == 0 and S.width((Fixed(2), Seg(a, 2), Fixed(1))) == 9


def test_normalize_expands_pieces_and_aliases_merges_fixed_runs_and_drops_empty_ones():
    a = Atom(5, "a")
    S._refine_at(a, 2)
    left, right = a.children
    assert S.normalize((Seg(a, 3),)) == (Seg(left, 3), Seg(right, 3))
    assert S.normalize((Fixed(0), Fixed(2), Fixed(3), Seg(a), Fixed(0), Fixed(1), Fixed(4))) == (
        Fixed(5), Seg(left), Seg(right), Fixed(5))
    assert S.normalize((Seg(Atom(0, "empty")), Fixed(2))) == (Fixed(2),)
    p, unit = Atom(12, "p"), Atom(3, "u")
    p.alias = (unit, 4)  # p's 12 positions are unit's 3 units, each 4 wide
    assert S.normalize((Seg(p, 2),)) == (Seg(unit, 8),) and S.leaves(p) == [unit]
    assert S.atoms_of((Fixed(1), Seg(a), Seg(p))) == [left, right, unit]
    assert S.is_spaced((Fixed(1), Seg(a))) and not S.is_spaced((Fixed(1),)) and not S.is_spaced(())


def test_boundaries_edges_inside_and_sizes():
    a, b = Atom(2, "a"), Atom(3, "b")
    lay = (Fixed(1), Seg(a, 2), Fixed(2), Seg(b))
    assert S.boundaries(lay) == {1, 5, 7, 10}
    assert S._seg_edges(lay) == [1, 5, 7, 10]
    assert [p for p in range(11) if S._inside_seg(lay, p)] == [2, 3, 4, 8, 9]
    assert S._sizes((Fixed(4), Fixed(6)), (Fixed(1), Fixed(9))) == [10]  # fixed runs merge: no boundary
    assert S._sizes((Fixed(4), Seg(Atom(6, "c"))), (Seg(Atom(1, "d")), Fixed(9))) == [1, 3, 6]


def test_cut_of_a_fixed_run_and_at_an_existing_edge():
    a = Atom(2, "a")
    lay = (Fixed(5), Seg(a), Fixed(3))
    assert S.cut(lay, 2, WHY) == (Fixed(2), Fixed(3), Seg(a), Fixed(3))
    assert S.cut(lay, 9, WHY) == (Fixed(5), Seg(a), Fixed(2), Fixed(1))
    for edge in (0, 5, 7, 10, 11):  # a boundary already, or outside: unchanged, nothing refined
        assert S.cut(lay, edge, WHY) == lay
    assert a.children is None and not a.frozen


def test_cut_on_a_unit_boundary_refines_without_freezing():
    a = Atom(4, "a")
    out = S.cut((Fixed(1), Seg(a, 2)), 5, WHY)  # position 4 of the run: between units 1 and 2
    left, right = S.leaves(a)
    assert (left.width, right.width) == (2, 2) and out == (Fixed(1), Seg(left, 2), Seg(right, 2))
    assert not left.frozen and not right.frozen


def test_cut_inside_the_first_or_last_unit_refines_one_edge_only():
    a = Atom(3, "a")
    out = S.cut((Seg(a, 2),), 1, WHY)  # inside unit 0
    first, rest = S.leaves(a)
    assert (first.width, rest.width) == (1, 2) and first.frozen == [WHY] and not rest.frozen
    assert out == (Fixed(1), Fixed(1), Seg(rest, 2))
    b = Atom(3, "b")
    out = S.cut((Fixed(1), Seg(b, 2)), 6, WHY)  # inside unit 2, the last
    rest, last = S.leaves(b)
    assert (rest.width, last.width) == (2, 1) and last.frozen == [WHY] and not rest.frozen
    assert out == (Fixed(1), Seg(rest, 2), Fixed(1), Fixed(1))
    c = Atom(4, "c")  # inside unit 3 (odd, the last): one cut at 3, none at 3 ^ 1 = 2
    S.cut((Seg(c, 2),), 7, WHY)
    assert _widths(c) == [3, 1] and [bool(leaf.frozen) for leaf in S.leaves(c)] == [False, True]


def test_pieces_cut_fixed_runs_and_atoms_to_the_sizes():
    a = Atom(4, "a")
    parts = S.pieces((Fixed(3), Seg(a), Fixed(2)), [1, 4, 2, 2], WHY)
    l0, l1 = S.leaves(a)
    assert (l0.width, l1.width) == (2, 2) and not l0.frozen and not l1.frozen
    assert parts == [(Fixed(1),), (Fixed(2), Seg(l0)), (Seg(l1),), (Fixed(2),)]
    assert S.pieces((Fixed(6),), [6], WHY) == [(Fixed(6),)]
    assert S._split_fixed((Fixed(6),), [2, 0, 4]) == [(Fixed(2),), (), (Fixed(4),)]
    c = Atom(2, "c")  # the rest of a straddling run (5 - 2, not 5 ^ 2) is what the next piece starts with
    assert S._split_fixed((Fixed(5), Seg(c)), [2, 3, 2]) == [(Fixed(2),), (Fixed(3),), (Seg(c),)]


def test_unify_pairs_atoms_by_position_and_freezes_what_meets_fixed():
    a, b, c, d = Atom(2, "a"), Atom(3, "b"), Atom(5, "c"), Atom(2, "d")
    S.unify((Seg(a), Fixed(1), Seg(b)), (Seg(d), Fixed(1), Seg(Atom(3, "e"))), WHY)
    assert S.find(a) is S.find(d) and not S.find(a).frozen
    S.unify((Fixed(2), Seg(c)), (Seg(Atom(2, "f")), Fixed(5)), WHY)
    assert S.find(c).frozen == [WHY]  # aligned with fixed positions
    g = Atom(2, "g")
    S.unify((Fixed(2),), (Seg(g),), WHY)
    assert g.frozen == [WHY]
    assert not S.find(b).frozen


def test_unify_same_stride_unions_and_other_strides_freeze_both():
    a, b = Atom(3, "a"), Atom(3, "b")
    S.unify((Seg(a, 2),), (Seg(b, 2),), WHY)
    assert S.find(a) is S.find(b) and not S.find(a).frozen
    c, d = Atom(2, "c"), Atom(3, "d")  # 2 units of 3 against 3 units of 2, neither free
    S.unify((Seg(c, 3),), (Seg(d, 2),), WHY)
    assert S.find(c).frozen and S.find(d).frozen and S.find(c) is not S.find(d)


def test_a_free_parameter_axis_adopts_a_coarser_stride_as_an_alias():
    h, p = Atom(2, "h"), Atom(4, "p", free=True, frozen=[OTHER])
    S.unify((Seg(p, 3),), (Seg(h, 6),), WHY)  # p's units 3 wide, h's 6: each h unit is 2 p units
    assert p.alias == (h, 2) and not p.free and S.normalize((Seg(p, 3),)) == (Seg(h, 6),)
    assert type(p.alias[1]) is int  # a block size indexes: a float one makes the passes' gathers fail
    assert h.frozen == [OTHER]  # a frozen free axis freezes what it now is
    q, k = Atom(4, "q", free=True), Atom(3, "k")
    S.unify((Seg(q, 3),), (Seg(k, 4),), WHY)  # 4 is no multiple of 3 and k is not free: both freeze
    assert q.alias is None and q.free and q.frozen == [WHY] and k.frozen == [WHY] and S.find(q) is not S.find(k)
    r = Atom(4, "r", free=True)
    S._refine_at(r, 2)
    assert not S._adopt(Seg(r), Seg(Atom(2, "s"), 2))  # a refined axis keeps its pieces
    assert not S._adopt(Seg(Atom(4, "t")), Seg(Atom(2, "u"), 2))  # not free


def test_two_free_blocks_of_coprime_sizes_share_one_lcm_atom():
    a = Atom(4, "a", free=True, label="gn8.groups")  # 4 groups of 6 channels
    b = Atom(6, "b", free=True, frozen=[OTHER])  # 6 groups of 4 channels
    S.unify((Seg(a, 6),), (Seg(b, 4),), WHY)
    common, ka = a.alias
    assert ka == 2 and b.alias == (common, 3) and common.width == 2 and common.free
    assert type(ka) is int and type(b.alias[1]) is int  # block sizes index: 2.0 compares equal, gathers refuse it
    assert type(common.width) is int
    assert common.label == "gn8.groups" and common.frozen == [OTHER] and not a.free and not b.free
    assert S.normalize((Seg(a, 6),)) == S.normalize((Seg(b, 4),)) == (Seg(common, 12),)
    c, d = Atom(2, "c", free=True), Atom(3, "d", free=True)  # 12 positions: lcm 12 fits once
    assert S._common_block(Seg(c, 6), Seg(d, 4)) and c.alias[0].width == 1
    e, f = Atom(3, "e", free=True), Atom(2, "f")  # one side not free: nothing
    assert not S._common_block(Seg(e, 2), Seg(f, 3)) and e.alias is None
    g, h = Atom(5, "g", free=True), Atom(2, "h", free=True)
    S._refine_at(h, 1)
    assert not S._common_block(Seg(g, 2), Seg(h, 5))  # a refined side keeps its pieces
    i, j = Atom(5, "i", free=True), Atom(3, "j", free=True)  # 15 positions, lcm(3, 5) = 15 fits
    assert S._common_block(Seg(i, 3), Seg(j, 5))
    m, n = Atom(3, "m", free=True), Atom(2, "n", free=True)  # 12 positions, lcm(4, 6) = 12
    assert S._common_block(Seg(m, 4), Seg(n, 6)) and m.alias[1] == 3 and n.alias[1] == 2


def test_common_block_refuses_when_the_lcm_does_not_divide_the_axis():
    a, b = Atom(3, "a", free=True), Atom(2, "b", free=True)  # 3 x 2 = 6 = 2 x 3: lcm 6 fits once
    assert S._common_block(Seg(a, 2), Seg(b, 3))
    c, d = Atom(2, "c", free=True), Atom(1, "d", free=True)  # 4 positions, units 2 and 4: lcm 4
    assert S._common_block(Seg(c, 2), Seg(d, 4))
    e = Atom(3, "e", free=True)  # 6 positions in units of 2 against units of 4 (a 6-wide seg of
    f = Atom(3, "f", free=True)  # 4-wide units is impossible; the size check guards the lcm)
    assert not S._common_block(Seg(e, 2), Seg(f, 4))


def test_unify_with_a_repeated_atom_pairs_the_rest_in_the_alias_terms():
    # cat(h, h) (h: 2 units of 3) against a fresh 4-unit parameter in units of 3: the parameter is
    # cut where the second copy starts and each piece is unioned with h
    h, p = Atom(2, "h"), Atom(4, "p", free=True)
    S.unify((Seg(h, 3), Seg(h, 3)), (Seg(p, 3),), WHY)
    assert _widths(p) == [2, 2] and all(S.find(x) is S.find(h) for x in S.leaves(p))
    assert not S.find(h).frozen


def test_stride_multiplies_units_and_fixed_runs():
    a = Atom(3, "a")
    S._refine_at(a, 1)
    l0, l1 = S.leaves(a)
    assert S.stride((Fixed(2), Seg(a, 2)), 3) == (Fixed(6), Seg(l0, 6), Seg(l1, 6))
    assert S.stride((Seg(a),), 1) == (Seg(l0), Seg(l1))


@pytest.mark.parametrize("swap", [False, True])
def test_unify_refines_again_when_a_cut_on_one_side_moves_a_repeated_atom(swap):
    # b = cat(p, p); a's edges 1 and 4 fall on p's units: cutting p at 1 (for a's edge 1) also
    # cuts its second copy at 5, inside a's z: another round must cut z there (either side first)
    x, y, z, p = Atom(1, "x"), Atom(3, "y"), Atom(4, "z"), Atom(4, "p")
    a, b = (Seg(x), Seg(y), Seg(z)), (Seg(p), Seg(p))
    S.unify(*((b, a) if swap else (a, b)), WHY)
    assert _widths(p) == [1, 3] and _widths(z) == [1, 3]
    p0, p1 = (S.find(leaf) for leaf in S.leaves(p))
    z0, z1 = (S.find(leaf) for leaf in S.leaves(z))
    assert S.find(x) is p0 is z0 and S.find(y) is p1 is z1 and p0 is not p1
    assert not p0.frozen and not p1.frozen


@pytest.mark.parametrize("swap", [False, True])
def test_unify_refines_again_when_a_cut_refines_an_atom_both_sides_hold(swap):
    # p is on both sides: cutting a's p at 1 (b's edge) cuts b's p too, at 5, inside a's z, which
    # a second round must cut (the side that changed is either one)
    x, y, z, p = Atom(1, "x"), Atom(3, "y"), Atom(4, "z"), Atom(4, "p")
    a, b = (Seg(p), Seg(z)), (Seg(x), Seg(y), Seg(p))
    S.unify(*((b, a) if swap else (a, b)), WHY)
    assert _widths(p) == [1, 3] and _widths(z) == [1, 3]
    p0, p1 = (S.find(leaf) for leaf in S.leaves(p))
    z0, z1 = (S.find(leaf) for leaf in S.leaves(z))
    assert S.find(x) is p0 is z0 and S.find(y) is p1 is z1 and p0 is not p1


def test_freeze_adds_nothing_to_a_leaf_that_a_union_gave_more_than_eight_reasons():
    a, b = Atom(2, "a"), Atom(2, "b")
    for i in range(8):
        S.freeze(a, Reason(S.Code.CONSTRAINT, f"a{i}", "op"))
        S.freeze(b, Reason(S.Code.CONSTRAINT, f"b{i}", "op"))
    S.union(a, b)  # the union keeps every distinct reason of both: 16
    assert len(a.frozen) == 16
    S.freeze(a, OTHER)
    assert len(a.frozen) == 16 and OTHER not in a.frozen


def test_segments_are_immutable_hashable_values():
    # one Seg object sits in the layouts of many tensors: it must not change under one of them
    a = Atom(2, "a")
    why = Reason(S.Code.PADDED, "pad", "pad")  # one Reason is shared by every leaf it froze
    with pytest.raises(dataclasses.FrozenInstanceError):
        why.node = "other"  # type: ignore[misc]
    assert hash(why) == hash(Reason(S.Code.PADDED, "pad", "pad"))
    for seg in (Seg(a, 2), Fixed(3)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            seg.inner = 4 if isinstance(seg, Seg) else None  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            seg.size = 5  # type: ignore[misc]
    assert len({Seg(a, 2), Seg(a, 2), Fixed(3), Fixed(3)}) == 2 and hash(Seg(a)) == hash(Seg(a, 1))


def test_cut_keeps_the_segments_after_the_one_it_cuts_at_any_index():
    a = Atom(2, "a")
    assert S.cut((Seg(a), Fixed(5)), 4, WHY) == (Seg(a), Fixed(2), Fixed(3))  # a fixed run at index 1
    assert S.cut((Seg(a), Fixed(5), Seg(a)), 4, WHY) == (Seg(a), Fixed(2), Fixed(3), Seg(a))
    b = Atom(1, "b")  # one unit, cut inside its block: frozen, at index 1
    assert S.cut((Fixed(1), Seg(b, 4), Fixed(1)), 3, WHY) == (Fixed(1), Fixed(2), Fixed(2), Fixed(1))
    assert S.cut((Seg(a), Seg(b, 4)), 4, WHY) == (Seg(a), Fixed(2), Fixed(2))


def test_cut_inside_one_of_two_units_keeps_the_other_widenable():
    a = Atom(2, "a")
    out = S.cut((Seg(a, 2),), 1, WHY)
    first, second = S.leaves(a)
    assert (first.width, second.width) == (1, 1) and first.frozen == [WHY] and not second.frozen
    assert out == (Fixed(1), Fixed(1), Seg(second, 2))


def test_unify_of_layouts_of_different_widths_is_a_bug_that_asserts():
    for wa, wb in ((2, 3), (3, 2)):
        with pytest.raises(AssertionError):
            S.unify((Fixed(wa),), (Fixed(wb),), WHY)
    S.unify((Fixed(1000),), (Fixed(int("1000")),), WHY)  # equal, not identical ints: fine


def test_unify_compares_strides_by_value():
    a, b = Atom(2, "a"), Atom(2, "b")  # a flatten of 1000 trailing positions: two equal, distinct ints
    S.unify((Seg(a, 1000),), (Seg(b, int("1000")),), WHY)
    assert S.find(a) is S.find(b) and not S.find(a).frozen


def test_union_of_a_plain_and_a_refined_atom_refines_the_plain_one_and_keeps_its_reasons():
    a, b = Atom(5, "a"), Atom(5, "b", frozen=[WHY])
    S._refine_at(a, 2)
    held = S.leaves(a)
    S.union(a, b)  # the refined one first
    assert _widths(b) == [2, 3] and [leaf.frozen for leaf in S.leaves(a)] == [[WHY], [WHY]]
    assert [S.find(x) for x in held] == [S.find(x) for x in S.leaves(b)]
    c, d = Atom(5, "c"), Atom(5, "d")
    S._refine_at(d, 3)
    held = S.leaves(d)
    S.union(c, d)  # the plain one first
    assert _widths(c) == [3, 2] and [S.find(x) for x in held] == [S.find(x) for x in S.leaves(c)]
