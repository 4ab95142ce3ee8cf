"""Every user-facing failure is a VecflowError; the CLI prints its message on one line, exit 1."""


class VecflowError(Exception):
    """Base of every error vecflow reports to a user."""


class ConfigError(VecflowError):
    """vecflow.ini (or an override) is missing, malformed or names something unknown."""


class ScriptError(VecflowError):
    """A revision script cannot be loaded or validated; the message names the file (and line)."""


class RevisionError(VecflowError):
    """The revision graph is broken, or a revision identifier cannot be resolved."""


class AmbiguousRevisionError(RevisionError):
    """An identifier matches several revisions; the message lists the candidates."""


class MultipleHeadsError(RevisionError):
    """'head' (or a relative step) is ambiguous because several heads or parents exist."""


class BackendError(VecflowError):
    """A store is unreachable, or rejected a request."""


class CollectionNotFoundError(BackendError):
    """A collection that an operation needs does not exist."""


class CollectionExistsError(BackendError):
    """A collection that an operation would create already exists."""


class DamagedStoreError(BackendError):
    """A store cannot read one of its own collections (e.g. a Chroma index torn by a kill inside
    chromadb's save). Never retried: trying again would hide lost records. `scope` names the
    collection (Backend.scope), so the runner can drop and rebuild one the step made itself;
    `reason` says in a few words what the store cannot do."""

    def __init__(self, message: str, scope: str | None = None, reason: str = "the store cannot read it") -> None:
        super().__init__(message)
        self.scope = scope
        self.reason = reason


class DimensionMismatchError(BackendError):
    """Vectors do not have the collection's dimension."""


class InvalidDataError(VecflowError):
    """Records carry values a step refuses (NaN vectors, colliding fields, ...)."""


class OperationError(VecflowError):
    """An operation's arguments are invalid, or it cannot be reversed."""


class IrreversibleError(OperationError):
    """A downgrade was asked of a revision that cannot be reversed."""


class DryRunFailedError(VecflowError):
    """A dry run found a step that would be refused or fail; the message names it."""


class LedgerError(VecflowError):
    """The ledger disagrees with the scripts (edited script, interrupted attempt, ...)."""


class LockError(LedgerError):
    """Another runner holds the ledger's lease."""


class DigestMismatchError(VecflowError):
    """A downgrade did not restore the data exactly: the digests differ."""


class VerificationError(VecflowError):
    """A copy or move did not verify (counts, ids, digests or search parity); the source is untouched."""
