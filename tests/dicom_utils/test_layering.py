"""dicom_utils imports only pydicom, numpy and the standard library (DESIGN.md layout rule)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import dicom_utils

ALLOWED = {"pydicom", "numpy", "dicom_utils"}


def test_imports_stay_inside_the_layer() -> None:
    package = Path(dicom_utils.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in ALLOWED and top not in sys.stdlib_module_names:
                    offenders.append(f"{path.name}: {name}")
    assert not offenders, f"dicom_utils must not import these: {offenders}"
