"""vecflow's API: one plain function per CLI command.

Every function takes a Config first (except init) and reports through `out`; cli.py builds the
command line from these functions and their docstrings, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vecflow.config import DEFAULT_CONFIG_NAME, Config
from vecflow.errors import CollectionNotFoundError, LedgerError, MultipleHeadsError, RevisionError, VecflowError
from vecflow.inspection import format_report, inspect_store
from vecflow.runtime.ledger import Ledger, Owner
from vecflow.runtime.runner import DOWNGRADE, UPGRADE, Runner
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores
from vecflow.script.directory import ScriptDirectory, render_template
from vecflow.script.revision import Revision

Out = Callable[[str], None]


@contextlib.contextmanager
def open_runner(config: Config, out: Out = print) -> Iterator[Runner]:
    """Open the script directory, ledger, snapshot store and stores of a project; close them after."""
    scripts = ScriptDirectory(config.script_location)
    ledger = Ledger(config.ledger)
    snapshots = SnapshotStore(config.ledger.parent / "snapshots.db")
    stores = Stores(config)
    try:
        yield Runner(config, scripts, ledger, snapshots, stores, out)
    finally:
        stores.close()
        snapshots.close()
        ledger.close()


@contextlib.contextmanager
def _holding_lease(runner: Runner) -> Iterator[Owner]:
    owner = Owner.current()
    runner.ledger.acquire_lease(owner, runner.config.lock_lease_seconds)
    try:
        yield owner
    finally:
        runner.ledger.release_lease(owner)


def init(directory: str = ".", script_dir: str = "versions", out: Out = print) -> Path:
    """Create a project: vecflow.ini and an empty script directory."""
    root = Path(directory)
    ini = root / DEFAULT_CONFIG_NAME
    if ini.exists():
        raise VecflowError(f"{ini} already exists; vecflow init creates new projects only")
    (root / script_dir).mkdir(parents=True, exist_ok=True)
    ini.write_text(render_template("vecflow.ini.j2", script_dir=script_dir), encoding="utf-8")
    out(f"Created {ini} and {root / script_dir}/")
    return ini


def revision(config: Config, message: str = "", use_yaml: bool = False, head: str = "head",
             branch_label: str | None = None, depends_on: Sequence[str] = (), rev_id: str | None = None,
             out: Out = print) -> Path:
    """Create a new revision script (Python, or YAML with --yaml) on top of a head."""
    scripts = ScriptDirectory(config.script_location)
    graph = scripts.revision_map
    if head == "head" and len(graph.heads) > 1:
        raise MultipleHeadsError(f"multiple heads are present ({', '.join(graph.heads)}); pass --head <revision> "
                                 "or '<branch>@head' to choose one, or run 'vecflow merge'")
    path = scripts.generate_revision(message, use_yaml=use_yaml, head=head, branch_label=branch_label,
                                     depends_on=depends_on, rev_id=rev_id)
    out(f"Generated {path}")
    return path


def merge(config: Config, revisions: Sequence[str] = ("heads",), message: str = "merge heads",
          rev_id: str | None = None, out: Out = print) -> Path:
    """Create a merge revision joining several heads (all heads by default)."""
    scripts = ScriptDirectory(config.script_location)
    parents = tuple(dict.fromkeys(r for spec in revisions for r in scripts.revision_map.resolve(spec)))
    if len(parents) < 2:
        raise RevisionError(f"a merge needs at least two revisions; {', '.join(revisions)} resolved to "
                            f"{', '.join(parents) or 'nothing'}")
    path = scripts.generate_revision(message, rev_id=rev_id, down_revisions=parents)
    out(f"Generated {path}")
    return path


def _migrate(config: Config, direction: str, target: str, dry_run: bool, verify: bool, out: Out) -> None:
    with open_runner(config, out) as runner:
        problems = runner.check_applied_scripts()
        if problems:
            raise LedgerError(problems[0])
        if dry_run:
            for line in runner.describe_plan(runner.plan(direction, target)):
                out(line)
            return
        with _holding_lease(runner) as owner:
            plan = runner.plan(direction, target)
            if not plan and not runner.ledger.unfinished_attempts():
                out("Nothing to do: already at the target.")
            runner.run(plan, owner, verify=verify)


def upgrade(config: Config, revision: str, dry_run: bool = False, verify: bool = True, out: Out = print) -> None:
    """Upgrade to a later revision (head, heads, +N, <rev>, <branch>@head); copies and moves are verified."""
    _migrate(config, UPGRADE, revision, dry_run, verify, out)


def downgrade(config: Config, revision: str, dry_run: bool = False, verify: bool = True, out: Out = print) -> None:
    """Revert to an earlier revision (-N, <rev>, base); digests (and moves back) are verified."""
    _migrate(config, DOWNGRADE, revision, dry_run, verify, out)


def _line(rev: Revision, verbose: bool, tags: str = "") -> str:
    parents = ", ".join(rev.down_revision) or "<base>"
    text = f"{parents} -> {rev.revision}{tags}, {rev.message}"
    if verbose:
        labels = f"\n    branch labels: {', '.join(rev.branch_labels)}" if rev.branch_labels else ""
        deps = f"\n    depends on: {', '.join(rev.depends_on)}" if rev.depends_on else ""
        text += f"\n    path: {rev.path}{labels}{deps}"
    return text


def _tags(graph, rev: Revision, applied: set[str] | None = None) -> str:
    tags = []
    if rev.revision in graph.heads:
        tags.append("head")
    if rev.is_merge:
        tags.append("mergepoint")
    if len(rev.nextrev) > 1:
        tags.append("branchpoint")
    if applied is not None and rev.revision in graph.heads_of(applied):
        tags.append("current")
    return f" ({', '.join(tags)})" if tags else ""


def current(config: Config, verbose: bool = False, out: Out = print) -> list[str]:
    """Show the current revision(s) of the ledger."""
    with open_runner(config, out) as runner:
        graph = runner.scripts.revision_map
        applied = runner.ledger.applied()
        heads = graph.heads_of({r for r in applied if r in graph})
        for rev_id in heads:
            rev = graph.get(rev_id)
            out(f"{rev_id}{_tags(graph, rev)}" + (f"\n    applied {applied[rev_id]['applied_at']}\n"
                                                 f"    {_line(rev, True)}" if verbose else ""))
        for problem in runner.check_applied_scripts():
            out(f"warning: {problem}")
        if not heads:
            out("<base> (nothing applied)")
        return list(heads)


def history(config: Config, rev_range: str | None = None, verbose: bool = False, out: Out = print) -> None:
    """List revisions newest first; -r a:b limits the range (base, head, current allowed)."""
    with open_runner(config, out) as runner:
        graph = runner.scripts.revision_map
        applied = {r for r in runner.ledger.applied() if r in graph}
        for rev in graph.history(rev_range, applied):
            out(_line(rev, verbose, _tags(graph, rev, applied)))


def heads(config: Config, verbose: bool = False, out: Out = print) -> list[str]:
    """Show the head revisions of the script directory."""
    graph = ScriptDirectory(config.script_location).revision_map
    for rev_id in graph.heads:
        rev = graph.get(rev_id)
        out(_line(rev, verbose, _tags(graph, rev)) if verbose else f"{rev_id}{_tags(graph, rev)}")
    return list(graph.heads)


def branches(config: Config, verbose: bool = False, out: Out = print) -> None:
    """Show the branch points: revisions with more than one child."""
    graph = ScriptDirectory(config.script_location).revision_map
    for rev in graph.branch_points():
        out(_line(rev, verbose, _tags(graph, rev)))
        for child in rev.nextrev:
            out(f"    -> {child}, {graph.get(child).message}")


def show(config: Config, revision: str, out: Out = print) -> None:
    """Show one revision: its edges, path, and planned upgrade and downgrade steps."""
    graph = ScriptDirectory(config.script_location).revision_map
    for rev_id in graph.resolve(revision):
        rev = graph.get(rev_id)
        script = rev.script
        out(f"Revision: {rev.revision}{_tags(graph, rev)}")
        out(f"Parent: {', '.join(rev.down_revision) or '<base>'}")
        if rev.nextrev:
            out(f"Children: {', '.join(rev.nextrev)}")
        for name, values in (("Branch labels", rev.branch_labels), ("Depends on", rev.depends_on)):
            if values:
                out(f"{name}: {', '.join(values)}")
        out(f"Path: {rev.path}")
        out(f"Message: {rev.message}")
        out("Upgrade:")
        for number, step in enumerate(script.upgrade_ops(), start=1):
            out(f"  {number}. {step.describe()}")
        explicit = script.downgrade_ops()
        out("Downgrade:" + ("" if explicit is not None else " (derived from the upgrade steps)"))
        if explicit is not None:
            for number, step in enumerate(explicit, start=1):
                out(f"  {number}. {step.describe()}")
        elif script.irreversible:
            out("  irreversible")
        else:
            for number, step in enumerate(reversed(script.upgrade_ops()), start=1):
                out(f"  {number}. undo {step.describe()}")


def stamp(config: Config, revision: str, purge: bool = False, out: Out = print) -> None:
    """Set the ledger to a revision without running any step (--purge empties it first)."""
    with open_runner(config, out) as runner, _holding_lease(runner) as owner:
        graph = runner.scripts.revision_map
        for attempt in runner.ledger.abandon_unfinished():
            out(f"Abandoned the unfinished {attempt['direction']} of {attempt['revision']}")
        if purge:
            runner.ledger.clear_applied()
        applied = {r for r in runner.ledger.applied() if r in graph}
        if revision == "base" or graph.resolve(revision, applied) == ():
            to_remove, to_add = graph.plan_downgrade(applied, "base"), []
        else:
            resolved = graph.resolve(revision, applied)
            to_add = graph.plan_upgrade(applied, revision)
            keep = graph.ancestors(resolved)
            to_remove = [r for r in graph.plan_downgrade(applied, "base") if r.revision not in keep]
        for rev in to_remove:
            runner.ledger.mark_unapplied(rev.revision)
            runner.ledger.record_stamp(rev.revision, DOWNGRADE, owner, rev.script.checksum)
            out(f"Stamped down: {rev.revision}")
        for rev in to_add:
            runner.ledger.mark_applied(rev.revision, rev.script.checksum, rev.path or "")
            runner.ledger.record_stamp(rev.revision, UPGRADE, owner, rev.script.checksum)
            out(f"Stamped up: {rev.revision}")


def inspect(config: Config, target: str = "", as_json: bool = False, out: Out = print) -> dict:
    """Show a store's collections as their application wrote them: count, dimension, metric, the
    detected layout and why, where the text lives, id kinds, and metadata fields with types, fill
    rate and an example (STORE, STORE:COLLECTION, or nothing for the default store). Read-only."""
    store, _, collection = (target or config.default_store).partition(":")
    stores = Stores(config)
    try:
        backend = stores.backend(store or config.default_store)
        if collection and not backend.has_collection(collection):
            raise CollectionNotFoundError(f"store {store!r} has no collection {collection!r}")
        report = inspect_store(backend, collection or None)
    finally:
        stores.close()
    if as_json:
        out(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        for line in format_report(report):
            out(line)
    return report


def check(config: Config, repair: bool = False, out: Out = print) -> None:
    """Verify the project: no edited applied scripts, one head, every revision reversible or marked.

    --repair records the current checksums of edited applied scripts (accepting the edits)."""
    with open_runner(config, out) as runner:
        graph = runner.scripts.revision_map
        problems = runner.check_applied_scripts()
        if repair and problems:
            with _holding_lease(runner):
                for rev_id, row in runner.ledger.applied().items():
                    if rev_id in graph and graph.get(rev_id).script.checksum != row["checksum"]:
                        runner.ledger.accept_checksum(rev_id, graph.get(rev_id).script.checksum)
                        out(f"Accepted the edit of {graph.get(rev_id).path}")
            problems = runner.check_applied_scripts()
        if len(graph.heads) > 1:
            problems.append(f"multiple heads are present ({', '.join(graph.heads)}); run 'vecflow merge'")
        for rev in graph:
            script = rev.script
            if script.has_downgrade or script.irreversible:
                continue
            blocking = [s.describe() for s in script.upgrade_ops() if not s.reversible]
            if blocking:
                problems.append(f"{rev.path}: no downgrade() and step(s) {'; '.join(blocking)} cannot be "
                                "reversed; write a downgrade or mark the revision irreversible = True")
        if problems:
            for problem in problems:
                out(f"error: {problem}")
            raise VecflowError(f"check failed: {len(problems)} problem(s)")
        out(f"OK: {len(graph)} revisions, head {', '.join(graph.heads) or '<none>'}, ledger matches the scripts")
