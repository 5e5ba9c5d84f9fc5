"""The exceptions aipaas raises.

The core raises these; the edges map them: the CLI to an exit code and a
message a person can act on (``aipaas.cli.main``), Prefect to a Failed state,
the API to an HTTP status (``serving/errors.py``, in one table). Nothing in
the core knows about HTTP.

    AipaasError
    ├── ConfigurationError       a setting or a definition is wrong
    │   └── SchemaVersionError   the platform database is at a revision this aipaas does not know
    ├── DatasetNotFoundError     unknown dataset, or no version recorded yet
    ├── DataValidationError      a file failed its suite (carries the ValidationReport)
    ├── VersioningError          DVC refused (not a repo, remote unreachable)
    │   └── RemoteError          the DVC remote did not take a push (transient: retried)
    ├── ModelNotFoundError       unknown model definition or registry version
    ├── TrainingError            the search produced no usable model
    ├── RegistryUnavailableError the MLflow server did not answer in time
    ├── GateFailedError          a challenger failed its gates (carries the GateResults)
    ├── AuditIntegrityError      the audit chain does not verify
    ├── AlreadyRunningError      ``aipaas up`` is already running
    ├── KeyRejectedError         an API key is missing, malformed, unknown, revoked or expired
    │   └── RetiredSecretError   a key's previous secret, after its rotation's grace period
    ├── ScopeDeniedError         a valid key lacks the scope a call needs
    ├── RateLimitedError         a key is over its rate (carries ``retry_after_s``)
    │   └── QuotaExceededError   past a daily quota or monthly budget (names it, and when it resets)
    ├── UnsignedVersionError     a version without a valid promotion record may not serve
    ├── CanaryError              a canary cannot start or stop (one runs already, none runs)
    ├── UnknownRequestError      feedback names a request id that was never answered
    └── AlreadyLabelledError     feedback for a request that already has its label
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aipaas.schemas import GateResult, ValidationReport


class AipaasError(Exception):
    """Base of every error the platform raises on purpose."""

    exit_code = 1


class ConfigurationError(AipaasError):
    exit_code = 2


class SchemaVersionError(ConfigurationError):
    """The platform database was migrated by a newer aipaas: upgrade aipaas, never downgrade it."""

    exit_code = 19

    def __init__(self, message: str, *, found: str, known: str) -> None:
        super().__init__(message)
        self.found = found
        self.known = known


class DatasetNotFoundError(AipaasError):
    exit_code = 3


class DataValidationError(AipaasError):
    """A dataset failed its suite; ``report`` says which expectations and rows."""

    exit_code = 4

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class VersioningError(AipaasError):
    exit_code = 5


class RemoteError(VersioningError):
    """The DVC remote did not take the push (storage or network): worth a retry."""

    transient = True


class ModelNotFoundError(AipaasError):
    exit_code = 6


class TrainingError(AipaasError):
    exit_code = 7


class RegistryUnavailableError(AipaasError):
    exit_code = 8


class GateFailedError(AipaasError):
    """A challenger failed promotion; ``gates`` holds every gate's result."""

    exit_code = 9

    def __init__(self, message: str, gates: list[GateResult] | None = None) -> None:
        super().__init__(message)
        self.gates: list[GateResult] = list(gates or [])


class AuditIntegrityError(AipaasError):
    exit_code = 10


class AlreadyRunningError(AipaasError):
    exit_code = 11


class KeyRejectedError(AipaasError):
    """Who is calling is not established: no key, or one that is not (or no longer) valid."""

    exit_code = 12


class RetiredSecretError(KeyRejectedError):
    """A key's previous secret was presented after its grace period ended (401).

    Names the key, so the refusal's audit record can say whose old secret it was.
    """

    def __init__(self, key_id: str, ended_at: str | None) -> None:
        when = f" at {ended_at}" if ended_at else ""
        super().__init__(
            f"API key {key_id}: this secret was replaced by a rotation and stopped working"
            f"{when}; use the new secret"
        )
        self.key_id = key_id
        self.ended_at = ended_at


class ScopeDeniedError(AipaasError):
    """The caller is known but its key does not allow this call."""

    exit_code = 13


class RateLimitedError(AipaasError):
    """The key is over its rate; it may try again after ``retry_after_s`` seconds."""

    exit_code = 14

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QuotaExceededError(RateLimitedError):
    """The key is past a quota (requests per day, cost per month) until ``resets_at``.

    ``quota`` names it as configured (``"10000/day"``, ``"50/month"``),
    ``kind`` says which (``"requests"`` or ``"cost"``), ``used`` what was counted.
    """

    exit_code = 17

    def __init__(
        self,
        message: str,
        *,
        quota: str,
        kind: str,
        used: float,
        resets_at: str,
        retry_after_s: float,
    ) -> None:
        super().__init__(message, retry_after_s)
        self.quota = quota
        self.kind = kind
        self.used = used
        self.resets_at = resets_at


class UnsignedVersionError(AipaasError):
    """A registry version has no valid promotion record: never promoted, or the record was forged.

    Serving refuses to load it; a key may not pin it.
    """

    exit_code = 18


class CanaryError(AipaasError):
    """A canary or shadow release cannot start or stop in the model's present state."""

    exit_code = 22


class UnknownRequestError(AipaasError):
    exit_code = 15


class AlreadyLabelledError(AipaasError):
    exit_code = 16
