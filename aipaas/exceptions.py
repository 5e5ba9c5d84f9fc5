"""The exceptions aipaas raises.

The core raises these; the edges map them: the CLI to an exit code and a
message a person can act on, Prefect to a Failed state, the API to an HTTP
status.

    AipaasError
    ├── ConfigurationError       a setting or a definition is wrong
    ├── DatasetNotFoundError     unknown dataset, or no version recorded yet
    ├── DataValidationError      a file failed its suite (carries the report)
    ├── VersioningError          DVC refused (not a repo, remote unreachable)
    ├── ModelNotFoundError       unknown model definition or registry version
    ├── TrainingError            the search produced no usable model
    ├── RegistryUnavailableError the MLflow server did not answer in time
    ├── GateFailedError          a challenger failed its gates (carries them)
    ├── AuditIntegrityError      the audit chain does not verify
    └── AlreadyRunningError      ``aipaas up`` is already running
"""

from __future__ import annotations

from typing import Any


class AipaasError(Exception):
    """Base of every error the platform raises on purpose."""

    exit_code = 1


class ConfigurationError(AipaasError):
    exit_code = 2


class DatasetNotFoundError(AipaasError):
    exit_code = 3


class DataValidationError(AipaasError):
    """A dataset failed its suite; ``report`` says which expectations and rows."""

    exit_code = 4

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class VersioningError(AipaasError):
    exit_code = 5


class ModelNotFoundError(AipaasError):
    exit_code = 6


class TrainingError(AipaasError):
    exit_code = 7


class RegistryUnavailableError(AipaasError):
    exit_code = 8


class GateFailedError(AipaasError):
    """A challenger failed promotion; ``gates`` holds every gate's result."""

    exit_code = 9

    def __init__(self, message: str, gates: Any = None) -> None:
        super().__init__(message)
        self.gates = gates


class AuditIntegrityError(AipaasError):
    exit_code = 10


class AlreadyRunningError(AipaasError):
    exit_code = 11
