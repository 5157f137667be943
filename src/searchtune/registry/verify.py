"""Check a model's versions and aliases against what the registry promises.

For each version checked: the manifest is a JSON object with a well-formed ``files`` list
and the right model name and number; every listed file exists with the listed size and
SHA-256 (streamed, so this reads every byte once); nothing else is stored in the version
besides ``CLAIM`` and ``MANIFEST.json``. For each alias: the record parses, points at a
visible version, and its history records parse, are named by their ``seq`` and have no
holes. A history record that only the next move would write (a mover died between the two
writes) is a note, not a problem: the registry repairs it itself. So are numbers claimed
without a manifest (an abandoned or still running registration), versions hidden by a prune
that did not finish (the next prune finishes it), and versions pruned while being verified.
"""

from __future__ import annotations

import dataclasses

from searchtune.errors import SearchtuneError
from searchtune.io import storage
from searchtune.registry import aliases, versions
from searchtune.registry.layout import CLAIM, MANIFEST, PRUNING, Layout


@dataclasses.dataclass
class VersionCheck:
    """What was found for one version."""

    version: int
    uri: str
    files: int = 0
    bytes: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AliasCheck:
    """What was found for one alias (and its history)."""

    alias: str
    uri: str
    version: int | None
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    fix: str | None = None  # the command that repairs it, when there is one


@dataclasses.dataclass
class Report:
    """The outcome of ``verify`` for one model.

    Attributes:
        incomplete: numbers claimed without a manifest (not problems).
        being_pruned: numbers a prune hid and has not finished deleting (not problems).
        pruned_meanwhile: versions that a prune removed while they were being checked.
    """

    model: str
    root: str
    versions: list[VersionCheck]
    aliases: list[AliasCheck]
    incomplete: list[int] = dataclasses.field(default_factory=list)
    being_pruned: list[int] = dataclasses.field(default_factory=list)
    pruned_meanwhile: list[int] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if nothing is wrong."""
        return not self.problems()

    def problems(self) -> list[str]:
        """Every problem as one line, prefixed by ``v<n>:`` or ``@<alias>:``."""
        return ([f"v{c.version}: {p}" for c in self.versions for p in c.problems]
                + [f"@{c.alias}: {p}" for c in self.aliases for p in c.problems])


def check_version(layout: Layout, model: str, number: int, listed: dict[str, int]) -> VersionCheck:
    """Verify one visible version against its manifest, reading every byte."""
    check = VersionCheck(number, layout.version(model, number))
    try:
        manifest = versions.read_manifest(layout, model, number)
    except SearchtuneError as error:
        check.problems.append(str(error).replace(check.uri + "/", "", 1))
        return check
    if manifest.get("version") != number:
        check.problems.append(f"{MANIFEST} says version {manifest.get('version')!r}")
    if manifest.get("model") != model:
        check.problems.append(f"{MANIFEST} says model {manifest.get('model')!r}")
    malformed = versions.malformed_entries(manifest)
    check.problems.extend(malformed)
    if malformed:
        return check
    for entry in manifest["files"]:
        uri = storage.join(check.uri, entry["path"])
        if uri not in listed:
            check.problems.append(f"{entry['path']}: missing")
            continue
        try:
            size, digest = versions.hash_object(uri)
        except SearchtuneError as error:
            check.problems.append(f"{entry['path']}: {str(error).replace(uri + ': ', '', 1)}")
            continue
        if (size, digest) != (entry["size"], entry["sha256"]):
            check.problems.append(f"{entry['path']}: {size} bytes sha256 {digest[:12]}…, manifest says "
                                  f"{entry['size']} bytes sha256 {entry['sha256'][:12]}…")
        check.files += 1
        check.bytes += size
    expected = {p["path"] for p in manifest["files"]} | {CLAIM, MANIFEST, PRUNING}  # PRUNING: being given back
    for uri in listed:
        if uri.startswith(check.uri + "/") and storage.relative(uri, check.uri) not in expected:
            check.problems.append(f"{storage.relative(uri, check.uri)}: stored but not in the manifest")
    return check


def check_alias(layout: Layout, model: str, alias: str, claimed: set[int], visible: set[int]) -> AliasCheck:
    """Verify an alias record, where it points, and its history."""
    state = aliases.read(layout, model, alias)
    check = AliasCheck(alias, state.uri, state.version)
    ref = f"{layout.root}/{model}"
    if state.raw is None:
        check.problems.append("no alias record")
    elif state.problem:
        check.problems.append(f"alias record cannot be read ({state.problem})")
        check.fix = f"searchtune models promote {ref} {'VERSION ' if visible else ''}--repair"
    elif state.version not in visible:
        why = "claimed but never completed" if state.version in claimed else "no such version"
        check.problems.append(f"points at v{state.version}, which has no manifest ({why})")
        check.fix = (f"searchtune models promote {ref} VERSION (one of {', '.join(f'v{n}' for n in sorted(visible))})"
                     if visible else f"searchtune models promote {ref} --repair (no version left: removes the alias)")
    known, history_problems = aliases.history_records(layout, model, alias)
    check.problems.extend(history_problems)
    current_seq = None if state.record is None else state.record["seq"]
    last = max([*known, current_seq or 0])
    holes = [seq for seq in range(1, last + 1) if seq not in known and seq != current_seq]
    if holes:
        check.problems.append(f"alias history lacks record(s) {', '.join(f'#{s}' for s in holes)}")
    if current_seq is not None and current_seq not in known:
        check.notes.append(f"history record #{current_seq} not written yet; the next move writes it")
    return check


def verify(layout: Layout, model: str, numbers: list[int] | None = None, alias_names: list[str] | None = None) -> Report:
    """Check versions and aliases of ``model``.

    Args:
        layout: the registry's layout.
        model: the model's name.
        numbers: the versions to check; None for every visible version.
        alias_names: the aliases to check; None for every alias.

    Returns:
        The report; ``report.ok`` is False if anything is wrong.
    """
    listed = versions.listing(layout, model)
    claimed, visible = versions.numbers_in_use(layout, model, listed)
    checked = [check_version(layout, model, n, listed) for n in (sorted(visible) if numbers is None else numbers)]
    names = aliases.names(layout, model) if alias_names is None else alias_names
    alias_checks = [check_alias(layout, model, name, claimed, visible) for name in names]
    hidden = versions.numbers_being_pruned(layout, model, listed)
    report = Report(model, layout.root, checked, alias_checks)
    if numbers is None:
        report.incomplete, report.being_pruned = sorted(claimed - visible - hidden), sorted(hidden)
    if any(c.problems for c in checked):  # a prune running now removes versions under our feet: not damage
        _claimed, still_visible = versions.numbers_in_use(layout, model)
        report.pruned_meanwhile = [c.version for c in checked if c.version not in still_visible]
        report.versions = [c for c in checked if c.version in still_visible]
    return report
