"""vecflow's API: one plain function per CLI command.

Every function takes a Config first (except init) and reports through `out`; cli.py builds the
command line from these functions and their docstrings, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vecflow.backends import backend_class
from vecflow.config import DEFAULT_CONFIG_NAME, Config, StoreConfig
from vecflow.editor import find_editor, open_in_editor
from vecflow.errors import (
    BackendError,
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
from vecflow.progress import Progress
from vecflow.report import (
    branches_lines,
    check_lines,
    current_lines,
    document,
    heads_lines,
    history_lines,
    plan_lines,
    revision_info,
    running_info,
    show_info,
    show_lines,
    unfinished_info,
    unfinished_line,
)
from vecflow.runtime import markers
from vecflow.runtime.context import finish_rewrite_digests
from vecflow.runtime.ledger import DONE, FAILED, Ledger, Owner
from vecflow.runtime.ledger_copy import copy_ledger
from vecflow.runtime.runner import DOWNGRADE, UPGRADE, Runner
from vecflow.runtime.snapshots import SnapshotStore
from vecflow.runtime.stores import Stores
from vecflow.script.directory import ScriptDirectory
from vecflow.script.revision import Revision
from vecflow.script.templates import DEFAULT_TEMPLATE, project_template, project_templates, write_project

Out = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _notes(out: Out, as_json: bool) -> Out:
    """Where a command's side remarks (retry lines) go: `out`, or stderr while stdout carries JSON."""
    return _to_stderr if as_json else out


def _report(out: Out, as_json: bool, command: str, report: dict, lines: list[str], **extra: object) -> None:
    """Print a report: its text lines, or (--json) its one JSON document."""
    if as_json:
        out(document(command, report, **extra))
        return
    for line in lines:
        out(line)


@contextlib.contextmanager
def open_runner(config: Config, out: Out = print, progress: Progress | None = None,
                read_only: bool = False) -> Iterator[Runner]:
    """Open the script directory, ledger, snapshot store and stores of a project; close them after.
    progress: where long steps show their progress (the CLI's bar or log lines; none by default).

    read_only (dry runs): nothing is written anywhere. The ledger and vecflow's state are read
    into memory (a PostgreSQL ledger: in a transaction rolled back at the end), snapshots and
    stores are only read (Backend.open_read_only), and Python writes no bytecode cache for the
    scripts and user modules it imports."""
    bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = bytecode or read_only
    try:
        scripts = ScriptDirectory.of(config)
        ledger = Ledger(config.ledger, read_only=read_only)
        moved_to = ledger.moved_to
        if moved_to:
            ledger.close()
            raise LedgerError(f"ledger {config.ledger} was copied to {moved_to} (vecflow ledger copy); point "
                              f"`ledger =` in {config.config_file.name} at it")
        try:
            snapshots = SnapshotStore(config.beside_ledger("snapshots.db"), read_only=read_only)
        except BaseException:
            ledger.close()
            raise
        stores = Stores(config, out=out, read_only=read_only)
        try:
            yield Runner(config, scripts, ledger, snapshots, stores, out, progress)
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


def init(directory: str = ".", script_dir: str = "versions", template: str = DEFAULT_TEMPLATE,
         out: Out = print) -> Path:
    """Create a project from a template (-t; see list_templates).

    Writes vecflow.ini, the script directory with the template's revision template, and a
    .gitignore entry for .vecflow/ (appended to an existing .gitignore that lacks it)."""
    chosen = project_template(template)
    root = Path(directory)
    ini = root / DEFAULT_CONFIG_NAME
    if ini.exists():
        raise VecflowError(f"{ini} already exists; vecflow init creates new projects only")
    for line in write_project(chosen, root, script_dir):
        out(line)
    return ini


def list_templates(out: Out = print) -> list[str]:
    """List the project templates 'vecflow init -t' can start from, with their synopses."""
    templates = project_templates()
    out("Available templates:\n")
    for template in templates:
        out(f"{template.name} - {template.synopsis}")
    out("\nTemplates are used via the 'init' command, e.g.:\n")
    out("  vecflow init --template yaml ./myproject")
    return [template.name for template in templates]


