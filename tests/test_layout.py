"""The package layout, read from the source with `ast` (nothing is imported).

Arrows point down: entry points (gms_relay) -> ingress / workers / simulator -> shared. The three
processes never import each other, and nothing shipped imports the tests or the benchmarks. Dotted
strings such as a job name ("workers.jobs.drain") are data, not imports, and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gms_relay", "ingress", "workers", "simulator", "shared")
NOT_SHIPPED = {"benchmarks", "tests"}
FORBIDDEN: dict[str, set[str]] = {
    "shared": {"ingress", "workers", "simulator", "gms_relay"} | NOT_SHIPPED,
    "ingress": {"workers", "simulator", "gms_relay"} | NOT_SHIPPED,
    "workers": {"ingress", "simulator", "gms_relay"} | NOT_SHIPPED,
    "simulator": {"ingress", "workers", "gms_relay"} | NOT_SHIPPED,
    "gms_relay": NOT_SHIPPED,
}
MAX_MODULE_LINES = 400


def _modules(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    return files


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in the module (relative ones stay in the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_the_import_scan_sees_imports_but_not_strings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os.path\nfrom shared.keys import x\nfrom . import sibling\n"
        "def f():\n    import workers.run\n"
        "JOB = 'ingress.app'\n",
        encoding="utf-8",
    )
    assert _imported_packages(module) == {"os", "shared", "workers"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_layout(package: str) -> None:
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in sorted(_imported_packages(path) & FORBIDDEN[package])
    ]
    assert not violations, f"{package}/ must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(
        violations
    )


def test_modules_are_small() -> None:
    """Size, not layout: every module (the shipped packages, benchmarks, tests, deploy scripts) stays at
    most MAX_MODULE_LINES lines."""
    too_long = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for package in (*PACKAGES, "benchmarks", "tests", "deploy")
        for path in _modules(package)
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(too_long)
