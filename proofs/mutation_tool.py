"""A mutation score from an off-the-shelf tool: cosmic-ray over the engine's core.

    python -m proofs.mutation_tool run                # every mutant of MODULES (tox -e mutation-tool)
    python -m proofs.mutation_tool run --sample 21    # a fixed, seeded sample of 21 across MODULES (CI)
    python -m proofs.mutation_tool run --module n2n_fx/spaces.py
    python -m proofs.mutation_tool run --module n2n_fx/spaces.py --recheck   # its survivors again, after new tests
    python -m proofs.mutation_tool test n2n_fx/spaces.py   # the test command cosmic-ray runs per mutant

proofs.mutation seeds a dozen bugs chosen by hand; this lets cosmic-ray write every mutant its
operators can (binary/comparison/unary operator swaps, numbers +-1, `not` added, loops emptied)
and runs, per mutant, a fast test command: the exact tests of the mutated module, the proofs that
apply the maps and the property suite under the small `mutation` Hypothesis profile. A survivor is either a
hole, to be killed by a new test, or listed in EQUIVALENT with the reason it cannot change any
result. The run exits 1 on any other survivor. cosmic-ray writes each mutant into the source
file itself (and puts it back), so a run needs a checkout of its own: never run two at once.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# scored so far (every mutant or seeded samples, docs/mutation_tool.md); CI samples these evenly
MODULES = ["n2n_fx/indexmaps.py", "n2n_fx/spaces.py", "n2n_fx/planning.py", "n2n_fx/inference/rules/structure.py",
           "n2n_fx/inference/rules/linear.py", "n2n_fx/wider.py", "n2n_fx/deeper.py"]
# per mutant, cheapest first: a failure stops the command (killed), so survivors pay for all of it.
# The fast stage is per module: the exact tests that pin the mutated file, fastest first.
FAST_TESTS: dict[str, list[str]] = {
    "n2n_fx/indexmaps.py": ["tests/test_indexmaps.py", "tests/test_spaces.py"],
    "n2n_fx/spaces.py": ["tests/test_spaces.py"],
    "n2n_fx/planning.py": ["tests/test_planning.py"],
    # the inference rules: test_ops drives every rule family on small models, value by value
    "n2n_fx/inference/rules/structure.py": ["tests/test_structure_mutants.py", "tests/test_ops.py"],
    "n2n_fx/inference/rules/linear.py": ["tests/test_linear_mutants.py", "tests/test_ops.py"],
    # the passes, scored by seeded samples (fill.py: its command is ready, not yet in MODULES)
    "n2n_fx/wider.py": ["tests/test_wider_mutants.py", "tests/test_passes.py"],
    "n2n_fx/deeper.py": ["tests/test_deeper_mutants.py", "tests/test_deepen_residual.py", "tests/test_passes.py"],
    "n2n_fx/fill.py": ["tests/test_fill.py"],
}
# norm_fill (31 s: most of the proofs' time) is left to `python -m proofs`; fill_factor is pinned by test_indexmaps
PROOF_NAMES = ["dense_matrix", "concat_offsets", "flatten_stride", "normalize", "split_pieces"]
# a module whose mutants the proofs' sympy models can see more of runs more of them (default PROOF_NAMES)
MODULE_PROOFS: dict[str, list[str]] = {
    # the proofs of the kinds each rules file infers (specs/ops.toml's `proof =` of its kinds)
    "n2n_fx/inference/rules/structure.py": ["permute_axes", "normalize", "space_to_depth", "pixel_shuffle", "flatten_stride",
                                            "split_pieces", "concat_offsets", "elementwise_binary", "channelwise"],
    "n2n_fx/inference/rules/linear.py": ["dense_matrix", "conv_matrix", "conv_transpose", "embedding"],
}
PROPERTY_TESTS = ["tests/test_properties.py"]

# (module, original line, mutated line) -> why no input of the engine can tell them apart
_RANDOM_EXTRA = ("extra = torch.randint(0, n, (q - n,), generator=generator) if {} "
                 "else torch.empty(0, dtype=torch.long)")
_NO_DRAW = "at q == n randint draws a size-0 tensor: the same empty extra (q < n raised above)"
_SCALE_REPEAT = "out = [s.repeat_interleave(inner) if {} else s for s, inner in parts]"
_BLOCK = "a block size is an int >= 1 (Seg.inner); at 1 the other branch gives the same values"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("n2n_fx/indexmaps.py", _RANDOM_EXTRA.format("q > n"), _RANDOM_EXTRA.format(op)): _NO_DRAW
    for op in ("q >= n", "q != n", "q is not n")
} | {
    ("n2n_fx/indexmaps.py", "if inner == 1:", f"if {op}:"): _BLOCK + " (g * 1 + arange(1) is g)"
    for op in ("inner < 1", "inner <= 1", "inner is 1", "inner == 0")
} | {
    ("n2n_fx/indexmaps.py", _SCALE_REPEAT.format("inner > 1"), _SCALE_REPEAT.format(op)): _BLOCK
    + " (repeat_interleave(1) is s)" for op in ("inner >= 1", "inner != 1", "inner is not 1", "inner > 0")
} | {
    ("n2n_fx/indexmaps.py", "totals = torch.zeros(n, dtype=torch.float64).index_add_(0, g, raw)",
     "totals = torch.zeros(n, dtype=torch.float64).index_add_( -1, g, raw)"): "totals is 1-D: dim -1 is dim 0",
}
# spaces.py: cut()'s isolating edges are unit and unit + 1, with 0 <= unit < units
_EDGE_LOW = "edge is unit or unit + 1 >= 0, so 0 < edge is edge != 0 (and 0 is CPython's cached small int)"
_EDGE_HIGH = ("edge == units only as unit + 1 with unit = units - 1 >= 1: the edge units - 1 has just cut the "
              "atom, so a refine at its full width finds no piece strictly containing it and changes nothing")
_ONE_SEGMENT = ("unify's pieces are cut at every boundary of both sides (and normalize drops empty segments): "
                "each holds exactly one segment, so [0] is [-1]")
_PAIRS = "for x, y in zip(_split_fixed(a, _sizes(a, b)), _split_fixed(b, _sizes(a, b)), strict={}):"
_ISOLATE = "  # isolate the one unit the cut falls in; its neighbours stay widenable"
_LINK = "  # both now stand for the same leaves; link the roots too"
_CUTS = "cuts = sorted(set(_cut_points(ra)) {} set(_cut_points(rb)))"
EQUIVALENT |= {
    ("n2n_fx/spaces.py", "if 0 < edge < units:", f"if {op} edge < units:"): _EDGE_LOW for op in ("0 !=", "0 is not")
} | {
    ("n2n_fx/spaces.py", "if 0 < edge < units:", f"if 0 < edge {op} units:"): _EDGE_HIGH
    for op in ("<=", "!=", "is not")
} | {
    ("n2n_fx/spaces.py", "for edge in (unit, unit + 1):", "for edge in (unit, unit | 1):"): (
        "unit | 1 is unit + 1 for an even unit; for an odd one the second refine is a no-op and cut's recursion "
        "isolates the unit from the right instead: the same pieces, the same frozen unit"),
    ("n2n_fx/spaces.py", "if ra is rb:", "if ra == rb:"): "Atom is a dataclass(eq=False): == is identity",
    ("n2n_fx/spaces.py", f"if ra is not rb:{_LINK}", f"if ra != rb:{_LINK}"): "Atom is a dataclass(eq=False): != is not identity",
    ("n2n_fx/spaces.py", f"if units > 1:{_ISOLATE}", f"if units != 1:{_ISOLATE}"): (
        "units is the width of the atom the cut falls inside: >= 1, so != 1 is > 1"),
    ("n2n_fx/spaces.py", _PAIRS.format("True"), _PAIRS.format("False")): (
        "both sides are split into the same sizes: equally many pieces, so strict never fires"),
    ("n2n_fx/spaces.py", "for x, y in zip(la, lb, strict=True):", "for x, y in zip(la, lb, strict=False):"): (
        "both roots were just cut at the union of their cut points: equally many leaves, so strict never fires"),
    ("n2n_fx/spaces.py", "if offset < pos < offset + w:", "if offset != pos < offset + w:"): (
        "a refined atom has two pieces and every caller passes 0 < pos: a pos the first piece does not hold is "
        ">= the second's offset, so offset != pos and offset < pos pick the same piece"),
    ("n2n_fx/spaces.py", "sx, sy = x[0], y[0]", "sx, sy = x[ -1], y[0]"): _ONE_SEGMENT,
    ("n2n_fx/spaces.py", "sx, sy = x[0], y[0]", "sx, sy = x[0], y[ -1]"): _ONE_SEGMENT,
    ("n2n_fx/spaces.py", _CUTS.format("|"), _CUTS.format("^")): (
        "the points ^ drops are cuts of both roots already: refining an atom at one of its boundaries changes nothing"),
} | {
    ("n2n_fx/spaces.py", "for _ in range(10_000):", f"for _ in range( {n}):"): (
        "the size of a safety bound: each round that changes takes at least one position out of a segment's "
        "interior for good (a cut), so a unify ends within 2 x (width - 1) + 1 rounds; the bound could bind only "
        "on axes over 5_000 wide losing one interior position per round (argued, not proved)")
    for n in (9999, 10001)
}

# planning.py
_NORM_FILL = "and (q := scaled_width(live[{}].width, factor)) % live[{}].width:"
EQUIVALENT |= {
    ("n2n_fx/planning.py", _NORM_FILL.format(0, 0), _NORM_FILL.format(*ix)): (
        "the condition requires len(live) == 1 (the line before): live[0] is live[-1]") for ix in ((" -1", 0), (0, " -1"))
}

# inference/rules/structure.py, inference/rules/linear.py, inference/solver.py, inference/rules/pointwise.py,
# inference/rules/attention.py, inference/layouts.py (the inference sample)
_S2D = "if not isinstance(x, Val) or not isinstance(meta, TensorMetadata) or len(meta.shape) {} x.ndim:"
EQUIVALENT |= {
    ("n2n_fx/inference/rules/structure.py", _S2D.format("!="), _S2D.format("<")): (
        "every space_to_depth op of the table (pixel_shuffle, pixel_unshuffle, swin's patch merging) returns a "
        "tensor of its input's rank, so a rank above x.ndim, where != and < differ, never reaches the rule"),
}

# wider.py, deeper.py, fill.py (the passes; scored by seeded samples)
_HALF = ("the float64 route gives the same bits: tests/test_dtypes.py checks every {} value against every count up "
         "to HALF_COUNTS (the fast path only saves time)")
_REWRITES_CHECK = 'raise InternalError(f"rewrite kinds without a pass: {{sorted(set(RewriteKind) {} set(REWRITES))}}") / '
_TARGET_ORDER = 'for name, node in sorted(last.items(), key=lambda kv: (order[kv[1]], {}kv[0].count("."))):'
_NORM_SHAPE = "node.args = (node.args[0], (*tuple(node.args[1])[:{}], widths[0]), *node.args[2:])"
EQUIVALENT |= {
    ("n2n_fx/wider.py", "HALF_COUNTS = {torch.bfloat16: 2**8, torch.float16: 2**11}",
     "HALF_COUNTS = {torch.bfloat16: 2**8, torch.float16: 2//11}"): (
        "float16 loses its fast path (no count is <= 0): " + _HALF.format("float16")),
    ("n2n_fx/wider.py", "if index.numel() > n and torch.equal(index[:n], torch.arange(n)):",
     "if index.numel() <= n and torch.equal(index[:n], torch.arange(n)):"): (
        "take's block copy is a speed path with index_select's values: cat([x, x[g[n:]]]) is x[g] when g[:n] is "
        "0..n-1; under <= it runs only at numel == n (a shorter index fails torch.equal), where cat([x, empty]) is "
        "x[g] too, and every other index takes index_select: the same values, fresh tensors either way"),
    ("n2n_fx/wider.py", "node.args = (*node.args[:6], widths[0], *node.args[7:])",
     "node.args = (*node.args[:6], widths[ -1], *node.args[7:])"): (
        "a GROUPS rewrite has one layout (inference/rules/linear.py _rewrite_groups): widths[-1] is widths[0]"),
    ("n2n_fx/wider.py", "items[where] = slice(None) if before == after == 0 else slice(before, before + piece)",
     "items[where] = slice(None) if before <= after == 0 else slice(before, before + piece)"): (
        "before is a width (plan.new_width, >= 0): before <= 0 is before == 0"),
    ("n2n_fx/wider.py", _REWRITES_CHECK.format("-"), _REWRITES_CHECK.format("^")): (
        "only an error message, built only when the import-time check fails (it never does: the import would "
        "fail); REWRITES' keys are RewriteKind members, so ^ and - give the same set"),
}
EQUIVALENT |= {
    ("n2n_fx/wider.py", _NORM_SHAPE.format("-1"), _NORM_SHAPE.format(cut)): (
        "a NORMALIZED_SHAPE rewrite exists only for a one-entry normalized_shape (inference/rules/pointwise.py "
        "stops at any other length): its [:-1] is (), and so is this slice") for cut in ("not 1", "- 0", "- 2")
} | {
    ("n2n_fx/deeper.py", _TARGET_ORDER.format("-"), _TARGET_ORDER.format("~")): (
        "~c is -c - 1: the same order of the dot counts, so the same sort"),
}

STAGES = ("fast", "proofs", "properties")
_LAZY = "an annotation only: `from __future__ import annotations` keeps it a string nothing evaluates"


@functools.lru_cache(maxsize=8)  # one parse per module, not one per mutant
def _signature_lines(source: str) -> tuple[set[str], set[str]]:
    """The (stripped) lines of `source` inside a def's signature, and all its other lines."""
    import ast

    lines = source.splitlines()
    inside: set[int] = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(range(fn.lineno - 1, fn.body[0].lineno - 1))
    return {lines[i].strip() for i in inside}, {ln.strip() for i, ln in enumerate(lines) if i not in inside}


