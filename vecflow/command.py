"""vecflow's API: one plain function per CLI command.

Every function takes a Config first (except init) and reports through `out`; cli.py builds the
command line from these functions and their docstrings, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vecflow.backends import backend_class
from vecflow.config import DEFAULT_CONFIG_NAME, Config, StoreConfig
from vecflow.errors import (
    CollectionNotFoundError,
    ConfigError,
    DryRunFailedError,
    LedgerError,
    LockError,
    MultipleHeadsError,
    OperationError,
    RevisionError,
    VecflowError,
)
from vecflow.inspection import format_report, inspect_store
from vecflow.operations.moves import CopyCollectionOp
from vecflow.runtime.ledger import DONE, FAILED, Ledger, Owner
from vecflow.runtime.runner import DOWNGRADE, UPGRADE, Runner
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores
from vecflow.script.directory import ScriptDirectory, render_template
from vecflow.script.revision import Revision

Out = Callable[[str], None]


@contextlib.contextmanager
def open_runner(config: Config, out: Out = print, read_only: bool = False) -> Iterator[Runner]:
    """Open the script directory, ledger, snapshot store and stores of a project; close them after.

    read_only (dry runs): nothing is written anywhere. The ledger and vecflow's state are read
    into memory, snapshots and stores are only read (Backend.open_read_only), and Python writes
    no bytecode cache for the scripts and user modules it imports."""
    bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = bytecode or read_only
    try:
        scripts = ScriptDirectory(config.script_location)
        ledger = Ledger(config.ledger, read_only=read_only)
        try:
            snapshots = SnapshotStore(config.ledger.parent / "snapshots.db", read_only=read_only)
        except BaseException:
            ledger.close()
            raise
        stores = Stores(config, out=out, read_only=read_only)
        try:
            yield Runner(config, scripts, ledger, snapshots, stores, out)
        finally:
            stores.close()
            snapshots.close()
            ledger.close()
    finally:
        sys.dont_write_bytecode = bytecode


@contextlib.contextmanager
def _holding_lease(runner: Runner) -> Iterator[Owner]:
    owner = Owner.current()
    runner.ledger.acquire_lease(owner, runner.config.lock_lease_seconds)
    runner.stores.guard_writes(runner.ledger.check_lease)
    try:
        yield owner
    finally:
        runner.stores.guard_writes(None)
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
    with open_runner(config, out, read_only=dry_run) as runner:
        problems = runner.check_applied_scripts()
        if problems:
            raise LedgerError(problems[0])
        if dry_run:
            report = runner.dry_run(runner.plan(direction, target))
            for line in report.lines():
                out(line)
            if failure := report.failure():
                raise DryRunFailedError(failure)
            return
        with _holding_lease(runner) as owner:
            settled = runner.settle_unfinished(direction, target, owner, verify)
            plan = runner.plan(direction, target)
            if not plan and not settled:
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


def current(config: Config, verbose: bool = False, check_heads: bool = False, out: Out = print) -> list[str]:
    """Show the current revision(s) of the ledger, unfinished attempts and a runner holding the
    lock; --check-heads fails unless the ledger is at the script directory's heads."""
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
        for line in _unfinished_lines(runner) + _runner_lines(runner):
            out(line)
        if check_heads and set(heads) != set(graph.heads):
            raise VecflowError(f"the ledger is at {', '.join(heads) or 'base'}, not at the head(s) "
                               f"{', '.join(graph.heads) or '<none>'}")
        return list(heads)


def _unfinished_lines(runner: Runner) -> list[str]:
    """One line per unfinished attempt: what, since when, by whom, where it stopped, why."""
    lines = []
    for attempt in runner.ledger.unfinished_attempts():
        steps = runner.ledger.steps(attempt["id"])
        where = ""
        if steps:
            last = steps[-1]
            where = f"; step {last['step_index'] + 1} ({last['description']}) {last['status']} at {last['rows_done']} rows"
        error = f": {' '.join(attempt['error'].split())}" if attempt["error"] else ""
        lines.append(f"unfinished: {attempt['direction']} of {attempt['revision']} ({attempt['outcome']}), started "
                     f"{attempt['started_at']} by {attempt['user']}@{attempt['host']}{where}{error}")
    return lines


