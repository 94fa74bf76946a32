"""Command line: n2n-fx explain | widen | deepen | check | demo | experiment.

A model is named by `module:factory` (or `path/to/file.py:factory`); the factory returns a model
or a (model, example_inputs) pair. Without example inputs, give --input-shape.
Exit codes: 0 preserved / done, 1 not preserved, 2 unsupported model or usage error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import apply_plan, deepen, infer, trace, verify
from . import plan as make_plan
from .errors import N2NError
from .frontend import Inputs, as_inputs, map_inputs
from .planning import Plan
from .spec import load_table


class UsageError(N2NError):
    code = "usage"


def load_factory(spec: str) -> Any:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UsageError(f"model spec {spec!r} is not module:factory", op="cli",
                         fix="e.g. n2n_fx.models:demo_model or path/to/file.py:build")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"no file {target}", op="cli", fix="give an existing .py file")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"cannot import {target}: {exc}", op="cli", fix="check the module path") from exc
    factory = getattr(module, name, None)
    if factory is None:
        raise UsageError(f"{target} has no {name}", op="cli", fix="name a callable that builds the model")
    return factory


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d)
    except ValueError as exc:
        raise UsageError(f"bad --input-shape {text!r}", op="cli", fix="e.g. --input-shape 2,3,32,32") from exc


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, Inputs]:
    torch.manual_seed(args.seed)
    made = load_factory(args.model)()
    model, inputs = made if isinstance(made, tuple) else (made, None)
    if args.input_shape:
        inputs = tuple(torch.randn(parse_shape(s)) for s in args.input_shape)
    if inputs is None:
        raise UsageError("the factory returned no example inputs", op="cli",
                         fix="pass --input-shape N,C,H,W (repeat for several inputs)")
    inputs = as_inputs(inputs)  # a tensor, a tuple, or a dict of keyword inputs
    if args.float64:
        model = model.double()
        inputs = map_inputs(inputs, lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
    return model.eval(), inputs


def parse_widths(items: list[str] | None) -> dict[str, int] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, eq, value = item.rpartition("=")
        if not eq or not value.isdigit():
            raise UsageError(f"bad --width {item!r}", op="cli", fix="use --width SPACE=UNITS")
        out[name] = int(value)
    return out


def _plan(args: argparse.Namespace, model: torch.nn.Module, inputs: Inputs, factor: float | None) -> Plan:
    widths = parse_widths(getattr(args, "width", None))
    return make_plan(model, inputs, factor=factor if not widths else None, widths=widths, seed=args.seed,
                     symmetry=getattr(args, "symmetry", "none"), frontend=getattr(args, "frontend", "auto"))


def cmd_explain(args: argparse.Namespace) -> int:
    if args.rules:
        print(rules_table())
        return 0
    model, inputs = build(args)
    plan = _plan(args, model, inputs, args.factor)
    print(plan)
    frozen = [p for p in plan.spaces if p.reasons]
    if frozen:
        print("\nwhy frozen:")
        for p in frozen:
            for r in p.reasons:
                print(f"  {p.name}: {r}")
    return 0


def _save(student: torch.nn.Module, path: str | None) -> None:
    if path:
        torch.save(student, path)
        print(f"saved student to {path}")


def cmd_widen(args: argparse.Namespace) -> int:
    model, inputs = build(args)
    plan = _plan(args, model, inputs, args.factor)
    print(plan)
    student = apply_plan(plan)
    report = verify(model, student, inputs)
    print(report)
    _save(student, args.out)
    return 0 if report.ok or args.symmetry == "noise" else 1


def cmd_deepen(args: argparse.Namespace) -> int:
    model, inputs = build(args)
    student = deepen(model, inputs, after=args.after, batch_norm=args.batch_norm, kernel_size=args.kernel_size,
                     activation=None if args.no_activation else "auto", frontend=args.frontend, block=args.block,
                     seed=args.seed)
    report = verify(model, student, inputs)
    print(report)
    _save(student, args.out)
    return 0 if report.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    model, inputs = build(args)
    plan = _plan(args, model, inputs, args.factor)
    student = apply_plan(plan)
    report = verify(model, student, inputs, mode=args.mode)
    if args.after:
        deeper = deepen(student, inputs, after=args.after, frontend=args.frontend)
        r2 = verify(model, deeper, inputs, mode=args.mode)
        report = r2 if r2.max_rel_err > report.max_rel_err else report
    result = {
        "model": args.model, "preserved": report.ok, "max_abs_err": report.max_abs_err,
        "max_rel_err": report.max_rel_err, "rtol": report.rtol, "inputs": report.n_inputs, "mode": report.mode,
        "spaces": len(plan.spaces), "widened": sum(p.new_width > p.width for p in plan.spaces),
        "frozen": {p.name: str(p.reasons[0]) for p in plan.spaces if p.reasons},
    }
    print(json.dumps(result, indent=2) if args.json else report)
    return 0 if report.ok else 1


def rules_table() -> str:
    table = load_table()
    rows = [("entry", "kind", "spellings", "idempotent", "proof")]
    for op in table.ops:
        n = len(op.modules) + len(op.functions) + len(op.methods)
        rows.append((op.name, op.kind, str(n), "yes" if op.idempotent else ("no" if op.activation else "-"), op.proof))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(x) for c, x in zip(r, w)).rstrip() for r in rows)


def cmd_demo(args: argparse.Namespace) -> int:
    from .models import demo_model

    t0 = time.perf_counter()
    model, x = demo_model()
    model, x = model.double().eval(), x.double()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"n2n-fx demo: Inception-BN-style teacher, {n_params} parameters, input {tuple(x.shape)}, float64\n")
    gm = trace(model, x)
    plan = Plan(infer(gm), factor=1.5, seed=args.seed)
    print(f"[1/3] traced {len(gm.graph.nodes)} nodes; inferred {len(plan.spaces)} spaces "
          f"({sum(p.reasons != () for p in plan.spaces)} frozen). Plan for factor 1.5:\n")
    print(plan)
    print("\n[2/3] growing students ...")
    deep_after = ["stem", "inc1", "fc1"]
    students: list[tuple[str, torch.nn.Module, str]] = [
        ("widen x1.5 (exact)", apply_plan(plan), "eval"),
        ("widen x2 split (exact)", apply_plan(Plan(infer(gm), factor=2.0, seed=args.seed, symmetry="split")), "eval"),
        ("widen x2 noise (paper)", apply_plan(Plan(infer(gm), factor=2.0, seed=args.seed, symmetry="noise")), "eval"),
        ("deepen +3 (BN undo)", deepen(model, x, after=deep_after, batch_norm=True), "eval"),
    ]
    students.append(("deepen then widen x1.5", apply_plan(Plan(infer(trace(students[3][1], x)), factor=1.5)), "eval"))
    students.append(("widen x1.5, train mode", students[0][1], "train"))
    print("[3/3] verifying in float64 on the example batch + 3 random batches\n")
    rows = [("student", "params", "max abs err", "max rel err", "verdict")]
    for name, student, mode in students:
        r = verify(model, student, x, mode=mode)
        verdict = "preserved" if r.ok else ("not exact (by design)" if "noise" in name else "NOT PRESERVED")
        rows.append((name, str(sum(p.numel() for p in student.parameters())), f"{r.max_abs_err:.2e}",
                     f"{r.max_rel_err:.2e}", verdict))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(x) for c, x in zip(r, w)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in w))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    bad = [r for r in rows[1:] if r[4] == "NOT PRESERVED"]
    return 1 if bad else 0


def cmd_experiment(args: argparse.Namespace) -> int:
    try:
        from .paper.study import SETTINGS, Config, run_study
    except ImportError as exc:
        raise UsageError(f"the experiments need extra packages: {exc}", op="experiment",
                         fix="pip install -e '.[paper]' (scikit-learn for the data, matplotlib for the plots)") from exc
    settings = list(SETTINGS) if not args.settings or "all" in args.settings else args.settings
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UsageError(f"unknown settings {unknown}", op="experiment", fix=f"choose from all {' '.join(SETTINGS)}")
    out = Path(args.out)
    config = Config.quick(out) if args.quick else Config(seeds=args.seeds, out=out)
    summary = run_study(settings, config)
    broken = [s for s in summary if s["max_rel_err"] is not None and not s["acc0_equals_teacher"]]
    return 1 if broken else 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="module:factory or file.py:factory returning a model or (model, inputs)")
    p.add_argument("--input-shape", action="append", help="shape of an example input, e.g. 2,3,32,32")
    p.add_argument("--float64", action="store_true", help="grow and verify the model in float64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frontend", choices=["auto", "fx", "export"], default="auto",
                   help="fx: symbolic_trace (default); export: torch.export, for models that only export")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="n2n-fx", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="print the spaces of a model and why frozen ones are frozen")
    p.add_argument("model", nargs="?", default="n2n_fx.models:demo_model")
    p.add_argument("--input-shape", action="append")
    p.add_argument("--float64", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factor", type=float, default=None)
    p.add_argument("--width", action="append", help="SPACE=UNITS")
    p.add_argument("--rules", action="store_true", help="print the rule table instead")
    p.add_argument("--frontend", choices=["auto", "fx", "export"], default="auto")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("widen", help="Net2WiderNet a model and verify it")
    _model_args(p)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--width", action="append", help="SPACE=UNITS (overrides --factor)")
    p.add_argument("--symmetry", choices=["none", "split", "noise"], default="none")
    p.add_argument("--out", help="save the student (torch.save) here")
    p.set_defaults(func=cmd_widen)
    p = sub.add_parser("deepen", help="Net2DeeperNet a model and verify it")
    _model_args(p)
    p.add_argument("--after", action="append", required=True, help="module or node name (repeatable)")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--no-activation", action="store_true")
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--block", choices=["identity", "residual", "gated"], default="identity",
                   help="identity: the paper's layer; residual: x + W2 phi(W1 x), W2 = 0 (any activation); "
                        "gated: a post-LN block behind a zero gate")
    p.add_argument("--out")
    p.set_defaults(func=cmd_deepen)
    p = sub.add_parser("check", help="gate: widen (and deepen) and exit 0 only if the function is preserved")
    _model_args(p)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--width", action="append")
    p.add_argument("--symmetry", choices=["none", "split"], default="none")
    p.add_argument("--after", action="append", help="also deepen after these names")
    p.add_argument("--mode", choices=["eval", "train"], default="eval")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("demo", help="trace, explain, widen, deepen and verify a built-in Inception-BN net")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("experiment", help="reproduce the paper's experiments on digits (CSV, plots, summary)")
    p.add_argument("settings", nargs="*", help="all (default), or any of: wider deeper explore sweep")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="docs/paper", help="folder for curves.csv, summary.csv/.md and the plots")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (seconds): the same code paths")
    p.set_defaults(func=cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except N2NError as exc:
        print(f"n2n-fx: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
