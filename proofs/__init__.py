"""Proofs that justify each rule of specs/ops.toml (sympy, on the engine's own index maps).

The names below are reserved by the table: every entry names one (and every entry with a `fill`
code also `norm_fill`), and tests check that no entry names a proof missing here and no name
here is unused. The proofs live in proofs/rules.py.

`python -m proofs` runs them all and the meta-check: every table entry names a proof, every
named proof exists and passes, no proof is orphaned, every kind has one registered rule, and every
spelling family of every non-stop entry is reached by some proof's model and evaluated
symbolically (proofs/reach.py), unless the entry's `proof_reach` says why not.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reach import Reach

RESERVED: dict[str, str] = {
    "dense_matrix": "Linear / matmul: rows copied through g, columns divided by replica counts",
    "conv_matrix": "ConvNd as a matrix over channels; depthwise (pass-through) and grouped (per group)",
    "batch_norm": "BatchNorm train and eval: replicated channels keep their statistics",
    "channelwise": "pooling and other per-channel ops commute with replication",
    "elementwise_unary": "any elementwise function commutes with replication",
    "elementwise_binary": "broadcast binary ops: one g on every aligned operand (residual add)",
    "concat_offsets": "concat: a composite map of the inputs' maps at their offsets",
    "split_pieces": "split/chunk/getitem: a space cut into independently widened pieces",
    "flatten_stride": "flatten (C, H, W) -> C*H*W: unit c spans an H*W block (the stride map)",
    "permute_axes": "permute/transpose move layouts with their axes",
    "normalize": "LayerNorm / RMSNorm over the last axis: uniform k-fold replication keeps the statistics",
    "expand": "expand/broadcast_to: a broadcast parameter (class token) is copied through g",
    "embedding": "embedding lookups: table features copied through g like a producer",
    "space_to_depth": "patch merging: channels become copies of the input's layout",
    "attention_heads": "multi-head attention grows by whole heads; head_dim and its scale stay",
    "stop": "no identity: stop entries freeze what they touch",
    "group_norm": "GroupNorm grows by whole groups: a copied group keeps its statistics",
    "instance_norm": "InstanceNorm: per-sample, per-channel statistics commute with replication",
    "prelu": "PReLU: per-channel slopes copied through g; a single slope is shared",
    "conv_transpose": "ConvTranspose as a matrix over channels: weight (in, out), rows contracted",
    "pixel_shuffle": "pixel (un)shuffle: channel c*r^2 + k is a stride map of channel c",
    "norm_fill": "fill: a normalised space grown to any width (mean/zero fill, values times sqrt(new/old))",
}


def run_all(names: list[str] | None = None, fail_fast: bool = False, reach: Reach | None = None):
    """Run the proofs (all, or `names`); return (results, meta-check problems).

    fail_fast: stop after the first proof that fails (the mutation table only needs one).
    reach: filled with the table entries the proofs' models reached (proofs.reach)."""
    from n2n_fx.inference import check_kinds
    from n2n_fx.spec import load_table

    from .reach import Reach, recording
    from .reach import problems as reach_problems
    from .rules import PROOFS, ProofResult

    table = load_table()
    kinds: dict[str, list[str]] = {}
    for op in table.ops:
        kinds.setdefault(op.proof, []).append(op.name)
        if op.fill:  # an entry's fill code is proved by the fill proof too
            kinds.setdefault("norm_fill", []).append(f"{op.name} (fill)")
    problems = [f"entry {', '.join(e)} names proof {p!r}, which does not exist" for p, e in kinds.items()
                if p not in PROOFS]
    problems += [f"proof {p!r} is named by no table entry (orphan)" for p in PROOFS if p not in kinds]
    problems += [f"proof {p!r} is not reserved in proofs.RESERVED" for p in PROOFS if p not in RESERVED]
    problems += check_kinds(table)  # one registered rule per kind of [kinds], and no other
    results, reached = [], Reach()
    for name, fn in PROOFS.items():
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        with recording(reached, name):
            result = ProofResult(name, fn())
        result.seconds = time.perf_counter() - t0
        result.kinds = sorted(kinds.get(name, []))
        results.append(result)
        if fail_fast and not result.ok:
            break
    if reach is not None:
        reach.by_entry, reach.targets = reached.by_entry, reached.targets
    if not names and len(results) == len(PROOFS):  # the reach check needs every proof's models
        problems += reach_problems(table, reached)
    return results, problems
