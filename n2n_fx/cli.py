"""Command line: n2n-fx explain | widen | deepen | check | verify | grow-checkpoint | demo | experiment.

A model is named by `module:factory` (or `path/to/file.py:factory`); the factory returns a model
or a (model, example_inputs) pair. The factory's directory (or, for `module:factory`, the current
directory) goes first on sys.path, so a factory may import its sibling files. Without example
inputs, give --input-shape (and --input-dtype / --vocab for integer inputs such as token ids).

Exit codes (every command; with --json, stdout is one strict JSON object on every exit):
  0  preserved: the student computes the teacher's function (or the command is done)
  1  NOT preserved
  2  unsupported model, usage error, or an error in the user's code (factory, file, inputs):
     one line naming the cause on stderr (the full traceback with --debug)
  3  preserved, but nothing was widened although growth was asked (check, widen)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import apply_plan, deepen, infer, trace, verify
from . import plan as make_plan
from .errors import N2NError, quiet
from .frontend import Inputs, _set_training, as_inputs, call, map_inputs
from .planning import Plan
from .spec import load_table
from .texttable import format_table
from .verification import _float_dtype, prepare

PRESERVED, NOT_PRESERVED, ERROR, NOTHING_WIDENED = 0, 1, 2, 3
EXIT_CODES = __doc__[__doc__.index("Exit codes"):]
VERDICTS = {PRESERVED: "preserved", NOT_PRESERVED: "not_preserved", ERROR: "error", NOTHING_WIDENED: "nothing_widened"}


class UsageError(N2NError):
    code = "usage"


class UserCodeError(N2NError):
    """An exception raised by the user's code: the factory, its module, or the model's forward."""

    code = "user_code"


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _root(exc: BaseException) -> BaseException:
    seen = []
    while exc.__cause__ is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__
    return exc


def _where(exc: BaseException) -> str:
    """The innermost frame of the user's code (not torch, not n2n_fx, not importlib)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(_PACKAGE) and "site-packages" not in f.filename
              and not f.filename.startswith("<frozen") and "/lib/python" not in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}: " if frames else ""


def user_error(what: str, exc: BaseException, fix: str) -> UserCodeError:
    err = UserCodeError(f"{what}: {_where(exc)}{type(exc).__name__}: {_first_line(exc)}", op="cli", fix=fix)
    err.__cause__ = exc
    return err


def _on_path(folder: Path) -> None:
    entry = str(folder.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def resolve_spec(spec: str) -> str:
    """A spec that names the same factory from any directory (a file's absolute path)."""
    target, _, name = spec.rpartition(":")
    return f"{Path(target).resolve()}:{name}" if target.endswith(".py") else spec


def load_factory(spec: str) -> Any:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UsageError(f"model spec {spec!r} is not module:factory", op="cli",
                         fix="e.g. n2n_fx.models:demo_model or path/to/file.py:build")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UsageError(f"no file {target}", op="cli", fix="give an existing .py file")
        _on_path(path.parent)  # sibling imports
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(path.stem, None)
            raise user_error(f"{target} raised on import", exc, "fix the error in that file") from exc
    else:
        _on_path(Path.cwd())  # the console script does not put the current directory on sys.path
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name is not None and target.startswith(exc.name):
                raise UsageError(f"cannot import {target}: {exc}", op="cli",
                                 fix="check the module path (or name a file: path/to/file.py:factory)") from exc
            raise user_error(f"importing {target} failed", exc, "install the module it imports") from exc
        except Exception as exc:
            raise user_error(f"{target} raised on import", exc, "fix the error in that module") from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        raise UsageError(f"{target} has no callable {name}", op="cli", fix="name a callable that builds the model")
    return factory


def make_model(spec: str, seed: int) -> tuple[torch.nn.Module, Any]:
    """Call the factory `spec`: (model, example inputs or None)."""
    factory = load_factory(spec)
    torch.manual_seed(seed)
    try:
        made = factory()
    except Exception as exc:
        raise user_error(f"the factory {spec} raised", exc, "fix the factory (run it by itself to see the traceback, "
                                                            "or pass --debug)") from exc
    model, inputs = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"the factory {spec} returned {type(made).__name__}, not a model", op="cli",
                         fix="return an nn.Module or a (model, example_inputs) pair")
    return model, inputs


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 0 for d in shape):
        raise UsageError(f"bad --input-shape {text!r}", op="cli", fix="e.g. --input-shape 2,3,32,32")
    return shape


DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")}
DTYPES.update(float=torch.float32, double=torch.float64, half=torch.float16, long=torch.int64, int=torch.int32)


def parse_dtype(text: str) -> torch.dtype:
    dtype = DTYPES.get(text.lower().removeprefix("torch."))
    if dtype is None:
        raise UsageError(f"unknown --input-dtype {text!r}", op="cli", fix=f"one of {', '.join(DTYPES)}")
    return dtype


def parse_range(args: argparse.Namespace) -> tuple[int, int] | None:
    if getattr(args, "int_range", None):
        try:
            lo, hi = (int(v) for v in args.int_range.split(","))
        except ValueError:
            lo, hi = 0, 0
        if hi <= lo:
            raise UsageError(f"bad --int-range {args.int_range!r}", op="cli", fix="LO,HI with LO < HI (HI excluded)")
        return lo, hi
    if getattr(args, "vocab", None) is not None:
        if args.vocab < 1:
            raise UsageError(f"bad --vocab {args.vocab}", op="cli", fix="the number of token ids, e.g. --vocab 50257")
        return 0, args.vocab
    return None


def _draw(shape: tuple[int, ...], dtype: torch.dtype, ints: tuple[int, int] | None) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape).bool()
    if ints is None:
        raise UsageError(f"integer inputs ({str(dtype).replace('torch.', '')}) need a range", op="cli",
                         fix="give --vocab N (token ids in [0, N)) or --int-range LO,HI")
    return torch.randint(ints[0], ints[1], shape, dtype=dtype)


def _input_text(inputs: Inputs) -> str:
    items = inputs.items() if isinstance(inputs, dict) else enumerate(inputs)
    return ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" if isinstance(v, torch.Tensor)
                     else f"{k}: {type(v).__name__}" for k, v in items)


def _hint(cause: str, model: torch.nn.Module) -> str:
    low, own = cause.lower(), str(_float_dtype(model)).replace("torch.", "")
    if "indices" in low or "long, int" in low or "index out of range" in low:
        return "token ids: --input-dtype int64 --vocab N (ids below the embedding's size)"
    if "dtype" in low or "scalar type" in low:
        return (f"the model's weights are {own}: give --input-dtype {own} (or --float64 to cast the model and its "
                f"floating inputs)")
    return "give --input-shape with the shape the model expects (repeat it for several inputs)"


def check_runs(model: torch.nn.Module, inputs: Inputs) -> None:
    """One forward on the example inputs: a shape or dtype mistake is a one-line usage error."""
    try:
        with torch.no_grad():  # on a copy sharing the parameters: a forward may write its buffers
            call(prepare(model, "eval", _float_dtype(model)), inputs)
    except Exception as exc:
        cause = f"{type(_root(exc)).__name__}: {_first_line(_root(exc))}"
        err = UsageError(f"the model does not run on its example inputs ({_input_text(inputs)}): {cause}",
                         op="cli", fix=_hint(cause, model))
        raise err from exc


def _inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """Example inputs drawn from --input-shape / --input-dtype / --vocab / --int-range."""
    dtypes = [parse_dtype(d) for d in (args.input_dtype or [])]
    ints = parse_range(args)
    if ints is not None and not dtypes:  # --vocab alone: token ids
        dtypes = [torch.int64]
    shapes = [parse_shape(s) for s in args.input_shape]
    if len(dtypes) not in (0, 1, len(shapes)):
        raise UsageError(f"{len(dtypes)} --input-dtype for {len(shapes)} --input-shape", op="cli",
                         fix="give one --input-dtype for all inputs, or one per --input-shape")
    dtypes = dtypes * len(shapes) if len(dtypes) == 1 else dtypes or [torch.float32] * len(shapes)
    inputs = tuple(_draw(s, d, ints) for s, d in zip(shapes, dtypes))
    if args.float64:
        inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    return inputs


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, Inputs]:
    model, inputs = make_model(args.model, args.seed)
    parse_range(args)  # a bad range is a usage error even when the factory brings its inputs
    torch.manual_seed(args.seed)
    if args.input_shape:
        inputs = _inputs(args)
    if inputs is None:
        raise UsageError("the factory returned no example inputs", op="cli",
                         fix="pass --input-shape N,C,H,W (repeat for several inputs)")
    inputs = as_inputs(inputs)  # a tensor, a tuple, or a dict of keyword inputs
    if getattr(args, "input_dtype", None) and not args.input_shape:  # the factory's own inputs, cast
        dtypes = [parse_dtype(d) for d in args.input_dtype]
        it = iter(dtypes * 1000 if len(dtypes) == 1 else dtypes)
        inputs = map_inputs(inputs, lambda x: x.to(next(it, x.dtype)) if isinstance(x, torch.Tensor) else x)
    if args.float64:
        model = model.double()
        inputs = map_inputs(inputs, lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x)
    _set_training(model, False)  # flags: an exported module refuses .eval()
    check_runs(model, inputs)
    return model, inputs


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


