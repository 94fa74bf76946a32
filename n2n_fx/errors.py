"""Typed errors. Every error names the node, the op and what to do, and carries a stable code."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar


class N2NError(Exception):
    """Base class of every error n2n_fx raises on bad input or an unsupported request."""

    code = "n2n_error"

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 fix: str | None = None) -> None:
        self.message, self.node, self.op, self.fix = message, node, op, fix
        parts = [message]
        if node is not None or op is not None:
            parts.append(f"(node {node!r}, op {op!r})")
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(parts))


class SpecError(N2NError):
    """The rule table is malformed (a duplicate spelling, an unknown kind, a missing proof name)."""

    code = "spec_error"


class TraceFailure(N2NError):
    """The model could not be traced into an FX graph."""

    code = "trace_failed"


class HookError(N2NError):
    """A hook would run in the student where the traced graph cannot see it (on the model itself,
    a global module hook, or inside a module kept opaque)."""

    code = "hook"


class UnknownSpaceError(N2NError):
    """A widths= key names no space of the plan."""

    code = "unknown_space"


class WidthError(N2NError):
    """A requested width or factor is invalid (below the current width, not an integer, ...)."""

    code = "bad_width"


class FrozenSpaceError(N2NError):
    """A request to widen a space the inference froze (bound to the output, unknown op, ...)."""

    code = "frozen_space"


class ConstraintError(N2NError):
    """Requested widths violate a constraint of the table (e.g. groups of a grouped conv)."""

    code = "constraint"


class DeepenError(N2NError):
    """An identity layer cannot be inserted where asked (non-idempotent activation, no channel axis)."""

    code = "deepen_refused"


class UnknownNodeError(N2NError):
    """A node or module name given by the user is not in the graph."""

    code = "unknown_node"


class NotPreservedError(N2NError):
    """Verification found the student does not compute the teacher's function."""

    code = "not_preserved"


class StalePlanError(N2NError):
    """A pass got a graph other than the one its plan was made for (run twice, after another pass
    that changed nodes or parameter shapes, on a different model): the plan's maps would be wrong."""

    code = "stale_plan"


class LiftedGraphError(N2NError):
    """The graph takes its parameters as inputs (a Dynamo backend's graph, torch.export's lifted
    graph_module): widening it would change nothing the model runs with."""

    code = "parameters_are_inputs"


class InternalError(N2NError):
    """An unexpected exception inside n2n_fx (a bug, or an op it misreads): raised as an N2NError
    naming the stage and line where it happened, with the original as its cause."""

    code = "internal"


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hugging Face progress bars off (transformers' and huggingface_hub's) while n2n_fx works,
    restored afterwards; nothing to do when transformers was never imported."""
    hf_logging = getattr(getattr(sys.modules.get("transformers"), "utils", None), "logging", None)
    if hf_logging is None or not hasattr(hf_logging, "is_progress_bar_enabled"):
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    if was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def typed(api: str) -> Callable[[F], F]:
    """Decorate a public entry point: every exception that is not an N2NError leaves it as an
    InternalError naming the stage (module, function, line) where it was raised; Hugging Face
    progress bars stay off while it runs (see quiet)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                with quiet():
                    return fn(*args, **kwargs)
            except N2NError:
                raise
            except Exception as exc:
                frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(_PACKAGE)]
                where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}" \
                    if frames else "outside n2n_fx"
                raise InternalError(f"{api} failed unexpectedly ({type(exc).__name__}: {exc}) at {where}",
                                    op=api, fix="this is a bug in n2n_fx or an op it misreads: report it with the "
                                    "model; meanwhile leaf_modules=[TheModuleClass] keeps that module opaque") from exc
        return call  # type: ignore[return-value]

    return wrap
