"""Widening a Llama 2x: n2n_fx next to a hand-written per-family baseline, side by side in one run.

    pip install -e '.[test]'     # transformers
    python benchmarks/bench_lm.py [--hidden 512] [--layers 8] [--vocab 32000] [--repeat 3]

The baseline is what a per-family growth script does (HyperCloning's approach, written here from
scratch): build the wider model of the same class from a config with every width doubled, then
copy each teacher tensor tiled twice along every doubled axis, dividing the columns a Linear
contracts by 2. It is checked for function preservation like the student is. n2n_fx widens the same
teacher through its general pipeline (torch.export, inference, plan, pass); its stages are timed
separately. Each measurement runs in its own process, so peak memory (VmHWM, reset after the
teacher is built) is the operation's own. Random weights; nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch


def _config(args: argparse.Namespace, k: int = 1):
    import transformers

    return transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=k * args.hidden,
                                    intermediate_size=k * args.intermediate, num_hidden_layers=args.layers,
                                    num_attention_heads=k * args.heads, num_key_value_heads=k * args.heads,
                                    max_position_embeddings=256, use_cache=False, tie_word_embeddings=False)


def teacher_and_ids(args: argparse.Namespace):
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_config(args)).eval()
    ids = torch.randint(0, args.vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    return model, ids


def tiled_baseline(teacher: torch.nn.Module, args: argparse.Namespace, k: int = 2) -> torch.nn.Module:
    """The per-family script: the wider model of the teacher's class, each tensor tiled k times."""
    student = type(teacher)(_config(args, k)).eval()
    linears = {f"{n}.weight" for n, m in teacher.named_modules() if isinstance(m, torch.nn.Linear)}
    state = teacher.state_dict()
    with torch.no_grad():
        for name, target in student.state_dict().items():
            t = state[name]
            for axis, (a, b) in enumerate(zip(t.shape, target.shape)):
                if a != b:
                    t = torch.cat([t] * (b // a), dim=axis)
                    if name in linears and axis == 1:  # contracted columns: the replicas share the weight
                        t = t / (b // a)
            target.copy_(t)
    return student


def _hwm_reset() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def child(what: str, args: argparse.Namespace) -> dict:
    """One measurement in this process: seconds, peak memory above the teacher, preservation."""
    warnings.filterwarnings("ignore")
    import n2n_fx
    from n2n_fx.frontend import own_tensors
    from n2n_fx.inference import infer
    from n2n_fx.planning import Plan
    from n2n_fx.wider import Net2WiderNet

    teacher, ids = teacher_and_ids(args)
    with torch.no_grad():
        want = teacher(ids).logits
    base = _hwm_reset()
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    if what == "baseline":
        student = tiled_baseline(teacher, args)
    else:
        gm = n2n_fx.trace(teacher, (ids,), share_tensors=True, frontend="export")
        stages["trace"] = time.perf_counter() - t0
        analysis = infer(gm)
        stages["infer"] = time.perf_counter() - t0 - sum(stages.values())
        plan = Plan(analysis, factor=2.0)
        stages["plan"] = time.perf_counter() - t0 - sum(stages.values())
        student = Net2WiderNet(plan)(plan.analysis.gm).graph_module
        own_tensors(student, teacher)
        stages["apply"] = time.perf_counter() - t0 - sum(stages.values())
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM") - base
    with torch.no_grad():
        out = student(ids)
    got = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    got = got["logits"] if isinstance(got, dict) else got
    err = ((got - want).abs().max() / want.abs().max()).item()
    return {"seconds": seconds, "stages": stages, "peak_above_teacher": peak, "teacher_bytes": _bytes(teacher),
            "student_bytes": _bytes(student), "rel_err": err,
            "params": sum(p.numel() for p in teacher.parameters())}


def _run_child(what: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", what, *argv], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1376)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", default=None)
    args, rest = ap.parse_known_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    argv = [a for a in sys.argv[1:]]
    runs: dict[str, list[dict]] = {"baseline": [], "n2n_fx": []}
    for i in range(args.repeat):  # interleaved, so a noisy neighbour slows both alike
        for what in runs:
            runs[what].append(_run_child(what, argv))
            print(f"[{i + 1}/{args.repeat}] {what}: {runs[what][-1]['seconds']:.2f} s", flush=True)
    best = {what: min(r, key=lambda d: d["seconds"]) for what, r in runs.items()}
    b, n = best["baseline"], best["n2n_fx"]
    mib = 2 ** 20
    print(f"\nLlama {n['params'] / 1e6:.0f}M params (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}), "
          f"float32, batch {args.batch} x {args.tokens} tokens, widen 2x; minima over {args.repeat} runs\n")
    print("| | seconds | peak MiB above teacher | student MiB | max rel err |")
    print("|---|---|---|---|---|")
    for what, d in best.items():
        print(f"| {what} | {d['seconds']:.2f} | {d['peak_above_teacher'] / mib:.0f} | {d['student_bytes'] / mib:.0f} "
              f"| {d['rel_err']:.1e} |")
    print("\nn2n_fx stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in n["stages"].items()))
    print(f"n2n_fx / baseline time: {n['seconds'] / b['seconds']:.2f}x (goal <= 0.5x)")
    budget = 1.25 * (n["teacher_bytes"] + n["student_bytes"]) - n["teacher_bytes"]
    print(f"n2n_fx peak above teacher / (1.25 (teacher + student) - teacher): {n['peak_above_teacher'] / budget:.2f} "
          f"(goal <= 1)")


if __name__ == "__main__":
    main()
