"""torchvision zoo runner: widen (1.5x, 2x) and deepen every classification model, verify, tabulate.

    pip install -e '.[bench]'            # torchvision 0.29.1
    python experiments/torchvision_zoo.py [--models resnet18 vgg11 ...] [--out docs/zoo.md]

Random weights (nothing downloads); BatchNorm statistics are randomised so eval mode is not an
identity. Each model runs at the smallest input its weights' metadata accepts (at least 32 px).
Models whose 2x-wider float64 copy would not fit the memory budget run in float32 (the table says
so). Work in progress for the torchvision issue: not yet part of CI.
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

import n2n_fx

MEMORY_BUDGET = 6e9  # bytes for the widest student's parameters


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


def run_one(name: str, max_params: float) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    if sum(p.numel() for p in model.parameters()) > max_params:
        # teacher, trace, 4x student and their float64 copies in verify: about 90 bytes a parameter
        raise Skipped(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters > --max-params")
    with torch.no_grad():
        randomise_bn(model, torch.Generator().manual_seed(0))
        for p in model.parameters():  # zero-initialised heads (ViT) would make every output 0
            if p.numel() and not p.any():
                p.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(2))
    params = sum(p.numel() for p in model.parameters())
    dtype = torch.float64 if params * 4 * 8 <= MEMORY_BUDGET else torch.float32
    size = input_size(name)
    model = model.to(dtype)
    x = torch.randn(4, 3, size, size, dtype=dtype)
    row: dict = {"model": name, "params": params, "input": size, "dtype": str(dtype).replace("torch.", "")}
    t0 = time.perf_counter()
    gm = n2n_fx.trace(model, x)
    row["trace_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analysis = n2n_fx.infer(gm)
    row["infer_s"] = time.perf_counter() - t0
    row["nodes"] = len(gm.graph.nodes)
    hidden = [s for s in analysis.spaces if not (s.reasons and s.reasons[0].code == "model_output")]
    row["spaces"] = len(hidden)
    row["frozen"] = dict(Counter(s.reasons[0].code for s in hidden if s.reasons))
    row["unknown_ops"] = sorted(n for n, op in analysis.ops.items() if op == "unknown")[:5]
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for factor in (1.5, 2.0):
        t0 = time.perf_counter()
        student = n2n_fx.widen(model, x, factor=factor, seed=0)
        row[f"apply_{factor}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = n2n_fx.verify(model, student, x, n_random=1)
        row[f"verify_{factor}_s"] = time.perf_counter() - t0
        row[f"rel_{factor}"] = report.max_rel_err
        row[f"ok_{factor}"] = report.ok
        if has_bn and factor == 1.5:
            # against the traced teacher: tracing fixes Python branches on self.training (aux heads,
            # stochastic depth) in the mode traced, for the teacher's graph as for the student
            # a batch of 16: with 4 samples and 1x1 late feature maps, batch statistics are so
            # ill-conditioned that rounding alone reaches 1e-9 (the teacher against itself: 0)
            xb = torch.randn(16, *x.shape[1:], dtype=dtype, generator=torch.Generator().manual_seed(1))
            train = n2n_fx.verify(gm, student, xb, n_random=0, mode="train")
            row["rel_train"], row["ok_train"] = train.max_rel_err, train.ok
        del student
    plan = n2n_fx.plan(model, x, factor=1.5)
    row["widened"] = sum(p.new_width > p.width for p in plan.spaces)
    return row


def markdown(rows: list[dict]) -> str:
    head = ["model", "params", "input", "dtype", "nodes", "hidden spaces", "widened", "frozen (reasons)",
            "max rel err 1.5x", "2x", "train", "trace+infer s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r or "skipped" in r:
            what = f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"| {r['model']} | | | | | | | {what} | | | | |")
            continue
        pct = f"{r['widened']}/{r['spaces']}" + (f" ({100 * r['widened'] / r['spaces']:.0f}%)" if r["spaces"] else "")
        frozen = ", ".join(f"{k} {v}" for k, v in r["frozen"].items()) or "-"
        train = f"{r['rel_train']:.1e}" if "rel_train" in r else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['input']} | {r['dtype']} | {r['nodes']} | "
                     f"{r['spaces']} | {pct} | {frozen} | {r['rel_1.5']:.1e} | {r['rel_2.0']:.1e} | {train} | "
                     f"{r['trace_s'] + r['infer_s']:.1f} |")
    return "\n".join(lines) + "\n"


def run_guarded(name: str, max_params: float) -> dict:
    try:
        return run_one(name, max_params)
    except Skipped as why:
        return {"model": name, "skipped": str(why)}
    except Exception as exc:  # keep going: the table records what broke
        traceback.print_exc()
        return {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}


def run_isolated(name: str, max_params: float) -> dict:
    """One model per process: freed float64 copies of big models fragment the heap, and 80 models
    in one process ran out of memory."""
    proc = subprocess.run([sys.executable, __file__, "--one", name, "--max-params", str(max_params)],
                          capture_output=True, text=True)
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
                   f"Scope: {scope}{progress}. Widen 1.5x and 2x, float64 unless noted, random weights and BN "
                   "statistics (zero heads re-initialised); max rel err over the example batch and one Gaussian "
                   "batch; train: BatchNorm models in train mode against the traced teacher, batch of 16.\n\n"
                   + markdown(rows))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", help="default: every classification model")
    ap.add_argument("--out", default="docs/zoo.md")
    ap.add_argument("--max-params", type=float, default=150e6, help="skip larger models (memory)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child process: one model, a JSON row on stdout
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_guarded(args.one, args.max_params), default=str))
        return
    names = args.models or classification_models()
    rows = []
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        row = run_isolated(name, args.max_params)
        if "error" in row or "skipped" in row:
            status = "error" if "error" in row else "skipped"
        else:
            status = "ok" if row["ok_1.5"] and row["ok_2.0"] and row.get("ok_train", True) else "NOT PRESERVED"
        rows.append(row)
        print(f"[{i}/{len(names)}] {name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
        write(Path(args.out), rows, "every classification model" if not args.models else f"{len(names)} models",
              done=i == len(names))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
