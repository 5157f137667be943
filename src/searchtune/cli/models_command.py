"""``searchtune models``: list, show, verify, promote, roll back, prune and pull models; show candidates.

A model is named by ``REF`` = ``<registry>/<model>[@<version|alias|latest>]``, e.g.
``./.searchtune/registry/searchtune-relevance@production`` or
``gs://bucket/registry/searchtune-relevance@3``. A bare ``<model>[@ref]`` uses
``--registry`` (default ``$SEARCHTUNE_REGISTRY`` or ``.searchtune/registry``), and a bare
``@ref`` also the default model ``searchtune-relevance``. Without ``@`` the version is
``production``.

Repairs:
  promote REF VERSION --repair   production's record cannot be read, or it points at a
                                 version that is gone: point it at VERSION (history kept)
  promote REF --repair           the same when no version exists at all: removes the alias
                                 (recorded in its history); the next blessed run becomes
                                 production
  verify [REF] --repair          removes the temporary files killed writers left
  prune [REF] --keep N           deletes old versions; never an aliased one, a rollback
                                 target or one being read (--dry-run lists them first)
What each keeps and why, and pruning on a schedule: docs/registry.md.
"""

from __future__ import annotations

import argparse
import json
import logging

from searchtune import records
from searchtune.cli.help_text import plain_text
from searchtune.errors import SearchtuneError
from searchtune.registry import (
    DEFAULT_MODEL_NAME,
    DEFAULT_REGISTRY,
    PRODUCTION,
    ModelRegistry,
    default_actor,
    parse_ref,
)

log = logging.getLogger(__name__)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _production_label(registry: ModelRegistry, name: str, health: list[dict]) -> tuple[int | None, str]:
    try:
        alias = registry.alias(name, PRODUCTION)
    except SearchtuneError:  # unreadable alias: still list the versions, say how to find out more
        return None, "UNREADABLE (see 'searchtune models verify')"
    production = None if alias is None else int(alias["version"])
    if production is not None and production not in {entry["version"] for entry in health}:
        return production, f"v{production}, which is GONE (see 'searchtune models verify')"
    return production, "none" if production is None else f"v{production}"


def _list(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.registry)
    names = [args.model] if args.model else registry.models(stored=True)
    if not names:
        print(f"no models registered in {registry.root}: `make run` (or `searchtune run --registry {registry.root}`) "
              "registers the first one when the gate blesses it; `--no-require-beat-base` registers one it refused")
        return 0
    for index, name in enumerate(names):
        health = registry.version_health(name)
        production, label = _production_label(registry, name, health)
        rows, broken = [], []
        for entry in health:
            manifest = entry["manifest"] or {}
            meta = manifest.get("metadata") or {}
            auc = meta.get("auc")
            rows.append([
                f"v{entry['version']}",
                manifest.get("created_at", "")[:19].replace("T", " "),
                manifest.get("run_id") or "-",
                "-" if auc is None else f"{float(auc):.4f}",
                {True: "yes", False: "no"}.get(meta.get("blessed"), "-"),
                "BROKEN" if entry["problems"] else "ok",
                "production" if entry["version"] == production else "",
            ])
            broken.extend(f"  v{entry['version']}: {problem}" for problem in entry["problems"])
        if index:
            print()
        print(f"{name}  ({registry.root}, {len(health)} version(s), production: {label})")
        if rows:
            print(_table(rows, ["VERSION", "CREATED (UTC)", "RUN", "AUC", "BLESSED", "FILES", "ALIAS"]))
        if broken:
            print("FILES checks existence and size only; 'searchtune models verify' also checks sha256:")
            print("\n".join(broken))
    return 0


