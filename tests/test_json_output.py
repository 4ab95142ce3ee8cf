"""--json: one document per command, holding what the ledger, the scripts and the store really hold.

One project on embedded Chroma is taken through the states the documents describe (nothing
applied; part applied; a failed attempt with a runner holding the lock; at head), and each
document is read back next to what the ledger and the store said at that moment. The examples in
docs/json.md must have the shape of these real documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.project import Project
from tests.test_docs import code_blocks, read
from vecflow.errors import VecflowError
from vecflow.runtime.ledger import Ledger, Owner

R3_FAILING = 'op.add_field("docs", "flag", default=True)\nop.set_field("docs", "rank", "1 / 0")'
R3_FIXED = 'op.add_field("docs", "flag", default=True)\nop.set_field("docs", "rank", "rank * 2")'


def document(project: Project, name: str, *args: Any, **kwargs: Any) -> dict:
    """Run a command with --json in-process: it must print exactly one document."""
    project.run(name, *args, as_json=True, **kwargs)
    [text] = project.output
    return json.loads(text)


def failing(project: Project, name: str, *args: Any, **kwargs: Any) -> dict:
    """Like document(), for a command that prints its document and then fails."""
    with pytest.raises(VecflowError):
        project.run(name, *args, as_json=True, **kwargs)
    [text] = project.output
    return json.loads(text)


def ledger_of(project: Project) -> Ledger:
    return Ledger(project.config.ledger)


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict[str, Any]:
    """The documents of each state, and the ledger and store facts taken at the same moment."""
    project = Project(tmp_path_factory.mktemp("json"), {"path": "%(here)s/chroma"}, batch_size=100)
    project.write_records("docs.jsonl", 300, dim=8)
    project.write_python("r1", None, 'op.create_collection("docs", data="data/docs.jsonl")')
    project.write_python("r2", "r1", 'op.drop_field("docs", "author")')
    project.write_python("r3", "r2", R3_FAILING)
    seen: dict[str, Any] = {"project": project}
    seen["plan from base"] = failing(project, "upgrade", "head", dry_run=True)  # r3 divides by zero

    project.run("upgrade", "r2")
    ledger = ledger_of(project)
    seen["applied at r2"] = ledger.applied()
    ledger.close()
    seen["current at r2"] = failing(project, "current", check_heads=True)
    seen["plan from r2"] = failing(project, "upgrade", "head", dry_run=True)
    with pytest.raises(VecflowError, match="division by zero"):
        project.run("upgrade", "head", dry_run=True)
    seen["plan text from r2"] = project.output
    seen["downgrade plan from r2"] = document(project, "downgrade", "-1", dry_run=True)
    seen["history at r2"] = document(project, "history")
    seen["inspect at r2"] = document(project, "inspect", "main:docs")
    with project.opened("docs") as (backend, name):
        seen["store at r2"] = {"count": backend.count(name), "dim": backend.describe(name).dim,
                               "layout": backend.layout_of(name).layout.name,
                               "fields": set().union(*(r.metadata for r in project.records("docs").values()))}

    with pytest.raises(VecflowError, match="division by zero"):
        project.run("upgrade", "head")
    ledger, owner = ledger_of(project), Owner.current()
    ledger.acquire_lease(owner, 60)
    try:
        seen["current failed"] = document(project, "current")
        [attempt] = ledger.unfinished_attempts()
        seen["ledger failed"] = {"attempt": attempt, "steps": ledger.steps(attempt["id"]), "owner": owner}
    finally:
        ledger.release_lease(owner)
        ledger.close()
    seen["check failed"] = project.cli("check", "--json", check=False)

    project.write_python("r3", "r2", R3_FIXED)
    project.run("upgrade", "head")
    seen["check at head"] = document(project, "check")
    seen["current at head"] = document(project, "current")
    seen["show r3"] = document(project, "show", "r3")
    return seen


def test_a_dry_run_document_lists_the_plan_of_every_revision_and_the_collections_it_touches(seen):
    plan = seen["plan from base"]
    assert (plan["schema"], plan["command"], plan["dry_run"], plan["target"]) == (1, "upgrade", True, "head")
    assert [(r["direction"], r["revision"]) for r in plan["revisions"]] == [("upgrade", "r1"), ("upgrade", "r2"),
                                                                             ("upgrade", "r3")]
    assert [[s["op"] for s in r["steps"]] for r in plan["revisions"]] == [
        ["create_collection"], ["drop_field"], ["add_field", "set_field"]]
    after = {"exists": True, "count": 300, "exact": True, "recorded": None}
    assert plan["collections"] == [{"collection": "main:docs", "exists": False, "count": None, "after": after}]
    assert plan["failure"] == ("the dry run found a step that would fail: upgrade r3, step 2 (set_field docs: rank = "
                               "{{ 1 / 0 }}): set_field rank: expression failed on record 'id-000000': division by "
                               "zero")
    assert [step["failure"] is not None for step in plan["revisions"][2]["steps"]] == [False, True]
    later = seen["plan from r2"]
    [item] = later["revisions"]
    assert item["revision"] == "r3" and [s["number"] for s in item["steps"]] == [1, 2]
    assert all(s["collections"] == ["main:docs"] and s["estimate"].startswith("estimated time")
               and all(isinstance(line, str) for line in s["preview"]) for s in item["steps"])
    count = seen["store at r2"]["count"]
    assert later["collections"] == [{"collection": "main:docs", "exists": True, "count": count,
                                     "after": {"exists": True, "count": count, "exact": True, "recorded": None}}]
    down = seen["downgrade plan from r2"]
    assert (down["command"], down["target"], down["failure"]) == ("downgrade", "-1", None)
    assert [(r["direction"], r["revision"], [s["op"] for s in r["steps"]]) for r in down["revisions"]] == [
        ("downgrade", "r2", ["restore_field"])]


def test_the_dry_run_text_says_what_the_document_says(seen):
    [item] = seen["plan from r2"]["revisions"]
    assert item["steps"][1]["description"] == "set_field docs: rank = {{ 1 / 0 }}"
    expected = [f"upgrade r3 ({item['message']})"]
    for step in item["steps"]:
        expected += [f"  {step['number']}. {step['description']}", *(f"     {line}" for line in step["preview"])]
    count = seen["store at r2"]["count"]
    expected += ["collections:", f"  main:docs: {count} records; after the plan: {count} records"]
    text = seen["plan text from r2"]
    estimates = [line for line in text if line.startswith("     estimated time: ")]  # timed: differ per run
    assert len(estimates) == 2 and [line for line in text if line not in estimates] == expected


def test_current_reports_the_applied_set_and_heads_as_the_ledger_has_them(seen):
    current, applied = seen["current at r2"], seen["applied at r2"]
    assert [h["revision"] for h in current["heads"]] == ["r2"]
    assert current["heads"][0]["applied_at"] == applied["r2"]["applied_at"]
    assert current["heads"][0]["down_revision"] == ["r1"] and current["heads"][0]["children"] == ["r3"]
    assert [(a["revision"], a["applied_at"]) for a in current["applied"]] == [
        (rev, applied[rev]["applied_at"]) for rev in ("r1", "r2")]
    assert current["script_heads"] == ["r3"] and current["at_heads"] is False  # and --check-heads failed after it
    assert (current["warnings"], current["unfinished"], current["running"]) == ([], [], None)
    at_head = seen["current at head"]
    assert [h["revision"] for h in at_head["heads"]] == ["r3"] and at_head["at_heads"] is True
    assert at_head["unfinished"] == []


def test_current_reports_the_failed_attempt_and_the_runner_holding_the_lock(seen):
    current, ledger = seen["current failed"], seen["ledger failed"]
    attempt, last, owner = ledger["attempt"], ledger["steps"][-1], ledger["owner"]
    assert [h["revision"] for h in current["heads"]] == ["r2"]
    [unfinished] = current["unfinished"]
    assert unfinished == {
        "attempt": attempt["id"], "direction": "upgrade", "revision": "r3", "outcome": "failed",
        "started_at": attempt["started_at"], "user": attempt["user"], "host": attempt["host"], "pid": attempt["pid"],
        "error": attempt["error"], "step": {"number": last["step_index"] + 1, "op": "set_field",
                                            "description": last["description"], "status": last["status"],
                                            "rows_done": last["rows_done"]}}
    assert unfinished["step"]["number"] == 2 and "division by zero" in unfinished["error"]
    running = current["running"]
    assert (running["user"], running["host"], running["pid"]) == (owner.user, owner.host, owner.pid)
    assert running["expires_at"] > running["acquired_at"]


def test_check_json_keeps_the_exit_code_and_lists_each_problem_with_its_kind(seen):
    result = seen["check failed"]
    assert result.returncode == 1
    assert result.stderr == "vecflow: error: check failed: 2 problem(s)\n"
    report = json.loads(result.stdout)  # the whole of stdout is the one document
    assert (report["command"], report["ok"], report["revisions"]) == ("check", False, 3)
    assert (report["heads"], report["current_heads"]) == (["r3"], ["r2"])
    assert [p["kind"] for p in report["problems"]] == ["unfinished", "not-at-head"]
    assert report["problems"][0]["attempt"] == seen["current failed"]["unfinished"][0]
    assert report["problems"][0]["message"].startswith("unfinished: upgrade of r3 (failed)")
    assert seen["check at head"] | {"schema": 0} == {
        "schema": 0, "command": "check", "ok": True, "revisions": 3, "heads": ["r3"], "current_heads": ["r3"],
        "repaired": [], "problems": []}


def test_history_and_show_describe_the_scripts(seen):
    history = seen["history at r2"]
    assert [r["revision"] for r in history["revisions"]] == ["r3", "r2", "r1"]
    assert [r["tags"] for r in history["revisions"]] == [["head"], ["current"], []]
    assert history["revisions"][0]["path"] == str(seen["project"].versions / "r3_test.py")
    [shown] = seen["show r3"]["revisions"]
    assert [(s["number"], s["op"]) for s in shown["upgrade"]] == [(1, "add_field"), (2, "set_field")]
    assert shown["downgrade"]["explicit"] is False and shown["downgrade"]["irreversible"] is False
    assert [(s["op"], s["undo"]) for s in shown["downgrade"]["steps"]] == [("set_field", True), ("add_field", True)]


def test_inspect_json_reports_the_collection_as_the_store_holds_it(seen):
    report, store = seen["inspect at r2"], seen["store at r2"]
    assert (report["command"], report["backend"]) == ("inspect", "chroma")
    [docs] = report["collections"]
    assert (docs["collection"], docs["count"], docs["dim"], docs["layout"]) == (
        "docs", store["count"], store["dim"], store["layout"])
    assert set(docs["fields"]) == store["fields"] and "author" not in docs["fields"]
    assert docs["sampled"] == docs["documents_present"] == store["count"]


def test_heads_branches_and_show_of_a_branched_graph(tmp_path):
    project = Project(tmp_path, {"path": "%(here)s/chroma"})
    project.write_python("a1", None, 'op.create_collection("docs", dim=4)')
    project.write_python("b1", "a1", 'op.add_field("docs", "x", default=1)', extra="branch_labels = ('search',)")
    project.write_python("c1", "a1", 'op.drop_collection("docs", snapshot=False)', extra="irreversible = True")
    heads = document(project, "heads")
    assert [(h["revision"], h["tags"], h["down_revision"]) for h in heads["heads"]] == [
        ("b1", ["head"], ["a1"]), ("c1", ["head"], ["a1"])]
    assert heads["heads"][0]["branch_labels"] == ["search"]
    [point] = document(project, "branches")["branch_points"]
    assert (point["revision"]["revision"], point["revision"]["tags"]) == ("a1", ["branchpoint"])
    assert [c["revision"] for c in point["children"]] == point["revision"]["children"] == ["b1", "c1"]
    project.run("branches")
    assert project.output[1:] == [f"    -> {c['revision']}, {c['message']}" for c in point["children"]]
    [irreversible] = document(project, "show", "c1")["revisions"]
    assert irreversible["downgrade"] == {"explicit": False, "irreversible": True, "steps": []}
    project.write_python("b1", "a1", 'op.add_field("docs", "x", default=1)', downgrade='op.drop_field("docs", "x")',
                         extra="branch_labels = ('search',)")
    [explicit] = document(project, "show", "search")["revisions"]
    assert explicit["downgrade"] == {"explicit": True, "irreversible": False, "steps": [
        {"number": 1, "op": "drop_field", "description": "drop_field docs: -x", "undo": False}]}


def test_an_error_with_json_is_one_line_on_stderr_and_nothing_on_stdout(seen):
    project = seen["project"]
    for args, message in [(("show", "nope", "--json"), "no revision matches 'nope'"),
                          (("upgrade", "head", "--json"), "--json needs --dry-run")]:
        result = project.cli(*args, check=False)
        assert (result.returncode, result.stdout) == (1, ""), args
        [line] = result.stderr.splitlines()
        assert line.startswith("vecflow: error: ") and message in line


def test_the_cli_prints_the_document_alone_on_stdout_even_when_it_opens_a_store(seen):
    result = seen["project"].cli("downgrade", "-1", "--dry-run", "--json")
    plan = json.loads(result.stdout)  # fails on anything printed besides the document
    assert [(r["direction"], r["revision"]) for r in plan["revisions"]] == [("downgrade", "r3")]
    assert plan["collections"][0]["count"] == seen["store at r2"]["count"]


def test_non_finite_floats_are_written_as_strict_json():
    from vecflow.report import document as render

    text = render("inspect", {"values": [float("nan"), float("inf"), -float("inf"), 1.5]})
    assert json.loads(text)["values"] == ["NaN", "Infinity", "-Infinity", 1.5]
    json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))


# docs/json.md -----------------------------------------------------------------------------------

MAPS = {"fields", "id_kinds", "types", "params"}  # objects keyed by data (field names), not by schema


def shape_differences(example: Any, real: Any, where: str = "") -> list[str]:
    """Where the documented example and a real document differ in shape (keys and nesting).
    null and empty lists match anything: the example may show what the real state lacks."""
    if example is None or real is None or example == [] or real == []:
        return []
    if isinstance(example, dict) and isinstance(real, dict):
        if where.rsplit(".", 1)[-1] in MAPS:
            return []
        differences = [f"{where}.{key}: {'not in the real document' if key in example else 'undocumented'}"
                       for key in sorted(set(example) ^ set(real))]
        return differences + [d for key in set(example) & set(real)
                              for d in shape_differences(example[key], real[key], f"{where}.{key}")]
    if isinstance(example, list) and isinstance(real, list):  # items of a kind (check's problems) alike
        kinds = {item.get("kind") if isinstance(item, dict) else None: item for item in reversed(real)}
        return [d for item in example
                for d in shape_differences(item, kinds.get(item.get("kind") if isinstance(item, dict) else None),
                                           f"{where}[]")]
    if isinstance(example, dict | list) or isinstance(real, dict | list):
        return [f"{where}: {type(example).__name__} in the example, {type(real).__name__} for real"]
    return []


def test_the_examples_in_json_md_have_the_shape_of_real_documents(seen, tmp_path):
    graph = Project(tmp_path, {"path": "%(here)s/chroma"})
    graph.write_python("a1", None, 'op.create_collection("docs", dim=4)')
    for rev in ("b1", "c1"):
        graph.write_python(rev, "a1", 'op.add_field("docs", "x", default=1)', extra="branch_labels = ('search',)"
                           if rev == "b1" else "")
    real = {"current": seen["current failed"], "history": seen["history at r2"],
            "heads": document(graph, "heads"), "branches": document(graph, "branches"), "show": seen["show r3"],
            "check": json.loads(seen["check failed"].stdout), "upgrade": seen["plan from r2"],
            "downgrade": seen["downgrade plan from r2"], "inspect": seen["inspect at r2"]}
    examples = [json.loads(body) for lang, body in code_blocks(read("json.md")) if lang == "json"]
    # one example per document; the downgrade dry run stands for both dry runs
    assert sorted(example["command"] for example in examples) == sorted(set(real) - {"upgrade"})
    for example in examples:
        assert example["schema"] == 1
        for command in ("upgrade", "downgrade") if example["command"] == "downgrade" else (example["command"],):
            assert not shape_differences(example, real[command]), command


def test_the_python_example_in_json_md_runs(seen):
    [example] = [body for lang, body in code_blocks(read("json.md")) if lang == "python"]
    runnable = example.replace('["vecflow", ', f'[{sys.executable!r}, "-m", "vecflow", ')
    result = subprocess.run([sys.executable, "-c", runnable], cwd=seen["project"].root, capture_output=True,
                            text=True, timeout=300)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
