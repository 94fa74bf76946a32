"""Widen a torchvision giant 2x and verify it in float64 with nothing else in memory.

The zoo runner checks models over 150M parameters in float32 (it also builds 1.5x, deepened and
deepened-then-widened students). This script does only the 2x student and one float64 comparison,
which fits ViT-L (306M -> 1.2B parameters, about 22.6 GB peak) on a 24 GiB machine; ViT-H does not.

    python experiments/giant_float64.py vit_l_16 vit_l_32
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torchvision

import n2n_fx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="torchvision classification model names")
    ap.add_argument("--factor", type=float, default=2.0)
    args = ap.parse_args()
    failed = 0
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).double().eval()
        for m in model.modules():  # torchvision zero-initialises some heads: make every output count
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                torch.nn.init.normal_(m.weight, std=0.02)
        x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
        t0 = time.perf_counter()
        student = n2n_fx.widen(model, x, factor=args.factor)
        gc.collect()
        report = n2n_fx.verify(model, student, x, n_random=1)
        params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (model, student)]
        print(f"{name}: {params[0]:.0f}M -> {params[1]:.0f}M parameters, {report} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        failed += not report.ok
        del model, student
        gc.collect()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
