"""What a user coming from Alembic expects of the command line: init -t and list_templates, a
project's own revision templates, a .gitignore for .vecflow/, edit, revision --splice, stamp of
several revisions, and -n to pick a [vecflow:NAME] section. No store is opened."""

from __future__ import annotations

import re
import stat
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.project import Project
from tests.test_docs import code_blocks, read, section
from vecflow import command
from vecflow.cli import main
from vecflow.config import load_config
from vecflow.errors import ConfigError, RevisionError, ScriptError
from vecflow.runtime.ledger import Ledger
from vecflow.script.directory import ScriptDirectory
from vecflow.script.templates import templates_dir


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path, {"path": str(tmp_path / "chroma")})


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run vecflow's CLI in-process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, *args: str, expect: str) -> None:
    code, _, err = cli(capsys, *args)
    assert code == 1, err
    assert err.startswith("vecflow: error: ") and len(err.strip().splitlines()) == 1, err
    assert expect in err, err


def graph_of(project: Project):
    return ScriptDirectory(project.versions).revision_map


def applied(project: Project) -> set[str]:
    ledger = Ledger(project.config.ledger)
    try:
        return set(ledger.applied())
    finally:
        ledger.close()


# init -t and list_templates ---------------------------------------------------------------------


def test_list_templates_prints_every_packaged_template_with_the_first_line_of_its_readme(capsys):
    code, out, _ = cli(capsys, "list_templates")
    assert code == 0
    for name in ("python", "yaml"):
        synopsis = (templates_dir() / name / "README").read_text(encoding="utf-8").splitlines()[0]
        assert f"{name} - {synopsis}\n" in out
    assert out.startswith("Available templates:\n") and "vecflow init --template yaml" in out
    assert cli(capsys, "list-templates")[1] == out


def test_init_python_template_writes_the_ini_its_revision_template_and_a_gitignore(tmp_path, capsys):
    root = tmp_path / "proj"
    code, out, _ = cli(capsys, "init", str(root))
    assert code == 0
    assert out.splitlines()[0] == f"Created {root / 'vecflow.ini'} and {root / 'versions'}/"
    local = root / "versions" / "script.py.j2"
    assert local.read_bytes() == (templates_dir() / "python" / "script.py.j2").read_bytes()
    assert not (root / "versions" / "script.yaml.j2").exists()
    assert (root / ".gitignore").read_text(encoding="utf-8").splitlines()[-1] == ".vecflow/"
    config = load_config(root / "vecflow.ini")
    assert config.revision_format == "python" and config.ledger == root / ".vecflow" / "ledger.db"
    assert command.revision(config, "first", rev_id="r1", out=lambda line: None).suffix == ".py"


def test_init_yaml_template_makes_revisions_and_merges_yaml_unless_python_is_asked(tmp_path, capsys):
    root = tmp_path / "proj"
    assert cli(capsys, "init", "-t", "yaml", str(root))[0] == 0
    assert (root / "versions" / "script.yaml.j2").is_file() and not (root / "versions" / "script.py.j2").exists()
    config = load_config(root / "vecflow.ini")
    assert config.revision_format == "yaml"
    quiet = {"out": lambda line: None}
    assert command.revision(config, "first", rev_id="r1", **quiet).suffix == ".yaml"
    assert command.revision(config, "python one", rev_id="r2", use_python=True, **quiet).suffix == ".py"
    assert command.revision(config, "other root", rev_id="r3", head="base", **quiet).suffix == ".yaml"
    merged = command.merge(config, rev_id="m1", **quiet)
    assert merged.suffix == ".yaml"
    graph = ScriptDirectory(config.script_location).revision_map
    assert graph.get("m1").down_revision == ("r2", "r3") and graph.heads == ("m1",)
    with pytest.raises(Exception, match="--yaml and --python exclude each other"):
        command.revision(config, "both", use_yaml=True, use_python=True, **quiet)


