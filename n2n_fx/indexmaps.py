"""Net2WiderNet as pure index arithmetic: gather indices and scale factors.

The passes apply these maps with `index_select` and a multiply; the proofs in proofs/ apply the
very same maps to sympy symbols. Nothing here knows about graphs or modules.

Notation (Chen et al. 2016): a space of width n grows to q >= n through g: {0..q-1} -> {0..n-1}.
Producers copy rows, U[j] = W[g(j)]; consumers copy columns and divide by the replica count,
U[:, j] = W[:, g(j)] / |{x : g(x) = g(j)}| (or, exactly as well, by weights alpha summing to 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def random_map(n: int, q: int, generator: torch.Generator) -> torch.Tensor:
    """g(j) = j for j < n, uniformly random old unit for the q - n new ones."""
    if q < n:
        raise ValueError(f"cannot shrink a space from {n} to {q}")
    extra = torch.randint(0, n, (q - n,), generator=generator) if q > n else torch.empty(0, dtype=torch.long)
    return torch.cat([torch.arange(n), extra])


def uniform_map(n: int, q: int) -> torch.Tensor:
    """g(j) = j mod n: every old unit replicated exactly q / n times (what a norm's statistics need)."""
    if q < n or q % n:
        raise ValueError(f"uniform replication needs a multiple of {n}, got {q}")
    return torch.arange(q) % n


def identity_map(n: int) -> torch.Tensor:
    return torch.arange(n)


def replica_counts(g: torch.Tensor, n: int) -> torch.Tensor:
    """|{x : g(x) = i}| for every old unit i."""
    return torch.bincount(g, minlength=n)


def divide_scale(g: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's consumer factor 1 / |{x : g(x) = g(j)}| for every new unit j (float64)."""
    return 1.0 / replica_counts(g, n)[g].to(torch.float64)


def qk_gain4(g: torch.Tensor, n: int, ratio_sq: float) -> torch.Tensor:
    """Wider heads: f^4 for the factor f = sqrt(r / count) on every new q and k row j (float64,
    from r^2: rational where the scales are derived), so that the replicas of a unit contribute r
    times its teacher product q_j k_j to a score. The fourth power keeps it exact for the proofs."""
    return ratio_sq * divide_scale(g, n) ** 2


def split_scale(g: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Random positive alpha_j with sum over the replicas of each old unit equal to 1.

    Exact like divide_scale, but replicas get different outgoing weights, which breaks the
    symmetry between them without the paper's noise.
    """
    raw = 0.5 + torch.rand(g.numel(), generator=generator, dtype=torch.float64)
    totals = torch.zeros(n, dtype=torch.float64).index_add_(0, g, raw)
    return raw / totals[g]


def expand(g: torch.Tensor, inner: int) -> torch.Tensor:
    """Stride map: unit j spans positions j*inner .. j*inner+inner-1 (flatten of C, H, W)."""
    if inner == 1:
        return g
    return (g[:, None] * inner + torch.arange(inner)[None, :]).reshape(-1)


def gather_index(parts: Sequence[tuple[torch.Tensor, int, int]]) -> torch.Tensor:
    """Concatenate segment maps (g, old units n, inner) at their old offsets (concat layouts)."""
    out, offset = [], 0
    for g, n, inner in parts:
        out.append(offset + expand(g, inner))
        offset += n * inner
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def gather_scale(parts: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Concatenate per-unit scales (scale, inner), each unit's factor repeated over its block."""
    out = [s.repeat_interleave(inner) if inner > 1 else s for s, inner in parts]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def fill_factor(ratio, power: int, sqrt):
    """s**power for s = sqrt(ratio), ratio = new / old width (fill; see fill.py), in the number
    type of `ratio` and `sqrt` (floats for the pass, sympy for the proofs): even powers stay rational."""
    return ratio ** (power // 2) * sqrt(ratio) ** (power % 2)
