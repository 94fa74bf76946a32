"""n2n_fx.indexmaps pinned value by value, in float64 and exact fractions.

The maps are shared by the passes and the proofs, so a wrong map can be wrong in both at once and
still cancel in a proof; these tests fix what each map returns. Written to kill the survivors of
the tool's mutation run (proofs/mutation_tool.py, docs/mutation_tool.md).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import sympy
import torch

from n2n_fx import indexmaps as im

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n, q", [(1, 1), (3, 3), (1, 4), (3, 5), (4, 5), (3, 200)])
def test_random_map_keeps_old_units_and_draws_uniformly_from_all_of_them(n, q):
    g = im.random_map(n, q, _gen(7))
    extra = torch.randint(0, n, (q - n,), generator=_gen(7)) if q > n else torch.empty(0, dtype=torch.long)
    assert g.dtype == torch.long and g.shape == (q,)
    assert torch.equal(g, torch.cat([torch.arange(n), extra]))
    if q - n >= 100:  # every old unit, 0 and n - 1 included, is drawn
        assert set(g[n:].tolist()) == set(range(n))


@pytest.mark.parametrize("n, q", [(3, 2), (1, 0)])
def test_random_map_refuses_to_shrink(n, q):
    with pytest.raises(ValueError, match="shrink"):
        im.random_map(n, q, _gen(0))


@pytest.mark.parametrize("n, q", [(1, 1), (3, 3), (3, 6), (2, 8), (4, 12)])
def test_uniform_map_is_j_mod_n(n, q):
    g = im.uniform_map(n, q)
    assert g.dtype == torch.long and g.tolist() == [j % n for j in range(q)]


@pytest.mark.parametrize("n, q", [(3, 0), (3, 2), (3, 4), (4, 6), (2, 3), (3, 7)])
def test_uniform_map_refuses_non_multiples_and_shrinking(n, q):
    with pytest.raises(ValueError, match="multiple"):
        im.uniform_map(n, q)


def test_replica_counts_and_divide_scale():
    g = torch.tensor([0, 1, 2, 0, 0, 2])
    assert im.replica_counts(g, 3).tolist() == [3, 1, 2]
    assert im.replica_counts(torch.tensor([0, 0, 2]), 4).tolist() == [2, 0, 1, 0]  # minlength: unused units count 0
    scale = im.divide_scale(g, 3)
    assert scale.dtype == F64
    assert torch.equal(scale, torch.tensor([1 / 3, 1.0, 1 / 2, 1 / 3, 1 / 3, 1 / 2], dtype=F64))


def test_split_scale_is_the_documented_draw_normalised_per_unit():
    g = torch.tensor([0, 1, 2, 0, 0, 2, 3])
    n = 4
    alpha = im.split_scale(g, n, _gen(5))
    raw = 0.5 + torch.rand(g.numel(), generator=_gen(5), dtype=F64)  # uniform on [0.5, 1.5)
    totals = torch.zeros(n, dtype=F64).index_add_(0, g, raw)
    assert alpha.dtype == F64 and torch.equal(alpha, raw / totals[g])
    assert alpha[1] == 1.0 and alpha[6] == 1.0  # an unreplicated unit keeps its column whole
    sums = torch.zeros(n, dtype=F64).index_add_(0, g, alpha)
    assert (sums - 1).abs().max() <= 1e-15


def test_split_scale_alphas_positive_sum_to_one_and_within_a_factor_three():
    n, q = 3, 400
    g = im.random_map(n, q, _gen(1))
    alpha = im.split_scale(g, n, _gen(2))
    sums = torch.zeros(n, dtype=F64).index_add_(0, g, alpha)
    assert (sums - 1).abs().max() <= 1e-13
    assert (alpha > 0).all()
    for i in range(n):  # raw in [0.5, 1.5): two replicas differ by less than 3x
        a = alpha[g == i]
        assert a.max() / a.min() < 3.0


def test_expand_is_the_stride_map():
    g = torch.tensor([0, 2, 1])
    assert torch.equal(im.expand(g, 1), g)
    assert im.expand(g, 2).tolist() == [0, 1, 4, 5, 2, 3]
    assert im.expand(g, 3).tolist() == [0, 1, 2, 6, 7, 8, 3, 4, 5]
    assert im.expand(torch.tensor([1]), 4).tolist() == [4, 5, 6, 7]
    assert im.expand(g, 3).dtype == torch.long


def test_gather_index_puts_each_segment_at_its_old_offset():
    parts = [(torch.tensor([0, 1, 0, 2]), 3, 2),  # 3 old units of 2 positions: the next segment starts at 6
             (torch.tensor([0, 1, 1]), 2, 1),  # ... and this one at 6, the next at 8
             (torch.tensor([0]), 1, 3)]
    idx = im.gather_index(parts)
    assert idx.dtype == torch.long
    assert idx.tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 7, 8, 9, 10]
    assert im.gather_index(parts[:1]).tolist() == [0, 1, 2, 3, 0, 1, 4, 5]


def test_gather_of_nothing_is_empty_and_typed():
    idx, scale = im.gather_index([]), im.gather_scale([])
    assert idx.shape == (0,) and idx.dtype == torch.long
    assert scale.shape == (0,) and scale.dtype == F64


def test_gather_scale_repeats_each_unit_over_its_block():
    s = torch.tensor([0.5, 1.0, 0.25], dtype=F64)
    out = im.gather_scale([(s, 2), (torch.tensor([1 / 3, 1.0], dtype=F64), 1), (torch.tensor([0.125], dtype=F64), 3)])
    assert out.dtype == F64
    assert out.tolist() == [0.5, 0.5, 1.0, 1.0, 0.25, 0.25, 1 / 3, 1.0, 0.125, 0.125, 0.125]


@pytest.mark.parametrize("power", range(-5, 6))
def test_fill_factor_is_s_to_the_power(power):
    # a ratio whose root is rational: exact, in the ratio's own number type
    exact = im.fill_factor(Fraction(9, 4), power, lambda r: Fraction(3, 2))
    assert isinstance(exact, Fraction) and exact == Fraction(3, 2) ** power
    # sympy, as the proofs call it: even powers stay rational
    sym = im.fill_factor(sympy.Rational(3, 2), power, sympy.sqrt)
    assert sympy.simplify(sym - sympy.sqrt(sympy.Rational(3, 2)) ** power) == 0
    assert sym.is_rational == (power % 2 == 0)
    # floats, as the pass calls it
    value = im.fill_factor(1.5, power, math.sqrt)
    assert abs(value - math.sqrt(1.5) ** power) <= 1e-15 * abs(value)
