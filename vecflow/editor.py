"""Opening a file in the user's editor, for `vecflow edit`.

The editor is found as Alembic finds it: $EDITOR, then $VISUAL, then the first common editor on
the PATH. A variable may hold arguments too (EDITOR="code --wait").
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from vecflow.errors import VecflowError

COMMON_EDITORS = (("sensible-editor", "editor", "nano", "vim", "vi", "code") if os.name == "posix"
                  else ("code.exe", "notepad++.exe", "notepad.exe"))


def find_editor(environ: Mapping[str, str] | None = None) -> list[str]:
    """The editor command line (program first), or a VecflowError saying what to set."""
    environ = os.environ if environ is None else environ
    search_path = environ.get("PATH", "")
    candidates = []
    for variable in ("EDITOR", "VISUAL"):
        value = environ.get(variable, "").strip()
        if value:
            try:
                candidates.append(shlex.split(value))
            except ValueError as exc:
                raise VecflowError(f"${variable} ({value!r}) is not a command line: {exc}") from exc
    candidates += [[name] for name in COMMON_EDITORS]
    for command in candidates:
        if not command:
            continue
        program = shutil.which(command[0], path=search_path) or (command[0] if os.path.isfile(command[0]) else None)
        if program is not None:
            return [program, *command[1:]]
    raise VecflowError("no editor found: set EDITOR (or VISUAL) to your editor, e.g. EDITOR=nano; tried "
                       f"{', '.join(' '.join(c) for c in candidates if c)}")


def open_in_editor(path: Path, editor: list[str] | None = None) -> None:
    """Run the editor (default: find_editor()) on path and wait for it; a failure is one
    VecflowError line."""
    command = [*(editor or find_editor()), str(path)]
    try:
        result = subprocess.run(command, check=False)
    except OSError as exc:
        raise VecflowError(f"the editor {command[0]} could not be started: {exc.strerror or exc}") from exc
    if result.returncode != 0:
        raise VecflowError(f"the editor {command[0]} exited with status {result.returncode} while editing {path}")
