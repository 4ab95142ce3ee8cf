"""Templates: the project templates `vecflow init -t NAME` starts from, and the revision
templates `vecflow revision` renders.

A project template is a folder of templates/ (shipped in the wheel as vecflow/templates): README,
whose first line is the synopsis `vecflow list_templates` prints; vecflow.ini.j2; and the files
init copies into the new script directory (the template's revision template). A revision is
rendered from the project's own script.py.j2 / script.yaml.j2 in its script directory when there
is one, the way Alembic uses a project's script.py.mako, else from the packaged template of that
format (templates/python/script.py.j2, templates/yaml/script.yaml.j2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from vecflow.errors import ConfigError, ScriptError

DEFAULT_TEMPLATE = "python"
FORMATS = ("python", "yaml")
SUFFIXES = {"python": ".py", "yaml": ".yaml"}
README = "README"
INI_TEMPLATE = "vecflow.ini.j2"
GITIGNORE_ENTRY = ".vecflow/"
# Lines of a .gitignore that already keep .vecflow/ out of git.
_IGNORING = {".vecflow", ".vecflow/", "/.vecflow", "/.vecflow/", ".vecflow/*", "/.vecflow/*", ".vecflow/**",
             "/.vecflow/**"}


def templates_dir() -> Path:
    """Templates ship inside the wheel as vecflow/templates; a source checkout has ./templates."""
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "templates", package.parent / "templates"):
        if folder.is_dir():
            return folder
    raise ConfigError("vecflow's templates are missing from this installation; reinstall vecflow")


def revision_template_name(revision_format: str) -> str:
    """script.py.j2 or script.yaml.j2."""
    return f"script{SUFFIXES[revision_format]}.j2"


@dataclass(frozen=True)
class ProjectTemplate:
    """One folder of templates/: what `vecflow init -t NAME` writes."""

    name: str
    folder: Path

    @property
    def synopsis(self) -> str:
        lines = [line.strip() for line in (self.folder / README).read_text(encoding="utf-8").splitlines()]
        return next((line for line in lines if line), "")

    def script_files(self) -> list[Path]:
        """The files init copies into the script directory."""
        return sorted(p for p in self.folder.iterdir() if p.is_file() and p.name not in (README, INI_TEMPLATE))


def project_templates() -> list[ProjectTemplate]:
    """The packaged project templates, by name."""
    return [ProjectTemplate(folder.name, folder) for folder in sorted(templates_dir().iterdir())
            if (folder / README).is_file() and (folder / INI_TEMPLATE).is_file()]


def project_template(name: str) -> ProjectTemplate:
    for template in project_templates():
        if template.name == name:
            return template
    known = ", ".join(t.name for t in project_templates())
    raise ConfigError(f"no template named {name!r}; available: {known} (see 'vecflow list_templates')")


def write_project(template: ProjectTemplate, root: Path, script_dir: str) -> list[str]:
    """Write vecflow.ini, the script directory with the template's files, and the .gitignore
    entry for .vecflow/; return one line per thing written. Nothing existing is overwritten."""
    ini = root / "vecflow.ini"
    scripts = root / script_dir
    text = _environment(template.folder).get_template(INI_TEMPLATE).render(script_dir=script_dir)
    scripts.mkdir(parents=True, exist_ok=True)
    ini.write_text(text, encoding="utf-8")
    lines = [f"Created {ini} and {scripts}/"]
    for source in template.script_files():
        target = scripts / source.name
        if not target.exists():
            target.write_bytes(source.read_bytes())
            lines.append(f"Created {target} (the template of new revisions; edit it to change them)")
    lines += _ignore_state(root)
    return lines


def _ignore_state(root: Path) -> list[str]:
    """Keep .vecflow/ (ledger, snapshots, embedded stores) out of git: create .gitignore, or add
    the line to one that does not ignore it yet."""
    path = root / ".gitignore"
    if not path.exists():
        path.write_text(f"# vecflow's ledger, snapshots and embedded stores\n{GITIGNORE_ENTRY}\n", encoding="utf-8")
        return [f"Created {path} ({GITIGNORE_ENTRY})"]
    text = path.read_text(encoding="utf-8")
    if any(line.strip() in _IGNORING for line in text.splitlines()):
        return []
    separator = "" if not text or text.endswith("\n") else "\n"
    path.write_text(f"{text}{separator}{GITIGNORE_ENTRY}\n", encoding="utf-8")
    return [f"Added {GITIGNORE_ENTRY} to {path}"]


def revision_template(script_location: Path, revision_format: str) -> Path:
    """The project's own revision template if its script directory has one, else vecflow's."""
    name = revision_template_name(revision_format)
    local = Path(script_location) / name
    return local if local.is_file() else templates_dir() / revision_format / name


def render_revision(template: Path, **context: object) -> str:
    """Render a revision template; a broken template is a ScriptError naming it (and the line)."""
    try:
        return _environment(template.parent).get_template(template.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise ScriptError(f"{template}:{exc.lineno}: template syntax error: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise ScriptError(f"{template}: {exc.message or exc}; fix the template") from exc


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(py=python_literal, yaml=yaml_literal, docstring=docstring_text, comment=comment_text)
    return env


# Filters: every id is written the same way, double-quoted, in both formats ----------------------


def python_literal(value: str | Sequence[str] | None) -> str:
    """None, "a" or ("a", "b"): a Python literal with double-quoted strings."""
    if value is None:
        return "None"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid Python string literal
    items = [python_literal(item) for item in value]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def yaml_literal(value: str | Sequence[str] | None) -> str:
    """null, "a" or ["a", "b"]: strings double-quoted, so an all-digit id stays a string."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style='"', allow_unicode=True, width=float("inf")).rstrip("\n")
    return f"[{', '.join(yaml_literal(item) for item in value)}]"


def docstring_text(text: str) -> str:
    """Text safe inside a triple-quoted docstring (backslashes and quotes kept as written)."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def comment_text(text: str) -> str:
    """Text continued as '# ' comment lines, so a message with newlines stays a comment."""
    return "\n# ".join(text.splitlines()) if text else ""