def revision(config: Config, message: str = "", use_yaml: bool = False, use_python: bool = False,
             head: str = "head", splice: bool = False, branch_label: str | None = None,
             depends_on: Sequence[str] = (), rev_id: str | None = None, out: Out = print) -> Path:
    """Create a new revision script on top of a head.

    --yaml or --python choose the format (default: revision_format in vecflow.ini); --splice
    allows --head to be a revision that is not a head, starting a new branch from it."""
    scripts = ScriptDirectory.of(config)
    graph = scripts.revision_map
    if head == "head" and len(graph.heads) > 1:
        raise MultipleHeadsError(f"multiple heads are present ({', '.join(graph.heads)}); pass --head <revision> "
                                 "or '<branch>@head' to choose one, or run 'vecflow merge'")
    path = scripts.generate_revision(message, revision_format=_revision_format(config, use_yaml, use_python),
                                     head=head, splice=splice, branch_label=branch_label, depends_on=depends_on,
                                     rev_id=rev_id)
    out(f"Generated {path}")
    return path


def _revision_format(config: Config, use_yaml: bool, use_python: bool) -> str:
    if use_yaml and use_python:
        raise VecflowError("--yaml and --python exclude each other; pass one of them")
    return "yaml" if use_yaml else "python" if use_python else config.revision_format


def merge(config: Config, revisions: Sequence[str] = ("heads",), message: str = "merge heads",
          rev_id: str | None = None, out: Out = print) -> Path:
    """Create a merge revision joining several heads (all heads by default)."""
    scripts = ScriptDirectory.of(config)
    parents = tuple(dict.fromkeys(r for spec in revisions for r in scripts.revision_map.resolve(spec)))
    if len(parents) < 2:
        raise RevisionError(f"a merge needs at least two revisions; {', '.join(revisions)} resolved to "
                            f"{', '.join(parents) or 'nothing'}")
    path = scripts.generate_revision(message, revision_format=config.revision_format, rev_id=rev_id,
                                     down_revisions=parents)
    out(f"Generated {path}")
    return path


def _migrate(config: Config, direction: str, target: str, dry_run: bool, verify: bool, as_json: bool,
             out: Out, progress: Progress | None) -> None:
    if as_json and not dry_run:
        raise VecflowError(f"--json needs --dry-run: a real {direction} reports its steps as text lines ('vecflow "
                           "current --json' shows the state it leaves)")
    with open_runner(config, _notes(out, as_json), progress, read_only=dry_run) as runner:
        problems = runner.check_applied_scripts()
        if problems:
            raise LedgerError(problems[0])
        if dry_run:
            report = runner.describe_plan(runner.plan(direction, target))
            _report(out, as_json, direction, report, plan_lines(report), dry_run=True, target=target)
            if report["failure"]:
                raise DryRunFailedError(report["failure"])
            return
        with _holding_lease(runner) as owner:
            settled = runner.settle_unfinished(direction, target, owner, verify)
            plan = runner.plan(direction, target)
            if not plan and not settled:
                out("Nothing to do: already at the target.")
            runner.run(plan, owner, verify=verify)


def upgrade(config: Config, revision: str, dry_run: bool = False, verify: bool = True, as_json: bool = False,
            out: Out = print, progress: Progress | None = None) -> None:
    """Upgrade to a later revision (head, heads, +N, <rev>, <branch>@head); copies and moves are verified."""
    _migrate(config, UPGRADE, revision, dry_run, verify, as_json, out, progress)


def downgrade(config: Config, revision: str, dry_run: bool = False, verify: bool = True, as_json: bool = False,
              out: Out = print, progress: Progress | None = None) -> None:
    """Revert to an earlier revision (-N, <rev>, base); digests (and moves back) are verified."""
    _migrate(config, DOWNGRADE, revision, dry_run, verify, as_json, out, progress)