def _runner_lines(runner: Runner) -> list[str]:
    """The runner holding the lock, if its lease is live."""
    holder = runner.ledger.lease_holder()
    if holder is None or holder["expires_at"] < time.time():
        return []
    return [f"running: {holder['user']}@{holder['host']} (pid {holder['pid']}) holds the lock since "
            f"{holder['acquired_at']} (last heartbeat {holder['heartbeat_at']})"]


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
        problems += _unfinished_lines(runner)
        current_heads = graph.heads_of({r for r in runner.ledger.applied() if r in graph})
        if set(current_heads) != set(graph.heads):
            problems.append(f"the ledger is at {', '.join(current_heads) or 'base'}, not at the head(s) "
                            f"{', '.join(graph.heads) or '<none>'}; run 'vecflow upgrade heads'")
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


def snapshots(config: Config, action: str = "list", out: Out = print) -> list[dict]:
    """List the snapshots lossy steps took (rows, size, whether a downgrade or an unfinished attempt
    still needs them); `prune` deletes those nothing needs and shrinks snapshots.db."""
    with open_runner(config, out) as runner:
        needed = runner.ledger.needed_snapshots()
        listing = [{**row, "needed": row["name"] in needed} for row in runner.snapshots.listing()]
        if action == "prune":
            with _holding_lease(runner):
                needed = runner.ledger.needed_snapshots()
                unneeded = [row for row in listing if row["name"] not in needed]
                before = runner.snapshots.file_bytes()
                runner.snapshots.remove([row["name"] for row in unneeded])
                out(f"Pruned {len(unneeded)} snapshot(s) ({sum(r['rows'] for r in unneeded)} rows); "
                    f"snapshots.db {_megabytes(before)} -> {_megabytes(runner.snapshots.file_bytes())}")
            return [row for row in listing if row["needed"]]
        for row in listing:
            use = "needed" if row["needed"] else "not needed"
            out(f"{row['name']}: {row['kind']}, {row['rows']} rows, {_megabytes(row['bytes'])} ({use})")
        if not listing:
            out("no snapshots")
        return listing


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# export and import: one checkpointed copy between a store and a folder of files ------------------

EXPORT, IMPORT = "export", "import"


def export(config: Config, collection: str, path: str, file_format: str = "parquet", out: Out = print) -> None:
    """Copy a collection into a folder of Parquet, VDF (vector-io) or JSON lines files.

    The folder gets a manifest with the collection's count, dimension, metric, layout, embedding
    model and digest. Recorded in the ledger, resumable (rerun the same command), verified like
    copy_collection."""
    root, name = backend_class("files").export_location(path)
    with open_runner(_with_files_store(config, EXPORT, root, file_format), out) as runner:
        source, target = runner.stores.canonical(collection), f"@{EXPORT}:{name}"
        files = runner.stores.backend(f"@{EXPORT}")
        folder = root / name

        def precheck() -> None:
            backend, source_name = runner.stores.resolve(source)
            if not backend.has_collection(source_name):
                raise CollectionNotFoundError(f"store {source.partition(':')[0]!r} has no collection {source_name!r}")
            if files.has_collection(name) and files.count(name):
                raise OperationError(f"{folder} already holds an export of {files.count(name)} records; remove it or "
                                     "export to another folder")
            if folder.is_dir() and any(folder.iterdir()) and not files.has_collection(name):
                raise OperationError(f"{folder} is a folder that is not empty; export to a new or empty folder")

        def seal() -> None:
            backend, source_name = runner.stores.resolve(source)
            files.seal(name, backend.collection_metadata(source_name), backend.name)

        label = shlex.join([source, str(folder), *(["--format", file_format] if file_format != "parquet" else [])])
        step = CopyCollectionOp(source=source, target=target, target_params={"format": file_format})
        _run_copy(runner, EXPORT, label, step, precheck, seal)
        manifest = files.manifest(name)
        out(f"Exported {source} to {folder}: {manifest['count']} records ({manifest['format']}), "
            f"digest {manifest['digest']}")


