"""Run vecflow's CLI in a Python where some packages cannot be imported, as if never installed.

    python tests/without_clients.py BLOCKED -- ARGS...     one `vecflow ARGS...`, exactly as
                                                           `python -m vecflow` (exit code, streams)
    python tests/without_clients.py BLOCKED --json STEPS   imports vecflow's entry points (the
                                                           CLI, the API, the pytest plugin), then
                                                           runs several commands in this process

BLOCKED is a comma-separated list of top-level modules (chromadb,faiss,...): a sys.meta_path finder
refuses them and everything under them, so `import chromadb` raises ModuleNotFoundError as it does
without the package, and records each refusal. STEPS is a JSON list of argument lists, run in order
in the current folder. --json prints {"imports": refused, "steps": [{"args", "code", "out", "err",
"refused"}]}, where refused lists the imports that were attempted (even ones caught). Nothing here
imports vecflow before the finder is in place.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
import traceback
from importlib.abc import MetaPathFinder

# What `import vecflow` users, the console script and pytest (the pytest11 entry point) load.
ENTRY_POINTS = ["vecflow", "vecflow.cli", "vecflow.command", "vecflow.backends", "vecflow.testing",
                "vecflow.testing.project", "vecflow.testing.runner", "vecflow.testing.tests"]


class RefuseImports(MetaPathFinder):
    def __init__(self, blocked: set[str]) -> None:
        self.blocked = blocked
        self.refused: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            self.refused.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

    def take(self) -> list[str]:
        refused, self.refused = self.refused, []
        return refused


def run_steps(finder: RefuseImports, steps: list[list[str]]) -> dict:
    """Each step through vecflow.cli.main with its own captured stdout and stderr; an exception
    that escapes main (which the CLI would print as a traceback) is recorded as stderr."""
    for module in ENTRY_POINTS:
        importlib.import_module(module)
    imports = finder.take()
    from vecflow.cli import main

    results = []
    for args in steps:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except BaseException:  # reported to the test, which fails on it
                traceback.print_exc()
                code = -1
        results.append({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                        "refused": finder.take()})
    return {"imports": imports, "steps": results}


if __name__ == "__main__":
    blocked, mode, *rest = sys.argv[1:]
    finder = RefuseImports(set(blocked.split(",")))
    sys.meta_path.insert(0, finder)
    if mode == "--json":
        print(json.dumps(run_steps(finder, json.loads(rest[0]))))
    else:
        from vecflow.cli import main

        raise SystemExit(main(rest))