def current(config: Config, verbose: bool = False, check_heads: bool = False, as_json: bool = False,
            out: Out = print) -> list[str]:
    """Show the current revision(s) of the ledger, unfinished attempts and a runner holding the
    lock; --check-heads fails unless the ledger is at the script directory's heads."""
    with open_runner(config, _notes(out, as_json)) as runner:
        graph = runner.scripts.revision_map
        applied = runner.ledger.applied()
        heads = graph.heads_of({r for r in applied if r in graph})
        report = {
            "heads": [{**revision_info(graph, graph.get(r)), "applied_at": applied[r]["applied_at"]} for r in heads],
            "applied": [{"revision": r, "applied_at": row["applied_at"], "path": row["path"]}
                        for r, row in sorted(applied.items(), key=lambda item: (item[1]["applied_at"] or "", item[0]))],
            "script_heads": list(graph.heads),
            "at_heads": set(heads) == set(graph.heads),
            "warnings": runner.check_applied_scripts(),
            "unfinished": unfinished_info(runner.ledger),
            "running": running_info(runner.ledger),
        }
        _report(out, as_json, "current", report, current_lines(report, verbose))
        if check_heads and not report["at_heads"]:
            raise VecflowError(f"the ledger is at {', '.join(heads) or 'base'}, not at the head(s) "
                               f"{', '.join(graph.heads) or '<none>'}")
        return list(heads)


def history(config: Config, rev_range: str | None = None, verbose: bool = False, as_json: bool = False,
            out: Out = print) -> dict:
    """List revisions newest first; -r a:b limits the range (base, head, current allowed)."""
    with open_runner(config, _notes(out, as_json)) as runner:
        graph = runner.scripts.revision_map
        applied = {r for r in runner.ledger.applied() if r in graph}
        report = {"range": rev_range,
                  "revisions": [revision_info(graph, rev, applied) for rev in graph.history(rev_range, applied)]}
    _report(out, as_json, "history", report, history_lines(report, verbose))
    return report


def heads(config: Config, verbose: bool = False, as_json: bool = False, out: Out = print) -> list[str]:
    """Show the head revisions of the script directory."""
    graph = ScriptDirectory.of(config).revision_map
    report = {"heads": [revision_info(graph, graph.get(rev_id)) for rev_id in graph.heads]}
    _report(out, as_json, "heads", report, heads_lines(report, verbose))
    return list(graph.heads)


def branches(config: Config, verbose: bool = False, as_json: bool = False, out: Out = print) -> dict:
    """Show the branch points: revisions with more than one child."""
    graph = ScriptDirectory.of(config).revision_map
    report = {"branch_points": [{"revision": revision_info(graph, rev),
                                 "children": [revision_info(graph, graph.get(child)) for child in rev.nextrev]}
                                for rev in graph.branch_points()]}
    _report(out, as_json, "branches", report, branches_lines(report, verbose))
    return report


def show(config: Config, revision: str, as_json: bool = False, out: Out = print) -> dict:
    """Show one revision: its edges, path, and planned upgrade and downgrade steps."""
    graph = ScriptDirectory.of(config).revision_map
    report = {"revisions": [show_info(graph, graph.get(rev_id)) for rev_id in graph.resolve(revision)]}
    _report(out, as_json, "show", report, show_lines(report))
    return report


def stamp(config: Config, revisions: str | Sequence[str], purge: bool = False, out: Out = print) -> None:
    """Set the ledger to one or more revisions without running any step.

    One revision per branch (stamp a2 b2); --purge empties the applied set first."""
    specs = (revisions,) if isinstance(revisions, str) else tuple(revisions)
    with open_runner(config, out) as runner:
        graph = runner.scripts.revision_map
        applied = set() if purge else {r for r in runner.ledger.applied() if r in graph}
        targets = tuple(dict.fromkeys(r for spec in specs for r in graph.resolve(spec, applied)))
        for target in targets:
            below = [other for other in targets
                     if other != target and other in graph.ancestors(target, include_dependencies=False)]
            if below:
                raise RevisionError(f"cannot stamp {below[0]} and {target} together: {below[0]} is an ancestor of "
                                    f"{target} on the same branch; stamp {target} alone")
        with _holding_lease(runner) as owner:
            for attempt in runner.ledger.unfinished_attempts():
                if attempt["direction"] == UPGRADE:  # a stamp may adopt it: its downgrade is verified by them
                    finish_rewrite_digests(runner.ledger, runner.stores, attempt["id"], required=False)
            for attempt in runner.ledger.abandon_unfinished():
                out(f"Abandoned the unfinished {attempt['direction']} of {attempt['revision']}")
            if purge:
                runner.ledger.clear_applied()
            keep = graph.ancestors(targets) if targets else set()
            to_add = [graph.get(r) for r in graph.topological(keep - applied)]
            to_remove = [r for r in graph.plan_downgrade(applied, "base") if r.revision not in keep]
            for rev in to_remove:
                runner.ledger.mark_unapplied(rev.revision)
                runner.ledger.record_stamp(rev.revision, DOWNGRADE, owner, rev.script.checksum)
                out(f"Stamped down: {rev.revision}")
            for rev in to_add:
                runner.ledger.mark_applied(rev.revision, rev.script.checksum, rev.path or "")
                runner.ledger.record_stamp(rev.revision, UPGRADE, owner, rev.script.checksum)
                out(f"Stamped up: {rev.revision}")
            _adopt_marked_stores(runner, out)


