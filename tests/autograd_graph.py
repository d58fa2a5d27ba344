"""Helper shared by the native-kernel tests: which autograd nodes a result's graph holds."""

from __future__ import annotations


def graph_names(node) -> set[str]:
    """The class names of every node reachable from ``node`` (a ``grad_fn``) through ``next_functions``."""
    names, seen, stack = set(), set(), [node]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            names.add(type(node).__name__)
            stack.extend(parent for parent, _ in node.next_functions)
    return names