def test_init_with_an_unknown_template_writes_nothing(tmp_path, capsys):
    fails(capsys, "init", "-t", "pylons", str(tmp_path / "proj"),
          expect="no template named 'pylons'; available: python, yaml")
    assert not (tmp_path / "proj").exists()


@pytest.mark.parametrize("before, after", [
    ("build/\n*.pyc", "build/\n*.pyc\n.vecflow/\n"),        # appended, on a line of its own
    ("build/\n", "build/\n.vecflow/\n"),
    ("build/\n/.vecflow\n", "build/\n/.vecflow\n"),           # already ignored: unchanged
    ("  .vecflow/*  \n", "  .vecflow/*  \n"),
])
def test_init_adds_vecflow_to_an_existing_gitignore_only_when_missing(tmp_path, before, after):
    root = tmp_path / "proj"
    root.mkdir()
    (root / ".gitignore").write_text(before, encoding="utf-8")
    command.init(str(root), out=lambda line: None)
    assert (root / ".gitignore").read_text(encoding="utf-8") == after


def test_init_keeps_a_revision_template_the_script_folder_already_has(tmp_path):
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "script.py.j2").write_text("mine", encoding="utf-8")
    command.init(str(tmp_path), out=lambda line: None)
    assert (versions / "script.py.j2").read_text(encoding="utf-8") == "mine"


# revision templates: the project's first, then vecflow's ---------------------------------------


def test_revision_renders_the_projects_own_template_and_falls_back_to_vecflows(project):
    packaged = (templates_dir() / "python" / "script.py.j2").read_text(encoding="utf-8")
    (project.versions / "script.py.j2").write_text("# house style: {{ message | upper }}\n" + packaged,
                                                   encoding="utf-8")
    python = project.run("revision", "house rules", rev_id="r1")[0].split()[-1]
    assert Path(python).read_text(encoding="utf-8").startswith("# house style: HOUSE RULES\n")
    yaml_path = Path(project.run("revision", "packaged", rev_id="r2", use_yaml=True)[0].split()[-1])
    assert yaml_path.read_text(encoding="utf-8").startswith("# packaged\n")
    assert graph_of(project).get("r2").down_revision == ("r1",)


@pytest.mark.parametrize("template, expected", [
    ("revision = {{ revision | py }}\ndown_revision = None\ndef upgrade(op)\n",
     r"rendered a script that does not load"),
    ('revision = "other"\ndown_revision = None\ndef upgrade(op):\n    pass\n', r"declares revision 'other', not 'r1'"),
    ("revision = {{ revision | py }\n", r"script.py.j2:1: template syntax error"),
    ("revision = {{ nope }}\n", r"script.py.j2: 'nope' is undefined; fix the template"),
])
def test_a_broken_project_template_is_one_error_and_writes_no_script(project, template, expected):
    (project.versions / "script.py.j2").write_text(template, encoding="utf-8")
    before = sorted(project.versions.iterdir())
    with pytest.raises(ScriptError, match=expected):
        project.run("revision", "x", rev_id="r1")
    assert sorted(project.versions.iterdir()) == before


def test_generated_scripts_double_quote_every_id_in_python_and_yaml(project):
    project.run("revision", "root", rev_id="0012", branch_label="0099")
    project.run("revision", "other", rev_id="0013", head="base")
    project.run("revision", "yaml", rev_id="0014", use_yaml=True, head="0012", depends_on=["0013"])
    project.run("merge", rev_id="0015")
    texts = {path.stem[:4]: path.read_text(encoding="utf-8") for path in project.versions.iterdir()}
    assert 'revision = "0012"' in texts["0012"] and 'branch_labels = "0099"' in texts["0012"]
    assert 'down_revision: "0012"' in texts["0014"] and 'depends_on: "0013"' in texts["0014"]
    assert 'down_revision = ("0013", "0014")' in texts["0015"]
    for text in texts.values():
        assert not re.search(r"'\d{4}'", text), text  # no single-quoted ids anywhere
    graph = graph_of(project)
    assert graph.get("0014").depends_on == ("0013",) and graph.get("0012").branch_labels == ("0099",)


