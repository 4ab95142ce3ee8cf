"""Revision scripts: Python and YAML loading, generation from templates, errors with file and line."""

from __future__ import annotations

import pytest

from tests.project import Project
from vecflow import command
from vecflow.errors import RevisionError, ScriptError
from vecflow.operations.fields import RenameFieldOp
from vecflow.script.directory import ScriptDirectory


def load_graph(project: Project):
    """Load every revision script of the project (errors surface here)."""
    return ScriptDirectory(project.versions).revision_map


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path, {"path": str(tmp_path / "chroma")})


def test_python_and_yaml_revisions_form_one_graph(project):
    project.write_python("a1", None, 'op.create_collection("docs", dim=4)')
    project.write_yaml("b2", """\
        revision: b2
        down_revision: a1
        message: rename
        upgrade:
          - rename_field: {collection: docs, old: author, new: writer}
        """)
    graph = load_graph(project)
    assert graph.heads == ("b2",)
    steps = graph.get("b2").script.upgrade_ops()
    assert steps == [RenameFieldOp(collection="docs", old="author", new="writer")]
    assert graph.get("b2").script.downgrade_ops() is None
    assert graph.get("a1").message == "revision a1"


def test_yaml_op_errors_name_file_and_line(project):
    path = project.write_yaml("b2", """\
        revision: b2
        down_revision: null
        upgrade:
          - add_field: {collection: docs, field: source, default: x}
          - rename_field: {collection: docs, old: author}
        """)
    with pytest.raises(ScriptError, match=rf"{path}:5: rename_field: new: Field required"):
        load_graph(project)


def test_yaml_unknown_op_suggests_the_close_name(project):
    project.write_yaml("b2", "revision: b2\ndown_revision: null\nupgrade:\n  - rename_feld: {}\n")
    with pytest.raises(ScriptError, match=r"b2_test.yaml:4: unknown op 'rename_feld'; did you mean 'rename_field'"):
        load_graph(project)


def test_yaml_structure_errors(project):
    project.write_yaml("b2", "revision: b2\nupgrade: []\n")
    with pytest.raises(ScriptError, match=r"b2_test.yaml:1: down_revision: Field required"):
        load_graph(project)
    project.write_yaml("b2", "revision: b2\ndown_revision: null\nupgrade: [\n")
    with pytest.raises(ScriptError, match=r"b2_test.yaml:\d+: invalid YAML"):
        load_graph(project)


def test_yaml_ids_read_as_numbers_are_refused_with_a_hint(project):
    project.write_yaml("b2", "revision: 0012\ndown_revision: null\nupgrade: []\n")
    with pytest.raises(ScriptError, match=r"revision: was read as the number 10; quote revision ids"):
        load_graph(project)


def test_generated_yaml_quotes_all_digit_parent_ids(project):
    project.run("revision", "first", rev_id="0012")
    project.run("revision", "second", rev_id="0013", use_yaml=True)
    assert ScriptDirectory(project.versions).revision_map.get("0013").down_revision == ("0012",)


def test_python_syntax_error_names_file_and_line(project):
    path = project.versions / "zz_broken.py"
    path.write_text("revision = 'zz'\ndown_revision = None\ndef upgrade(op)\n    pass\n")
    with pytest.raises(ScriptError, match=rf"{path}:3: syntax error"):
        load_graph(project)


def test_python_script_missing_upgrade(project):
    (project.versions / "zz_x.py").write_text("revision = 'zz'\ndown_revision = None\n")
    with pytest.raises(ScriptError, match=r"zz_x.py: missing 'upgrade'"):
        load_graph(project)


def test_bad_op_arguments_in_python_name_the_line(project):
    path = project.write_python("a1", None, 'op.create_collection("docs", dim=4)\nop.add_field("docs")')
    script = ScriptDirectory(project.versions).script("a1")
    with pytest.raises(ScriptError, match=rf"{path}:9: upgrade\(\): add_field: field: Field required"):
        script.upgrade_ops()


def test_exception_in_upgrade_names_file_and_line(project):
    path = project.write_python("a1", None, "raise RuntimeError('boom')")
    with pytest.raises(ScriptError, match=rf"{path}:8: upgrade\(\) raised RuntimeError: boom"):
        ScriptDirectory(project.versions).script("a1").upgrade_ops()


def test_invalid_jinja_expression_is_refused_when_planned(project):
    project.write_python("a1", None, 'op.set_field("docs", "x", "title |")')
    with pytest.raises(ScriptError, match="invalid jinja2 expression"):
        ScriptDirectory(project.versions).script("a1").upgrade_ops()


def test_duplicate_revision_ids_name_both_files(project):
    project.write_python("a1", None, "pass")
    (project.versions / "other.py").write_text("revision = 'a1'\ndown_revision = None\ndef upgrade(op):\n    pass\n")
    with pytest.raises(RevisionError, match=r"a1.*twice.*(a1_test.py.*other.py|other.py.*a1_test.py)"):
        load_graph(project)


def test_revision_command_renders_python_and_yaml_templates(project):
    first = project.run("revision", "create docs", rev_id="r1")
    second = project.run("revision", "rename author", use_yaml=True, rev_id="r2", branch_label="content")
    assert first == [f"Generated {project.versions / 'r1_create_docs.py'}"]
    graph = load_graph(project)
    assert graph.get("r2").down_revision == ("r1",)
    assert graph.get("r2").branch_labels == ("content",)
    assert graph.get("r1").message == "create docs" and graph.get("r2").message == "rename author"
    assert second[0].endswith("r2_rename_author.yaml")
    project.run("revision", "on top", rev_id="r3", head="content@head", depends_on=["r1"])
    assert graph.get("r1").script.upgrade_ops() == []
    graph = load_graph(project)
    assert graph.get("r3").down_revision == ("r2",) and graph.get("r3").depends_on == ("r1",)


def test_revision_refuses_a_taken_or_malformed_id(project):
    project.run("revision", "one", rev_id="r1")
    with pytest.raises(RevisionError, match="already exists"):
        project.run("revision", "again", rev_id="r1")
    with pytest.raises(RevisionError, match="use letters, digits"):
        project.run("revision", "bad", rev_id="r-1")


def test_revision_with_two_heads_asks_which(project):
    project.run("revision", "one", rev_id="r1")
    project.run("revision", "two", rev_id="r2", head="base")
    with pytest.raises(RevisionError, match=r"multiple heads are present \(r1, r2\).*--head"):
        project.run("revision", "three")
    path = project.run("merge", message="join")[0]
    graph = load_graph(project)
    assert len(graph.heads) == 1 and graph.get(graph.heads[0]).down_revision == ("r1", "r2")
    assert "join" in path


def test_init_creates_a_working_project(tmp_path):
    lines = []
    command.init(str(tmp_path / "new"), out=lines.append)
    assert (tmp_path / "new" / "vecflow.ini").is_file() and (tmp_path / "new" / "versions").is_dir()
    with pytest.raises(Exception, match="already exists"):
        command.init(str(tmp_path / "new"), out=lines.append)
