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
import math
from fractions import Fraction
from typing import Any

import torch

from .errors import N2NError, quiet
from .verification import verify

# the common names of fields that size hidden spaces; a config's attribute_map renames them
# (DistilBERT dim / n_heads, GPT-2 n_embd / n_head, T5 d_model / num_heads / d_kv)
WIDTH_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "n_inner", "ffn_dim", "word_embed_proj_dim")
MAX_CANDIDATES = 4096


def _ratios(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> set[Fraction]:
    """Every new/old size ratio among the axes the student changed."""
    out = set()
    for name, t in teacher.items():
        s = student.get(name)
        if s is not None:
            out |= {Fraction(b, a) for a, b in zip(t.shape, s.shape) if a and a != b}
    return out


def _changed_sizes(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]) -> set[int]:
    """The teacher's sizes of every axis the student changed."""
    return {a for name, t in teacher.items() if name in student
            for a, b in zip(t.shape, student[name].shape) if a != b}


def width_fields(config: Any, changed: set[int]) -> list[str]:
    """Config fields that may size a changed axis: the common width names (through the config's
    attribute_map), and any other integer field whose value is the size of a changed axis (an
    MLP width under a family's own name: DistilBERT hidden_dim, T5 d_ff)."""
    alias = getattr(config, "attribute_map", {}) or {}
    names = [alias.get(k, k) for k in WIDTH_KEYS]
    names += sorted(k for k, v in vars(config).items() if not k.startswith("_") and type(v) is int and v in changed)
    out = []
    for k in dict.fromkeys(names):
        v = getattr(config, k, None)
        if type(v) is int and v > 0:
            out.append(k)
    return out


def candidate_configs(config: Any, ratios: set[Fraction], fields: list[str]) -> list[Any]:
    """The teacher's config with every width field kept or scaled by an observed ratio."""
    choices = []
    for k in fields:
        old = getattr(config, k)
        scaled = {old * r for r in ratios if (old * r).denominator == 1}
        choices.append(sorted({old} | {int(v) for v in scaled}))
    if math.prod(len(c) for c in choices) > MAX_CANDIDATES:
        raise N2NError(f"{len(fields)} config fields x {len(ratios)} size ratios give more than {MAX_CANDIDATES} "
                       f"candidate configs ({fields})", op="rebuild",
                       fix="widen with one factor (factor=2.0), so a few ratios describe every changed axis")
    out = []
    for values in itertools.product(*choices):
        cfg = copy.deepcopy(config)
        for k, v in zip(fields, values):
            setattr(cfg, k, v)
        try:  # a config the family would refuse to save (hidden size not divisible by heads, ...)
            getattr(cfg, "validate", lambda: None)()
        except Exception:
            continue
        out.append(cfg)
    return out


def _mismatches(wanted: dict[str, tuple], shapes: dict[str, tuple]) -> list[str]:
    """The student's parameters a candidate shell does not hold at the student's shape."""
    out = [f"{k}: student {s}, config {shapes[k]}" for k, s in wanted.items() if k in shapes and shapes[k] != s]
    return out + [f"{k}: not in the student" for k in shapes if k not in wanted]


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
    """`type(teacher)` built with the config that fits `student` and loaded with its weights (no
    Hugging Face progress bars while it works; see _rebuild)."""
    with quiet():
        return _rebuild(teacher, student, example_inputs, rtol)


