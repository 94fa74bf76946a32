"""Tied parameters (one tensor under two names, e.g. an embedding table that is also the LM head)."""

from __future__ import annotations

import torch
import torch.fx

from .wider import _owner


def _tied_names(gm: torch.nn.Module) -> list[list[str]]:
    """Names of every tensor reached under more than one name, first name first."""
    names: dict[int, list[str]] = {}
    for name, t in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _owning_module(node: torch.fx.Node) -> str | None:
    """The module path a traced call came from (torch.export records it), if any."""
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return stack[-1][0] if stack else None


def _spread_uses(gm: torch.fx.GraphModule, group: list[str]) -> None:
    """An exported graph reads a tied tensor through one get_attr: each use reads the name of the
    module it came from (lm_head's matmul reads lm_head.weight), so the copies keep their roles
    under their own names and a rebuilt model loads each where it belongs."""
    for node in list(gm.graph.nodes):
        if node.op != "get_attr" or node.target not in group:
            continue
        for user in list(node.users):
            owner = _owning_module(user)
            name = next((n for n in group if owner is not None and n.rpartition(".")[0] == owner), None)
            if name is None or name == node.target:
                continue
            with gm.graph.inserting_after(node):
                fresh = gm.graph.get_attr(name)
            fresh.meta = dict(node.meta)
            user.replace_input_with(node, fresh)
        if not node.users:
            gm.graph.erase_node(node)
    gm.recompile()


def untie_parameters(gm: torch.nn.Module) -> list[list[str]]:
    """Give every further name of a tied tensor its own copy, in place on `gm` (a private trace).

    Returns the tied name groups. Each copy then takes the role of its own use (the lookup
    replicates, the head divides), so the tied space widens exactly; the cost is that the student
    holds the matrix twice and the copies drift apart once trained.
    """
    groups = _tied_names(gm)
    for group in groups:
        if isinstance(gm, torch.fx.GraphModule):
            _spread_uses(gm, group)
        for name in group[1:]:
            module, attr = _owner(gm, name)
            t = getattr(module, attr)
            copy = t.detach().clone()
            if isinstance(t, torch.nn.Parameter):
                module._parameters[attr] = torch.nn.Parameter(copy, requires_grad=t.requires_grad)
            else:
                module._buffers[attr] = copy
    return groups