def _show(args: argparse.Namespace) -> int:
    registry, model, ref = parse_ref(args.ref, args.registry)
    manifest = registry.version(model, ref)
    names = {f["path"] for f in manifest["files"]}
    shown = {"manifest": manifest, "alias": registry.alias(model, PRODUCTION)}
    for key, record in (("evaluation", records.Evaluation), ("blessing", records.Blessing), ("lineage", records.Lineage)):
        if record.FILE in names:
            shown[key] = json.loads(registry.read_file(model, manifest["version"], record.FILE))
    print(json.dumps(shown, indent=2, sort_keys=True, default=str))
    return 0


def _promote(args: argparse.Namespace) -> int:
    registry, model, ref = parse_ref(args.ref, args.registry, default_version=None)
    version = args.version or ref
    if version is None and args.repair:  # nothing to point at: the one way out is to remove the alias
        record = registry.clear_production(model, actor=args.actor, reason=args.reason)
        print(f"{model}@production: removed (it {record['cleared']}; history #{record['seq']} records it); "
              "the next run starts as a first run and its blessed model becomes production")
        return 0
    if version is None:
        raise SearchtuneError("say which version to promote: models promote <registry>/<model> VERSION")
    record = registry.promote(model, version, actor=args.actor, reason=args.reason, repair=args.repair)
    print(f"{model}@production: {_from(record)} -> v{record['version']}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    registry, model, _ref = parse_ref(args.ref, args.registry, default_version=None)
    record = registry.rollback(model, actor=args.actor, reason=args.reason, repair=args.repair)
    print(f"{model}@production rolled back: {_from(record)} -> v{record['version']}")
    return 0


def _from(record: dict) -> str:
    if "repaired" in record:
        return (f"unreadable record (last recorded target {_v(record['previous_version'])}; "
                f"replaced record kept in history #{record['seq']})")
    return _v(record["previous_version"])


def _pull(args: argparse.Namespace) -> int:
    registry, model, ref = parse_ref(args.ref, args.registry)
    dest = registry.fetch(model, ref, args.dest)
    manifest = registry.version(model, ref)
    print(f"pulled {model} v{manifest['version']} ({len(manifest['files'])} files, checksums verified) to {dest}")
    return 0


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


def _gate(record: dict) -> str:
    value = record.get("value")
    if value is None:
        return "-"
    text = f"{record.get('gate_metric') or 'value'} {_number(value)}"
    if record.get("low") is not None and record.get("high") is not None:
        text += f" [{_number(record['low'])}, {_number(record['high'])}]"
    return text


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _candidates(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise SearchtuneError(f"--limit must be at least 1, got {args.limit}")
    registry, model, _ref = parse_ref(args.ref or DEFAULT_MODEL_NAME, args.registry, default_version=None)
    entries = registry.candidates(model, limit=None if args.refused else args.limit)
    if args.refused:
        entries = [r for r in entries if r.get("blessed") is False or "unreadable" in r][:args.limit]
    print(f"{model} candidates  ({registry.root}, newest first, {len(entries)} shown)")
    rows = []
    for record in entries:
        if "unreadable" in record:
            rows.append(["?", "?", "UNREADABLE", "-", f"{record['uri']}: {record['unreadable']}"])
            continue
        rows.append([
            str(record.get("created_at", ""))[:19].replace("T", " "),
            record.get("run_id") or "-",
            {True: "blessed", False: "refused"}.get(record.get("blessed"), "?"),
            _gate(record),
            str(record.get("reason") or "-"),
        ])
    if rows:
        print(_table(rows, ["TIME (UTC)", "RUN", "VERDICT", "GATE", "REASON"]))
    return 0


REPAIR_HELP = ("replace the production alias record even if it cannot be read (compare-and-swap on the broken "
               "object; what it held is kept in the new history record); without it a broken record is refused. "
               "Without VERSION, when the model has no version at all: remove the alias that points nowhere "
               "(recorded in its history), so the next run starts as a first run")


def add_parser(subparsers) -> None:
    from searchtune.cli import registry_upkeep as upkeep
    """Add ``models`` and its sub-commands to the ``searchtune`` command."""
    parser = subparsers.add_parser(
        "models", help="list, show, verify, promote, roll back, prune and pull registered models; show candidates",
        description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--registry", default=DEFAULT_REGISTRY,
                         help=f"registry root used when REF names none (default {DEFAULT_REGISTRY})")
        sub.set_defaults(func=handler)
        return sub

    listing = add("list", _list, "table of versions: created, run, AUC, blessed, files present with the right "
                  "sizes (no sha256: see verify), production marker")
    listing.add_argument("--model", default=None, help="only this model (default: all)")

    verify = add("verify", upkeep.verify, "check manifests, every file's size and sha256, aliases and their history")
    verify.epilog = upkeep.VERIFY_EPILOG
    verify.formatter_class = argparse.RawDescriptionHelpFormatter
    verify.add_argument("ref", metavar="REF", nargs="?", default=None,
                        help="<registry>/<model>[@<version|alias|latest>] (default: every model in --registry)")
    verify.add_argument("--repair", action="store_true",
                        help="first remove the temporary files killed writers left (*.searchtune-tmp, probes under "
                        "_probes/) once untouched for 15 minutes; nothing else is changed")

    show = add("show", _show, "manifest, metrics, blessing and lineage of one version (JSON)")
    show.add_argument("ref", metavar="REF", help="<registry>/<model>@<version|production|latest>")

    promote = add("promote", _promote, "point production at a version (compare-and-swap)")
    promote.add_argument("ref", metavar="REF", help="<registry>/<model>")
    promote.add_argument("version", metavar="VERSION", nargs="?",
                         help="3, v3 or latest (none with --repair on a model without versions: see --repair)")
    promote.add_argument("--reason", default="promoted by hand (searchtune models promote)",
                         help="why, recorded in the alias history (default: %(default)s)")
    promote.add_argument("--actor", default=default_actor(), help="recorded as moved_by (default user@host)")
    promote.add_argument("--repair", action="store_true", help=REPAIR_HELP)

    rollback = add("rollback", _rollback, "point production back at its previous version")
    rollback.add_argument("ref", metavar="REF", help="<registry>/<model>")
    rollback.add_argument("--reason", default="rolled back by hand (searchtune models rollback)",
                          help="why, recorded in the alias history (default: %(default)s)")
    rollback.add_argument("--actor", default=default_actor(), help="recorded as moved_by (default user@host)")
    rollback.add_argument("--repair", action="store_true", help=REPAIR_HELP + "; the target is the version before "
                          "the last move recorded in the alias history")

    prune = add("prune", upkeep.prune, "delete old versions beyond the newest N; never one an alias points at, an alias's "
                "rollback target, or one being read (fetched)")
    prune.add_argument("ref", metavar="REF", nargs="?", default=None,
                       help="<registry>/<model> (default: every model in --registry)")
    prune.add_argument("--keep", type=int, required=True, metavar="N", help="keep the newest N versions (N >= 1)")
    prune.add_argument("--min-age", type=float, default=60, metavar="MINUTES",
                       help="also keep versions registered less than this long ago: a run may be about to make one "
                       "production (default 60)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    prune.add_argument("--actor", default=default_actor(), help="recorded in the prune lock (default user@host)")

    pull = add("pull", _pull, "download a version, verify checksums, leave a folder serving can load")
    pull.add_argument("ref", metavar="REF", help="<registry>/<model>@<version|production|latest>")
    pull.add_argument("dest", metavar="DEST", help="local folder to create (must not exist or be empty)")

    log_of = add("candidates", _candidates, "evaluated candidates, blessed and refused: time, run, gate metric "
                 "and interval, verdict, reason")
    log_of.add_argument("ref", metavar="MODEL", nargs="?", default=None,
                        help=f"<registry>/<model> or a model in --registry (default {DEFAULT_MODEL_NAME})")
    log_of.add_argument("--limit", type=int, default=20, help="show at most this many, newest first (default 20)")
    log_of.add_argument("--refused", action="store_true", help="only refused candidates")

