"""Saving and loading students without pickled code.

    n2n_fx.save(student, "student.pt", recipe=["widen", "models.py:build", "--factor", "2"])
    student = n2n_fx.load("student.pt")      # the module again: rebuilt from the recipe, then its weights
    torch.load("student.pt")                 # a plain dict (weights_only=True): state_dict, recipe, ...

A file is a dict of tensors and strings: {"format": "n2n_fx.student", "version": 1, "state_dict": ...,
"recipe": [...] or None, "frontend": "fx" | "export" | None, "n2n_fx": version}. The recipe is the
`n2n-fx widen` / `deepen` command line that grows the student from its teacher's factory
(`widen --out` / `deepen --out` write it themselves); `load` runs it again and loads the saved
weights, so fine-tuned weights come back too. It works for every student, torch.export ones
included (a GraphModule of an exported program does not pickle). The file is written next to
its destination and renamed into place: a failure leaves no partial file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import N2NError
from .frontend import _set_training

FORMAT, VERSION = "n2n_fx.student", 1


def save(student: torch.nn.Module, path: str | os.PathLike, *, recipe: Sequence[str] | None = None) -> Path:
    """Write `student`'s state_dict and the `recipe` that rebuilds it (see the module docstring)."""
    from . import __version__

    if not isinstance(student, torch.nn.Module):
        raise N2NError(f"save takes an nn.Module, got {type(student).__name__}", op="save", fix="pass the student")
    if recipe is not None and (isinstance(recipe, str) or not all(isinstance(a, str) for a in recipe)):
        raise N2NError("recipe must be a list of command-line strings", op="save",
                       fix='e.g. recipe=["widen", "models.py:build", "--factor", "2"]')
    payload = {"format": FORMAT, "version": VERSION, "n2n_fx": __version__,
               "recipe": list(recipe) if recipe is not None else None,
               "frontend": getattr(student, "meta", {}).get("n2n_frontend"),
               "state_dict": student.state_dict()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private; a saved student is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _payload(path: str | os.PathLike, map_location: Any) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise N2NError(f"no file {path}", op="load", fix="give the path the student was saved to") from exc


def load(path: str | os.PathLike, *, map_location: Any = "cpu") -> torch.nn.Module:
    """The student saved at `path` by `save` (or `n2n-fx widen/deepen --out`): its recipe is run
    again (the teacher's factory must still import) and the saved weights are loaded into it."""
    payload = _payload(path, map_location)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise N2NError(f"{path} is not an n2n_fx student file", op="load",
                       fix="n2n_fx.load reads files written by n2n_fx.save or `n2n-fx widen --out`")
    return from_payload(payload, path)


def from_payload(payload: dict, path: Any) -> torch.nn.Module:
    if payload.get("version", 0) > VERSION:
        raise N2NError(f"{path} is a version {payload['version']} student file; this n2n_fx reads {VERSION}",
                       op="load", fix="upgrade n2n_fx")
    if not payload.get("recipe"):
        raise N2NError(f"{path} was saved without a recipe, so it holds weights but no architecture", op="load",
                       fix="load torch.load(path)['state_dict'] into a model of the student's architecture, or "
                           "save with recipe=[...] (the widen / deepen command line)")
    from .cli import rebuild

    student = rebuild(payload["recipe"])
    try:
        student.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise N2NError(f"the weights in {path} do not fit the student its recipe grows: {str(exc).splitlines()[0]}",
                       op="load", fix="the teacher's factory changed since the student was saved: restore it, or "
                                      "load the state_dict by hand") from exc
    _set_training(student, False)  # flags: a GraphModule from torch.export's module() refuses .eval()
    return student


def _state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        for key in ("state_dict", "model", "model_state_dict"):
            inner = _state_dict(obj.get(key))
            if inner is not None:
                return inner
    return None


def load_student_file(path: Path, teacher: torch.nn.Module, *, allow_pickle: bool = False) -> torch.nn.Module:
    """Any student file the `verify` command takes: an n2n_fx student file, a state_dict that fits
    the teacher's architecture (a fine-tuned copy, a student grown elsewhere at the same sizes),
    or, with allow_pickle, a module saved whole with torch.save."""
    import copy
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # a whole pickled module: weights_only refuses its classes
        if not allow_pickle:
            raise N2NError(f"{path} holds pickled Python objects (a torch.save'd module?)", op="load",
                           fix="pass --allow-pickle if you trust the file, or save the student with "
                               "n2n_fx.save / a state_dict") from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise N2NError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                       op="load", fix="give a file written by torch.save / n2n_fx.save") from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return from_payload(obj, path)
    if isinstance(obj, torch.nn.Module):
        return obj
    state = _state_dict(obj)
    if state is None:
        raise N2NError(f"{path} holds a {type(obj).__name__}, neither a model nor a state_dict", op="load",
                       fix="save the student with n2n_fx.save, or pass a factory file.py:fn that builds it")
    student = copy.deepcopy(teacher)
    try:
        student.load_state_dict(state)
    except RuntimeError as exc:
        raise N2NError(f"the state_dict in {path} does not fit the teacher's architecture: "
                       f"{str(exc).splitlines()[-1].strip() or str(exc).splitlines()[0]}", op="load",
                       fix="a student of other sizes needs its architecture: pass a factory file.py:fn that builds "
                           "it and loads the state_dict") from exc
    return student
