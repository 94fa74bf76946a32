"""widen_optimizer timing next to the Net2WiderNet pass it follows, measured side by side in one run.

    pip install -e '.[bench]'     # torchvision, for resnet18 / resnet50 (random weights)
    python benchmarks/bench_optim.py [--factor 2.0] [--repeat 5] [--models resnet18 ...]

The teacher takes one Adam (or SGD-momentum) step so that every parameter has state; the plan is
uniform replication (what exact=True needs). The reference is the pass itself (apply_plan: one
gather of every widened parameter): a hand-over gathers every moment of every parameter (Adam: two
per parameter), so about 2x the pass is its floor. Ratios compare minima over --repeat iterations
that time the pass and both hand-overs side by side (a shared machine swings single timings 2-10x).
"""

from __future__ import annotations

import argparse
import time

import torch

import n2n_fx
from n2n_fx.models import ResNet50Like

MODELS = ("resnet18", "resnet50", "ResNet-50-like")


def build(name: str) -> torch.nn.Module:
    if name == "ResNet-50-like":
        return ResNet50Like()
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _time(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench(name: str, model: torch.nn.Module, optimizer: str, factor: float, repeat: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    opt = (torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    model(x).square().mean().backward()
    opt.step()
    model.eval()
    plan = n2n_fx.plan(model, x, factor=factor, replication="uniform")
    student = n2n_fx.apply_plan(plan)  # warm-up
    n2n_fx.widen_optimizer(plan, model, opt, student, exact=True)
    t: dict[str, list[float]] = {"pass": [], "exact": [], "inexact": []}
    for _ in range(repeat):
        student, dt = _time(n2n_fx.apply_plan, plan)
        t["pass"].append(dt)
        t["exact"].append(_time(n2n_fx.widen_optimizer, plan, model, opt, student, exact=True)[1])
        t["inexact"].append(_time(n2n_fx.widen_optimizer, plan, model, opt, student)[1])
    best = {k: min(v) for k, v in t.items()}
    state = sum(v.numel() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor))
    return dict(name=name, optimizer=optimizer, params=sum(p.numel() for p in model.parameters()), state=state,
                **best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--optimizers", nargs="*", default=["adam", "sgd"])
    ap.add_argument("--models", nargs="*", default=["resnet18"], help=f"any of: {' '.join(MODELS)}")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        for optimizer in args.optimizers:
            try:
                model = build(name)
            except ImportError:
                print(f"skipping {name}: torchvision is not installed (pip install -e '.[bench]')")
                break
            print(f"benchmarking {name} / {optimizer} ...", flush=True)
            rows.append(bench(name, model, optimizer, args.factor, args.repeat))
    print(f"\nwiden_optimizer after widen x{args.factor} (replication='uniform'), float32, best of {args.repeat}, "
          f"{torch.get_num_threads()} threads\n")
    head = ("model", "optimizer", "params", "state", "pass", "exact=True", "exact/pass", "exact=False", "inexact/pass")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join([
            r["name"], r["optimizer"], f"{r['params'] / 1e6:.1f}M", f"{r['state'] / 1e6:.1f}M",
            f"{r['pass'] * 1e3:.0f} ms", f"{r['exact'] * 1e3:.0f} ms", f"{r['exact'] / r['pass']:.2f}x",
            f"{r['inexact'] * 1e3:.0f} ms", f"{r['inexact'] / r['pass']:.2f}x"]) + " |")
    print("\npass = n2n_fx.apply_plan (the Net2WiderNet pass: one gather per widened parameter); state = the "
          "teacher optimizer's state elements (Adam: 2 moments per parameter, SGD: 1). Times are minima over "
          "iterations that time all three side by side.")


if __name__ == "__main__":
    main()