def _annotation_only(before: str, after: str, source: str) -> bool:
    """A line of a def's signature in `source` (the whole def line, or one line of a signature
    over several; a line found nowhere else in it) whose mutant differs only in the annotations."""
    import ast

    signature, other = _signature_lines(source)
    if before == after or before not in signature or before in other:
        return False

    def strip(line: str) -> str | None:
        # a whole def line, the first line of a longer one, a middle or the last line of its parameters
        for text in (f"{line} ...", f"{line.rstrip(',')}): ...", f"def _(*, {line.rstrip(',')}): ...",
                     f"def _(*, {line} ..."):
            try:
                fn = ast.parse(text).body[0]
            except SyntaxError:
                continue
            if not isinstance(fn, ast.FunctionDef):
                return None
            fn.returns = None
            for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs, fn.args.vararg, fn.args.kwarg):
                if a is not None:
                    a.annotation = None
            return ast.dump(fn)
        return None

    return strip(before) is not None and strip(before) == strip(after)


_FREEZE_SHAPE = re.compile(r"freeze_all\(Val\(\(\s*-?\d+,\)")
_THROWAWAY = ("only the shape of the Val handed to freeze_all: Context.freeze_all reads a Val's layouts, never its "
              "shape, and the Val is built for that call alone")


def _freeze_shape_only(before: str, after: str) -> bool:
    """Two lines that differ only in the shape literal of a `freeze_all(Val((1,), ...))` wrapper."""
    return before != after and bool(_FREEZE_SHAPE.search(before)) and (
        _FREEZE_SHAPE.sub("", before) == _FREEZE_SHAPE.sub("", after))


