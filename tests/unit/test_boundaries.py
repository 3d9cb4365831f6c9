"""Architecture rules as tests: services never import each other; shared never imports services."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVICES = ("registry", "scheduler", "storage", "executor")


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def python_files(package: str) -> list[pathlib.Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_shared_never_imports_services() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "services")
        for p in python_files("shared")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    others = {f"services.{s}" for s in SERVICES if s != service} | {"services.embedded", "services.cli"}
    offenders = {}
    for path in python_files(f"services/{service}"):
        bad = sorted(m for m in imported_modules(path) if any(m == o or m.startswith(o + ".") for o in others))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}


def test_the_checker_sees_imports() -> None:
    # guards against a checker that silently finds nothing
    assert "shared.runlog.store" in imported_modules(ROOT / "shared" / "runlog" / "runs.py")
