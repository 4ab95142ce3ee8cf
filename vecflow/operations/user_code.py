"""Calls into user code: revision scripts, functions, embedders and schema models.

User code runs in vecflow's process, and whatever it raises must end as a VecflowError: the runner
then records the attempt as failed (a rerun resumes it) and the CLI prints one line. `sys.exit()`
and KeyboardInterrupt are not Exceptions, so a plain `except Exception` lets them through, and
vecflow would exit 0 (sys.exit()) with the migration half done. Every call into user code catches
USER_ERRORS instead, and says what happened with `failure(exc)`.
"""

from __future__ import annotations

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
