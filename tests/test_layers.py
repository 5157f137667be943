"""The layers' import rules and module sizes (README: Architecture).

- Step logic, storage, the registry, the ML core, parameters and records never import KFP:
  only ``orchestration/``, ``components/`` and ``pipelines/`` do, so every step runs and is
  tested as plain Python.
- The ML core never imports a step, the registry, orchestration or the CLI.
- No import climbs back up the layers (``LAYERS``): contracts, parameters and errors at the
  bottom, the CLI at the top.
- Serving never imports a step, Evidently or KFP (checked on the real import graph).
- No module is longer than 300 lines unless its docstring says why.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "searchtune"
MAX_LINES = 300


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules_of(*parts: str) -> list[Path]:
    paths = []
    for part in parts:
        target = PACKAGE / part
        paths += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return paths


@pytest.mark.parametrize("path", modules_of("steps", "io", "registry", "ml", "data", "params.py", "records.py",
                                            "errors.py", "logs.py"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_step_logic_io_registry_and_ml_never_import_kfp(path):
    kfp = sorted(m for m in imported_modules(path) if m == "kfp" or m.startswith("kfp."))
    assert not kfp, f"{path.relative_to(ROOT)} imports {kfp}; only orchestration/, components/ and pipelines/ may"


@pytest.mark.parametrize("path", modules_of("ml"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_ml_core_imports_no_higher_layer(path):
    higher = ("searchtune.steps", "searchtune.registry", "searchtune.orchestration", "searchtune.cli", "searchtune.serving")
    bad = sorted(m for m in imported_modules(path) if m.startswith(higher))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_serving_loads_without_steps_evidently_or_kfp():
    """The real import graph of the model server, in a fresh interpreter."""
    names = ["searchtune.serving." + p.stem for p in modules_of("serving") if p.name != "__init__.py"]
    assert names
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in names)
        + "bad = sorted(m for m in sys.modules if m.startswith(('searchtune.steps', 'evidently', 'kfp')))\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"serving imports {result.stdout.strip()}"


# What each layer may import (besides itself). "base" is the package root's modules: errors, logs,
# params, records, progress.
LAYERS = {
    "base": set(),
    "io": {"base"},
    "data": {"base"},
    "ml": {"base"},
    "registry": {"base", "io"},
    "serving": {"base", "io", "ml", "registry"},
    "steps": {"base", "io", "data", "ml", "registry"},
    "orchestration": {"base", "io", "data", "ml", "registry", "steps"},
    "cli": {"base", "io", "data", "ml", "registry", "serving", "steps", "orchestration"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


@pytest.mark.parametrize("path", modules_of("."), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_climbs_back_up_the_layers(path):
    module = "searchtune." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer_of(module.removesuffix(".__init__"))
    allowed = LAYERS[own] | {own}
    bad = sorted(m for m in imported_modules(path) if m.startswith("searchtune.") and layer_of(m) not in allowed)
    assert not bad, f"{path.relative_to(ROOT)} ({own}) imports {bad}"


@pytest.mark.parametrize("path", modules_of("."), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_short_or_say_why(path):
    lines = len(path.read_text().splitlines())
    if lines > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert f"{MAX_LINES} lines" in docstring, (
            f"{path.relative_to(ROOT)} has {lines} lines; split it, or say at its top why it is longer than {MAX_LINES} lines")
