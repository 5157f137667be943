"""Every reference a reader may follow resolves: dotted ``searchtune.`` paths in docs, docstrings and
comments import (and name an attribute that exists), and repository paths named in the docs exist (from the root or the doc's folder).

A module that moves or a function that is renamed leaves its old name behind in prose; this finds it.
"""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"(?<![\w./-])searchtune(?:\.[A-Za-z_][A-Za-z_0-9]*)+")
REPO_PATH = re.compile(r"(?<![\w./-])((?:src|bench|components|pipelines|images|manifests|docs|tests)/[\w./-]+"
                       r"\.(?:py|md|yaml|json|png|lock|sh|parquet))")
PROSE = ["*.md", "docs/*.md", "components/*/README.md", "src/**/*.md", "images/*.md", "manifests/**/*.md"]
CODE = ["src/**/*.py", "components/**/*.py", "pipelines/*.py", "bench/**/*.py", "tests/*.py", "manifests/**/*.yaml",
        "images/Dockerfile*", "Makefile"]


def files(patterns: list[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in ROOT.glob(pattern) if ".venv" not in p.parts})


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_dotted_searchtune_path_imports():
    broken = sorted({f"{path.relative_to(ROOT)}: {name}" for path in files(PROSE + CODE)
                     for name in DOTTED.findall(path.read_text(errors="replace")) if not resolves(name)})
    assert not broken, "stale references:\n" + "\n".join(broken)


def test_every_repository_path_in_the_docs_exists():
    missing = sorted({f"{path.relative_to(ROOT)}: {name}" for path in files(PROSE)
                      for name in REPO_PATH.findall(path.read_text(errors="replace"))
                      if not (ROOT / name).exists() and not (path.parent / name).exists()})
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)
