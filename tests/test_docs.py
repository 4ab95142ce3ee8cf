"""The docs cannot rot: every command, option, op, argument and setting is documented, and the
examples in the docs still parse and validate against the code."""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.docs_session import WriteFile, page_steps
from vecflow import cli_reference
from vecflow.cli import ALIASES, build_parser
from vecflow.config import _MAIN_KEYS
from vecflow.operations import Operations, get_op, public_ops
from vecflow.operations.base import OP_REGISTRY
from vecflow.script.scripts import load_python_script, load_yaml_script

DOCS = Path(__file__).resolve().parent.parent / "docs"
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
SHELL_LANGS = {"console", "bash", "sh", "shell"}


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, dedented content) of every fenced code block, including indented ones."""
    blocks, lang, indent, body = [], None, 0, []
    for line in text.splitlines():
        stripped = line.lstrip()
        if lang is None:
            if stripped.startswith("```"):
                lang, indent, body = stripped[3:].strip(), len(line) - len(stripped), []
        elif stripped.startswith("```"):
            blocks.append((lang, textwrap.dedent("\n".join(body)) + "\n"))
            lang = None
        else:
            body.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def section(text: str, title: str) -> str | None:
    """The text under the first heading matching the regex `title`, up to the next heading of the
    same or a higher level (headings inside code blocks do not count)."""
    lines, in_code, start, level = text.splitlines(), False, None, 0
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else HEADING.match(line)
        if match is None:
            continue
        if start is None and re.search(title, match.group(2)):
            start, level = index, len(match.group(1))
        elif start is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:index])
    return None if start is None else "\n".join(lines[start:])


def mentions(text: str, token: str) -> bool:
    """token appears on its own: '-v' does not count inside '--verbose' or '-vx'."""
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command by its name; an alias (list-templates) is documented in its command's section."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, sub in action.choices.items():
        if not any(sub is known for known in commands.values()):
            commands[name] = sub
    return commands


def documented_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings (without -h/--help) and positional argument names of a parser."""
    names = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names += action.option_strings or [action.dest]
    return names


PARSER = build_parser()
COMMANDS = subcommands(PARSER)
OPS = public_ops()
INTERNAL_OPS = sorted(name for name, cls in OP_REGISTRY.items() if cls.internal)


def command_section(name: str) -> str | None:
    return section(read("cli.md"), rf"(^|[\s`])vecflow {re.escape(name)}($|[\s`])")


def op_section(name: str) -> str | None:
    return section(read("ops.md"), rf"\b{re.escape(name)}\b")


# cli.md -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_cli_command_has_its_own_section_in_cli_md(name):
    assert command_section(name) is not None, f"docs/cli.md has no '## vecflow {name}' section"


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_every_other_spelling_of_a_command_is_documented_in_its_section(name):
    text = command_section(name) or ""
    missing = [alias for alias in ALIASES[name] if not mentions(text, f"vecflow {alias}")]
    assert not missing, f"docs/cli.md section 'vecflow {name}' does not mention {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_and_argument_of_a_command_is_documented_in_its_section(name):
    text = command_section(name) or ""
    missing = [arg for arg in documented_arguments(COMMANDS[name]) if not mentions(text, arg)]
    assert not missing, f"docs/cli.md section 'vecflow {name}' does not mention {missing}"


def test_every_global_option_is_documented_in_cli_md():
    text = section(read("cli.md"), r"Global options") or ""
    options = [opt for action in PARSER._actions for opt in action.option_strings]
    assert "--raiseerr" in options and "-x" in options
    missing = [opt for opt in options if not mentions(text, opt)]
    assert not missing, f"docs/cli.md 'Global options' does not mention {missing}"


def test_command_lines_shown_in_the_docs_are_accepted_by_the_parser():
    checked = 0
    for page in sorted(DOCS.rglob("*.md")):
        for lang, body in code_blocks(page.read_text(encoding="utf-8")):
            if lang not in SHELL_LANGS:
                continue
            for line in body.splitlines():
                line = line.removeprefix("$ ")
                if not line.startswith("vecflow "):
                    continue
                try:
                    build_parser().parse_args(shlex.split(line, comments=True)[1:])
                except SystemExit as exc:
                    pytest.fail(f"{page.name}: `{line}` is rejected by the CLI (exit {exc.code})")
                checked += 1
    assert checked > 10


# ops.md -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_public_op_has_a_section_in_ops_md_with_both_forms_and_every_argument(name):
    text = op_section(name)
    assert text is not None, f"docs/ops.md has no heading for {name}"
    assert f"op.{name}(" in text, f"docs/ops.md '{name}' shows no Python form op.{name}(...)"
    assert f"- {name}:" in text, f"docs/ops.md '{name}' shows no YAML form '- {name}: {{...}}'"
    missing = [arg for arg in OPS[name].model_fields if f"`{arg}`" not in text]
    assert not missing, f"docs/ops.md '{name}' does not document argument(s) {missing}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_python_signature_in_ops_md_lists_arguments_in_positional_order_with_true_defaults(name):
    fields = OPS[name].model_fields
    first_call = next(line for lang, body in code_blocks(op_section(name) or "") if lang == "python"
                      for line in body.splitlines() if line.startswith(f"op.{name}("))
    call = ast.parse(first_call, mode="eval").body
    names = [arg.id for arg in call.args] + [kw.arg for kw in call.keywords]
    assert names == list(fields), f"docs/ops.md: `{first_call}` should list {list(fields)} in this order"
    for kw in call.keywords:
        documented = ast.literal_eval(kw.value)
        actual = fields[kw.arg].get_default(call_default_factory=True)
        assert documented == actual, f"docs/ops.md: {name}({kw.arg}=...) default is {actual!r}"
    for arg in call.args:
        assert fields[arg.id].is_required(), f"docs/ops.md: {name}: {arg.id} has a default; show it"


