"""Kubernetes ``$(VAR)`` expansion, a faithful port of k8s.io/kubernetes/third_party/forked/golang/expansion.

``$(VAR)`` is replaced by the value of VAR when VAR is defined, and left as is
otherwise; ``$$`` is an escaped ``$`` (so ``$$(VAR)`` yields the literal
``$(VAR)``); a ``$`` followed by anything else is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

_OPERATOR = "$"
_OPENER = "("
_CLOSER = ")"


def _read_variable_name(s: str) -> tuple[str, bool, int]:
    """(what was read, whether it is a variable name, how many chars of ``s`` it consumed)."""
    if s[0] == _OPERATOR:
        return s[0], False, 1
    if s[0] == _OPENER:
        for i in range(1, len(s)):
            if s[i] == _CLOSER:
                return s[1:i], True, i + 1
        return _OPERATOR + _OPENER, False, 1
    return _OPERATOR + s[0], False, 1


def expand(value: str, mapping: Callable[[str], str]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(value)
    while cursor < n:
        if value[cursor] == _OPERATOR and cursor + 1 < n:
            out.append(value[checkpoint:cursor])
            read, is_var, advance = _read_variable_name(value[cursor + 1 :])
            out.append(mapping(read) if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + value[checkpoint:]


def mapping_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    """Look a name up in the contexts in order; an undefined name expands to ``$(name)`` unchanged."""

    def lookup(name: str) -> str:
        for ctx in contexts:
            if name in ctx:
                return ctx[name]
        return f"$({name})"

    return lookup
