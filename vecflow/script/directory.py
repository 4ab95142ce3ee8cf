"""ScriptDirectory: the versions/ folder, its revision scripts and the graph they form."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from vecflow.errors import ConfigError, RevisionError, ScriptError, VecflowError
from vecflow.script.revision import Revision, RevisionMap, normalize_ids
from vecflow.script.scripts import RevisionScript, load_python_script, load_yaml_script
from vecflow.script.templates import SUFFIXES, render_revision, revision_template, templates_dir

if TYPE_CHECKING:
    from vecflow.config import Config

__all__ = ["ScriptDirectory", "templates_dir"]

PYTHON_SUFFIXES = (".py",)
YAML_SUFFIXES = (".yaml", ".yml")


class ScriptDirectory:
    def __init__(self, location: Path, import_folders: Sequence[Path] = ()) -> None:
        """`import_folders`: where Python revisions' own imports also look, after sys.path
        (`of(config)` gives the project folder and the script directory)."""
        self.location = Path(location)
        self.import_folders = tuple(import_folders)
        if not self.location.is_dir():
            raise ConfigError(f"script_location {self.location} does not exist; run 'vecflow init' or fix vecflow.ini")

    @classmethod
    def of(cls, config: Config) -> ScriptDirectory:
        """The project's script directory; its Python revisions can import the project's modules
        (from the folder of vecflow.ini, then the script directory), as dotted paths can."""
        return cls(config.script_location, import_folders=(config.here, config.script_location))

    def _load(self, path: Path) -> RevisionScript:
        if path.suffix in PYTHON_SUFFIXES:
            return load_python_script(path, self.import_folders)
        return load_yaml_script(path)

    def script_files(self) -> list[Path]:
        return sorted(p for p in self.location.iterdir()
                      if p.is_file() and not p.name.startswith(("_", "."))
                      and p.suffix in PYTHON_SUFFIXES + YAML_SUFFIXES)

    @cached_property
    def revision_map(self) -> RevisionMap:
        revisions = []
        for path in self.script_files():
            script = self._load(path)
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
        revision_format: str = "python",
        head: str = "head",
        splice: bool = False,
        branch_label: str | None = None,
        depends_on: Sequence[str] = (),
        rev_id: str | None = None,
        down_revisions: Sequence[str] | None = None,
    ) -> Path:
        """Write a new revision script (revision_format python or yaml) from the project's
        template, or vecflow's; down_revisions overrides `head` (used by merge). A parent that is
        not a head is refused unless `splice` (as in Alembic)."""
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
            inner = [r for r in down_revisions if r not in graph.heads]
            if inner and not splice:
                raise RevisionError(f"revision {inner[0]} is not a head (heads: {', '.join(graph.heads)}); pass "
                                    "--splice to start a new branch from it")
        resolved_deps = tuple(r for dep in depends_on for r in graph.resolve(dep))
        slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "revision"
        path = self.location / f"{rev_id}_{slug}{SUFFIXES[revision_format]}"
        if path.exists():
            raise ScriptError(f"{path} already exists")
        template = revision_template(self.location, revision_format)
        text = render_revision(
            template,
            revision=rev_id,
            down_revision=_ids_value(tuple(down_revisions)),
            branch_labels=_ids_value((branch_label,) if branch_label else ()),
            depends_on=_ids_value(resolved_deps),
            message=message,
            revises=", ".join(down_revisions) or "<base>",
            create_date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        path.write_text(text, encoding="utf-8")
        self._check_generated(path, template, rev_id)
        self.__dict__.pop("revision_map", None)
        return path

    def _check_generated(self, path: Path, template: Path, rev_id: str) -> None:
        """A template that renders a script vecflow cannot load writes nothing."""
        try:
            script = self._load(path)
            if script.revision != rev_id:
                raise ScriptError(f"it declares revision {script.revision!r}, not {rev_id!r}")
        except VecflowError as exc:
            path.unlink()
            raise ScriptError(f"the template {template} rendered a script that does not load ({exc}); "
                              "fix the template") from exc


def _ids_value(ids: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """What a template receives for down_revision, branch_labels, depends_on: None, an id, or a tuple."""
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else ids