def test_messages_with_quotes_backslashes_and_newlines_survive_both_formats(project):
    message = 'say """hi""" to C:\\new\\table'
    project.run("revision", message, rev_id="r1")
    project.run("revision", "two lines\n- and: a colon", rev_id="r2", use_yaml=True)
    graph = graph_of(project)
    assert graph.get("r1").message == message
    assert graph.get("r2").message == "two lines\n- and: a colon"
    assert yaml.safe_load((project.versions / "r2_two_lines_and_a_colon.yaml").read_text())["upgrade"] == []


# revision --splice ------------------------------------------------------------------------------


def test_building_on_a_revision_that_is_not_a_head_needs_splice(project, capsys):
    project.run("revision", "one", rev_id="r1")
    project.run("revision", "two", rev_id="r2")
    before = sorted(project.versions.iterdir())
    with pytest.raises(RevisionError, match=r"revision r1 is not a head \(heads: r2\); pass --splice"):
        project.run("revision", "branch", rev_id="r3", head="r1")
    assert sorted(project.versions.iterdir()) == before
    code, _, err = cli(capsys, "-c", str(project.root / "vecflow.ini"), "revision", "-m", "b", "--head", "r1",
                       "--splice", "--rev-id", "r3")
    assert code == 0, err
    graph = graph_of(project)
    assert graph.get("r3").down_revision == ("r1",) and graph.heads == ("r2", "r3")
    project.run("revision", "new root", rev_id="r4", head="base")  # a new base is no splice
    project.run("revision", "on a head", rev_id="r5", head="r2", splice=True)  # --splice on a head is harmless
    assert graph_of(project).heads == ("r3", "r4", "r5")


def test_splice_refusal_is_one_line_on_the_command_line(project, capsys):
    project.run("revision", "one", rev_id="r1")
    project.run("revision", "two", rev_id="r2")
    fails(capsys, "-c", str(project.root / "vecflow.ini"), "revision", "-m", "x", "--head", "r1",
          expect="pass --splice to start a new branch from it")


# stamp of several revisions ---------------------------------------------------------------------


@pytest.fixture
def branched(project):
    """r -> a1 -> a2 and r -> b1 -> b2."""
    project.write_python("r", None, "pass")
    project.write_python("a1", "r", "pass")
    project.write_python("a2", "a1", "pass")
    project.write_python("b1", "r", "pass")
    project.write_python("b2", "b1", "pass")
    return project


def test_stamp_of_several_revisions_applies_exactly_their_ancestry(branched, capsys):
    ini = str(branched.root / "vecflow.ini")
    code, out, err = cli(capsys, "-c", ini, "stamp", "a2", "b1")
    assert code == 0, err
    assert applied(branched) == {"r", "a1", "a2", "b1"}
    assert out.count("Stamped up") == 4
    branched.run("stamp", ["a1", "b2"])
    assert applied(branched) == {"r", "a1", "b1", "b2"}
    assert branched.output == ["Stamped down: a2", "Stamped up: b2"]
    branched.run("stamp", "heads")
    assert applied(branched) == {"r", "a1", "a2", "b1", "b2"}
    branched.run("stamp", ["base"])
    assert applied(branched) == set()


def test_stamp_of_two_revisions_on_one_branch_is_refused_before_anything_is_written(branched, capsys):
    branched.run("stamp", "b1")
    fails(capsys, "-c", str(branched.root / "vecflow.ini"), "stamp", "a1", "a2", "b2",
          expect="cannot stamp a1 and a2 together: a1 is an ancestor of a2 on the same branch; stamp a2 alone")
    assert applied(branched) == {"r", "b1"}


def test_stamp_of_a_revision_with_the_head_it_depends_on(project):
    project.write_python("x1", None, "pass")
    project.write_python("y1", None, "pass", extra="depends_on = 'x1'")
    project.run("stamp", ["x1", "y1"])  # a dependency is not the same branch
    assert applied(project) == {"x1", "y1"}


