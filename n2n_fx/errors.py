"""Typed errors. Every error names the node, the op and what to do, and carries a stable code."""

from __future__ import annotations


class N2NError(Exception):
    """Base class of every error n2n_fx raises on bad input or an unsupported request."""

    code = "n2n_error"

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 fix: str | None = None) -> None:
        self.node, self.op, self.fix = node, op, fix
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