def say(args: argparse.Namespace, *text: Any) -> None:
    """Human output: on stdout without --json, nothing with it (stdout is then the JSON object)."""
    if not getattr(args, "json", False):
        print(*text)


def _finite(x: Any) -> Any:
    """Strict JSON: an infinite or NaN error is null (the report could not compare the outputs)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def report_dict(report: Any) -> dict[str, Any]:
    out = {"preserved": report.ok, "max_abs_err": report.max_abs_err, "max_rel_err": report.max_rel_err,
           "rtol": report.rtol, "inputs": report.n_inputs, "mode": report.mode, "dtype": report.dtype}
    if report.native_dtype:
        out.update(native_dtype=report.native_dtype, native_ok=report.native_ok,
                   native_max_rel_err=report.native_max_rel_err, native_rtol=report.native_rtol)
    if report.detail:
        out["detail"] = report.detail
    return out


def plan_dict(plan: Plan) -> dict[str, Any]:
    return {"spaces": len(plan.spaces), "widened": sum(p.new_width > p.width for p in plan.spaces),
            "frozen": {p.name: str(p.reasons[0]) for p in plan.spaces if p.reasons}}


def grown_code(report: Any, widened: int | None) -> int:
    if not report.ok:
        return NOT_PRESERVED
    return NOTHING_WIDENED if widened == 0 else PRESERVED


def check_student(args: argparse.Namespace, teacher: torch.nn.Module, student: torch.nn.Module, inputs: Inputs,
                  **kw: Any) -> Any:
    """verify, and for integer inputs drawn from --vocab / --int-range also on 3 more draws of them
    (verify's random batches redraw floating inputs only: token ids would repeat): the worst report."""
    report = verify(teacher, student, inputs, **kw)
    if parse_range(args) is None or not args.input_shape:
        return report
    worst, total = report, report.n_inputs
    for k in range(1, 4):
        torch.manual_seed(args.seed + k)
        again = verify(teacher, student, _inputs(args), n_random=0, **kw)
        total += again.n_inputs
        if worst.ok and (not again.ok or again.max_rel_err > worst.max_rel_err):
            worst = again
    return dataclasses.replace(worst, n_inputs=total)


def cmd_explain(args: argparse.Namespace) -> int:
    if args.rules:
        print(rules_table())
        return 0
    from .deeper import deepen_targets

    model, inputs = build(args)
    plan = _plan(args, model, inputs, args.factor)
    print(plan)
    frozen = [p for p in plan.spaces if p.reasons]
    if frozen:
        print("\nwhy frozen:")
        for p in frozen:
            for r in p.reasons:
                print(f"  {p.name}: {r}")
    names = deepen_targets(plan.analysis.gm)
    shown = names[:40] + ([f"... {len(names) - 40} more"] if len(names) > 40 else [])
    print(f"\ndeepen --after takes these module names ({len(names)}; FX node names work too):\n  "
          + ("\n  ".join(shown) if shown else "(none: no module output is a floating tensor with a feature axis)"))
    return 0


def recipe(args: argparse.Namespace) -> list[str]:
    """The command line that grows this student again (for n2n_fx.load): argv without the output
    options, with a factory file named by its absolute path."""
    argv, out, skip = list(args.argv), [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--out":
            skip = True
        elif not (item.startswith("--out=") or item in ("--json", "--debug")):
            out.append(resolve_spec(item) if item == args.model else item)
    return out


def _save(args: argparse.Namespace, student: torch.nn.Module) -> None:
    if args.out:
        from .saving import save

        save(student, args.out, recipe=recipe(args))
        say(args, f"saved student to {args.out} (load it with n2n_fx.load({str(args.out)!r}))")
        args.result["saved"] = str(args.out)


def grow(args: argparse.Namespace, model: torch.nn.Module, inputs: Inputs) -> tuple[torch.nn.Module, Plan | None]:
    """The student of a widen or deepen command line (the same code rebuilds a saved one)."""
    if args.command == "widen":
        plan = _plan(args, model, inputs, args.factor)
        return apply_plan(plan), plan
    return deepen(model, inputs, after=args.after, batch_norm=args.batch_norm, kernel_size=args.kernel_size,
                  activation=None if args.no_activation else "auto", frontend=args.frontend, block=args.block,
                  seed=args.seed), None


def rebuild(argv: Sequence[str]) -> torch.nn.Module:
    """The student a saved recipe (a widen or deepen command line) grows, with fresh weights."""
    args = make_parser().parse_args(list(argv))
    if args.command not in ("widen", "deepen"):
        raise UsageError(f"a recipe is a widen or deepen command line, not {args.command!r}", op="load",
                         fix='e.g. ["widen", "models.py:build", "--factor", "2"]')
    model, inputs = build(args)
    return grow(args, model, inputs)[0]


def cmd_widen(args: argparse.Namespace) -> int:
    model, inputs = build(args)
    student, plan = grow(args, model, inputs)
    assert plan is not None
    say(args, plan)
    report = check_student(args, model, student, inputs)
    say(args, report)
    args.result.update(report_dict(report), **plan_dict(plan))
    _save(args, student)
    code = grown_code(report, args.result["widened"])
    if code == NOT_PRESERVED and args.symmetry == "noise":  # the paper's noise breaks symmetry by design
        code = PRESERVED if args.result["widened"] else NOTHING_WIDENED
    if code == NOTHING_WIDENED:
        say(args, "nothing was widened: every space is frozen (see `n2n-fx explain`); exit 3")
    return code


def cmd_deepen(args: argparse.Namespace) -> int:
    model, inputs = build(args)
    student, _ = grow(args, model, inputs)
    report = check_student(args, model, student, inputs)
    say(args, report)
    args.result.update(report_dict(report), deepened=list(args.after))
    _save(args, student)
    return PRESERVED if report.ok else NOT_PRESERVED


def cmd_check(args: argparse.Namespace) -> int:
    model, inputs = build(args)
    plan = _plan(args, model, inputs, args.factor)
    student = apply_plan(plan)
    report = check_student(args, model, student, inputs, mode=args.mode)
    if args.after:
        deeper = deepen(student, inputs, after=args.after, frontend=args.frontend)
        r2 = check_student(args, model, deeper, inputs, mode=args.mode)
        report = r2 if not r2.ok or r2.max_rel_err > report.max_rel_err else report
    args.result.update(report_dict(report), **plan_dict(plan))
    say(args, report)
    code = grown_code(report, args.result["widened"])
    if code == NOTHING_WIDENED and args.after:
        code = PRESERVED  # it deepened
    if code == NOTHING_WIDENED:
        say(args, "nothing was widened: every space is frozen (see `n2n-fx explain`); exit 3")
    return code


def load_student(spec: str, args: argparse.Namespace, teacher: torch.nn.Module) -> torch.nn.Module:
    """A student file (n2n_fx.save's, a state_dict of the teacher's architecture, or with
    --allow-pickle a torch.save'd module) or a factory spec."""
    path = Path(spec)
    if path.is_file() and path.suffix != ".py":
        from .saving import load_student_file

        student = load_student_file(path, teacher, allow_pickle=args.allow_pickle)
    elif ":" not in spec:
        raise UsageError(f"no student file {spec}", op="cli",
                         fix="give an existing checkpoint file, or a factory module:fn / file.py:fn")
    else:
        student, _ = make_model(spec, args.seed)
    if args.float64:
        student = student.double()
    _set_training(student, False)  # flags: an exported module refuses .eval()
    return student


def cmd_verify(args: argparse.Namespace) -> int:
    teacher, inputs = build(args)
    student = load_student(args.student, args, teacher)
    rtol = args.rtol
    report = check_student(args, teacher, student, inputs, mode=args.mode, rtol=rtol)
    args.result.update(report_dict(report), student=args.student)
    say(args, report)
    return PRESERVED if report.ok else NOT_PRESERVED


def cmd_grow_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import grow_checkpoint, verify_checkpoint

    changes: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise UsageError(f"--set {item!r}: expected FIELD=INTEGER", op="grow-checkpoint",
                             fix="e.g. --set hidden_size=960 --set num_hidden_layers=32")
        changes[key.strip()] = int(value)
    if (args.factor is None) == (not changes):
        raise UsageError("give --factor or --set FIELD=VALUE (one of them)", op="grow-checkpoint",
                         fix="e.g. --factor 2, or --set hidden_size=960")
    t0 = time.perf_counter()
    out = grow_checkpoint(args.src, args.dst, factor=args.factor, seed=args.seed, layer_map=args.layer_map,
                          max_shard_size=args.max_shard_size, progress=not args.json, overwrite=args.overwrite,
                          **changes)
    args.result.update(dst=str(out), seconds=time.perf_counter() - t0)
    if args.no_check:
        print(f"grew {args.src} into {out} (not checked)")
        return PRESERVED
    report = verify_checkpoint(args.src, out, seed=args.seed)
    args.result.update(ok=report.ok, max_rel_err=report.max_rel_err, rtol=report.rtol,
                       native_rel_err=report.native_rel_err, native_rtol=report.native_rtol)
    print(f"grew {args.src} into {out}: {report}")
    return PRESERVED if report.ok else NOT_PRESERVED


def rules_table() -> str:
    table = load_table()
    rows = [("entry", "kind", "spellings", "idempotent", "proof")]
    for op in table.ops:
        n = len(op.modules) + len(op.functions) + len(op.methods)
        rows.append((op.name, op.kind, str(n), "yes" if op.idempotent else ("no" if op.activation else "-"), op.proof))
    return format_table(rows, rule=False)


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
    print(format_table(rows))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    bad = [r for r in rows[1:] if r[4] == "NOT PRESERVED"]
    return 1 if bad else 0


def cmd_experiment(args: argparse.Namespace) -> int:
    try:
        from .paper.study import SETTINGS, Config, run_study
    except ImportError as exc:
        raise UsageError(f"the experiments need extra packages: {exc}", op="experiment",
                         fix="pip install -e '.[paper]' (scikit-learn for the data, matplotlib for the plots)") from exc
    asked = args.settings or ["all"]
    lm = "lm" in asked
    settings = list(SETTINGS) if "all" in asked else [s for s in asked if s != "lm"]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise UsageError(f"unknown settings {unknown}", op="experiment",
                         fix=f"choose from all {' '.join(SETTINGS)} lm")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} exists and is not empty", op="experiment",
                         fix="give a new --out folder, or --overwrite to replace its files")
    broken = []
    if settings:
        config = Config.quick(out) if args.quick else Config(seeds=args.seeds or 3, out=out)
        summary = run_study(settings, config)
        broken = [s for s in summary if s["max_rel_err"] is not None and not s["acc0_equals_teacher"]]
    if lm:
        _experiment_lm(args, out)  # a grown arm that does not start at the teacher raises NotPreservedError
    return 1 if broken else 0


