"""Layering: no module imports from a layer above its own.

Lowest first: ``common`` (stdlib-level helpers) < ``arch``, ``vqvae`` < ``data_utils`` <
``generation`` < ``preprocess``, ``training`` < ``arguments`` (the command-line flags) <
``demo``, ``bench`` < the top-level entry scripts. A package may import itself and any lower
layer; packages that share a layer may not import each other unless the pair is listed in
``SIDEWAYS``. Every import statement counts, including those inside functions (a lazy import
is still a dependency).
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# top-level name -> rank (higher may import lower)
ENTRY_MODULES = ("generate_samples", "pretrain_gpt2", "preprocess_entry", "learning_rates", "web_demo")
LAYERS: Dict[str, int] = {
    "common": 0,
    "arch": 1,
    "vqvae": 1,
    "data_utils": 2,
    "generation": 3,
    "preprocess": 4,
    "training": 4,
    "arguments": 5,  # the flags: built into typed configs by the entry scripts, the evaluation, benchmarks
    "demo": 6,
    "bench": 6,
    **{name: 7 for name in ENTRY_MODULES},
    "env": 7,  # deployment scripts run on their own, outside the package tree
    "scripts": 7,  # launch helpers of the shell scripts, run on their own
}
# same-rank imports between different top-level names that are allowed (importer, imported)
SIDEWAYS: Set[Tuple[str, str]] = {
    ("demo", "bench"),  # demo.evaluate writes its section of bench/RESULTS.md through bench.results
    *((a, b) for a in ENTRY_MODULES for b in ENTRY_MODULES),  # entry modules form one layer
}
# known violations: (importing module, imported module) -> why it is tolerated
EXPECTED: Dict[Tuple[str, str], str] = {}
SKIPPED_DIRS = {"tests", "data", "__pycache__"}


def project_names() -> Set[str]:
    """Top-level importable names of the repo: packages (folders with __init__.py) and modules."""
    names = set()
    for entry in os.listdir(ROOT):
        path = os.path.join(ROOT, entry)
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names.add(entry)
    return names - {"tests"}


def source_files() -> Iterator[Tuple[str, str]]:
    """(dotted module name, path) of every non-test .py file."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield module.removesuffix(".__init__"), path


def imported_modules(module: str, path: str) -> Iterator[Tuple[int, str]]:
    """(line, absolute dotted name) of every import in the file, relative ones resolved."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target


def violation(importer: str, imported: str) -> Optional[str]:
    """Why ``importer`` may not import ``imported`` (both top-level names), or None."""
    if importer == imported:
        return None
    if importer == "common":
        return "common imports nothing of the project"
    low, high = LAYERS[imported], LAYERS[importer]
    if low > high:
        return f"{imported} (layer {low}) is above {importer} (layer {high})"
    if low == high and (importer, imported) not in SIDEWAYS:
        return f"{importer} and {imported} share layer {low} and may not import each other"
    return None


def found_imports() -> List[Tuple[str, str, int, str]]:
    """(importer module, imported module, line, reason) for every import that breaks a rule."""
    names = project_names()
    bad = []
    for module, path in source_files():
        importer = module.split(".")[0]
        for line, target in imported_modules(module, path):
            top = target.split(".")[0]
            if top in names:
                reason = violation(importer, top)
                if reason:
                    bad.append((module, target, line, reason))
    return bad


def test_every_project_name_has_a_layer():
    names = project_names() | {m.split(".")[0] for m, _ in source_files()}
    assert names - set(LAYERS) == set(), "place new top-level packages and modules in LAYERS"


def test_no_module_imports_from_a_layer_above():
    unexpected = [
        f"{m}:{line} imports {t}: {why}" for m, t, line, why in found_imports() if (m, t.split(".")[0]) not in EXPECTED
    ]
    assert not unexpected, "\n".join(unexpected)


def test_expected_exceptions_still_occur():
    """An exception whose import is gone must be deleted from EXPECTED."""
    seen = {(m, t.split(".")[0]) for m, t, _, _ in found_imports()}
    assert set(EXPECTED) - seen == set()


@pytest.mark.parametrize(
    "importer,imported,allowed",
    [
        ("arch", "vqvae", False),
        ("vqvae", "arch", False),
        ("arch", "common", True),
        ("common", "arch", False),
        ("data_utils", "arch", True),
        ("data_utils", "generation", False),
        ("preprocess", "training", False),
        ("training", "generation", True),
        ("demo", "training", True),
        ("training", "demo", False),
        ("bench", "demo", False),
        ("demo", "pretrain_gpt2", False),
        ("pretrain_gpt2", "learning_rates", True),
    ],
)
def test_rules(importer, imported, allowed):
    assert (violation(importer, imported) is None) == allowed
