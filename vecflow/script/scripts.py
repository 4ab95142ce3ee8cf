"""RevisionScript: one loaded revision file (Python or YAML) and the steps it plans.

Python revisions are modules with `revision`, `down_revision`, optional `branch_labels`,
`depends_on`, `irreversible`, and functions `upgrade(op)` / optional `downgrade(op)`.
YAML revisions hold the same keys, with `upgrade:` / `downgrade:` lists of `- op_name: {args}`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from vecflow.errors import OperationError, ScriptError, VecflowError
from vecflow.operations.base import Op, Operations, describe_validation_error, get_op
from vecflow.operations.user_code import USER_ERRORS, failure, folders_on_path


def file_checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RevisionScript:
    """What the runner needs from a revision file, whatever its format."""

    path: Path
    revision: str
    down_revision: Any
    branch_labels: Any = None
    depends_on: Any = None
    message: str = ""
    irreversible: bool = False
    checksum: str = ""
    import_folders: tuple[Path, ...] = ()
    _upgrade: Callable[[Operations], None] | None = field(default=None, repr=False)
    _downgrade: Callable[[Operations], None] | None = field(default=None, repr=False)

    @property
    def has_downgrade(self) -> bool:
        return self._downgrade is not None

    def upgrade_ops(self) -> list[Op]:
        return self._plan(self._upgrade, "upgrade")

    def downgrade_ops(self) -> list[Op] | None:
        """The explicit downgrade steps, or None when the script leaves them to be derived."""
        return self._plan(self._downgrade, "downgrade") if self._downgrade is not None else None

    def _plan(self, function: Callable[[Operations], None] | None, name: str) -> list[Op]:
        recorder = Operations()
        if function is None:
            return []
        try:
            with folders_on_path(self.import_folders):
                function(recorder)
        except VecflowError as exc:
            raise ScriptError(f"{self.path}{_line_in(exc, self.path)}: {name}(): {exc}") from exc
        except USER_ERRORS as exc:
            raise ScriptError(f"{self.path}{_line_in(exc, self.path)}: {name}() {failure(exc)}") from exc
        return recorder.steps


def _line_in(exc: BaseException, path: Path) -> str:
    """':LINE' of the deepest traceback frame inside the script, if any."""
    line = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = f":{frame.lineno}"
    return line


# Python ----------------------------------------------------------------------------------------


def load_python_script(path: Path, import_folders: Sequence[Path] = ()) -> RevisionScript:
    """Load a Python revision; its imports also find modules in `import_folders` (after sys.path)."""
    module_name = f"vecflow_revision_{path.stem}_{hashlib.md5(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScriptError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        with folders_on_path(import_folders):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        line = f":{exc.lineno}" if exc.lineno else ""
        raise ScriptError(f"{path}{line}: syntax error: {exc.msg}") from exc
    except OSError as exc:
        raise ScriptError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except USER_ERRORS as exc:
        raise ScriptError(f"{path}{_line_in(exc, path)}: loading the script {failure(exc)}") from exc
    finally:
        sys.modules.pop(module_name, None)
    for required in ("revision", "down_revision", "upgrade"):
        if not hasattr(module, required):
            raise ScriptError(f"{path}: missing '{required}' (a revision script defines revision, "
                              "down_revision and def upgrade(op))")
    if not callable(module.upgrade) or (hasattr(module, "downgrade") and not callable(module.downgrade)):
        raise ScriptError(f"{path}: upgrade and downgrade must be functions taking one argument, op")
    doc = (module.__doc__ or "").strip()
    return _validated(RevisionScript(
        path=path,
        revision=module.revision,
        down_revision=module.down_revision,
        branch_labels=getattr(module, "branch_labels", None),
        depends_on=getattr(module, "depends_on", None),
        message=doc.splitlines()[0] if doc else "",
        irreversible=getattr(module, "irreversible", False),
        checksum=file_checksum(path),
        import_folders=tuple(import_folders),
        _upgrade=module.upgrade,
        _downgrade=getattr(module, "downgrade", None),
    ))


def _validated(script: RevisionScript) -> RevisionScript:
    """Type checks; the graph (Revision) validates the id syntax itself."""
    if not isinstance(script.revision, str):
        raise ScriptError(f"{script.path}: revision must be a string, got {script.revision!r}")
    if not isinstance(script.irreversible, bool):
        raise ScriptError(f"{script.path}: irreversible must be True or False, got {script.irreversible!r}")
    for name in ("down_revision", "depends_on", "branch_labels"):
        value = getattr(script, name)
        ok = value is None or isinstance(value, str) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))
        if not ok:
            raise ScriptError(f"{script.path}: {name} must be None, a string or a tuple of strings, got {value!r}")
    return script


# YAML ------------------------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping (key '__line__') and of every item of a
    list (StepList.lines)."""


