"""Minibatch SGD with momentum, evaluated every few steps; a progress bar on a terminal."""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from .data import Digits


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    correct = sum(int((model(x[i:i + 512]).argmax(1) == y[i:i + 512]).sum()) for i in range(0, len(x), 512))
    model.train(was)
    return correct / len(x)


class Progress:
    """One line per run: a bar that redraws on a terminal, a single summary line otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.t0 = label, total, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, step: int, val: float) -> None:
        if self.tty:
            done = int(24 * step / self.total)
            sys.stderr.write(f"\r{self.label:<46} [{'#' * done}{'.' * (24 - done)}] {step:>4}/{self.total} "
                             f"val {100 * val:5.1f}%")
            sys.stderr.flush()

    def close(self, val: float) -> None:
        end = "\n" if self.tty else ""
        prefix = "\r" if self.tty else ""
        sys.stderr.write(f"{prefix}{self.label:<46} {self.total} steps, val {100 * val:5.1f}%, "
                         f"{time.perf_counter() - self.t0:4.1f} s{' ' * 20}{end}")
        if not self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def augment(x: torch.Tensor, gen: torch.Generator, shift: int, noise: float) -> torch.Tensor:
    """Random translation by up to `shift` pixels (zero padding) and Gaussian pixel noise: the
    8x8 digits are otherwise memorised (training accuracy 100%), leaving a student no signal."""
    if shift:
        padded = F.pad(x, (shift,) * 4)
        offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=gen).tolist()
        h, w = x.shape[-2:]
        x = torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(offsets)])
    if noise:
        x = x + noise * torch.randn(x.shape, generator=gen)
    return x


def train(model: nn.Module, data: Digits, *, steps: int, lr: float, seed: int, eval_every: int = 10,
          batch: int = 64, momentum: float = 0.9, weight_decay: float = 5e-4, cosine: bool = False,
          label: str = "", train_eval: int = 450, shift: int = 0, noise: float = 0.0) -> list[dict]:
    """Train in place; return one row per evaluation (step 0 is the starting point)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    order, pos = torch.randperm(n, generator=gen), 0
    rows, loss_sum, loss_n = [], 0.0, 0
    x_seen, y_seen = data.x_train[:train_eval], data.y_train[:train_eval]  # training accuracy on a fixed subset
    bar = Progress(label, steps)

    def record(step: int) -> None:
        nonlocal loss_sum, loss_n
        val = accuracy(model, data.x_val, data.y_val)
        rows.append({"step": step, "loss": loss_sum / loss_n if loss_n else float("nan"),
                     "train_acc": accuracy(model, x_seen, y_seen), "val_acc": val})
        loss_sum, loss_n = 0.0, 0
        bar.update(step, val)

    record(0)
    model.train()
    for step in range(1, steps + 1):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        if cosine:
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        loss = F.cross_entropy(model(augment(data.x_train[idx], gen, shift, noise)), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if step % eval_every == 0 or step == steps:
            record(step)
    bar.close(rows[-1]["val_acc"])
    return rows
