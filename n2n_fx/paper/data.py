"""scikit-learn's digits (1,797 8x8 images that ship with the package): a fixed stratified split."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor  # (N, 1, 8, 8), standardised with the training set's mean and std
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def load_digits(val_fraction: float = 0.25, seed: int = 0) -> Digits:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:  # an optional extra, like matplotlib
        raise ImportError("the experiments need scikit-learn: pip install -e '.[paper]'") from exc
    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c in range(10):  # stratified: the same share of every class in validation
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = round(len(idx) * val_fraction)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr, va = torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values
    mean, std = x[tr].mean(), x[tr].std()
    return Digits((x[tr] - mean) / std, y[tr], (x[va] - mean) / std, y[va])
