"""Ready-made tests of a user's chain: import them into a test module to run them there.

    from vecflow.testing import test_single_head, test_stairway, test_upgrade  # noqa: F401

Each runs on the fixtures of vecflow.testing (disposable stores seeded with vecflow_sample_data)
and fails with one message naming the revision, and for the stairway the collection, at fault.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vecflow.testing.runner import ChainRunner, StairwayError


def test_single_head(vecflow_runner: ChainRunner) -> None:
    """The chain has exactly one head (two heads usually mean two branches merged without a
    merge revision, which `vecflow upgrade head` refuses)."""
    heads = vecflow_runner.heads
    if not heads:
        pytest.fail(f"no revisions in {vecflow_runner.config.script_location}", pytrace=False)
    if len(heads) > 1:
        pytest.fail(f"multiple heads are present: {', '.join(vecflow_runner.describe(h) for h in heads)}; "
                    "run 'vecflow merge' to join them", pytrace=False)


def test_upgrade(vecflow_runner: ChainRunner) -> None:
    """Every revision upgrades, one at a time from base to the heads, on the sample data."""
    _fail_on_stairway_error(vecflow_runner.upgrade_one_at_a_time)


def test_stairway(vecflow_runner: ChainRunner) -> None:
    """Upgrade one revision at a time to the heads, then downgrade one at a time to base; after
    each downgrade every collection of every store is what it was at that revision on the way up."""
    _fail_on_stairway_error(vecflow_runner.stairway)


def _fail_on_stairway_error(run: Callable[[], object]) -> None:
    """Run; a StairwayError fails the test with its message alone (vecflow's traceback would
    only hide it)."""
    try:
        run()
    except StairwayError as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)
