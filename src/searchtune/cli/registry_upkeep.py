"""``searchtune models verify`` and ``models prune``: check a registry, remove what killed writers left, delete old versions.

Split from ``cli/models_command.py`` (the other ``models`` commands and the REF syntax) to keep
both short; what each keeps and why is in docs/registry.md.
"""

from __future__ import annotations

import argparse

from searchtune.cli import exit_codes
from searchtune.errors import SearchtuneError
from searchtune.registry import ModelRegistry, parse_ref

VERIFY_PROBLEMS = exit_codes.VERIFY_PROBLEMS

VERIFY_EPILOG = f"""exit codes:
  0  everything checked is as the manifests and alias records say
  {VERIFY_PROBLEMS}  problems were found (each printed on its own line)
  2  the command could not run (bad REF, unreachable registry)"""


def _repair_leftovers(registry: ModelRegistry, models: list[str] | None) -> None:
    """``verify --repair``: delete what killed writers left (``registry.cleanup``), say what stays and why."""
    removed, kept = registry.remove_leftovers(models)
    for leftover in removed:
        print(f"removed {leftover.uri} ({leftover.size} bytes, left by a killed write)")
    for leftover in kept:
        print(f"kept    {leftover.uri} (changed {leftover.age:.0f} s ago: may be a write in progress)")


def verify(args: argparse.Namespace) -> int:
    if args.ref:
        registry, model, ref = parse_ref(args.ref, args.registry, default_version=None)
        targets = [(model, ref)]
    else:
        registry = ModelRegistry(args.registry)
        targets = [(name, None) for name in registry.models(stored=True)]
    if args.repair:
        _repair_leftovers(registry, [model for model, _ref in targets] if args.ref else None)
    if not targets:
        print(f"no models registered in {registry.root}")
        return 0
    problems = 0
    for model, ref in targets:
        report = registry.verify(model, ref)
        print(f"{model}  ({registry.root})")
        for check in report.versions:
            status = "BROKEN" if check.problems else "ok"
            details = check.problems or [f"{check.files} file(s), {check.bytes / 1e6:.1f} MB, sizes and sha256 match"]
            print("\n".join(f"  v{check.version:<4} {status:<7} {line}" for line in details))
        for check in report.aliases:
            details = check.problems or [f"-> v{check.version}, history complete"]
            status = "BROKEN" if check.problems else "ok"
            print("\n".join(f"  @{check.alias}  {status:<7} {line}" for line in details))
            for note in check.notes:
                print(f"  @{check.alias}  note    {note}")
            if check.fix:
                print(f"  @{check.alias}  fix     {check.fix}")
        if not report.versions and not report.aliases:
            print("  no versions and no aliases")
        if report.incomplete:
            print(f"  note: {_vs(report.incomplete)} claimed without a manifest "
                  "(abandoned or still being written; never listed)")
        if report.being_pruned:
            print(f"  note: {_vs(report.being_pruned)} hidden by a prune that did not finish (never listed; "
                  "the next 'searchtune models prune' finishes it)")
        if report.pruned_meanwhile:
            print(f"  note: {_vs(report.pruned_meanwhile)} pruned while being checked")
        problems += len(report.problems())
    print(f"{problems} problem(s) found" if problems else "verified: no problems found")
    return VERIFY_PROBLEMS if problems else 0


def _vs(numbers: list[int]) -> str:
    return ", ".join(f"v{n}" for n in numbers)


def prune(args: argparse.Namespace) -> int:
    if args.ref:
        registry, model, _ref = parse_ref(args.ref, args.registry, default_version=None)
        names = [model]
    else:
        registry = ModelRegistry(args.registry)
        names = registry.models(stored=True)
    if args.keep < 1:
        raise SearchtuneError(f"--keep must be at least 1 (the newest version is always kept), got {args.keep}")
    if args.min_age < 0:
        raise SearchtuneError(f"--min-age must be 0 or more minutes, got {args.min_age:g}")
    for name in names:  # each model's outcome printed as it is done, should a later one be refused
        _print_prune(registry.root, registry.prune(name, args.keep, dry_run=args.dry_run, actor=args.actor,
                                                   min_age_minutes=args.min_age))
    if not names:
        print(f"no models registered in {registry.root}")
    return 0


def _print_prune(root: str, outcome) -> None:
    print(f"{outcome.model}  ({root}, {len(outcome.decisions)} version(s); keeping the newest {outcome.keep} and "
          "every version still needed)")
    for decision in outcome.decisions:
        if decision.kept_because is None:
            verb = "would delete" if outcome.dry_run else "kept" if decision.version in outcome.given_back else "deleted"
            why = outcome.given_back.get(decision.version) or f"{decision.files} file(s), {decision.bytes / 1e6:.1f} MB"
            print(f"  v{decision.version:<4} {verb:<12} {why}")
        elif not decision.kept_because.startswith("newest"):
            print(f"  v{decision.version:<4} {'keep':<12} {decision.kept_because}")
    if outcome.expired_leases:
        print(f"  removed {outcome.expired_leases} expired read lease(s)")
    doomed = outcome.doomed
    if outcome.dry_run:
        print(f"dry run: would delete {len(doomed)} version(s), {sum(d.bytes for d in doomed) / 1e6:.1f} MB; "
              "nothing changed")
    else:
        gone = [d for d in doomed if d.version in outcome.deleted]
        print(f"deleted {len(gone)} version(s), {sum(d.bytes for d in gone) / 1e6:.1f} MB")