def _rebuild(teacher: torch.nn.Module, student: torch.nn.Module, example_inputs: Any,
             rtol: float | None) -> torch.nn.Module:
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
    fitting, closest = [], None
    ratios = _ratios(t_state, s_state)
    fields = width_fields(config, _changed_sizes(t_state, s_state))
    for cfg in candidate_configs(config, ratios, fields):
        try:
            with torch.device("meta"):
                shell = type(teacher)(cfg)
        except Exception:  # a combination the family rejects (hidden size not divisible by heads, ...)
            continue
        missed = _mismatches(wanted, {k: tuple(v.shape) for k, v in shell.state_dict().items()})
        if not missed:
            fitting.append(cfg)
        elif closest is None or len(missed) < len(closest):
            closest = missed
    # fewest changed fields first: a field that sizes nothing (a token id, a position count that
    # equals a width) fits either way and must keep the teacher's value
    fitting.sort(key=lambda cfg: sum(getattr(cfg, k) != getattr(config, k) for k in fields))
    for cfg in fitting:
        model = type(teacher)(cfg).to(dtype).eval()
        model.load_state_dict(s_state, strict=False)
        if verify(student, model, example_inputs, rtol=rtol, n_random=0).ok:
            return model
    if fitting:
        raise N2NError(f"{len(fitting)} {type(config).__name__}(s) fit the student's shapes but none computes its "
                       f"function on example_inputs", op="rebuild",
                       fix="the student's layout is not the family's (a reordered or frozen axis): use the "
                           "GraphModule student as is")
    shown = ("; ".join(closest[:6]) + (f"; ... {len(closest) - 6} more" if len(closest) > 6 else "")
             if closest else "(the family refused every candidate config)")
    raise N2NError(f"no {type(config).__name__} has the student's parameter shapes (fields tried: "
                   f"{', '.join(fields)}; ratios {sorted(str(r) for r in ratios)}); the closest differs in: {shown}",
                   op="rebuild",
                   fix=("widen with one factor for the whole model (factor=2.0), so every layer has the sizes one "
                        "config can describe" if len(ratios) > 1 else
                        "these sizes break one of the family's own relations (e.g. heads x head_dim = hidden "
                        "size): choose widths= that keep them, or use the GraphModule student as is"))


LAYER_KEYS = ("num_hidden_layers",)  # depth; its per-layer lists (layer_types, ...) follow it


def _field(config: Any, key: str) -> str:
    return (getattr(config, "attribute_map", {}) or {}).get(key, key)


def _size_fields(config: Any) -> set[str]:
    """The fields grow may change: widths, head size (checked later), depth, per-layer lists."""
    names = {_field(config, k) for k in (*WIDTH_KEYS, *LAYER_KEYS)} | set(WIDTH_KEYS) | set(LAYER_KEYS)
    layers = getattr(config, _field(config, "num_hidden_layers"), None)
    names |= {k for k, v in vars(config).items() if isinstance(v, list) and layers and len(v) == layers}
    alias = getattr(config, "attribute_map", {}) or {}
    return names | {k for k, v in alias.items() if v in names}


def target_config(config: Any, changes: dict[str, Any]) -> Any:
    """The teacher's config with `changes` applied (names through its attribute_map: n_embd works
    for GPT-2 as hidden_size does). Only sizes may change (widths, heads, depth and the per-layer
    lists that go with depth): any other field changes what the model computes, which growing does
    not. A per-layer list (layer_types) not given is recomputed by the config for the new depth."""
    fields = _size_fields(config)
    for key in changes:
        if not hasattr(config, _field(config, key)):
            raise N2NError(f"{type(config).__name__} has no field {key!r}", op="hf.grow",
                           fix="use the config's own field names (e.g. hidden_size, intermediate_size, "
                               "num_attention_heads, num_key_value_heads, num_hidden_layers)")
        if key not in fields:
            raise N2NError(f"{key!r} is not a size: growing keeps the function, and {key} changes it",
                           node=key, op="hf.grow", fix="grow with sizes only, then change other settings (and "
                           "retrain)")
    depth = _field(config, "num_hidden_layers")
    values = config.to_dict()
    if depth in {_field(config, k) for k in changes} or "num_hidden_layers" in changes:
        old = getattr(config, depth, None)
        for k, v in list(values.items()):  # stale per-layer lists: let the config derive them anew
            if isinstance(v, list) and old and len(v) == old and k not in changes:
                values.pop(k)
    try:
        cfg = type(config).from_dict({**values, **{_field(config, k): v for k, v in changes.items()}})
        getattr(cfg, "validate", lambda: None)()  # the checks the family runs when it saves
    except Exception as exc:
        raise N2NError(f"{type(config).__name__} refuses {changes}: {exc}", op="hf.grow",
                       fix="choose sizes the family accepts") from exc
    return cfg