def _why_equivalent(module: str, before: str, after: str) -> str:
    """The reason a mutant cannot change any result, or "" (then a survivor is a hole)."""
    if (module, before, after) in EQUIVALENT:
        return EQUIVALENT[(module, before, after)]
    if _freeze_shape_only(before, after):
        return _THROWAWAY
    source = (ROOT / module).read_text()
    lazy = "from __future__ import annotations" in source
    return _LAZY if lazy and _annotation_only(before, after, source) else ""


def _test(module: str) -> int:
    """The per-mutant test command for a mutant of `module`: 0 when it survives every stage.

    N2N_MUTATION_STAGES="fast,proofs" runs only those stages (a cheaper bound: fewer stages can
    only kill fewer mutants); N2N_MUTATION_FAST_TESTS="a.py,b.py" replaces FAST_TESTS[module]."""
    os.environ.setdefault("HYPOTHESIS_PROFILE", "mutation")
    stages = os.environ.get("N2N_MUTATION_STAGES", ",".join(STAGES)).split(",")
    import pytest

    args = ["-x", "-q", "-p", "no:cacheprovider"]
    fast = os.environ.get("N2N_MUTATION_FAST_TESTS")
    if "fast" in stages and pytest.main([*(fast.split(",") if fast else FAST_TESTS[module]), *args]):
        return 1
    if "proofs" in stages:
        from . import run_all

        results, _ = run_all(names=MODULE_PROOFS.get(module, PROOF_NAMES), fail_fast=True)  # a subset: the reach meta-check does not apply
        if not all(r.ok for r in results):
            return 1
    return 1 if "properties" in stages and pytest.main([*PROPERTY_TESTS, *args]) else 0


