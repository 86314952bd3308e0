"""Every module of the package imports on its own, first, in a clean interpreter (no import cycle
hidden by the order in which other modules happened to be imported)."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = r"""
import importlib, json, pkgutil, sys
import sibnet
names = sorted(m.name for m in pkgutil.walk_packages(sibnet.__path__, "sibnet.") if not m.name.endswith("__main__"))
failed = {}
for name in names:
    for key in [k for k in sys.modules if k == "sibnet" or k.startswith("sibnet.")]:
        del sys.modules[key]
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"n": len(names), "failed": failed}))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n"] > 50
    assert out["failed"] == {}


def loaded_package_modules(*modules: str) -> list[str]:
    """The sibnet modules a fresh interpreter holds after importing ``modules``, sorted."""
    code = (f"import json, sys, {', '.join(modules)}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sibnet'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def test_the_configuration_layer_imports_nothing_above_it():
    """docs/architecture.md, layer 0: the configuration (with the loss and recipe option tables it
    checks) imports nothing of the package but the errors."""
    assert loaded_package_modules("sibnet.config") == ["sibnet", "sibnet.config", "sibnet.errors",
                                                       "sibnet.loss_options", "sibnet.recipe_options"]


def test_the_rendering_helpers_of_report_import_only_the_errors():
    """docs/architecture.md: report.figures and report.html serve the monitor (layer 6) as well, so
    importing them must load nothing of the package but the errors."""
    assert loaded_package_modules("sibnet.report.figures", "sibnet.report.html") == [
        "sibnet", "sibnet.errors", "sibnet.report", "sibnet.report.figures", "sibnet.report.html"]


def test_the_package_imports_its_own_modules_at_the_top():
    """docs/architecture.md: an import of a sibnet module inside a function would hide a cycle or a
    layering violation; only the commands import lazily (the CLI loads just the subcommand used)."""
    import ast
    from pathlib import Path

    import sibnet

    root = Path(sibnet.__file__).parent
    inside = []
    for path in sorted(root.rglob("*.py")):
        if "commands" in path.relative_to(root).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            own = (isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("sibnet"))
                   or isinstance(node, ast.Import) and any(a.name.startswith("sibnet") for a in node.names))
            if own and id(node) not in top:
                inside.append(f"{path.relative_to(root)}:{node.lineno}")
    assert inside == []