class StepList(list):
    """A YAML list that knows the line of each item (a step that is not a mapping has no '__line__')."""

    lines: list[int]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    # PyYAML keeps the last of repeated keys: a second `upgrade:` would silently drop the first.
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is repeated (first on line {seen[key]})", key_node.start_mark)
        if isinstance(key, str | int | float | bool):
            seen[key] = key_node.start_mark.line + 1
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> StepList:
    items = StepList(loader.construct_sequence(node, deep=True))
    items.lines = [item.start_mark.line + 1 for item in node.value]
    return items


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


class YamlRevision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: str
    down_revision: str | list[str] | None
    branch_labels: str | list[str] | None = None
    depends_on: str | list[str] | None = None
    message: str = ""
    irreversible: bool = False
    upgrade: list[Any]  # each step is checked by _yaml_step, which knows its line
    downgrade: list[Any] | None = None

    @field_validator("revision", "down_revision", "branch_labels", "depends_on", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers:
            # YAML reads unquoted digits as a number (0012 even as octal, 10): the id is lost.
            raise PydanticCustomError("unquoted_id", "was read as the number {number}; quote revision ids in YAML "
                                      '(e.g. "0012")', {"number": repr(numbers[0])})
        return value


def load_yaml_script(path: Path) -> RevisionScript:
    try:
        raw = yaml.load(_read_text(path), Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ScriptError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise ScriptError(f"{path}:1: a YAML revision is a mapping with revision, down_revision and upgrade")
    try:
        doc = YamlRevision(**_strip_lines(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = err["loc"][0] if err["loc"] else None
        line = raw.get("__line__", 1)
        if isinstance(raw.get(key), dict):
            line = raw[key].get("__line__", line)
        unknown = [str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        problem = (f"unknown key(s) {', '.join(unknown)}; a YAML revision has {', '.join(YamlRevision.model_fields)}"
                   if unknown else describe_validation_error(exc))
        raise ScriptError(f"{path}:{line}: {problem}") from exc
    upgrade_steps = _yaml_steps(path, raw["upgrade"])
    downgrade_steps = None if raw.get("downgrade") is None else _yaml_steps(path, raw["downgrade"])

    def replay(steps: list[Op]) -> Callable[[Operations], None]:
        def plan(op: Operations) -> None:
            op.steps.extend(s.model_copy(deep=True) for s in steps)
        return plan

    return _validated(RevisionScript(
        path=path,
        revision=doc.revision,
        down_revision=doc.down_revision,
        branch_labels=doc.branch_labels,
        depends_on=doc.depends_on,
        message=doc.message,
        irreversible=doc.irreversible,
        checksum=file_checksum(path),
        _upgrade=replay(upgrade_steps),
        _downgrade=None if downgrade_steps is None else replay(downgrade_steps),
    ))


def _read_text(path: Path) -> str:
    """A YAML script's text: UTF-8 (a leading BOM is allowed); ScriptError naming the line otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ScriptError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                          "save the file as UTF-8") from exc


def _yaml_steps(path: Path, items: StepList) -> list[Op]:
    return [_yaml_step(path, item, line) for item, line in zip(items, items.lines)]


def _yaml_step(path: Path, item: Any, line: int) -> Op:
    body = _strip_lines(item)
    if not isinstance(body, dict) or len(body) != 1:
        raise ScriptError(f"{path}:{line}: each step is a mapping with one op name, e.g. '- rename_field: {{...}}'")
    (name, args), = body.items()
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise ScriptError(f"{path}:{line}: {name}: arguments must be a mapping")
    try:
        return get_op(name).build(**args)
    except OperationError as exc:
        raise ScriptError(f"{path}:{line}: {exc}") from exc