def _experiment_lm(args: argparse.Namespace, out: Path) -> None:
    """issue 17: growth vs scratch for a byte-level Llama (needs transformers; see n2n_fx.paper.lm)."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the LM experiment needs transformers: {exc}", op="experiment",
                         fix="pip install -e '.[paper]'") from exc
    from dataclasses import replace

    from .paper.lm import Config as LMConfig
    from .paper.lm import run_lm_study

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device here", op="experiment",
                         fix="run on a machine with a GPU, or --device cpu (the default configuration)")
    if args.quick:
        config = LMConfig.smoke(out, device=device)
    elif device.startswith("cuda"):
        config = LMConfig.gpu(out, device=device)
    else:
        config = LMConfig(out=out, device=device)
    run_lm_study(replace(config, seeds=args.seeds if args.seeds is not None else config.seeds))


class _Parser(argparse.ArgumentParser):
    """A usage error is an N2NError like the others: exit 2, one line, JSON with --json."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message, op="cli", fix=f"see {self.prog} --help")


def _common(p: argparse.ArgumentParser, frontend: bool = True) -> None:
    p.add_argument("--input-shape", action="append", help="shape of an example input, e.g. 2,3,32,32 (repeatable)")
    p.add_argument("--input-dtype", action="append",
                   help="dtype of the example inputs: float32 (default), float64, bfloat16, int64, ... (one for all, "
                        "or one per --input-shape; casts the factory's own inputs when no --input-shape)")
    p.add_argument("--vocab", type=int, help="integer inputs are token ids in [0, VOCAB) (implies int64)")
    p.add_argument("--int-range", help="integer inputs in [LO, HI), given as LO,HI")
    p.add_argument("--float64", action="store_true", help="cast the model(s) and floating inputs to float64")
    p.add_argument("--seed", type=int, default=0)
    if frontend:
        p.add_argument("--frontend", choices=["auto", "fx", "export"], default="auto",
                       help="fx: symbolic_trace; export: torch.export, for models that only export; auto: fx, "
                            "else export")