# edit -------------------------------------------------------------------------------------------


def recording_editor(folder: Path, status: int = 0) -> tuple[Path, Path]:
    """An editor that appends its arguments to a log file, then exits with status."""
    log = folder / "editor.log"
    script = folder / "editor.py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        with open({str(log)!r}, "a", encoding="utf-8") as handle:
            handle.write(" ".join(sys.argv[1:]) + "\\n")
        sys.exit({status})
        """), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def test_edit_opens_the_head_or_the_named_revisions_in_editor(project, capsys, monkeypatch, tmp_path):
    project.write_python("r1", None, "pass")
    project.write_python("r2", "r1", "pass")
    project.write_python("s1", None, "pass")
    editor, log = recording_editor(tmp_path)
    monkeypatch.setenv("EDITOR", f"{editor} --wait")
    monkeypatch.delenv("VISUAL", raising=False)
    ini = str(project.root / "vecflow.ini")
    fails(capsys, "-c", ini, "edit", expect="multiple heads are present")
    assert cli(capsys, "-c", ini, "edit", "heads")[0] == 0
    assert cli(capsys, "-c", ini, "edit", "r1")[0] == 0
    assert log.read_text(encoding="utf-8").splitlines() == [
        f"--wait {project.versions / 'r2_test.py'}", f"--wait {project.versions / 's1_test.py'}",
        f"--wait {project.versions / 'r1_test.py'}"]
    assert not project.config.ledger.exists()  # edit never creates a ledger


def test_edit_current_reads_the_ledger_and_visual_is_used_without_editor(project, capsys, monkeypatch, tmp_path):
    project.write_python("r1", None, "pass")
    project.write_python("r2", "r1", "pass")
    project.run("stamp", "r1")
    editor, log = recording_editor(tmp_path)
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.setenv("VISUAL", str(editor))
    assert cli(capsys, "-c", str(project.root / "vecflow.ini"), "edit", "current")[0] == 0
    assert log.read_text(encoding="utf-8") == f"{project.versions / 'r1_test.py'}\n"


def test_edit_errors_are_one_line(project, capsys, monkeypatch, tmp_path):
    project.write_python("r1", None, "pass")
    ini = str(project.root / "vecflow.ini")
    failing, _ = recording_editor(tmp_path, status=3)
    monkeypatch.setenv("EDITOR", str(failing))
    fails(capsys, "-c", ini, "edit", expect=f"the editor {failing} exited with status 3 while editing")
    fails(capsys, "-c", ini, "edit", "base", expect="'base' resolves to base, not to a revision")
    monkeypatch.delenv("EDITOR")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    fails(capsys, "-c", ini, "edit", expect="no editor found: set EDITOR (or VISUAL)")


def test_edit_through_the_real_command_line(project, tmp_path):
    project.write_python("r1", None, "pass")
    editor, log = recording_editor(tmp_path)
    result = project.cli("edit", env={"EDITOR": str(editor)})
    assert result.stdout == f"Editing {project.versions / 'r1_test.py'}\n"
    assert log.read_text(encoding="utf-8") == f"{project.versions / 'r1_test.py'}\n"


# -n / --name: a [vecflow:NAME] section ---------------------------------------------------------


NAMED_INI = """\
[vecflow]
batch_size = 50

[vecflow:staging]
default_store = other
script_location = %(here)s/staging_versions

[vecflow:ci]
ledger = %(here)s/ci/ledger.db

