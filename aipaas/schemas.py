"""Plain value types passed between the platform's stages.

No third-party type appears here: these cross module and process boundaries
(Prefect results, CLI output, MLflow tags).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that failed, as a person needs to read it."""

    expectation: str
    column: str | None
    unexpected_count: int
    examples: list[Any] = field(default_factory=list)
    details: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one file against its dataset's suite."""

    dataset: str
    path: str
    success: bool
    rows: int
    evaluated: int
    failed: list[FailedExpectation] = field(default_factory=list)
    data_docs: str | None = None  # path of the GX Data Docs index.html
    error: str | None = None  # the file could not be read at all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DatasetVersion:
    """A validated, DVC-versioned dataset: what training records as lineage."""

    name: str
    hash: str  # DVC's md5 of the dataset's prepared outputs
    rows: int
    suite_passed: bool
    train_path: Path
    holdout_path: Path
    target: str
    git_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_path"] = str(self.train_path)
        d["holdout_path"] = str(self.holdout_path)
        return d


@dataclass(frozen=True)
class GateResult:
    """One promotion gate as recorded: what was measured, against what, and the outcome."""

    name: str
    passed: bool
    value: Any
    threshold: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