@pytest.mark.parametrize("name", INTERNAL_OPS)
def test_internal_inverse_ops_are_explained_in_ops_md(name):
    assert op_section(name) is not None, f"docs/ops.md does not explain the internal op {name}"


def test_op_examples_in_ops_md_record_valid_steps():
    recorded = 0
    for lang, body in code_blocks(read("ops.md")):
        if lang == "python" and "def upgrade(op)" in body:
            namespace: dict = {}
            exec(body, namespace)  # noqa: S102  (the docs' own examples)
            op = Operations()
            namespace["upgrade"](op)
            recorded += len(op.steps)
        elif lang == "python":
            for line in body.splitlines():
                if not line.startswith("op."):
                    continue
                op = Operations()
                try:
                    eval(line, {"op": op})
                except NameError:
                    continue  # a signature line such as op.drop_field(collection, field)
                recorded += len(op.steps)
        elif lang == "yaml":
            doc = yaml.safe_load(body)
            steps = doc if isinstance(doc, list) else (doc.get("upgrade") or []) + (doc.get("downgrade") or [])
            for step in steps:
                ((op_name, args),) = step.items()
                get_op(op_name).build(**args)
                recorded += 1
    assert recorded >= 2 * len(OPS)


# revisions.md -----------------------------------------------------------------------------------


def test_revision_examples_in_revisions_md_load_and_plan(tmp_path):
    # Modules the examples import from the project (`myproject/schemas.py`), as the page shows them.
    for step in page_steps(read("revisions.md")):
        if isinstance(step, WriteFile) and not step.path.startswith("versions/"):
            (tmp_path / step.path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / step.path).write_text(step.text, encoding="utf-8")
    loaded = 0
    for number, (lang, body) in enumerate(code_blocks(read("revisions.md"))):
        if lang == "python" and "def upgrade(op)" in body and re.search(r"^revision = ", body, re.MULTILINE):
            path = tmp_path / f"example{number}.py"
            path.write_text(body, encoding="utf-8")
            script = load_python_script(path, (tmp_path,))
        elif lang == "yaml" and re.search(r"^revision:", body, re.MULTILINE):
            path = tmp_path / f"example{number}.yaml"
            path.write_text(body, encoding="utf-8")
            script = load_yaml_script(path)
        elif lang == "python" and "def upgrade(op)" in body:
            namespace: dict = {}
            exec(body, namespace)  # noqa: S102  (the docs' own examples)
            namespace["upgrade"](Operations())
            continue
        else:
            continue
        assert script.upgrade_ops(), f"revisions.md example {number} records no upgrade steps"
        script.downgrade_ops()
        loaded += 1
    assert loaded >= 3


# links ------------------------------------------------------------------------------------------


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces become '-'."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def test_relative_links_in_the_docs_point_at_existing_files_and_headings():
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path) if path else page
            assert linked.exists(), f"{page.name}: link to missing {target}"
            if fragment:
                headings = {anchor(m.group(2)) for m in map(HEADING.match, linked.read_text().splitlines()) if m}
                assert fragment in headings, f"{page.name}: link to missing heading {target}"


# configuration.md -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(_MAIN_KEYS))
def test_every_vecflow_ini_key_is_documented_with_its_environment_override(key):
    text = read("configuration.md")
    assert f"`{key}`" in text, f"docs/configuration.md does not document [vecflow] {key}"
    assert f"VECFLOW_{key.upper()}" in text, f"docs/configuration.md does not show VECFLOW_{key.upper()}"


# cli-reference.md -------------------------------------------------------------------------------


def test_cli_reference_md_is_what_the_parser_generates_now():
    committed, generated = read("cli-reference.md"), cli_reference.render()
    if committed != generated:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                                 "docs/cli-reference.md (committed)", "generated now"))[:40])
        pytest.fail(f"docs/cli-reference.md is stale; regenerate it with: {cli_reference.REGENERATE}\n{diff}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cli_reference_md_shows_every_command_with_its_python_function(name):
    text = section(read("cli-reference.md"), rf"^vecflow {re.escape(name)}$") or ""
    assert "Python: `vecflow.command." in text and f"usage: vecflow {name}" in text


def test_cli_reference_check_exits_1_naming_the_command_when_the_page_is_stale(tmp_path, capsys):
    page = tmp_path / "cli-reference.md"
    page.write_text(read("cli-reference.md").replace("--dry-run", "--dryrun"), encoding="utf-8")
    assert cli_reference.main(["--check", "--output", str(page)]) == 1
    assert capsys.readouterr().err == f"{page} is stale; run: python -m vecflow.cli_reference\n"
    assert cli_reference.main(["--output", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == cli_reference.render()
    assert cli_reference.main(["--check", "--output", str(page)]) == 0
