"""The command line: built from the functions in vecflow.command and their docstrings.

Parses arguments, loads the Config, calls the command, and turns every VecflowError into one
line on stderr and exit code 1 (--raiseerr shows the traceback instead).
"""

from __future__ import annotations

import argparse
import inspect
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from vecflow import __version__, command
from vecflow.config import load_config
from vecflow.errors import VecflowError
from vecflow.progress import Progress, progress_for

COMMANDS: list[Callable[..., Any]] = [
    command.init, command.revision, command.merge, command.upgrade, command.downgrade, command.current,
    command.history, command.heads, command.branches, command.show, command.stamp, command.check,
    command.inspect, command.export, command.import_, command.snapshots, command.list_templates, command.edit,
    command.ledger,
]

# Other spellings a command accepts: Alembic spells it list_templates, vecflow's options use dashes.
ALIASES: dict[str, list[str]] = {"list_templates": ["list-templates"]}
QUIET_HELP = "show no progress (bars, periodic lines, start-up time) for long steps"

# How each parameter of a command function appears on the command line: (flags, argparse kwargs).
# A parameter without flags is positional. A "COMMAND.PARAMETER" key overrides one command's.
PARAMETERS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "directory": ((), {"nargs": "?", "default": ".", "help": "folder of the new project (default: .)"}),
    "script_dir": (("--script-dir",), {"help": "name of the script folder (default: versions)"}),
    "message": (("-m", "--message"), {"help": "message of the revision"}),
    "template": (("-t", "--template"), {"help": "project template (default: python; see list_templates)"}),
    "use_yaml": (("--yaml",), {"action": "store_true", "help": "write a declarative YAML revision"}),
    "use_python": (("--python",), {"action": "store_true", "help": "write a Python revision"}),
    "head": (("--head",), {"help": "revision to build on (default: head)"}),
    "splice": (("--splice",), {"action": "store_true", "help": "allow --head to be a revision that is not a head"}),
    "branch_label": (("--branch-label",), {"help": "label starting a named branch"}),
    "depends_on": (("--depends-on",), {"action": "append", "default": [], "help": "revision this one depends on"}),
    "rev_id": (("--rev-id",), {"help": "revision id to use instead of a generated one"}),
    "revisions": ((), {"nargs": "*", "default": ["heads"], "help": "revisions to merge (default: heads)"}),
    "revision": ((), {"help": "revision identifier (id, prefix, label, head, base, +N, -N, label@head, ...)"}),
    "stamp.revisions": ((), {"nargs": "+", "metavar": "revision",
                             "help": "revision(s) to stamp, one per branch (base empties the ledger)"}),
    "edit.revision": ((), {"nargs": "?", "help": "revision(s) to edit (default: head; current, heads, -1, ...)"}),
    "dry_run": (("--dry-run",), {"action": "store_true", "help": "print the plan and record counts; change nothing"}),
    "verify": (("--no-verify",), {"action": "store_false", "dest": "verify",
                                  "help": "skip verification (copy/move checks, downgrade digests)"}),
    "check_heads": (("--check-heads",), {"action": "store_true",
                                         "help": "fail unless the ledger is at the head revision(s)"}),
    "action": ((), {"nargs": "?", "choices": ["list", "prune"], "default": "list",
                    "help": "list (default), or prune: delete the snapshots nothing needs"}),
    "verbose": (("-v", "--verbose"), {"action": "store_true", "help": "more detail"}),
    "rev_range": (("-r", "--rev-range"), {"help": "range a:b (base, head, current allowed)"}),
    "purge": (("--purge",), {"action": "store_true", "help": "empty the applied set before stamping"}),
    "repair": (("--repair",), {"action": "store_true", "help": "accept edits of applied scripts"}),
    "target": ((), {"nargs": "?", "default": "", "metavar": "STORE[:COLLECTION]",
                    "help": "store, or store:collection (default: the default store)"}),
    "as_json": (("--json",), {"action": "store_true", "help": "print one JSON document, not text (docs/json.md)"}),
    "collection": ((), {"metavar": "STORE:COLLECTION",
                        "help": "the collection: store:collection, or a collection of the default store"}),
    "path": ((), {"metavar": "PATH", "help": "the export folder (a VDF folder, or VDF_FOLDER/INDEX, for import)"}),
    "operation": ((), {"choices": ["copy"], "help": "copy: copy the history from SOURCE_URL to TARGET_URL"}),
    "source_url": ((), {"metavar": "SOURCE_URL", "help": "the ledger to copy from (a ledger.db path or a URL)"}),
    "target_url": ((), {"metavar": "TARGET_URL", "help": "the ledger to copy to (postgresql://...)"}),
    "file_format": (("--format",), {"choices": ["parquet", "vdf", "jsonl"],
                                    "help": "file format: parquet, vdf (vector-io) or jsonl (default: parquet)"}),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vecflow", description="Versioned, reversible migrations for vector stores.")
    parser.add_argument("--version", action="version", version=f"vecflow {__version__}")
    parser.add_argument("-c", "--config", help="path to vecflow.ini (default: ./vecflow.ini or $VECFLOW_CONFIG)")
    parser.add_argument("-n", "--name", metavar="NAME",
                        help="use the [vecflow:NAME] section of vecflow.ini instead of [vecflow]")
    parser.add_argument("-x", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (batch_size=100, store.main.path=...); repeatable")
    parser.add_argument("--raiseerr", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for function in COMMANDS:
        doc = inspect.getdoc(function) or ""
        sub = subparsers.add_parser(function.__name__, aliases=ALIASES.get(function.__name__, []),
                                    help=" ".join(doc.split("\n\n")[0].split()), description=doc)
        sub.set_defaults(function=function)
        signature = inspect.signature(function).parameters
        if "progress" in signature:
            # Also after the command (`vecflow upgrade head -q`); SUPPRESS keeps a global -q.
            sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        for name in _parameters(function):
            flags, options = PARAMETERS.get(f"{function.__name__}.{name}") or PARAMETERS[name]
            if signature[name].default is not inspect.Parameter.empty and "default" not in options:
                options = {**options, "default": signature[name].default}
            if flags:
                sub.add_argument(*flags, **{"dest": name, **options})
            else:
                sub.add_argument(name, **options)
    return parser


def _parameters(function: Callable[..., Any]) -> list[str]:
    return [n for n in inspect.signature(function).parameters if n not in ("config", "out", "progress")]


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    function = args.function
    kwargs = {name: getattr(args, name) for name in _parameters(function)}
    try:
        if "config" in inspect.signature(function).parameters:
            kwargs["config"] = load_config(args.config, args.x, name=args.name)
        if "progress" in inspect.signature(function).parameters:
            kwargs["progress"] = _progress(args.quiet, kwargs["config"].progress_interval, started)
        function(**kwargs)
    except BrokenPipeError:  # e.g. `vecflow history | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("vecflow: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (VecflowError, SystemExit, sqlite3.Error, OSError) as exc:
        if args.raiseerr:
            raise
        print(f"vecflow: error: {' '.join(_message(exc).split())}", file=sys.stderr)
        return 1
    return 0


def _progress(quiet: bool, interval: float, started: float) -> Progress:
    """A live bar on a terminal, a line every `interval` seconds otherwise (stdout then flushes
    every line, so a log shows each as it happens), nothing when quiet."""
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    return progress_for(sys.stdout, quiet, interval, started)


def _message(exc: BaseException) -> str:
    """The error line. Calls into user code turn its sys.exit() into a VecflowError; a SystemExit
    that still arrives here came from user code too (vecflow's own code never exits), and SQLite
    and OS errors are the last resort for failures no layer translated (a full disk, a database
    file that another program damaged)."""
    if isinstance(exc, SystemExit):
        code = "" if exc.code is None else repr(exc.code)
        return (f"user code called sys.exit({code}) while vecflow was running; "
                "the migration did not finish: rerun the same command to resume it")
    if isinstance(exc, sqlite3.Error):
        return f"a vecflow database (ledger, snapshots or state) failed: {exc}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
