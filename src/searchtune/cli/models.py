"""``searchtune models``: list, show, promote, roll back and pull registered models.

A model is named by ``REF`` = ``<registry>/<model>[@<version|alias|latest>]``, e.g.
``./.searchtune/registry/searchtune-relevance@production`` or
``gs://bucket/registry/searchtune-relevance@3``. A bare ``<model>[@ref]`` uses
``--registry`` (default ``$SEARCHTUNE_REGISTRY`` or ``.searchtune/registry``), and a bare
``@ref`` also the default model ``searchtune-relevance``. Without ``@`` the version is
``production``.
"""

from __future__ import annotations

import argparse
import json
import logging

from searchtune.errors import SearchtuneError
from searchtune.registry import (
    DEFAULT_MODEL_NAME,
    DEFAULT_REGISTRY,
    PRODUCTION,
    ModelRegistry,
    default_actor,
)

log = logging.getLogger(__name__)


def parse_ref(ref: str, registry: str, default_version: str | None = PRODUCTION) -> tuple[ModelRegistry, str, str | None]:
    """Split ``<registry>/<model>@<version>`` into (registry, model, version).

    Args:
        ref: the reference; without a ``/`` it is a model name inside ``registry``.
        registry: the registry root used when ``ref`` names none.
        default_version: the version when ``ref`` has no ``@`` part.
    """
    location, at, version = ref.rpartition("@") if "@" in ref else (ref, "", "")
    version = version.strip() or (None if at else default_version)
    if at and version is None:
        raise SearchtuneError(f"'{ref}': nothing after '@' (use @3, @production or @latest)")
    location = location.rstrip("/")
    if location.startswith("gs://") and location.count("/") < 3:
        raise SearchtuneError(f"'{ref}': expected gs://bucket/registry/<model>")
    root, slash, model = location.rpartition("/")
    if not slash:
        root, model = registry, location or DEFAULT_MODEL_NAME  # "@3" alone: the default model
    if not model:
        raise SearchtuneError(f"'{ref}': no model name (expected <registry>/<model>@<version>)")
    return ModelRegistry(root or "/"), model, version


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.registry)
    names = [args.model] if args.model else registry.models()
    if not names:
        print(f"no models registered in {registry.root}")
        return 0
    for index, name in enumerate(names):
        manifests = registry.versions(name)
        alias = registry.alias(name, PRODUCTION)
        production = None if alias is None else int(alias["version"])
        rows = []
        for manifest in manifests:
            meta = manifest.get("metadata") or {}
            auc = meta.get("auc")
            rows.append([
                f"v{manifest['version']}",
                manifest.get("created_at", "")[:19].replace("T", " "),
                manifest.get("run_id") or "-",
                "-" if auc is None else f"{float(auc):.4f}",
                {True: "yes", False: "no"}.get(meta.get("blessed"), "-"),
                "production" if manifest["version"] == production else "",
            ])
        if index:
            print()
        print(f"{name}  ({registry.root}, {len(manifests)} version(s), production: "
              f"{'none' if production is None else f'v{production}'})")
        if rows:
            print(_table(rows, ["VERSION", "CREATED (UTC)", "RUN", "AUC", "BLESSED", "ALIAS"]))
    return 0


def _show(args: argparse.Namespace) -> int:
    registry, model, ref = parse_ref(args.ref, args.registry)
    manifest = registry.version(model, ref)
    names = {f["path"] for f in manifest["files"]}
    shown = {"manifest": manifest, "alias": registry.alias(model, PRODUCTION)}
    for key, name in (("evaluation", "evaluation.json"), ("blessing", "blessing.json"), ("lineage", "lineage.json"),
                      ("training_metrics", "training_metrics.json")):
        if name in names:
            shown[key] = json.loads(registry.read_file(model, manifest["version"], name))
    print(json.dumps(shown, indent=2, sort_keys=True, default=str))
    return 0


def _promote(args: argparse.Namespace) -> int:
    registry, model, ref = parse_ref(args.ref, args.registry, default_version=None)
    version = args.version or ref
    if version is None:
        raise SearchtuneError("say which version to promote: models promote <registry>/<model> VERSION")
    record = registry.promote(model, version, actor=args.actor, reason=args.reason)
    print(f"{model}@production: {_v(record['previous_version'])} -> v{record['version']}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry, model, _ref = parse_ref(args.ref, args.registry, default_version=None)
    record = registry.rollback(model, actor=args.actor, reason=args.reason)
    print(f"{model}@production rolled back: {_v(record['previous_version'])} -> v{record['version']}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    registry, model, ref = parse_ref(args.ref, args.registry)
    dest = registry.fetch(model, ref, args.dest)
    manifest = registry.version(model, ref)
    print(f"pulled {model} v{manifest['version']} ({len(manifest['files'])} files, checksums verified) to {dest}")
    return 0


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def add_parser(subparsers) -> None:
    """Add ``models`` and its sub-commands to the ``searchtune`` command."""
    parser = subparsers.add_parser(
        "models", help="list, show, promote, roll back and pull registered models",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--registry", default=DEFAULT_REGISTRY,
                         help=f"registry root used when REF names none (default {DEFAULT_REGISTRY})")
        sub.set_defaults(func=handler)
        return sub

    listing = add("list", _list, "table of versions: created, run, AUC, blessed, production marker")
    listing.add_argument("--model", default=None, help="only this model (default: all)")

    show = add("show", _show, "manifest, metrics, blessing and lineage of one version (JSON)")
    show.add_argument("ref", metavar="REF", help="<registry>/<model>@<version|production|latest>")

    promote = add("promote", _promote, "point production at a version (compare-and-swap)")
    promote.add_argument("ref", metavar="REF", help="<registry>/<model>")
    promote.add_argument("version", metavar="VERSION", nargs="?", help="3, v3 or latest")
    promote.add_argument("--reason", default="promoted by hand (searchtune models promote)")
    promote.add_argument("--actor", default=default_actor(), help="recorded as moved_by (default user@host)")

    rollback = add("rollback", _rollback, "point production back at its previous version")
    rollback.add_argument("ref", metavar="REF", help="<registry>/<model>")
    rollback.add_argument("--reason", default="rolled back by hand (searchtune models rollback)")
    rollback.add_argument("--actor", default=default_actor(), help="recorded as moved_by (default user@host)")

    pull = add("pull", _pull, "download a version, verify checksums, leave a folder serving can load")
    pull.add_argument("ref", metavar="REF", help="<registry>/<model>@<version|production|latest>")
    pull.add_argument("dest", metavar="DEST", help="local folder to create (must not exist or be empty)")

