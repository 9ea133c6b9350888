"""Print the longest modules and functions of the package (issue 19's size limits).

    python scripts/longest.py [--top 15] [--root src/lookalike]

Exit status 1 when a module is over 400 lines or a function over 60.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MODULE_LIMIT = 400
FUNCTION_LIMIT = 60


def functions(path: Path) -> list[tuple[int, str]]:
    """(lines, qualified name) of every function and method in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = child.lineno  # the def line: decorators (click options) not counted
                found.append((child.end_lineno - start + 1, f"{prefix}{child.name}"))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--root", type=Path, default=Path(__file__).parents[1] / "src" / "lookalike")
    args = parser.parse_args()
    files = sorted(args.root.rglob("*.py"))
    modules = sorted(((len(p.read_text(encoding="utf-8").splitlines()), p) for p in files),
                     reverse=True)
    funcs = sorted(((n, f"{p.relative_to(args.root.parent)}:{name}")
                    for p in files for n, name in functions(p)), reverse=True)
    print(f"longest modules (limit {MODULE_LIMIT} lines):")
    for n, p in modules[: args.top]:
        print(f"  {n:5d}  {p.relative_to(args.root.parent)}")
    print(f"longest functions (limit {FUNCTION_LIMIT} lines):")
    for n, name in funcs[: args.top]:
        print(f"  {n:5d}  {name}")
    over = [p.relative_to(args.root.parent) for n, p in modules if n > MODULE_LIMIT] + [f for n, f in funcs if n > FUNCTION_LIMIT]
    print(f"{len(over)} over the limits" + (": " + ", ".join(map(str, over)) if over else ""))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
