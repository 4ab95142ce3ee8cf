"""20 random SIGKILLs during `vecflow upgrade head` and 20 during `vecflow downgrade base`, on every
backend, over a chain with field ops, a schema, a vector op, a split and a move (tests/faults/chain.py).

After each kill the same command is simply run again: no stamp, no edit, nothing a user would have
to know. At the end the store must hold, as the application reads it with the backend's own client,
exactly what an uninterrupted run of the same chain left: 0 records lost, 0 duplicated, 0 changed,
the same applied set, and no attempt left unfinished.

The kill moments are drawn from a seeded RNG (VECFLOW_FAULT_SEED overrides the seed) as fractions of
the uninterrupted run's duration; on failure the message carries the per-kill log: when each kill
landed, what the ledger says was running, and the last lines the killed process printed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import running_redis
from tests.faults.chain import BACKENDS, REVISIONS, build_chain, scratch_folder
from tests.faults.native import ProjectView, compare, compare_logical, read_project
from tests.faults.runs import KillLoop, Timeline, applied, timed_run, unfinished

KILLS = 20
SEED = os.environ.get("VECFLOW_FAULT_SEED", "vecflow-faults-1")
UPGRADE, DOWNGRADE = ["upgrade", "head"], ["downgrade", "base"]


@dataclass
class Reference:
    """An uninterrupted run of the chain: what each direction leaves, and how long it takes."""

    seeded: ProjectView
    upgraded: ProjectView
    downgraded: ProjectView
    applied: list[str]
    startup: float
    upgrade: Timeline
    downgrade: Timeline


@pytest.fixture(scope="module")
def fault_root() -> Iterator[Path]:
    with scratch_folder("vecflow-kills-") as folder:
        yield folder


@pytest.fixture(scope="module")
def fault_redis(fault_root) -> Iterator[str]:
    with running_redis(fault_root) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def make_project(backend, fault_root, request):
    def make(name: str):
        url = request.getfixturevalue("fault_redis") if backend == "redis" else None
        return build_chain(fault_root / f"{name}-{backend}", backend, redis_url=url)
    return make


@pytest.fixture(scope="module")
def reference(make_project) -> Reference:
    project = make_project("reference")
    logs = project.root / "logs"
    logs.mkdir()
    seeded = read_project(project.root)
    startup, up = timed_run(project.root, UPGRADE, logs / "upgrade.log")
    upgraded, revisions = read_project(project.root), applied(project.root / ".vecflow" / "ledger.db")
    assert revisions == REVISIONS
    _, down = timed_run(project.root, DOWNGRADE, logs / "downgrade.log")
    return Reference(seeded, upgraded, read_project(project.root), revisions, startup, up, down)


def kill_loop(project, command: list[str], reverse: list[str], timeline: Timeline, startup: float,
              backend: str) -> KillLoop:
    logs = project.root / "logs"
    logs.mkdir(exist_ok=True)
    loop = KillLoop(project.root, command, reverse, KILLS, timeline, startup,
                    random.Random(f"{SEED}:{backend}:{command[0]}"), logs)
    loop.run()
    return loop


def assert_same_as_uninterrupted(loop: KillLoop, expected: ProjectView, expected_applied: list[str]) -> None:
    ledger = loop.root / ".vecflow" / "ledger.db"
    problems = list(loop.failures)
    if loop.delivered < loop.kills:
        problems.append(f"  only {loop.delivered} of {loop.kills} kills were delivered")
    try:
        actual = read_project(loop.root)
    except AssertionError as exc:  # e.g. a Chroma folder chromadb itself can no longer read
        problems.append(f"  the store cannot be read: {exc}")
        actual = None
    summary = "not readable"
    if actual is not None:
        comparison = compare(expected.native, actual.native)
        summary = comparison.summary()
        if not comparison.equal:
            problems.append(f"  native contents differ from the uninterrupted run ({summary}):")
            problems += [f"    {line}" for line in comparison.lines]
        logical = compare_logical(expected.logical, actual.logical)
        if logical:
            problems.append("  vecflow's own view differs from the uninterrupted run's (state it keeps beside "
                            "the store):")
            problems += [f"    {line}" for line in logical]
    if applied(ledger) != expected_applied:
        problems.append(f"  applied revisions {applied(ledger)}, uninterrupted run: {expected_applied}")
    left = unfinished(ledger)
    if left:
        problems.append(f"  attempts left unfinished: {left}")
    header = (f"vecflow {' '.join(loop.command)} with {loop.delivered} kills in {loop.runs} runs "
              f"(uninterrupted: {loop.timeline.seconds:.2f} s holding the lease; seed {SEED!r}): {summary}")
    print(header, "kill log:", loop.log(), sep="\n")  # shown by pytest -rP, and with any failure
    assert not problems, "\n".join([header, *problems, "kill log:", loop.log()])


def test_random_kills_during_upgrade_head_lose_nothing(backend, reference, make_project):
    project = make_project("killed-upgrade")
    loop = kill_loop(project, UPGRADE, DOWNGRADE, reference.upgrade, reference.startup, backend)
    assert_same_as_uninterrupted(loop, reference.upgraded, reference.applied)


def test_random_kills_during_downgrade_base_lose_nothing(backend, reference, make_project):
    project = make_project("killed-downgrade")
    project.cli(*UPGRADE)
    loop = kill_loop(project, DOWNGRADE, UPGRADE, reference.downgrade, reference.startup, backend)
    assert_same_as_uninterrupted(loop, reference.downgraded, [])


def test_uninterrupted_downgrade_gives_the_application_its_data_back(reference):
    """The baseline the kill tests compare with: `downgrade base` restores, as the application
    reads it with its own client, exactly what it had written before the chain."""
    comparison = compare(reference.seeded.native, reference.downgraded.native)
    logical = compare_logical(reference.seeded.logical, reference.downgraded.logical)
    assert comparison.equal and not logical, "\n".join([comparison.summary(), *comparison.lines, *logical])
