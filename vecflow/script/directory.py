"""ScriptDirectory: the versions/ folder, its revision scripts and the graph they form."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import jinja2

from vecflow.errors import ConfigError, RevisionError, ScriptError
from vecflow.script.revision import Revision, RevisionMap, normalize_ids
from vecflow.script.scripts import RevisionScript, load_python_script, load_yaml_script

PYTHON_SUFFIXES = (".py",)
YAML_SUFFIXES = (".yaml", ".yml")


def templates_dir() -> Path:
    """Templates ship inside the wheel as vecflow/templates; a source checkout has ./templates."""
    packaged = Path(__file__).resolve().parent.parent / "templates"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parent.parent.parent / "templates"
    if source.is_dir():
        return source
    raise ConfigError("vecflow's templates are missing from this installation; reinstall vecflow")


def render_template(name: str, **context: object) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template(name).render(**context)


class ScriptDirectory:
    def __init__(self, location: Path) -> None:
        self.location = Path(location)
        if not self.location.is_dir():
            raise ConfigError(f"script_location {self.location} does not exist; run 'vecflow init' or fix vecflow.ini")

    def script_files(self) -> list[Path]:
        return sorted(p for p in self.location.iterdir()
                      if p.is_file() and not p.name.startswith(("_", "."))
                      and p.suffix in PYTHON_SUFFIXES + YAML_SUFFIXES)

    @cached_property
    def revision_map(self) -> RevisionMap:
        revisions = []
        for path in self.script_files():
            script = load_python_script(path) if path.suffix in PYTHON_SUFFIXES else load_yaml_script(path)
            revisions.append(Revision(
                revision=script.revision,
                down_revision=normalize_ids(script.down_revision),
                branch_labels=normalize_ids(script.branch_labels),
                depends_on=normalize_ids(script.depends_on),
                message=script.message,
                path=str(path),
                script=script,
            ))
        return RevisionMap(revisions)

    def script(self, revision: str) -> RevisionScript:
        return self.revision_map.get(revision).script

    def generate_revision(
        self,
        message: str,
        *,
        use_yaml: bool = False,
        head: str = "head",
        branch_label: str | None = None,
        depends_on: Sequence[str] = (),
        rev_id: str | None = None,
        down_revisions: Sequence[str] | None = None,
    ) -> Path:
        """Write a new revision script; down_revisions overrides `head` (used by merge)."""
        graph = self.revision_map
        rev_id = rev_id or uuid.uuid4().hex[:12]
        if not re.fullmatch(r"[A-Za-z0-9_]+", rev_id):
            raise RevisionError(f"--rev-id {rev_id!r}: use letters, digits or '_'")
        if rev_id in graph:
            raise RevisionError(f"revision id {rev_id!r} already exists ({graph.get(rev_id).path})")
        if down_revisions is None:
            down_revisions = () if head == "base" else graph.resolve(head)
            if head == "head" and not graph.heads:
                down_revisions = ()
        resolved_deps = tuple(r for dep in depends_on for r in graph.resolve(dep))
        slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "revision"
        suffix = ".yaml" if use_yaml else ".py"
        path = self.location / f"{rev_id}_{slug}{suffix}"
        if path.exists():
            raise ScriptError(f"{path} already exists")
        text = render_template(
            "script.yaml.j2" if use_yaml else "script.py.j2",
            revision=rev_id,
            down_revision=_literal(tuple(down_revisions), use_yaml),
            branch_labels=_literal((branch_label,) if branch_label else (), use_yaml),
            depends_on=_literal(resolved_deps, use_yaml),
            message=message,
            revises=", ".join(down_revisions) or "<base>",
            create_date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        path.write_text(text, encoding="utf-8")
        self.__dict__.pop("revision_map", None)
        return path


def _literal(ids: tuple[str, ...], use_yaml: bool) -> str:
    """None / 'a' / ('a', 'b') in Python; null / a / [a, b] in YAML."""
    if not ids:
        return "null" if use_yaml else "None"
    if use_yaml:  # quoted, so an all-digit id stays a string
        quoted = [json.dumps(i) for i in ids]
        return quoted[0] if len(ids) == 1 else "[" + ", ".join(quoted) + "]"
    return repr(ids[0]) if len(ids) == 1 else repr(ids)
