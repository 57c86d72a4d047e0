"""The library speaks its own field names: no error it raises names a CLI flag.

The CLI maps the fields an error names to flags (``cli/errors.py``); a Python
user of ``mscn_geo`` must not read ``--overwrite`` where ``overwrite=True`` is meant.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mscn_geo

FLAG = re.compile(r"(?:^|[\s(`'\"])--[a-z][a-z-]+")


def _raised_strings(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found.append((sub.lineno, sub.value))
    return found


def test_library_errors_name_no_cli_flags() -> None:
    root = Path(mscn_geo.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, text in _raised_strings(tree):
            if FLAG.search(text):
                offenders.append(f"{path.relative_to(root)}:{line}: {text!r}")
    assert not offenders, "library errors naming CLI flags:\n" + "\n".join(offenders)


def test_the_check_sees_a_flag() -> None:
    tree = ast.parse('raise ValueError(f"--aoi {x}: no such file")')
    assert FLAG.search(_raised_strings(tree)[0][1])