def _config(module: str, timeout: float) -> str:
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "proofs.mutation_tool", "test", module))
    return (f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\nexcluded-modules = []\n'
            f'test-command = "{command}"\n\n[cosmic-ray.distributor]\nname = "local"\n')


def _keep_only(db_path: Path, sample: int, seed: int) -> int:
    """Mark all but a fixed sample of the pending mutants skipped; return the sample's size."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=lambda w: (w.mutations[0].operator_name, w.mutations[0].occurrence))
        keep = {w.job_id for w in random.Random(seed).sample(items, min(sample, len(items)))}
        for w in items:
            if w.job_id not in keep:
                db.set_result(w.job_id, WorkResult(output="not in the sample", worker_outcome=WorkerOutcome.SKIPPED))
    return len(keep)


def _reopen_survivors(db_path: Path, module: str) -> int:
    """Forget the results of the session's survivors that EQUIVALENT does not excuse, so that exec
    runs them again (after new tests); return how many."""
    import sqlite3

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        jobs = [item.job_id for item, r in db.completed_work_items
                if r.worker_outcome == WorkerOutcome.NORMAL and r.test_outcome == TestOutcome.SURVIVED
                and not _why_equivalent(module, *_changed_lines(r.diff or ""))]
    with sqlite3.connect(db_path) as con:
        con.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in jobs])
    return len(jobs)


def _changed_lines(diff: str) -> tuple[str, str]:
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return " / ".join(minus), " / ".join(plus)


def _verdicts(db_path: Path, module: str) -> list[dict]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    rows = []
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            before, after = _changed_lines(result.diff or "")
            why = _why_equivalent(module, before, after)
            if result.worker_outcome != WorkerOutcome.NORMAL:
                verdict = "incompetent"  # the tool could not apply or run it
            elif result.test_outcome == TestOutcome.SURVIVED:
                verdict = "equivalent" if why else "survived"
            elif result.test_outcome == TestOutcome.KILLED:
                verdict = "timeout" if result.output == "timeout" else "killed"
            else:
                verdict = "incompetent"
            rows.append({"line": m.start_pos[0], "operator": m.operator_name.removeprefix("core/"),
                         "occurrence": m.occurrence, "before": before, "after": after, "verdict": verdict,
                         "why": why})
    return sorted(rows, key=lambda r: (r["line"], r["operator"], r["occurrence"]))


def _run(args: argparse.Namespace) -> int:
    cosmic_ray = shutil.which("cosmic-ray", path=str(Path(sys.executable).parent)) or shutil.which("cosmic-ray")
    if cosmic_ray is None:
        print("cosmic-ray is not installed: pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    out = ROOT / "build" / "mutation_tool"
    out.mkdir(parents=True, exist_ok=True)
    # the test command imports this checkout; no stale bytecode may shadow a mutant
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if args.stages:
        env["N2N_MUTATION_STAGES"] = args.stages
    if args.fast_tests:
        env["N2N_MUTATION_FAST_TESTS"] = args.fast_tests
    failing, lines = 0, []
    modules = args.module or MODULES
    for i, module in enumerate(modules):
        share = args.sample // len(modules) + (i < args.sample % len(modules))  # --sample is the total
        name = Path(module).stem
        session = out / (f"{name}-{args.tag}" if args.tag else name)
        config, db = session.with_suffix(".toml"), session.with_suffix(".sqlite")
        config.write_text(_config(module, args.timeout))
        source = ROOT / module
        original = source.read_bytes()
        for pyc in (source.parent / "__pycache__").glob(f"{Path(module).stem}.*.pyc"):
            pyc.unlink()
        t0 = time.perf_counter()
        try:
            if args.recheck:
                if not db.exists():
                    print(f"--recheck: no session {db} to recheck", file=sys.stderr)
                    return 2
                print(f"{module}: running {_reopen_survivors(db, module)} survivors of {db.name} again")
            else:
                # a fresh run starts over (a session of the same name from an earlier run is replaced)
                subprocess.run([cosmic_ray, "init", "--force", str(config), str(db)], cwd=ROOT, env=env, check=True)
            if args.sample and not args.recheck:
                print(f"{module}: a fixed sample of {_keep_only(db, share, args.seed)} mutants (seed {args.seed})")
            subprocess.run([cosmic_ray, "exec", str(config), str(db)], cwd=ROOT, env=env, check=True)
        finally:
            if source.read_bytes() != original:  # an interrupted run leaves its mutant on disk
                source.write_bytes(original)
        rows = _verdicts(db, module)
        counts = Counter(r["verdict"] for r in rows)
        survivors = [r for r in rows if r["verdict"] == "survived"]
        failing += len(survivors) + counts["incompetent"]
        scored = len(rows) - counts["equivalent"]
        score = (counts["killed"] + counts["timeout"]) / scored if scored else 1.0
        lines.append(f"| `{module}` | {len(rows)} | {counts['killed']} | {counts['timeout']} | {counts['equivalent']} "
                     f"| {counts['survived']} | {counts['incompetent']} | {score:.1%} | {time.perf_counter() - t0:.0f} |")
        for r in rows:
            if r["verdict"] in ("survived", "equivalent", "incompetent") or args.verbose:
                print(f"{module}:{r['line']} {r['operator']}#{r['occurrence']} {r['verdict'].upper()}: "
                      f"`{r['before']}` -> `{r['after']}`" + (f" ({r['why']})" if r["why"] else ""))
    print("\n| module | mutants | killed | timeout | equivalent | survived | incompetent | score | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    return 1 if failing else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["test"]:
        module = argv[1] if len(argv) > 1 else MODULES[0]
        if module not in FAST_TESTS:
            print(f"no fast tests for {module}: one of {', '.join(FAST_TESTS)}", file=sys.stderr)
            return 2
        return _test(module)
    parser = argparse.ArgumentParser(prog="python -m proofs.mutation_tool")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="init a cosmic-ray session per module and execute it")
    run.add_argument("--module", action="append", help=f"a file to mutate (default: {', '.join(MODULES)})")
    run.add_argument("--sample", type=int, default=0,
                     help="run only this many mutants in all, a fixed seeded sample shared evenly by the modules")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant; beyond it counts killed")
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    run.add_argument("--fast-tests", help="comma-separated test files for the fast stage (default: FAST_TESTS[module])")
    run.add_argument("--tag", default="", help="a name for this session's files under build/mutation_tool/")
    run.add_argument("--recheck", action="store_true",
                     help="run the survivors of the existing session (same --tag) again, after new tests; "
                          "documented equivalents are not rerun")
    run.add_argument("-v", "--verbose", action="store_true", help="print every mutant, not only survivors")
    sub.add_parser("test", help="the per-mutant test command: test MODULE (default: the first of MODULES)")
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
