"""The gateway's import direction (DESIGN.md layout by stage): data flows receive -> enhance -> deliver over
storage, with dimse as the DICOM networking below them, and admin and web on top.

So the layers below the stages (`gateway.dimse`, `gateway.storage`) never import a stage or the tools on top,
and the stages never import `gateway.admin` or `gateway.web`. Every import counts, function-level ones too (a
lazy import is still a dependency; it only hides the cycle until it runs). A deliberate exception goes in
EXCEPTIONS with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent
STAGES = ("gateway.receive", "gateway.enhance", "gateway.deliver")
ON_TOP = ("gateway.admin", "gateway.web")

#: layer -> the packages it must not import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gateway.dimse": STAGES + ON_TOP,
    "gateway.storage": STAGES + ON_TOP,
    **{stage: ON_TOP for stage in STAGES},
}

#: (importing module, imported module) -> why this one is allowed.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, anywhere in it (relative imports resolved against its package)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # base.name: a module or a name in one; either way inside base (and `from gateway import web` is web)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path = PACKAGE.parent) -> list[str]:
    """What the modules of `root/gateway` import against the direction."""
    out = []
    for path in sorted((root / "gateway").rglob("*.py")):
        module = _module_name(path, root)
        for layer, banned in FORBIDDEN.items():
            if not _within(module, layer):
                continue
            for name in sorted(_imports(path, module)):
                hit = next((b for b in banned if _within(name, b)), None)
                if hit and (module, name) not in EXCEPTIONS:
                    out.append(f"{module} imports {name} ({layer} must not import {hit})")
    return out


def test_lower_layers_and_stages_do_not_import_upward() -> None:
    found = violations()
    assert not found, "imports against the gateway's direction:\n" + "\n".join(found)


def test_the_scan_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The check can fail: a lazy import inside a function and a relative one are both found (in a copy of the
    layout, not the package others are editing)."""
    (tmp_path / "gateway" / "storage").mkdir(parents=True)
    probe = tmp_path / "gateway" / "storage" / "_layering_probe.py"
    probe.write_text("def f() -> None:\n    from gateway.web import app\n    from ..admin import cli\n")
    (tmp_path / "gateway" / "enhance").mkdir()
    (tmp_path / "gateway" / "enhance" / "fine.py").write_text("from gateway.storage import state\n")
    found = violations(tmp_path)
    assert len(found) == 2
    assert "gateway.storage._layering_probe imports gateway.web.app (gateway.storage must not import gateway.web)" \
        in found
    assert "gateway.storage._layering_probe imports gateway.admin.cli (gateway.storage must not import gateway.admin)" \
        in found
