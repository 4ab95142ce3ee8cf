"""A new user: a fresh virtualenv, the README's first command in a copy of the repository, then
every command of docs/tutorial.md verbatim, each one's output compared with the page.

The virtualenv is made with --system-site-packages, so pip finds the backend clients already
installed and downloads nothing big (it may still ask the package registry, and builds the wheel
with hatchling). vecflow itself is installed from the copy into the virtualenv, which shadows
any vecflow of the system site.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.docs_session import Command, Shell, page_steps

REPO = Path(__file__).resolve().parent.parent
# A log's progress line: `  [1/2] rename_field docs: ...: 200/300 records (66%), 3812 records/s, ETA 1 s`.
PROGRESS_LINE = re.compile(r"^(  \[\d+/\d+\] .*?): (?:.*: )?\d+(?:/\d+)? records(?: \(\d+%\))?(?:, |$)")
NOT_COPIED = shutil.ignore_patterns(".git", ".vecflow", "__pycache__", "*.egg-info", "build", "dist", ".venv",
                                    ".pytest_cache", ".ruff_cache")


def readme_first_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.*?)\n```", readme, re.S)[0]


@pytest.fixture(scope="module")
def new_user(tmp_path_factory) -> tuple[Shell, subprocess.CompletedProcess]:
    """A shell in a copy of the repository whose PATH starts with a fresh virtualenv, after the
    README's first command ran there."""
    root = tmp_path_factory.mktemp("new-user")
    venv, repo = root / "venv", root / "vecflow"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    shutil.copytree(REPO, repo, ignore=NOT_COPIED)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
    first = subprocess.run(["bash", "-c", readme_first_command()], cwd=repo, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
    if first.returncode != 0 and "Successfully installed" not in first.stdout:
        unavailable(f"pip install failed (no package registry?): {first.stdout.strip()[-500:]}")
    return Shell(repo, env), first


def test_the_readmes_first_command_installs_vecflow_in_the_virtualenv_and_applies_the_demo(new_user):
    shell, first = new_user
    assert first.returncode == 0, first.stdout
    out = first.stdout.splitlines()
    applied = [line for line in out if line.startswith("Upgrade ")]
    assert applied == ["Upgrade 3f2a9c1d0b7e (create the demo_docs collection from data shipped in versions/data)",
                       "Upgrade 8b41e07c5d93 (rename author to writer, add source)",
                       "Upgrade c7d5e2a90f14 (derive a slug from the title, drop legacy_rank)"]
    assert out[-4:-1] == ["c7d5e2a90f14 (head)", "    applied " + out[-3].split("applied ")[1],
                          "    8b41e07c5d93 -> c7d5e2a90f14, derive a slug from the title, drop legacy_rank"]
    assert out[-1] == f"    path: {shell.cwd}/versions/c7d5e2a90f14_slug_and_drop_legacy_rank.py"
    venv = Path(shell.env["VIRTUAL_ENV"])
    assert shutil.which("vecflow", path=shell.env["PATH"]) == str(venv / "bin" / "vecflow")
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import vecflow; print(vecflow.__file__)"],
                              cwd=venv, env=shell.env, capture_output=True, text=True, check=True).stdout
    assert Path(imported.strip()).is_relative_to(venv), "the user's vecflow is the one the README installed"


def test_the_tutorials_commands_run_verbatim_and_print_what_the_page_shows(new_user):
    """Then, in the same shell: a log's progress lines name their step (none with -q), and the
    --json documents parse."""
    shell, first = new_user
    assert first.returncode == 0, first.stdout
    page = REPO / "docs" / "tutorial.md"
    steps = page_steps(page.read_text(encoding="utf-8"))
    commands = [step.command for step in steps if isinstance(step, Command)]
    assert commands[:2] == ["vecflow current", "vecflow inspect main:demo_docs"]
    assert 'pip install ".[faiss]"' in commands and commands.count("vecflow upgrade head") == 3
    ran = shell.play(page, steps)
    assert len(ran) == len(commands)
    assert not (shell.cwd / ".vecflow" / "faiss" / "notes_de").exists(), "downgrade base moved the notes back"

    # What scripts read afterwards: one JSON document on stdout (docs/json.md).
    def json_of(command: str) -> dict:
        result = subprocess.run(["bash", "-c", command], cwd=shell.cwd, env=shell.env, capture_output=True,
                                text=True, timeout=120)
        assert (result.returncode, result.stderr) == (0, ""), command
        return json.loads(result.stdout)

    # Progress, as a log shows it: lines naming their step, each before that step's last line.
    def run(command: str) -> list[str]:
        result = subprocess.run(["bash", "-c", command], cwd=shell.cwd, env=shell.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=300)
        assert result.returncode == 0, result.stdout
        return result.stdout.splitlines()

    logged = run("vecflow -x progress_interval=0.001 upgrade head")
    progress = [i for i, line in enumerate(logged) if PROGRESS_LINE.match(line)]
    assert progress, logged
    for index in progress:
        step = PROGRESS_LINE.match(logged[index]).group(1)
        assert any(line.startswith(step) and " rows, " in line for line in logged[index + 1:]), (step, logged)
    assert sum(line.startswith("  start-up took ") for line in logged) == 1
    quiet = run("vecflow -q -x progress_interval=0.001 downgrade base")
    assert not [line for line in quiet if PROGRESS_LINE.match(line) or line.startswith("  start-up took ")], quiet
    assert sum(line.startswith("Downgrade ") for line in quiet) == 6 and quiet[-1].startswith("  verified: ")

    current = json_of("vecflow current --json")
    assert (current["command"], current["heads"], current["unfinished"]) == ("current", [], [])
    history = json_of("vecflow history --json")
    assert [rev["revision"] for rev in history["revisions"]] == [
        "2b6d8f0a4c19", "9a3c5e7f1b08", "4d1e7a0c9b22", "c7d5e2a90f14", "8b41e07c5d93", "3f2a9c1d0b7e"]
