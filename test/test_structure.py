"""The package's structure, as DESIGN.md section 5 fixes it: which parts may
import which, and functions short enough to read in one sitting.  Parsed
with ``ast``, so imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "espnet2_speechlm"
NAME = PKG.name


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports (absolute names)."""
    return _imports_in(path.read_text(), _module_name(path), path.name == "__init__.py", str(path))


def _imports_in(source: str, mod: str, is_package: bool, filename: str = "<source>") -> set[str]:
    package = mod if is_package else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            # "from . import x" and "from ..score import wer" name modules too
            out |= {f"{target}.{a.name}" for a in node.names}
    return {m for m in out if m == NAME or m.startswith(NAME + ".")}


def _graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports ("from .x import name" counts as x)."""
    raw = {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}
    return {m: {d for d in deps if d in raw} for m, deps in raw.items()}


def _part(module: str) -> str:
    """``espnet2_speechlm.infer.api`` -> ``infer``; a top-level module -> its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


FORBIDDEN = {  # importer part -> parts it must not import
    "infer": {"score", "train", "eval"},
    "score": {"infer", "data", "eval", "train", "model"},
    "model": {"tokenizers", "train", "data", "infer", "score", "eval"},
    "data": {"model", "train", "infer", "score", "eval"},
    "tokenizers": {"model", "train", "data", "infer", "score", "eval"},
}
GROUND_FLOOR = ("vocab", "tasks", "interleave", "config")


def _violations() -> list[str]:
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _part(dep) in FORBIDDEN.get(_part(mod), ()):
                bad.append(f"{mod} imports {dep}")
            if _part(mod) in GROUND_FLOOR and _part(dep) not in GROUND_FLOOR and dep != NAME:
                bad.append(f"{mod} (ground floor) imports {dep}")
    pairs = ((f"{NAME}.infer.generate", f"{NAME}.infer.beam_search"), (f"{NAME}.infer.beam_search", f"{NAME}.infer.generate"))
    graph = _graph()
    bad += [f"{a} imports {b}" for a, b in pairs if b in graph[a]]
    return sorted(set(bad))


def test_the_import_parser_sees_relative_and_nested_imports():
    """The checker itself: relative imports at any depth, inside functions."""
    src = "import os\ndef f():\n    from ..score import wer\n    from . import generate\n    from ..tasks import build_prompt\n"
    got = _imports_in(src, f"{NAME}.infer.probe", is_package=False)
    assert {f"{NAME}.score", f"{NAME}.score.wer", f"{NAME}.infer.generate", f"{NAME}.tasks"} <= got
    assert "os" not in got
    init = _imports_in("from .speechlm import MultiStreamLM\n", f"{NAME}.model", is_package=True)
    assert f"{NAME}.model.speechlm" in init


def test_imports_point_one_way():
    assert _violations() == []


def _long_functions(limit: int) -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


@pytest.mark.parametrize("limit", [100])
def test_no_function_is_longer_than_a_screenful_or_two(limit):
    assert _long_functions(limit) == []
