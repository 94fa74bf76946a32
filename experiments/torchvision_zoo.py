"""torchvision zoo runner: widen (1.5x, 2x) and deepen every classification model, verify, tabulate.

    pip install -e '.[bench]'            # torchvision 0.29.1
    python experiments/torchvision_zoo.py [--models resnet18 vgg11 ...] [--out docs/zoo.md]

Random weights (nothing downloads); BatchNorm statistics are randomised so eval mode is not an
identity. Each model runs at the smallest input its weights' metadata accepts (at least 32 px).
Models over --float64-max parameters (their float64 copies would not fit 24 GiB) run in float32 at
1.5x only; the table says so. Exits 1 if any student is not preserved or any model errors: CI runs
it with --max-params 150e6 (tox -e zoo).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

import n2n_fx
from n2n_fx.testing import assert_untouched, fingerprint


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size(name: str) -> int:
    import torchvision

    try:
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta
        lo = max(meta.get("min_size", (32, 32)))
    except Exception:  # a builder without weights metadata
        lo = 224
    if any(k in name for k in ("vit", "swin", "maxvit")):
        lo = max(lo, 224)
    return max(lo, 32)


def randomise_bn(model: torch.nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


class Skipped(Exception):
    pass


def deepen_sites(gm: torch.fx.GraphModule, k: int = 3, max_width: int = 1024) -> tuple[list[str], str | None]:
    """`k` evenly spaced nodes to deepen after: idempotent activations (the identity layer repeats
    them) when the model has any, else conv/linear outputs (a linear identity layer). Nodes wider
    than `max_width` are skipped: a 3x3 identity conv on 3,840 channels is 133M float64 weights."""
    table = n2n_fx.load_table()
    acts, layers = [], []
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        if not n.op.startswith("call") or not isinstance(meta, TensorMetadata) or len(meta.shape) < 2:
            continue
        if max(meta.shape[1], meta.shape[-1]) > max_width:
            continue
        spec = table.lookup(n, gm)
        if spec is not None and spec.activation and spec.idempotent:
            acts.append(n.name)
        elif spec is not None and spec.kind in ("conv", "dense"):
            layers.append(n.name)
    pool, activation = (acts, "auto") if acts else (layers, None)
    picks = sorted({round(i * (len(pool) - 1) / max(k - 1, 1)) for i in range(k)}) if pool else []
    return [pool[i] for i in picks], activation


def _timed(row: dict, key: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    row[key] = time.perf_counter() - t0
    return out


def _check(row: dict, key: str, report: n2n_fx.Report) -> None:
    row[f"rel_{key}"], row[f"ok_{key}"] = report.max_rel_err, report.ok


def run_one(name: str, max_params: float, float64_max: float, batch: int = 4, n_random: int = 1) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    params = sum(p.numel() for p in model.parameters())
    if params > max_params:
        raise Skipped(f"{params / 1e6:.0f}M parameters > --max-params")
    with torch.no_grad():
        randomise_bn(model, torch.Generator().manual_seed(0))
        for p in model.parameters():  # zero-initialised heads (ViT) would make every output 0
            if p.numel() and not p.any():
                p.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(2))
    # teacher, traced copy, student and their float64 copies in verify: about 90 bytes a parameter
    # at 2x. Giants run in float32, compared in float32, and only at 1.5x (the table says so).
    giant = params > float64_max
    dtype = torch.float32 if giant else torch.float64
    # teacher + student + their copies in verify: about 26 bytes a parameter at 1.5x in float32;
    # RegNet-Y-128GF (645M, every space widened) would need 17 GB, so it grows 1.25x
    small = 1.25 if giant and params * 26 > 14e9 else 1.5
    factors = (small,) if giant else (1.5, 2.0)
    row_factor = {"factor": small}
    # ViT checks its input against the size it was built for (224), whatever the weights' metadata say
    size = getattr(model, "image_size", None) or input_size(name)
    model = model.to(dtype)
    x = torch.randn(min(batch, 2) if giant else batch, 3, size, size, dtype=dtype)
    row: dict = {"model": name, "params": params, "input": size, "dtype": str(dtype).replace("torch.", ""), **row_factor}
    before = fingerprint(model, values=not giant)  # every call below must leave the teacher as it is
    gm = _timed(row, "trace_s", n2n_fx.trace, model, x, share_tensors=True)  # only run, never written
    analysis = _timed(row, "infer_s", n2n_fx.infer, gm)
    row["nodes"] = len(gm.graph.nodes)
    hidden = [s for s in analysis.spaces if not (s.reasons and s.reasons[0].code == "model_output")]
    row["spaces"] = len(hidden)
    row["frozen"] = dict(Counter(s.reasons[0].code for s in hidden if s.reasons))
    row["unknown_ops"] = sorted(n for n, op in analysis.ops.items() if op == "unknown")[:5]
    # coverage at 2x: spaces under a LayerNorm widen only by integer factors (1.5x keeps them)
    plan = _timed(row, "plan_s", n2n_fx.Plan, analysis, factor=2.0)
    row["widened"] = sum(p.new_width > p.width for p in plan.spaces if p.space in hidden)
    row["units"] = sum(s.width for s in hidden)
    row["units_widened"] = sum(p.width for p in plan.spaces if p.space in hidden and p.new_width > p.width)
    del plan
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for factor in factors:
        student = _timed(row, f"apply_{factor}_s", n2n_fx.widen, model, x, factor=factor, seed=0)
        key = "2.0" if factor == 2.0 else "1.5"  # the giants' smaller factor goes in the 1.5x column
        _check(row, key, _timed(row, f"verify_{key}_s", n2n_fx.verify, model, student, x,
                                n_random=n_random, dtype=dtype))
        # train mode in float32 is not judged: batch statistics amplify rounding about 1e3-1e4x (the
        # float64 runs show it), so float32 lands near 1e-4 (RegNet-Y-128GF: 1.7e-4), not 1e-5
        if has_bn and factor == small and not giant:
            # against the traced teacher: tracing fixes Python branches on self.training (aux heads,
            # stochastic depth) in the mode traced, for the teacher's graph as for the student.
            # A batch of 16: with 4 samples and 1x1 late feature maps, batch statistics are so
            # ill-conditioned that rounding alone reaches 1e-9 (the teacher against itself: 0)
            xb = torch.randn(16, *x.shape[1:], dtype=dtype, generator=torch.Generator().manual_seed(1))
            _check(row, "train", _timed(row, "verify_train_s", n2n_fx.verify, gm, student, xb, n_random=0,
                                        mode="train", dtype=dtype))
        del student
    del gm
    sites, activation = deepen_sites(n2n_fx.trace(model, x))
    row["deepen_at"] = sites
    deeper = _timed(row, "deepen_s", n2n_fx.deepen, model, x, after=sites, activation=activation)
    inserted = [n.target for n in deeper.graph.nodes if n.op == "call_module" and n.target.startswith("n2n_deepen")]
    if len(inserted) < len(sites) or not sites:  # an empty deepening would verify trivially
        raise RuntimeError(f"deepen inserted {len(inserted)} layers for {len(sites)} sites")
    _check(row, "deepen", _timed(row, "verify_deepen_s", n2n_fx.verify, model, deeper, x, n_random=n_random, dtype=dtype))
    # composition: the deepened student widened again, identity layers included
    both = _timed(row, "deepen_widen_s", n2n_fx.widen, deeper, x, factor=small, seed=1)
    del deeper
    _check(row, "deepen_widen", _timed(row, "verify_deepen_widen_s", n2n_fx.verify, model, both, x, n_random=n_random,
                                       dtype=dtype))
    assert_untouched(model, before)  # raises AssertionError naming the attribute: the row is an error
    return row


CHECKS = ("1.5", "2.0", "train", "deepen", "deepen_widen")


def status(row: dict) -> str:
    if "error" in row or "skipped" in row:
        return "error" if "error" in row else "skipped"
    return "ok" if all(row.get(f"ok_{k}", True) for k in CHECKS) else "NOT PRESERVED"


def _err(row: dict, key: str) -> str:
    if f"rel_{key}" not in row:
        return "-"
    mark = "" if row[f"ok_{key}"] else " **FAIL**"
    return f"{row[f'rel_{key}']:.1e}{mark}"


def markdown(rows: list[dict]) -> str:
    head = ["model", "params", "input", "dtype", "nodes", "hidden spaces", "widened", "units widened",
            "frozen (reasons)", "max rel err 1.5x", "2x", "train", "deepen", "deepen+widen", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r or "skipped" in r:
            what = f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"| {r['model']} | | | | | | | | {what} |" + " |" * 6)
            continue
        pct = f"{r['widened']}/{r['spaces']}" + (f" ({100 * r['widened'] / r['spaces']:.0f}%)" if r["spaces"] else "")
        units = f"{100 * r['units_widened'] / r['units']:.0f}%" if r["units"] else "-"
        frozen = ", ".join(f"{k} {v}" for k, v in r["frozen"].items()) or "-"
        seconds = sum(v for k, v in r.items() if k.endswith("_s"))
        dtype = r["dtype"] + (f", {r['factor']}x" if r.get("factor", 1.5) != 1.5 else "")
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['input']} | {dtype} | {r['nodes']} | "
                     f"{r['spaces']} | {pct} | {units} | {frozen} | " + " | ".join(_err(r, k) for k in CHECKS)
                     + f" | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> str:
    ran = [r for r in rows if status(r) in ("ok", "NOT PRESERVED")]
    counts = Counter(status(r) for r in rows)
    worst64 = max((r[f"rel_{k}"] for r in ran if r["dtype"] == "float64" for k in CHECKS if f"rel_{k}" in r),
                  default=float("nan"))
    return (f"{len(rows)} models: {counts['ok']} preserved in every check, {counts['NOT PRESERVED']} not, "
            f"{counts['error']} errors, {counts['skipped']} skipped. Worst float64 max rel err: {worst64:.1e}.")


def run_guarded(name: str, args: argparse.Namespace) -> dict:
    try:
        return run_one(name, args.max_params, args.float64_max, args.batch, args.n_random)
    except Skipped as why:
        return {"model": name, "skipped": str(why)}
    except Exception as exc:  # keep going: the table records what broke
        traceback.print_exc()
        return {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}


def run_isolated(name: str, args: argparse.Namespace) -> dict:
    """One model per process: freed float64 copies of big models fragment the heap, and 80 models
    in one process ran out of memory."""
    proc = subprocess.run([sys.executable, __file__, "--one", name, "--max-params", str(args.max_params),
                           "--float64-max", str(args.float64_max), "--batch", str(args.batch),
                           "--n-random", str(args.n_random)], capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("ROW "):
            return json.loads(line[4:])
    reason = "killed (out of memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"model": name, "error": f"{reason}: {proc.stderr.strip().splitlines()[-1][:120] if proc.stderr.strip() else ''}"}


def write(out: Path, rows: list[dict], scope: str, done: bool) -> None:
    """Rewritten after every model, so an interrupted run still leaves its table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    progress = "" if done else f" (in progress: {len(rows)} so far)"
    out.write_text("# torchvision coverage (generated by experiments/torchvision_zoo.py)\n\n"
                   f"Scope: {scope}{progress}. {summary(rows)}\n\n"
                   "Random weights and BN statistics (zero heads re-initialised). Widen every non-frozen space "
                   "1.5x and 2x; deepen: identity layers after 3 evenly spaced ReLU-family activations (or "
                   "conv/linear outputs when the model has none); deepen+widen: that student widened 1.5x. "
                   "Errors: max |student - teacher| / max |teacher| over the example batch of 4 and one "
                   "Gaussian batch; train: BatchNorm models in train mode against the traced teacher, batch of 16. "
                   "float64 unless the dtype column says float32 (models too large for float64 copies: "
                   "weights and comparison in float32, 1.5x only (1.25x where the dtype column says so), rtol 1e-5, "
                   "no train-mode check: batch statistics amplify float32 rounding to about 1e-4). \"widened\": hidden spaces the 2x "
                   "plan widens (spaces under a LayerNorm grow only by integer factors, so 1.5x leaves them); "
                   "\"units widened\": hidden units in those spaces over all hidden units. Seconds: trace, infer, plan, apply and "
                   "verify summed.\n\n"
                   + markdown(rows))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", help="default: every classification model")
    ap.add_argument("--out", default="docs/zoo.md")
    ap.add_argument("--max-params", type=float, default=float("inf"), help="skip larger models")
    ap.add_argument("--float64-max", type=float, default=150e6,
                    help="larger models run in float32 at 1.5x only (memory)")
    ap.add_argument("--batch", type=int, default=4, help="example batch (giants: at most 2)")
    ap.add_argument("--n-random", type=int, default=1, help="Gaussian batches per verification, besides the example")
    ap.add_argument("--update", action="store_true", help="replace only the named models' rows in --out")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: one model, a JSON row on stdout
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_guarded(args.one, args), default=str))
        return
    names = args.models or classification_models()
    out = Path(args.out)
    # --update: rerun the named models inside an existing table, keep the other rows
    kept = [r for r in json.loads(out.with_suffix(".json").read_text()) if r["model"] not in names] \
        if args.update and out.with_suffix(".json").exists() else []
    rows: list[dict] = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        rows.append(run_isolated(name, args))
        print(f"[{i}/{len(names)}] {name}: {status(rows[-1])} ({time.perf_counter() - t0:.1f} s)", flush=True)
        scope = "every classification model" if not args.models or kept else f"{len(names)} models"
        if (args.batch, args.n_random) != (4, 1):
            scope += f" (example batch {args.batch}, {args.n_random} Gaussian batches per check)"
        write(out, sorted(kept + rows, key=lambda r: r["model"]), scope, done=i == len(names))
    print(summary(sorted(kept + rows, key=lambda r: r["model"])))
    print(f"wrote {args.out}")
    # a gate for CI: a wrong student or a crash fails the run; skipped models do not
    sys.exit(0 if all(status(r) in ("ok", "skipped") for r in kept + rows) else 1)


if __name__ == "__main__":
    main()