def _gate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one strict JSON object (on every exit, errors too)")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback")


def _model_args(p: argparse.ArgumentParser, teacher: bool = False) -> None:
    p.add_argument("model", metavar="TEACHER" if teacher else "MODEL",
                   help="module:factory or file.py:factory returning a model or (model, inputs)")
    _common(p, frontend=not teacher)  # verify traces nothing: a saved student brings its own front end
    _gate(p)


def make_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="n2n-fx", description=__doc__.split("\n")[0], epilog=EXIT_CODES, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=EXIT_CODES, formatter_class=fmt)

    p = command("explain", "print the spaces of a model, why frozen ones are frozen, and the names deepen takes")
    p.add_argument("model", nargs="?", default="n2n_fx.models:demo_model")
    _common(p)
    p.add_argument("--factor", type=float, default=None)
    p.add_argument("--width", action="append", help="SPACE=UNITS")
    p.add_argument("--rules", action="store_true", help="print the rule table instead")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    p.set_defaults(func=cmd_explain)
    p = command("widen", "Net2WiderNet a model and verify it (exit 3 when nothing widens)")
    _model_args(p)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--width", action="append", help="SPACE=UNITS (overrides --factor)")
    p.add_argument("--symmetry", choices=["none", "split", "noise"], default="none")
    p.add_argument("--out", help="save the student here (loads with torch.load's default weights_only=True as a "
                                 "dict; n2n_fx.load(path) rebuilds the module)")
    p.set_defaults(func=cmd_widen)
    p = command("deepen", "Net2DeeperNet a model and verify it")
    _model_args(p)
    p.add_argument("--after", action="append", required=True,
                   help="module name as `explain` lists it (e.g. layer1.0.conv1), or FX node name (repeatable)")
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--no-activation", action="store_true")
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--block", choices=["identity", "residual", "gated"], default="identity",
                   help="identity: the paper's layer; residual: x + W2 phi(W1 x), W2 = 0 (any activation); "
                        "gated: a post-LN block behind a zero gate")
    p.add_argument("--out", help="save the student here (see widen --out)")
    p.set_defaults(func=cmd_deepen)
    p = command("check", "gate: widen (and deepen), exit 0 only if the function is preserved and something widened")
    _model_args(p)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--width", action="append")
    p.add_argument("--symmetry", choices=["none", "split"], default="none")
    p.add_argument("--after", action="append", help="also deepen after these module names")
    p.add_argument("--mode", choices=["eval", "train"], default="eval")
    p.set_defaults(func=cmd_check)
    p = command("verify", "gate: does STUDENT compute TEACHER's function? (any student, grown by n2n_fx or not)")
    _model_args(p, teacher=True)
    p.add_argument("student", metavar="STUDENT", help="a file (n2n_fx.save / widen --out, or a state_dict of the teacher's "
                                   "architecture), or a factory module:fn / file.py:fn")
    p.add_argument("--mode", choices=["eval", "train"], default="eval")
    p.add_argument("--rtol", type=float, default=None, help="tolerance (default 1e-10 for float64 students, else 1e-5)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load a torch.save'd module (weights_only=False: runs the file's pickled code; trusted files only)")
    p.set_defaults(func=cmd_verify)
    p = command("grow-checkpoint", "grow a Hugging Face checkpoint directory tensor by tensor (bounded memory), "
                "then check it streamed")
    p.add_argument("src", metavar="SRC", help="a save_pretrained directory (config.json + safetensors shards)")
    p.add_argument("dst", metavar="DST", help="the student's directory (appears only when complete)")
    p.add_argument("--factor", type=float, default=None, help="every width field times this (head size kept)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a size to change, e.g. hidden_size=960 or num_hidden_layers=32 (repeatable)")
    p.add_argument("--layer-map", choices=["interleave", "append"], default="interleave")
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="skip the streamed check of the result")
    p.add_argument("--overwrite", action="store_true")
    _gate(p)
    p.set_defaults(func=cmd_grow_checkpoint)
    p = command("demo", "trace, explain, widen, deepen and verify a built-in Inception-BN net")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    p = command("experiment", "reproduce the paper's experiments on digits, or growth vs scratch for a "
                "language model (lm); CSV, plots, summary")
    p.add_argument("settings", nargs="*", help="all (default: the digits study), any of: wider deeper explore "
                   "sweep, and/or lm (a byte-level Llama on the Python standard library, issue 17)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; --quick: 1)")
    p.add_argument("--device", default="cpu", help="lm: cpu (default configuration, ~15 min on 2 shared cores) or cuda "
                   "(a larger configuration for one GPU)")
    p.add_argument("--out", default="n2n_experiment",
                   help="a new folder for curves.csv, summary.csv/.md and the plots (lm: lm_*.csv/.md/.png; default "
                        "./n2n_experiment)")
    p.add_argument("--overwrite", action="store_true", help="write into a --out folder that already has files")
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (seconds): the same code paths")
    p.set_defaults(func=cmd_experiment)
    return parser


