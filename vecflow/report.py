"""What the read-only commands report, built once as plain data and shown as text or as JSON.

A command builds its report (dicts and lists of JSON types) from the graph and the ledger, then
either prints the text lines made from that report (`*_lines`) or, with `--json`, the report as
one JSON document (`document`). docs/json.md describes every document; `SCHEMA` is its version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from vecflow.runtime.ledger import Ledger
from vecflow.script.revision import Revision, RevisionMap

SCHEMA = 1
"""Version of the JSON documents: raised when a field changes meaning or goes away (a new field
does not raise it)."""

Report = dict[str, Any]


def document(command: str, report: Report, **extra: Any) -> str:
    """The JSON document of a report: {"schema", "command", **extra, **report}, strict JSON (a
    non-finite float becomes the string "NaN", "Infinity" or "-Infinity")."""
    return json.dumps(_strict({"schema": SCHEMA, "command": command, **extra, **report}), indent=2,
                      ensure_ascii=False, allow_nan=False, default=str)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return value


# revisions -------------------------------------------------------------------------------------


def revision_info(graph: RevisionMap, rev: Revision, applied: Iterable[str] | None = None) -> Report:
    """One revision: its edges, message, path and tags (`current` only when `applied` is given)."""
    tags = []
    if rev.revision in graph.heads:
        tags.append("head")
    if rev.is_merge:
        tags.append("mergepoint")
    if len(rev.nextrev) > 1:
        tags.append("branchpoint")
    if applied is not None and rev.revision in graph.heads_of(set(applied)):
        tags.append("current")
    return {"revision": rev.revision, "down_revision": list(rev.down_revision),
            "branch_labels": list(rev.branch_labels), "depends_on": list(rev.depends_on),
            "message": rev.message, "path": rev.path, "tags": tags, "children": list(rev.nextrev)}


def tags_text(info: Report) -> str:
    return f" ({', '.join(info['tags'])})" if info["tags"] else ""


def revision_line(info: Report, verbose: bool, tags: bool = True) -> str:
    """`<parents> -> <revision> (<tags>), <message>`; verbose adds path, labels and dependencies."""
    parents = ", ".join(info["down_revision"]) or "<base>"
    text = f"{parents} -> {info['revision']}{tags_text(info) if tags else ''}, {info['message']}"
    if verbose:
        labels = f"\n    branch labels: {', '.join(info['branch_labels'])}" if info["branch_labels"] else ""
        deps = f"\n    depends on: {', '.join(info['depends_on'])}" if info["depends_on"] else ""
        text += f"\n    path: {info['path']}{labels}{deps}"
    return text


def history_lines(report: Report, verbose: bool) -> list[str]:
    return [revision_line(info, verbose) for info in report["revisions"]]


def heads_lines(report: Report, verbose: bool) -> list[str]:
    return [revision_line(info, True) if verbose else f"{info['revision']}{tags_text(info)}"
            for info in report["heads"]]


def branches_lines(report: Report, verbose: bool) -> list[str]:
    lines = []
    for point in report["branch_points"]:
        lines.append(revision_line(point["revision"], verbose))
        lines += [f"    -> {child['revision']}, {child['message']}" for child in point["children"]]
    return lines


def steps_info(steps: Sequence[Any], undo: bool | None = None) -> list[Report]:
    """Planned steps as {"number", "op", "description"}; downgrade steps also say whether they are
    derived ("undo": true names the upgrade step each one undoes)."""
    return [{"number": number, "op": step.op_name, "description": step.describe(),
             **({} if undo is None else {"undo": undo})} for number, step in enumerate(steps, start=1)]


def show_info(graph: RevisionMap, rev: Revision) -> Report:
    script = rev.script
    explicit = script.downgrade_ops()
    if explicit is not None:
        downgrade = {"explicit": True, "irreversible": False, "steps": steps_info(explicit, undo=False)}
    elif script.irreversible:
        downgrade = {"explicit": False, "irreversible": True, "steps": []}
    else:
        downgrade = {"explicit": False, "irreversible": False,
                     "steps": steps_info(list(reversed(script.upgrade_ops())), undo=True)}
    return {**revision_info(graph, rev), "upgrade": steps_info(script.upgrade_ops()), "downgrade": downgrade}


def show_lines(report: Report) -> list[str]:
    lines = []
    for info in report["revisions"]:
        lines.append(f"Revision: {info['revision']}{tags_text(info)}")
        lines.append(f"Parent: {', '.join(info['down_revision']) or '<base>'}")
        if info["children"]:
            lines.append(f"Children: {', '.join(info['children'])}")
        for name, key in (("Branch labels", "branch_labels"), ("Depends on", "depends_on")):
            if info[key]:
                lines.append(f"{name}: {', '.join(info[key])}")
        lines.append(f"Path: {info['path']}")
        lines.append(f"Message: {info['message']}")
        lines.append("Upgrade:")
        lines += [f"  {step['number']}. {step['description']}" for step in info["upgrade"]]
        downgrade = info["downgrade"]
        lines.append("Downgrade:" + ("" if downgrade["explicit"] else " (derived from the upgrade steps)"))
        if downgrade["irreversible"]:
            lines.append("  irreversible")
        lines += [f"  {step['number']}. {'undo ' if step['undo'] else ''}{step['description']}"
                  for step in downgrade["steps"]]
    return lines


# the ledger's state ----------------------------------------------------------------------------


def unfinished_info(ledger: Ledger) -> list[Report]:
    """Every unfinished attempt: what, since when, by whom, the step it stopped in, and why."""
    attempts = []
    for attempt in ledger.unfinished_attempts():
        steps = ledger.steps(attempt["id"])
        last = steps[-1] if steps else None
        attempts.append({
            "attempt": attempt["id"], "direction": attempt["direction"], "revision": attempt["revision"],
            "outcome": attempt["outcome"], "started_at": attempt["started_at"], "user": attempt["user"],
            "host": attempt["host"], "pid": attempt["pid"], "error": attempt["error"],
            "step": None if last is None else {"number": last["step_index"] + 1, "op": last["op"],
                                               "description": last["description"], "status": last["status"],
                                               "rows_done": last["rows_done"]}})
    return attempts


def unfinished_line(info: Report) -> str:
    step = info["step"]
    where = (f"; step {step['number']} ({step['description']}) {step['status']} at {step['rows_done']} rows"
             if step else "")
    error = f": {' '.join(info['error'].split())}" if info["error"] else ""
    return (f"unfinished: {info['direction']} of {info['revision']} ({info['outcome']}), started "
            f"{info['started_at']} by {info['user']}@{info['host']}{where}{error}")


def running_info(ledger: Ledger) -> Report | None:
    """The runner holding the lock, if its lease is live (not expired, and on this host its
    process still exists: a killed runner's lease is taken over by the next run at once)."""
    holder = ledger.live_lease_holder()
    if holder is None:
        return None
    expires = datetime.fromtimestamp(holder["expires_at"], timezone.utc).isoformat(timespec="milliseconds")
    return {"user": holder["user"], "host": holder["host"], "pid": holder["pid"], "acquired_at": holder["acquired_at"],
            "heartbeat_at": holder["heartbeat_at"], "expires_at": expires}


def running_line(info: Report) -> str:
    return (f"running: {info['user']}@{info['host']} (pid {info['pid']}) holds the lock since "
            f"{info['acquired_at']} (last heartbeat {info['heartbeat_at']})")


def current_lines(report: Report, verbose: bool) -> list[str]:
    lines = []
    for info in report["heads"]:
        lines.append(f"{info['revision']}{tags_text(info)}" + (f"\n    applied {info['applied_at']}\n"
                                                               f"    {revision_line(info, True, tags=False)}"
                                                               if verbose else ""))
    lines += [f"warning: {problem}" for problem in report["warnings"]]
    if not report["heads"]:
        lines.append("<base> (nothing applied)")
    lines += [unfinished_line(info) for info in report["unfinished"]]
    if report["running"] is not None:
        lines.append(running_line(report["running"]))
    return lines


def check_lines(report: Report) -> list[str]:
    """The problems as `error: ...` lines, or the OK line. (Accepted edits are printed as they happen.)"""
    if report["problems"]:
        return [f"error: {problem['message']}" for problem in report["problems"]]
    return [f"OK: {report['revisions']} revisions, head {', '.join(report['heads']) or '<none>'}, "
            "ledger matches the scripts"]


# --dry-run -------------------------------------------------------------------------------------


def plan_lines(report: Report) -> list[str]:
    """The --dry-run text of a plan report (Runner.describe_plan)."""
    if not report["revisions"]:
        return ["Nothing to do: already at the target."]
    lines = list(report["notes"])
    for item in report["revisions"]:
        message = f" ({item['message']})" if item["message"] else ""
        lines.append(f"{item['direction']} {item['revision']}{message}")
        for step in item["steps"]:
            lines.append(f"  {step['number']}. {step['description']}")
            if step["skipped"]:
                lines.append(f"     {step['skipped']}")
                continue
            lines += [f"     {line}" for line in step["preview"]]
            if step["failure"] and not any(step["failure"] in line for line in step["preview"]):
                lines.append(f"     would fail: {step['failure']}")
            lines.append(f"     {step['estimate']}")
        if not item["steps"]:
            lines.append("  (no steps)")
    lines.append("collections:")
    for entry in report["collections"]:
        after = _records_after(entry["after"])
        lines.append(f"  {entry['collection']}: {_records_now(entry)}; after the plan: {after}")
    return lines


def _records_now(entry: Report) -> str:
    return f"{entry['count']} records" if entry["exists"] else "does not exist yet"


def _records_after(after: Report) -> str:
    recorded = after["recorded"]
    if recorded is not None:
        count = f"{recorded['count']} records" if recorded["exists"] else "does not exist"
        return f"{count} (as recorded before the upgrade of {recorded['revision']})"
    if not after["exists"]:
        return "does not exist"
    return f"{'' if after['exact'] else '~'}{after['count']} records"
