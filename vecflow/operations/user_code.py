"""Calls into user code: revision scripts, functions, embedders and schema models.

User code runs in vecflow's process, and whatever it raises must end as a VecflowError: the runner
then records the attempt as failed (a rerun resumes it) and the CLI prints one line. `sys.exit()`
and KeyboardInterrupt are not Exceptions, so a plain `except Exception` lets them through, and
vecflow would exit 0 (sys.exit()) with the migration half done. Every call into user code catches
USER_ERRORS instead, and says what happened with `failure(exc)`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

USER_ERRORS = (Exception, SystemExit, KeyboardInterrupt)
"""What a call into user code catches and turns into a VecflowError."""


def failure(exc: BaseException) -> str:
    """What user code did, for a message: 'raised ValueError: bad', 'called sys.exit(3)',
    'was interrupted (KeyboardInterrupt)'."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({'' if exc.code is None else repr(exc.code)})"
    if isinstance(exc, KeyboardInterrupt):
        return "was interrupted (KeyboardInterrupt)"
    return f"raised {type(exc).__name__}: {exc}"


def import_user_module(module_name: str, search: Sequence[Path] = ()) -> ModuleType:
    """Import the module of a dotted path (`"package.module:attribute"`): from sys.path, else from
    the folders in `search` (the project folder, then the script directory), which are on sys.path
    only while it is imported. Raises what the import raises."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not search or not (module_name == missing or module_name.startswith(missing + ".")):
            raise
    extra = [str(folder) for folder in search if str(folder) not in sys.path]
    sys.path[:0] = extra
    try:
        return importlib.import_module(module_name)
    finally:
        for folder in extra:
            sys.path.remove(folder)


@contextlib.contextmanager
def folders_on_path(folders: Sequence[Path]) -> Iterator[None]:
    """While a revision script is loaded or planned: the folders (the project folder, then the
    script directory) at the end of sys.path, so its own imports (`from myproject.schemas import
    Article`) find the project's modules as dotted paths do, after anything installed."""
    extra = [str(folder) for folder in folders if str(folder) not in sys.path]
    sys.path.extend(extra)
    try:
        yield
    finally:
        for folder in extra:
            if folder in sys.path:
                sys.path.remove(folder)