def _error(exc: BaseException) -> N2NError:
    if isinstance(exc, N2NError):
        return exc
    err = N2NError(f"unexpected {type(exc).__name__}: {_first_line(exc)}", op="cli",
                   fix="rerun with --debug and report the traceback")
    err.__cause__ = exc
    return err


@contextlib.contextmanager
def _no_hub_bars() -> Iterator[None]:
    """HF_HUB_DISABLE_PROGRESS_BARS=1 unless the user set it: transformers and huggingface_hub read
    it when a factory first imports them."""
    set_here = "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    if set_here:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        yield
    finally:
        if set_here:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json, debug = "--json" in argv, "--debug" in argv
    result: dict[str, Any] = {"command": next((a for a in argv if not a.startswith("-")), None)}
    try:
        args = make_parser().parse_args(argv)
        args.argv, args.result = argv, result
        result.update(command=args.command, model=getattr(args, "model", None))
        # no Hugging Face progress bars (a factory's from_pretrained); with --json, whatever the
        # user's code prints goes to stderr: stdout is the JSON object alone
        with quiet(), _no_hub_bars(), contextlib.redirect_stdout(sys.stderr) if want_json else contextlib.nullcontext():
            code = args.func(args)
    except Exception as raw:  # usage, unsupported model, the user's code, or a bug: exit 2, one line
        exc, code = _error(raw), ERROR
        if debug:
            traceback.print_exception(raw)
        lines = exc.message.strip().splitlines() or [""]
        more = " (more with --debug)" if len(lines) > 1 and not debug else ""
        print(f"n2n-fx: {type(exc).__name__}: {lines[0]}{more}" + (f" Fix: {exc.fix}" if exc.fix else ""),
              file=sys.stderr)
        result["error"] = {"type": type(exc).__name__, "code": exc.code, "message": exc.message,
                           "node": exc.node, "op": exc.op, "fix": exc.fix}
    if want_json:
        result.update(exit_code=code, verdict=VERDICTS.get(code, "error"))
        print(json.dumps(_finite(result), indent=2, allow_nan=False, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