def import_(config: Config, path: str, collection: str, out: Out = print) -> None:
    """Copy an export folder (or a VDF folder vector-io wrote) into a collection.

    Every file is first checked against the digests in its manifest: a folder that does not
    match is refused. Recorded in the ledger, resumable (rerun the same command), verified like
    copy_collection."""
    root, name = backend_class("files").import_location(path)
    with open_runner(_with_files_store(config, IMPORT, root, "parquet"), out) as runner:
        source, target = f"@{IMPORT}:{name}", runner.stores.canonical(collection)
        files = runner.stores.backend(f"@{IMPORT}")
        folder = root / name
        out(f"Checked {folder}: {files.check_integrity(name)}")

        def precheck() -> None:
            backend, target_name = runner.stores.resolve(target)
            if backend.has_collection(target_name) and backend.count(target_name):
                raise OperationError(f"{target} already holds {backend.count(target_name)} records; import into a "
                                     "new or empty collection")

        def carry_metadata() -> None:
            metadata = files.exported_collection_metadata(name)
            if metadata:
                backend, target_name = runner.stores.resolve(target)
                backend.update_collection_metadata(target_name, metadata)

        _run_copy(runner, IMPORT, shlex.join([str(folder), target]), CopyCollectionOp(source=source, target=target),
                  precheck, carry_metadata)
        backend, target_name = runner.stores.resolve(target)
        out(f"Imported {folder} into {target}: {backend.count(target_name)} records")


# `import` is a keyword: the function has another name, the command this one.
import_.__name__ = import_.__qualname__ = IMPORT


def _with_files_store(config: Config, direction: str, root: Path, file_format: str) -> Config:
    """The config plus the files store `@export` or `@import` at root, for this run only."""
    name = f"@{direction}"
    if name in config.stores:
        raise ConfigError(f"{config.config_file.name}: [store:{name}] is the name vecflow {direction} gives its "
                          "files store; rename that section")
    files = StoreConfig(name=name, backend="files", options={"path": str(root), "format": file_format})
    return config.model_copy(update={"stores": {**config.stores, name: files}})


def _run_copy(runner: Runner, direction: str, label: str, step: CopyCollectionOp, precheck: Callable[[], None],
              finish: Callable[[], None]) -> None:
    """Run one copy step as an attempt of its own in the ledger: revision `label` (the command's
    arguments, so the resume hint vecflow prints is the command itself), direction `export` or
    `import`. It checkpoints and resumes like a migration step and never joins the applied set.
    `precheck` runs before a new attempt starts, `finish` after the copy verified."""
    ledger = runner.ledger
    with _holding_lease(runner) as owner:
        unfinished = ledger.unfinished_attempts()
        mine = [row for row in unfinished if (row["revision"], row["direction"]) == (label, direction)]
        others = [row for row in unfinished if row not in mine]
        if others:
            row = others[-1]
            raise LedgerError(f"the {row['direction']} of {row['revision']} started {row['started_at']} by "
                              f"{row['user']}@{row['host']} did not finish ({row['outcome']}); run 'vecflow "
                              f"{row['direction']} {row['revision']}' to resume it, or 'vecflow stamp current' to "
                              f"abandon it, before this {direction}")
        if mine:
            attempt_id = mine[-1]["id"]
            ledger.resume_attempt(attempt_id, owner)
            runner.out(f"Resuming {direction} {label}")
        else:
            precheck()
            attempt_id = ledger.begin_attempt(label, direction, owner, "")
            runner.out(f"{direction.capitalize()} {label}")
        try:
            # The revision only says where a step's user code would be found: the script directory.
            runner.run_step(step, 0, 1, attempt_id, owner, Revision(direction), verify=True)
            finish()
            ledger.finish_attempt(attempt_id, DONE)
        except LockError:
            raise  # the lease is gone: record nothing more
        except VecflowError as exc:
            ledger.finish_attempt(attempt_id, FAILED, str(exc))
            raise
