"""Hugging Face students as their own class: the teacher's config with the student's sizes.

A student grown through torch.export is a GraphModule whose parameter names are the teacher's.
`rebuild` finds the config (hidden size, MLP width, heads, ...) under which the teacher's class
has exactly the student's parameter shapes and computes the student's function, builds that
model and loads the student's weights into it, so it saves and reloads with save_pretrained /
from_pretrained like any checkpoint of that family.
"""

from __future__ import annotations

import copy
import itertools
from fractions import Fraction
from typing import Any

import torch

from .errors import N2NError
from .verification import verify

# config fields that size hidden spaces, across the common families (absent ones are skipped)
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "ffn_dim",
              "num_attention_heads", "n_head", "num_key_value_heads", "head_dim")


def _ratios(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> set[Fraction]:
    """Every new/old size ratio among the axes the student changed."""
    out = set()
    for name, t in teacher.items():
        s = student.get(name)
        if s is not None:
            out |= {Fraction(b, a) for a, b in zip(t.shape, s.shape) if a and a != b}
    return out


def candidate_configs(config: Any, ratios: set[Fraction]) -> list[Any]:
    """The teacher's config with every width field kept or scaled by an observed ratio."""
    keys = [k for k in WIDTH_KEYS if isinstance(getattr(config, k, None), int)
            and not isinstance(getattr(config, k), bool)]
    choices = []
    for k in keys:
        old = getattr(config, k)
        scaled = {old * r for r in ratios if (old * r).denominator == 1}
        choices.append(sorted({old} | {int(v) for v in scaled}))
    out = []
    for values in itertools.product(*choices):
        cfg = copy.deepcopy(config)
        for k, v in zip(keys, values):
            setattr(cfg, k, v)
        try:  # a config the family would refuse to save (hidden size not divisible by heads, ...)
            getattr(cfg, "validate", lambda: None)()
        except Exception:
            continue
        out.append(cfg)
    return out


def _untied(config: Any, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> Any:
    """The config, untied when the student holds separate copies of a tied pair (widen(untie=True)):
    a tied config would load one copy into both roles."""
    if not getattr(config, "tie_word_embeddings", False):
        return config
    by_storage: dict[int, list[str]] = {}
    for name, t in teacher.items():
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(name)
    for names in (g for g in by_storage.values() if len(g) > 1 and all(n in student for n in g)):
        if len({student[n].untyped_storage().data_ptr() for n in names}) > 1:
            config = copy.deepcopy(config)
            config.tie_word_embeddings = False
            return config
    return config


def rebuild(teacher: torch.nn.Module, student: torch.nn.Module, example_inputs: Any,
            rtol: float | None = None) -> torch.nn.Module:
    """`type(teacher)` built with the config that fits `student` and loaded with its weights.

    Candidates are checked for shapes on the meta device (cheap), then for function against the
    student on `example_inputs` (the check that decides between, e.g., more heads and wider ones).
    """
    config = getattr(teacher, "config", None)
    if config is None:
        raise N2NError(f"{type(teacher).__name__} has no .config", op="rebuild",
                       fix="rebuild is for Hugging Face models; other students already carry their sizes")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    wanted = {k: tuple(v.shape) for k, v in s_state.items()}
    dtype = next(iter(s_state.values())).dtype
    config = _untied(config, t_state, s_state)
    fitting = []
    for cfg in candidate_configs(config, _ratios(t_state, s_state)):
        try:
            with torch.device("meta"):
                shell = type(teacher)(cfg)
        except Exception:  # a combination the family rejects (hidden size not divisible by heads, ...)
            continue
        shapes = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
        if all(shapes.get(k) == s for k, s in wanted.items() if k in shapes) and set(shapes) <= set(wanted):
            fitting.append(cfg)
    for cfg in fitting:
        model = type(teacher)(cfg).to(dtype).eval()
        model.load_state_dict(s_state, strict=False)
        if verify(student, model, example_inputs, rtol=rtol, n_random=0).ok:
            return model
    raise N2NError(f"no {type(config).__name__} reproduces the student ({len(fitting)} fit its shapes)",
                   op="rebuild", fix="widen with one factor for the whole model (factor=2.0), so every "
                                     "layer has the sizes a single config can describe")