def _adopt_marked_stores(runner: Runner, out: Out) -> None:
    """After a stamp: every configured store that carries a marker names this ledger at its new
    heads (a store marked by another ledger is adopted). A store that cannot be reached keeps
    its marker, with a warning."""
    for name in sorted(runner.config.stores):
        try:
            marker = markers.read(runner.stores.backend(name), name)
            if marker is None:
                continue
            runner.mark_stores({name})
        except (BackendError, ConfigError) as exc:
            out(f"warning: store {name!r} keeps its marker: {exc}")
            continue
        if marker["ledger"] != runner.ledger.identity:
            out(f"Adopted store {name!r} into this ledger (its marker named {marker.get('where', '?')})")


def edit(config: Config, revision: str = "head", out: Out = print) -> list[Path]:
    """Open a revision script in $EDITOR (default: head).

    The editor is $EDITOR, else $VISUAL, else a common editor on the PATH, as in Alembic; any
    identifier works (current, heads, -1: several revisions open one after the other)."""
    graph = ScriptDirectory.of(config).revision_map
    applied: set[str] = set()
    # `current` and relative steps need the ledger; never create one here (a shared one always exists).
    if config.shared_ledger or config.ledger.exists():
        ledger = Ledger(config.ledger)
        try:
            applied = {r for r in ledger.applied() if r in graph}
        finally:
            ledger.close()
    rev_ids = graph.resolve(revision, applied)
    if not rev_ids:
        raise RevisionError(f"'{revision}' resolves to base, not to a revision: there is no script to edit")
    paths = [Path(graph.get(rev_id).path or "") for rev_id in rev_ids]
    editor = find_editor()
    for path in paths:
        out(f"Editing {path}")
        open_in_editor(path, editor)
    return paths


def inspect(config: Config, target: str = "", as_json: bool = False, out: Out = print) -> dict:
    """Show a store's collections as their application wrote them: count, dimension, metric, the
    detected layout and why, where the text lives, id kinds, and metadata fields with types, fill
    rate and an example (STORE, STORE:COLLECTION, or nothing for the default store), and the
    store's vecflow marker (which ledger migrates it, at which heads). Read-only."""
    store, _, collection = (target or config.default_store).partition(":")
    stores = Stores(config)
    try:
        backend = stores.backend(store or config.default_store)
        if collection and not backend.has_collection(collection):
            raise CollectionNotFoundError(f"store {store!r} has no collection {collection!r}")
        report = inspect_store(backend, collection or None)
        report["marker"] = markers.read(backend, store or config.default_store)
    finally:
        stores.close()
    _report(out, as_json, "inspect", report, format_report(report))
    return report