def _check_depth_adds_blocks(model: torch.nn.Module, target: torch.nn.Module, layer_map: Any) -> None:
    """More layers in the config must mean more blocks of weights. A family that shares one set of
    layer weights across its depth (ALBERT) would rerun the trained layer more times, another
    function no new-block initialisation can undo: refuse it here instead of after growing."""
    from .growth import GrowError, find_stacks

    depth = _field(model.config, "num_hidden_layers")
    old, new = getattr(model.config, depth, None), getattr(target.config, depth, None)
    if not (isinstance(old, int) and isinstance(new, int) and new > old) or find_stacks(model, target, layer_map):
        return
    raise GrowError(f"{depth} {old} -> {new} adds no block of weights to {type(model).__name__}: its layers share "
                    f"weights, so the deeper config reruns the trained ones, which computes another function",
                    node=depth, op="hf.grow", fix=f"keep {depth}={old} and grow widths only (new shared layers "
                    "cannot start as the identity without changing the trained ones)")


def _check_layer_types(model: torch.nn.Module, target: torch.nn.Module, layer_map: Any) -> None:
    """A teacher block placed on a layer of another kind (sliding vs full attention) would compute
    another function on long inputs: refuse the placement."""
    from .growth import GrowError, find_stacks

    base, cfg = model.config, target.config
    layers = getattr(base, _field(base, "num_hidden_layers"), None)
    lists = {k: v for k, v in vars(base).items() if isinstance(v, list) and layers and len(v) == layers}
    if not lists:
        return
    for st in find_stacks(model, target, layer_map):
        if len(st.teacher) != layers:
            continue
        for key, kinds in lists.items():
            new = getattr(cfg, key, None)
            for j, i in enumerate(st.sources):
                if i is not None and isinstance(new, list) and new[j] != kinds[i]:
                    raise GrowError(f"layer_map puts teacher block {i} ({key} {kinds[i]!r}) at block {j}, whose "
                                    f"{key} is {new[j]!r}", node=st.block(st.target, j), op="layer_map",
                                    fix=f"give {key} for the new depth so each teacher block keeps its kind, or pass "
                                        f"an explicit layer_map (layer_map='append' keeps the first blocks in place)")


def grow(model: torch.nn.Module, config: Any = None, example_inputs: Any = None, *, seed: int = 0,
         layer_map: Any = "interleave", rtol: float | None = None, symmetry: str = "none",
         **changes: Any) -> torch.nn.Module:
    """A Hugging Face model grown into a bigger config of its family: `grow(model, hidden_size=960,
    num_hidden_layers=32)` or `grow(model, bigger_config)`. Returns `type(model)` with that config,
    verified to compute the teacher's function, ready for save_pretrained.

    The target is built on the meta device (no memory for its weights until they are computed);
    example_inputs default to two sequences of random token ids (seeded), as long as the model's
    positions allow up to 64, so settings that act on long inputs are exercised. symmetry='split'
    (exact too) gives the replicas of a unit different outgoing weights, so training can tell them
    apart; with 'none' they receive equal updates and stay copies."""
    from .growth import grow as grow_into

    base = getattr(model, "config", None)
    if base is None:
        raise N2NError(f"{type(model).__name__} has no .config", op="hf.grow",
                       fix="hf.grow is for Hugging Face models; use n2n_fx.grow(teacher, target, inputs) otherwise")
    if config is not None and changes:
        raise N2NError("pass a config or field changes, not both", op="hf.grow",
                       fix="grow(model, config) or grow(model, hidden_size=..., ...)")
    cfg = target_config(base, changes) if config is None else config
    try:
        with torch.device("meta"):
            target = type(model)(cfg)
    except Exception as exc:  # the family's own validation (hidden size not divisible by heads, ...)
        raise N2NError(f"{type(model).__name__} refuses the target config: {exc}", op="hf.grow",
                       fix="choose sizes the family accepts") from exc
    _check_depth_adds_blocks(model, target, layer_map)
    _check_layer_types(model, target, layer_map)
    if example_inputs is None:
        vocab = getattr(base, "vocab_size", None)
        if not isinstance(vocab, int):
            raise N2NError(f"{type(base).__name__} has no vocab_size to draw example tokens from", op="hf.grow",
                           fix="pass example_inputs")
        length = min(64, getattr(base, _field(base, "max_position_embeddings"), None) or 64)
        gen = torch.Generator().manual_seed(seed)
        example_inputs = (torch.randint(0, vocab, (2, length), generator=gen),)
    grown = grow_into(model, target, example_inputs, seed=seed, layer_map=layer_map, rtol=rtol, symmetry=symmetry)
    if getattr(model, "generation_config", None) is not None:
        grown.generation_config = copy.deepcopy(model.generation_config)
    return grown
