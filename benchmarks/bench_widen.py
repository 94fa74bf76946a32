"""Widen timing, stage by stage, next to the bare gather floor and Torch-Pruning's graph
inference, measured side by side in one run.

    pip install -e '.[bench]'     # torchvision and torch-pruning, for the real models and the peer
    python benchmarks/bench_widen.py [--factor 2.0] [--repeat 5] [--models resnet50 ...]

The floor is what any Net2WiderNet must do: one index_select per widened axis of every widened
tensor, with the index tensors already built. The peer is Torch-Pruning's
DependencyGraph().build_dependency + get_all_groups on the same model and input: the graph
inference a structured-pruning tool does. Ratios compare minima over --repeat iterations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import n2n_fx
from n2n_fx.frontend import own_tensors
from n2n_fx.models import InceptionBNLike, ResNet50Like
from n2n_fx.planning import Plan
from n2n_fx.wider import Net2WiderNet

# (name, input size): hand-built models, then torchvision's (random weights) when installed
MODELS = {"ResNet-50-like": 224, "Inception-BN-like": 224, "resnet50": 224, "inception_v3": 299, "vit_b_16": 224}


def _time(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def gather_floor_fn(plan: Plan, gm: torch.nn.Module):
    """Precompute the index tensors, return a closure that only gathers."""
    jobs = []
    for param, axes in plan.analysis.axes_by_param().items():
        t = gm.get_parameter(param) if param in dict(gm.named_parameters()) else gm.get_buffer(param)
        idx = []
        for axis in axes:
            index = plan.layout_index(plan.analysis.param_layouts[(param, axis)])
            if not torch.equal(index, torch.arange(t.shape[axis])):
                idx.append((axis, index))
        if idx:
            jobs.append((t.detach(), idx))

    def run():
        out = []
        for t, idx in jobs:
            for axis, index in idx:
                t = t.index_select(axis, index)
            out.append(t)
        return out

    return run, len(jobs)


def build(name: str) -> torch.nn.Module:
    if name == "ResNet-50-like":
        return ResNet50Like()
    if name == "Inception-BN-like":
        return InceptionBNLike()
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    with torch.no_grad():  # ViT's zero-initialised head would make every output 0: nothing to verify
        for p in model.parameters():
            if p.numel() and not p.any():
                p.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(2))
    return model


def peer_fn(model: torch.nn.Module, x: torch.Tensor):
    """Torch-Pruning's dependency graph and groups, or None when it is not installed."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None

    def run():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        return list(graph.get_all_groups())

    return run


def bench(name: str, model: torch.nn.Module, x: torch.Tensor, factor: float, repeat: int) -> dict:
    """Every stage, the floor and the peer are timed in each iteration, as widen() runs them:
    trace shares the teacher's tensors, apply is the pass plus cloning the tensors it left alone.

    Big fresh allocations make single timings swing 2-10x on a shared machine (page faults,
    neighbours); the minimum over iterations is the least-disturbed run of the same work, so
    ratios are taken between minima.
    """
    model.eval()
    n2n_fx.widen(model, x, factor=factor)  # warm-up (allocator, lazy imports)
    peer = peer_fn(model, x)
    keys = ("trace", "infer", "plan", "apply", "floor") + (("peer",) if peer else ())
    t: dict[str, list[float]] = {k: [] for k in keys}
    groups = 0
    for _ in range(repeat):
        gm, dt = _time(n2n_fx.trace, model, x, share_tensors=True)
        t["trace"].append(dt)
        analysis, dt = _time(n2n_fx.infer, gm)
        t["infer"].append(dt)
        plan, dt = _time(Plan, analysis, factor=factor, seed=0)
        t["plan"].append(dt)
        floor, n_tensors = gather_floor_fn(plan, gm)
        t["floor"].append(_time(floor)[1])
        t0 = time.perf_counter()
        student = Net2WiderNet(plan)(gm).graph_module
        own_tensors(student, model)
        t["apply"].append(time.perf_counter() - t0)
        t["floor"].append(_time(floor)[1])
        if peer:
            found, dt = _time(peer)
            t["peer"].append(dt)
            groups = len(found)
    report, t_verify = _time(n2n_fx.verify, model, student, x, n_random=0)
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in student.parameters()))
    best = {k: min(v) for k, v in t.items()}
    hidden = [s for s in analysis.spaces if not (s.reasons and s.reasons[0].code == "model_output")]
    return dict(name=name, nodes=len(gm.graph.nodes), spaces=len(hidden), groups=groups, tensors=n_tensors,
                params=params, verify=t_verify, rel=report.max_rel_err, ok=report.ok,
                apply_ratio=best["apply"] / best["floor"],
                widen_ratio=sum(best[k] for k in ("trace", "infer", "plan", "apply")) / best["floor"],
                infer_peer=best["infer"] / best["peer"] if peer else None,
                trace_infer_peer=(best["trace"] + best["infer"]) / best["peer"] if peer else None,
                spread={k: statistics.median(v) / min(v) for k, v in t.items()}, **best)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.0f} ms"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=list(MODELS), help=f"default: {' '.join(MODELS)}")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        try:
            model = build(name)
        except ImportError:
            print(f"skipping {name}: torchvision is not installed (pip install -e '.[bench]')")
            continue
        x = torch.randn(1, 3, MODELS.get(name, 224), MODELS.get(name, 224))
        print(f"benchmarking {name} ...", flush=True)
        rows.append(bench(name, model, x, args.factor, args.repeat))
    if rows and rows[-1]["infer_peer"] is None:
        print("Torch-Pruning is not installed (pip install -e '.[bench]'): no peer column")
    print(f"\nwiden x{args.factor}, batch 1, float32, best of {args.repeat}, {torch.get_num_threads()} threads\n")
    head = ("model", "params", "nodes", "spaces", "trace", "infer", "plan", "apply", "floor", "apply/floor",
            "widen/floor", "TP build", "TP groups", "infer/TP", "trace+infer/TP", "verify", "max rel err")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join([
            r["name"], f"{r['params'][0] / 1e6:.1f}M -> {r['params'][1] / 1e6:.1f}M", str(r["nodes"]),
            str(r["spaces"]), *(_ms(r[k]) for k in ("trace", "infer", "plan", "apply", "floor")),
            _x(r["apply_ratio"]), _x(r["widen_ratio"]), _ms(r.get("peer")), str(r["groups"] or "-"),
            _x(r["infer_peer"]), _x(r["trace_infer_peer"]), f"{r['verify']:.1f} s",
            f"{r['rel']:.1e}" + ("" if r["ok"] else " NOT PRESERVED")]) + " |")
    print("\napply = the Net2WiderNet pass plus cloning the tensors it left alone; widen = trace + infer + "
          "plan + apply (what n2n_fx.widen runs); floor = bare index_select of every widened tensor (indices "
          "prebuilt); TP build = Torch-Pruning DependencyGraph().build_dependency + get_all_groups. Times are "
          "minima over iterations that time every stage, the floor and the peer side by side.")
    for r in rows:
        print(f"  {r['name']}: median/min spread " + ", ".join(f"{k} {v:.1f}x" for k, v in r["spread"].items()))


if __name__ == "__main__":
    main()
