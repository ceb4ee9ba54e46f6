#!/usr/bin/env python3
"""Size limits of the product's code (run by ``make verify``).

No module under operator/ or runtime/ longer than MAX_MODULE_LINES, no function (or method) longer than
MAX_FUNCTION_LINES, from its ``def`` line to its last line.

    python .ci/check_sizes.py [ROOT ...]      # default: operator runtime
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80


def violations(root: Path, base: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(base) if path.is_relative_to(base) else path
        if "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            yield f"{rel}: {lines} lines (at most {MAX_MODULE_LINES})"
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    yield f"{rel}:{node.lineno}: {node.name}() is {n} lines (at most {MAX_FUNCTION_LINES})"


def main(argv: list[str]) -> int:
    base = Path.cwd()
    roots = [Path(a) for a in argv] or [Path("operator"), Path("runtime")]
    found = [v for root in roots for v in violations(root if root.is_absolute() else base / root, base)]
    for v in found:
        print(v, file=sys.stderr)
    if found:
        print(f"check_sizes: {len(found)} over the limits", file=sys.stderr)
        return 1
    print(f"check_sizes: modules <= {MAX_MODULE_LINES} lines, functions <= {MAX_FUNCTION_LINES} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
