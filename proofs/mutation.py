"""The suite's own power: seed one bug at a time into the engine and see who notices.

    python -m proofs.mutation            # the kill table (tox -e mutation; CI runs it)
    python -m proofs.mutation NAME       # one mutant

Each mutant monkeypatches one piece of index arithmetic or inference. For each, in a fresh
process, the proofs run and then the property suite (tests/test_properties.py plus the
hand-written zoo widen/deepen tests). A mutant is killed when either fails (or crashes);
a survivor is a hole in the suite, to be fixed in the suite, not deleted from this list.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

import torch

from n2n_fx.texttable import format_table

MUTANTS: dict[str, tuple[str, Callable[[], None]]] = {}


def mutant(name: str, description: str) -> Callable:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        MUTANTS[name] = (description, fn)
        return fn

    return register


@mutant("drop_division", "consumers copy replicated columns without dividing by the replica count")
def _drop_division() -> None:
    import n2n_fx.indexmaps as im

    im.divide_scale = lambda g, n: torch.ones(g.numel(), dtype=torch.float64)


@mutant("divide_producer", "the 1/count factor lands on the producer rows instead of the consumer columns")
def _divide_producer() -> None:
    from n2n_fx.inference import Role, solver

    original = solver.check_roles

    def swapped(ctx) -> None:
        original(ctx)
        swap = {Role.CONTRACT: Role.OUT, Role.OUT: Role.CONTRACT}
        for key, roles in ctx.roles.items():
            ctx.roles[key] = {swap.get(r, r) for r in roles}

    solver.check_roles = swapped


@mutant("concat_offset", "a concat's second segment is read one unit off its offset")
def _concat_offset() -> None:
    import n2n_fx.indexmaps as im

    def gather_index(parts):
        out, offset = [], 0
        for k, (g, n, inner) in enumerate(parts):
            out.append(max(0, offset - (1 if k else 0)) + im.expand(g, inner))
            offset += n * inner
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    im.gather_index = gather_index


@mutant("non_uniform_norm", "spaces under a LayerNorm/RMSNorm get a random map (some units copied, others not)")
def _non_uniform_norm() -> None:
    import n2n_fx.indexmaps as im

    im.uniform_map = lambda n, q: im.random_map(n, q, torch.Generator().manual_seed(q))


@mutant("fill_without_s", "fill forgets the factor s = sqrt(new/old): new units filled, nothing rescaled")
def _fill_without_s() -> None:
    import n2n_fx.indexmaps as im

    im.fill_factor = lambda ratio, power, sqrt: ratio ** 0


@mutant("rms_mean_fill", "an RMSNorm's input is mean-filled (as a LayerNorm's is): its mean square moves")
def _rms_mean_fill() -> None:
    from n2n_fx import fill

    fill.NORM_INPUT[fill.Rule.RMS_NORM] = fill.Fill.MEAN


@mutant("independent_add", "the two operands of a binary op keep independent maps (no union)")
def _independent_add() -> None:
    from n2n_fx import spaces as S
    from n2n_fx.inference import Context

    def broadcast(self, tensors, shape, reason):
        out = []
        for k, size in enumerate(shape):
            cands = [v.layouts[k - (len(shape) - v.ndim)] for v in tensors
                     if k - (len(shape) - v.ndim) >= 0 and v.shape[k - (len(shape) - v.ndim)] == size]
            out.append(S.normalize(cands[0]) if cands else S.fixed(size))
        return tuple(out)

    Context.broadcast = broadcast


@mutant("skip_running_var", "BatchNorm's running_var is not carried through g")
def _skip_running_var() -> None:
    import dataclasses

    from n2n_fx.inference import RULES

    original = RULES["channelwise"]

    def rule(ctx, spec, a):
        if "running_var" in a:
            a = dict(a)
            a["running_var"] = None
        return original.fn(ctx, spec, a)

    RULES["channelwise"] = dataclasses.replace(original, fn=rule)


@mutant("tap_off_centre", "the identity conv's tap is one position off centre")
def _tap_off_centre() -> None:
    import n2n_fx.deeper as dp

    dp.identity_tap = lambda k: min(k - 1, (k - 1) // 2 + 1)


@mutant("flatten_stride", "flatten maps channel c to features c, c+C, ... (channels-last order) instead of a block")
def _flatten_stride() -> None:
    import n2n_fx.indexmaps as im

    def expand(g, inner):
        if inner == 1:
            return g
        n = int(g.max()) + 1 if g.numel() else 0
        return (g[:, None] + torch.arange(inner)[None, :] * max(n, 1)).reshape(-1)

    im.expand = expand


@mutant("forget_consumer", "the second consumer of a space is gathered but not divided")
def _forget_consumer() -> None:
    from n2n_fx import spaces as S
    from n2n_fx.inference import Context, Role

    original = Context.role
    seen: set = set()

    def role(self, val, axis, r):
        if r == Role.CONTRACT and getattr(val, "param_axes", None):
            key = tuple(S.find(a).id for a in S.atoms_of(val.layouts[axis]))
            if key in seen:
                r = Role.CARRY
            seen.add(key)
        return original(self, val, axis, r)

    Context.role = role


@mutant("heads_per_projection", "attention's q, k and v rows get independent head maps")
def _heads_per_projection() -> None:
    from n2n_fx.inference import layouts
    from n2n_fx.spaces import Atom, Seg

    def qkv_rows(heads, head_dim):
        return tuple(Seg(h, head_dim) for h in (heads, Atom(heads.width, "k"), Atom(heads.width, "v")))
    layouts.qkv_rows = qkv_rows


@mutant("naive_tie", "a tied table is kept one tensor but the head's division lands nowhere (its gains undivided)")
def _naive_tie() -> None:
    from n2n_fx.inference import Role, solver

    original = solver.divide_before_head

    def naive(ctx, key) -> bool:
        kept = original(ctx, key)
        if kept:
            for gain in ctx.tied_heads[-1].gains:
                ctx.roles[gain].discard(Role.DIVIDE)
        return kept

    solver.divide_before_head = naive


@mutant("qk_without_r", "wider heads scale q and k rows by sqrt(1 / count), forgetting r (the change of scale)")
def _qk_without_r() -> None:
    import n2n_fx.indexmaps as im

    im.qk_gain4 = lambda g, n, ratio_sq: im.divide_scale(g, n) ** 2


@mutant("qk_consumer_by_count", "wider heads: v rows carry f, but their consumer's columns divide by the count alone")
def _qk_consumer_by_count() -> None:
    from n2n_fx.wider import TorchArrays

    from .symbolic import SympyArrays

    for arrays in (TorchArrays, SympyArrays):  # the pass and its symbolic twin alike
        original = arrays.scale_root4
        arrays.scale_root4 = (lambda fn: lambda self, x, axis, fourth, inverse: x if inverse
                              else fn(self, x, axis, fourth, False))(original)


SUITE = ["tests/test_properties.py", "tests/test_models.py", "-k",
         "properties or widen_exact_float64 or deepen_several or compositions", "-x", "-q", "-p", "no:cacheprovider"]


def _child(name: str, what: str) -> int:
    """Runs in a fresh process: apply the mutant, then the proofs or the property suite."""
    MUTANTS[name][1]()
    if what == "proofs":
        from . import run_all

        results, problems = run_all(fail_fast=True)  # one failed proof kills the mutant
        return 0 if not problems and all(r.ok for r in results) else 1
    import pytest

    return int(pytest.main(SUITE))


def _run(name: str, what: str) -> tuple[bool, float]:
    t0 = time.perf_counter()
    # one thread per child: the children run side by side, one per core, and their models are tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = subprocess.run([sys.executable, "-m", "proofs.mutation", "--child", name, what], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return code != 0, time.perf_counter() - t0


def _jobs() -> int:
    """Children at once: N2N_MUTATION_JOBS, else one per core."""
    return max(1, int(os.environ.get("N2N_MUTATION_JOBS", 0)) or os.cpu_count() or 1)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2])
    names = argv or list(MUTANTS)
    t_start = time.perf_counter()
    with ThreadPoolExecutor(_jobs()) as pool:  # each child is its own process: threads only wait
        runs = {(name, what): pool.submit(_run, name, what) for name in names for what in ("proofs", "suite")}
        done = 0
        for future in as_completed(runs.values()):
            done += 1
            (name, what), = [key for key, f in runs.items() if f is future]
            killed, seconds = future.result()
            print(f"[{done}/{len(runs)}] {name} ({what}): {'killed' if killed else 'survived'} in {seconds:.0f} s"
                  f" - {MUTANTS[name][0]}", flush=True)
    rows = [("mutant", "proofs", "property suite", "verdict", "seconds")]
    survivors = []
    for name in names:
        (by_proofs, t1), (by_suite, t2) = runs[name, "proofs"].result(), runs[name, "suite"].result()
        killed = by_proofs or by_suite
        if not killed:
            survivors.append(name)
        rows.append((name, "killed" if by_proofs else "survived", "killed" if by_suite else "survived",
                     "KILLED" if killed else "SURVIVED", f"{t1 + t2:.1f}"))
    print()
    print(format_table(rows))
    print(f"\n{len(names) - len(survivors)}/{len(names)} mutants killed"
          + (f"; survivors: {', '.join(survivors)}" if survivors else "")
          + f" ({time.perf_counter() - t_start:.0f} s, {_jobs()} at a time)")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