[store:main]
backend = chroma
path = %(here)s/chroma
"""


def write_ini(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vecflow.ini"
    path.write_text(text, encoding="utf-8")
    return path


def test_name_reads_the_named_section_instead_of_vecflow_with_its_own_ledger(tmp_path):
    ini = write_ini(tmp_path, NAMED_INI)
    default = load_config(ini)
    assert default.batch_size == 50 and default.ledger == tmp_path / ".vecflow" / "ledger.db"
    staging = load_config(ini, name="staging")
    assert staging.batch_size is None  # nothing is inherited from [vecflow]: the adapters choose
    assert staging.default_store == "other" and staging.script_location == tmp_path / "staging_versions"
    assert staging.ledger == tmp_path / ".vecflow" / "staging" / "ledger.db"
    assert load_config(ini, name="ci").ledger == tmp_path / "ci" / "ledger.db"
    assert load_config(ini, ["batch_size=7"], environ={"VECFLOW_RETRIES": "2"}, name="ci").batch_size == 7
    assert load_config(ini, environ={"VECFLOW_RETRIES": "2"}, name="ci").retries == 2


@pytest.mark.parametrize("text, name, expected", [
    (NAMED_INI, "prod", "has no [vecflow:prod] section (-n prod); its named sections: [vecflow:staging], [vecflow:ci]"),
    ("[vecflow]\n", "prod", "has no [vecflow:prod] section (-n prod); it has no named sections"),
    (NAMED_INI + "[vecflow:typo]\nbatchsize = 3\n", None, "[vecflow:typo]: unknown key(s) batchsize"),
    ("[vecflow:a b]\n", None, "section [vecflow:a b]: NAME may hold letters, digits"),
    ("[vecflow:staging]\nrevision_format = toml\n", "staging", "[vecflow:staging] revision_format: Input should be"),
])
def test_named_section_errors(tmp_path, text, name, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write_ini(tmp_path, text), name=name)


def test_name_on_the_command_line(tmp_path, capsys):
    ini = write_ini(tmp_path, NAMED_INI)
    (tmp_path / "versions").mkdir()
    (tmp_path / "staging_versions").mkdir()
    (tmp_path / "staging_versions" / "s1_x.py").write_text(
        'revision = "s1"\ndown_revision = None\n\n\ndef upgrade(op):\n    pass\n', encoding="utf-8")
    assert cli(capsys, "-c", str(ini), "heads")[1] == ""
    assert cli(capsys, "-c", str(ini), "--name", "staging", "heads")[1] == "s1 (head)\n"
    assert cli(capsys, "-c", str(ini), "-n", "staging", "stamp", "s1")[0] == 0
    assert (tmp_path / ".vecflow" / "staging" / "ledger.db").is_file()
    assert not (tmp_path / ".vecflow" / "ledger.db").exists()
    fails(capsys, "-c", str(ini), "-n", "prod", "heads", expect="has no [vecflow:prod] section")


def test_the_named_section_example_in_configuration_md_loads(tmp_path):
    text = section(read("configuration.md"), r"Named sections") or ""
    ini = next(body for lang, body in code_blocks(text) if lang == "ini")
    path = write_ini(tmp_path, ini)
    staging = load_config(path, name="staging")
    assert staging.default_store == "staging" and staging.batch_size == 200
    assert set(staging.stores) == {"main", "staging"} and load_config(path).default_store == "main"


# the examples in cli.md -------------------------------------------------------------------------


def console_example(heading: str, command_line: str) -> list[str]:
    """The output lines shown under `$ command_line` in the cli.md section `heading`."""
    for lang, body in code_blocks(section(read("cli.md"), heading) or ""):
        lines = body.splitlines()
        if lang == "console" and f"$ {command_line}" in lines:
            start = lines.index(f"$ {command_line}") + 1
            end = next((i for i in range(start, len(lines)) if lines[i].startswith("$ ")), len(lines))
            return lines[start:end]
    raise AssertionError(f"cli.md '{heading}' shows no `$ {command_line}`")


def test_the_init_and_list_templates_examples_in_cli_md_show_what_the_commands_print(tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "init", "myproject")[1].splitlines() == console_example("vecflow init", "vecflow init myproject")
    assert cli(capsys, "list_templates")[1].splitlines() == console_example("vecflow list_templates",
                                                                            "vecflow list_templates")