def check(config: Config, repair: bool = False, as_json: bool = False, out: Out = print) -> dict:
    """Verify the project: no edited applied scripts, one head, every revision reversible or marked.

    --repair records the current checksums of edited applied scripts (accepting the edits)."""
    notes = _notes(out, as_json)
    with open_runner(config, notes) as runner:
        graph = runner.scripts.revision_map
        problems = runner.check_applied_scripts()
        repaired = []
        if repair and problems:
            with _holding_lease(runner):
                for rev_id, row in runner.ledger.applied().items():
                    if rev_id in graph and graph.get(rev_id).script.checksum != row["checksum"]:
                        runner.ledger.accept_checksum(rev_id, graph.get(rev_id).script.checksum)
                        repaired.append(graph.get(rev_id).path)
                        notes(f"Accepted the edit of {graph.get(rev_id).path}")
            problems = runner.check_applied_scripts()
        found = [{"kind": "applied-script", "message": problem} for problem in problems]
        if len(graph.heads) > 1:
            found.append({"kind": "multiple-heads",
                          "message": f"multiple heads are present ({', '.join(graph.heads)}); run 'vecflow merge'"})
        found += [{"kind": "unfinished", "message": unfinished_line(info), "attempt": info}
                  for info in unfinished_info(runner.ledger)]
        current_heads = graph.heads_of({r for r in runner.ledger.applied() if r in graph})
        if set(current_heads) != set(graph.heads):
            found.append({"kind": "not-at-head",
                          "message": f"the ledger is at {', '.join(current_heads) or 'base'}, not at the head(s) "
                                     f"{', '.join(graph.heads) or '<none>'}; run 'vecflow upgrade heads'"})
        for rev in graph:
            script = rev.script
            if script.has_downgrade or script.irreversible:
                continue
            blocking = [s.describe() for s in script.upgrade_ops() if not s.reversible]
            if blocking:
                found.append({"kind": "irreversible", "revision": rev.revision,
                              "message": f"{rev.path}: no downgrade() and step(s) {'; '.join(blocking)} cannot be "
                                         "reversed; write a downgrade or mark the revision irreversible = True"})
        report = {"ok": not found, "revisions": len(graph), "heads": list(graph.heads),
                  "current_heads": list(current_heads), "repaired": repaired, "problems": found}
        _report(out, as_json, "check", report, check_lines(report))
        if found:
            raise VecflowError(f"check failed: {len(found)} problem(s)")
        return report


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
                    f"{runner.snapshots.label} {_megabytes(before)} -> {_megabytes(runner.snapshots.file_bytes())}")
            return [row for row in listing if row["needed"]]
        for row in listing:
            use = "needed" if row["needed"] else "not needed"
            out(f"{row['name']}: {row['kind']}, {row['rows']} rows, {_megabytes(row['bytes'])} ({use})")
        if not listing:
            out("no snapshots")
        return listing


def ledger(operation: str, source_url: str, target_url: str, out: Out = print) -> dict[str, int]:
    """Copy a project's history (applied set, attempts, steps, snapshots, vecflow's state and the
    ledger's identity) from one ledger to another, typically its SQLite file to a shared
    PostgreSQL database. Verified (row counts and digests of every table) and resumable (run the
    same command again); the source is then marked as moved, so a project still pointed at it
    is refused."""
    counts = copy_ledger(source_url, target_url, out)
    if not counts:
        return counts
    snapshot_rows = sum(rows for name, rows in counts.items() if name.startswith("snap_"))
    out(f"Copied and verified: {counts['applied']} applied, {counts['attempts']} attempts, {counts['steps']} steps, "
        f"{counts['snapshots']} snapshots ({snapshot_rows} rows), "
        f"{counts['record_state'] + counts['collection_state']} state entries")
    out(f"Now set `ledger = {target_url}` in vecflow.ini (a ${{VAR}} keeps a password out of it)")
    return counts


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


# export and import: one checkpointed copy between a store and a folder of files ------------------

EXPORT, IMPORT = "export", "import"


def export(config: Config, collection: str, path: str, file_format: str = "parquet", out: Out = print,
           progress: Progress | None = None) -> None:
    """Copy a collection into a folder of Parquet, VDF (vector-io) or JSON lines files.

    The folder gets a manifest with the collection's count, dimension, metric, layout, embedding
    model and digest. Recorded in the ledger, resumable (rerun the same command), verified like
    copy_collection."""
    root, name = backend_class("files").export_location(path)
    with open_runner(_with_files_store(config, EXPORT, root, file_format), out, progress) as runner:
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


def import_(config: Config, path: str, collection: str, out: Out = print, progress: Progress | None = None) -> None:
    """Copy an export folder (or a VDF folder vector-io wrote) into a collection.

    Every file is first checked against the digests in its manifest: a folder that does not
    match is refused. Recorded in the ledger, resumable (rerun the same command), verified like
    copy_collection."""
    root, name = backend_class("files").import_location(path)
    with open_runner(_with_files_store(config, IMPORT, root, "parquet"), out, progress) as runner:
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
            runner.announce(f"Resuming {direction} {label}")
        else:
            precheck()
            attempt_id = ledger.begin_attempt(label, direction, owner, "")
            runner.announce(f"{direction.capitalize()} {label}")
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
