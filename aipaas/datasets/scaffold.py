"""A starting expectation suite, scaffolded from the data it will guard.

Writing a Great Expectations suite by hand is the slowest step of adding a
dataset, and GX 1.x will not build one outside a data context. The scaffold
reads a frame and writes the plain JSON that :mod:`aipaas.datasets.validation`
loads (the format of ``expectations/breast_cancer.json``), one column at a time:

    every column     exists, has the type seen, no nulls (or ``mostly`` when some were seen)
    numbers          values between the seen range widened by a margin (never below 0
                     when none was); whole numbers with a handful of values: that set
    categories       the values seen (text with few distinct values, booleans, and
                     the target of a classification)
    free text        length bounds and never empty or whitespace only
    the table        exactly these columns; a row count from half the rows seen up

The invariant: the suite passes on the rows it was scaffolded from (tested,
through the real validation path), so the first ``aipaas data run`` of a new
dataset is green and every later failure is news. Bounds are deliberately
loose guesses; each expectation's ``meta`` says it was scaffolded, from how
many rows, and what was seen, so that a person reviews and tightens it.

The frame is read the way the validate stage reads ``raw.csv`` (through CSV),
so the types the suite names are the types validation will see. Nothing here
imports GX (the adapter does) or prints (the CLI does).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.datasets import ingest, validation
from aipaas.exceptions import ConfigurationError, DataValidationError
from aipaas.files import atomic_write
from aipaas.settings import Settings

# A text column with at most this many distinct values is a category...
MAX_CATEGORIES = 20
# ... and whole numbers with at most this many distinct values are a set, not a range.
MAX_CODES = 10
# Text whose median value has this many characters, or spaces in it, is free text.
FREE_TEXT_CHARS = 20
# How far a seen numeric range is widened on each side, as a fraction of its span.
DEFAULT_MARGIN = 0.5
# The row count may grow this many times over (labelled feedback is appended).
ROW_GROWTH = 100
MIN_MAX_ROWS = 1_000_000

NUMERIC_TYPES = ["float64", "int64"]
TEXT_TYPES = ["object", "str", "string"]


@dataclass(frozen=True)
class ScaffoldedColumn:
    """What the scaffold made of one column: what the CLI shows for review."""

    name: str
    kind: str  # numeric, codes, category, boolean, text, string, target, empty
    summary: str


@dataclass(frozen=True)
class ScaffoldedSuite:
    """A suite as JSON (``suite``), with what each column was taken for and what to check."""

    suite: dict[str, Any]
    rows: int
    columns: list[ScaffoldedColumn]
    warnings: list[str] = field(default_factory=list)

    @property
    def expectations(self) -> int:
        return len(self.suite["expectations"])


# ---------------------------------------------------------------- the scaffold


def scaffold_suite(
    frame: pd.DataFrame,
    name: str,
    target: str | None = None,
    task: str = "classification",
    source: str = "",
    margin: float = DEFAULT_MARGIN,
) -> ScaffoldedSuite:
    """Expectations that ``frame`` meets, loose enough for more rows like it.

    Args:
        frame: The rows, as read from CSV (see :func:`as_read_from_csv`).
        name: The dataset (the suite's name).
        target: The label column: its values are a set for a classification.
        task: ``classification`` or ``regression``.
        source: Where the rows came from, for the suite's notes.
        margin: How far numeric ranges are widened, as a fraction of the seen span.

    Raises:
        DataValidationError: the frame has no rows or no columns.
        ConfigurationError: the target is missing, or not numeric for a regression.
    """
    rows = len(frame)
    if rows == 0 or len(frame.columns) == 0:
        raise DataValidationError(
            f"cannot scaffold a suite for {name} from {source or 'the data'}: it has no rows"
        )
    if target is not None and target not in frame.columns:
        raise ConfigurationError(
            f"target {target!r} of {name} is not a column of {source or 'the data'} "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    if len(set(frame.columns)) != len(frame.columns):
        raise DataValidationError(f"{source or 'the data'} has duplicate column names")
    note = _Notes(rows)
    expectations = [
        _expect(
            "expect_table_columns_to_match_set",
            note("the columns seen, in any order"),
            column_set=[str(c) for c in frame.columns],
        ),
        _expect(
            "expect_table_row_count_to_be_between",
            note(f"{rows} rows seen; from half that to {ROW_GROWTH} times (feedback grows it)"),
            min_value=max(1, rows // 2),
            max_value=max(MIN_MAX_ROWS, rows * ROW_GROWTH),
        ),
    ]
    columns: list[ScaffoldedColumn] = []
    warnings: list[str] = []
    for col in frame.columns:
        is_target = col == target
        planned = _column(str(col), frame[col], note, margin, is_target, task, warnings)
        expectations += planned[0]
        columns.append(planned[1])
    suite = {
        "name": name,
        "expectations": expectations,
        "meta": {
            "notes": (
                f"Scaffolded by `aipaas data suite {name}` from {rows} rows"
                + (f" of {source}" if source else "")
                + ". Each expectation's meta says what was seen; review the bounds "
                "and sets, tighten or widen them, and say here what the data is."
            ),
            "great_expectations_version": _gx_version(),
        },
    }
    return ScaffoldedSuite(suite=suite, rows=rows, columns=columns, warnings=warnings)


def _column(
    col: str,
    values: pd.Series,
    note: _Notes,
    margin: float,
    is_target: bool,
    task: str,
    warnings: list[str],
) -> tuple[list[dict[str, Any]], ScaffoldedColumn]:
    """The expectations of one column (exists, type, nulls, values), and what it was taken for."""
    present = values.dropna()
    exists = _expect("expect_column_to_exist", note("column seen"), column=col)
    if present.empty:
        warnings.append(f"{col}: every value is null; only its presence is checked")
        return [exists], ScaffoldedColumn(col, "empty", "all null: presence only")
    boolean = pd.api.types.is_bool_dtype(values) or _all_bool(present)
    numeric = pd.api.types.is_numeric_dtype(values) and not boolean
    if is_target and task == "regression" and not numeric:
        raise ConfigurationError(
            f"target {col!r} is declared a regression but holds text "
            f"(e.g. {_examples(_not_numbers(present))}); fix the data or declare "
            "task: classification"
        )
    typed = []
    if not boolean:
        types, word = (NUMERIC_TYPES, "numbers") if numeric else (TEXT_TYPES, "text")
        typed.append(
            _expect(
                "expect_column_values_to_be_in_type_list",
                note(f"{word} seen ({values.dtype})"),
                column=col,
                type_list=types,
            )
        )
    nulls, null_summary = _nulls(col, values, note, warnings)
    if is_target and task != "regression":
        kind, checks = "target", _value_set(col, present, note, "the classes seen")
        if present.nunique() > 50:
            warnings.append(
                f"{col}: the target has {present.nunique()} classes; is it a regression?"
            )
    elif boolean:
        kind, checks = "boolean", _value_set(col, present, note, "the values seen")
    elif numeric:
        kind, checks = _numeric(col, present, note, margin)
        if not checks:
            warnings.append(f"{col}: infinite values seen; its range is not checked")
    else:
        kind, checks = _text(col, present, note, warnings)
    word = "boolean" if boolean else "number" if numeric else "text"
    summary = ", ".join(c for c in [word, null_summary, _describe(checks)] if c)
    return [exists, *typed, *nulls, *checks], ScaffoldedColumn(
        col, "target" if is_target else kind, summary
    )


def _nulls(
    col: str, values: pd.Series, note: _Notes, warnings: list[str]
) -> tuple[list[dict[str, Any]], str]:
    """No nulls where none were seen; where some were, ``mostly`` allows twice as many."""
    count = int(values.isna().sum())
    if count == 0:
        return [
            _expect("expect_column_values_to_not_be_null", note("no nulls seen"), column=col)
        ], "no nulls"
    fraction = count / len(values)
    mostly = math.floor((1 - 2 * fraction) * 100) / 100
    seen = f"{count} nulls seen ({fraction:.1%})"
    if mostly <= 0:
        warnings.append(f"{col}: {seen}; nulls are not checked")
        return [], f"{seen}, not checked"
    return [
        _expect(
            "expect_column_values_to_not_be_null",
            note(f"{seen}; allows twice that share"),
            column=col,
            mostly=mostly,
        )
    ], f"nulls up to {1 - mostly:.0%}"


def _numeric(
    col: str, present: pd.Series, note: _Notes, margin: float
) -> tuple[str, list[dict[str, Any]]]:
    """Numbers: a widened range; a handful of whole numbers: their set."""
    if not bool(present.map(math.isfinite).all()):
        return "numeric", []  # inf has no range to widen; the warning says so
    whole = bool((present == present.round()).all())
    distinct = present.nunique()
    if whole and distinct <= MAX_CODES and len(present) >= 3 * distinct:
        return "codes", _value_set(col, present, note, "the codes seen")
    low, high = float(present.min()), float(present.max())
    lo, hi = widen(low, high, margin, whole)
    seen = f"seen {_fmt(low)} to {_fmt(high)}"
    why = f"{seen}, widened by {margin:g} of the span" + (
        ", not below 0" if low >= 0 and lo == 0 else ""
    )
    return "numeric", [
        _expect(
            "expect_column_values_to_be_between", note(why), column=col, min_value=lo, max_value=hi
        )
    ]


def widen(low: float, high: float, margin: float, whole: bool) -> tuple[float, float]:
    """The seen range ``[low, high]`` widened by ``margin`` of its span, rounded outward.

    A column never seen below zero stays non-negative (counts, measurements);
    a constant column is widened by half its value (or by 1 at zero). Bounds
    are rounded outward to three significant digits of the larger one, so a
    person reads ``57.0``, not ``56.9731``; whole-number columns keep whole bounds.
    """
    span = high - low
    pad = margin * span if span > 0 else max(abs(high) * 0.5, 1.0)
    lo, hi = low - pad, high + pad
    if low >= 0:
        lo = max(lo, 0.0)
    biggest = max(abs(lo), abs(hi))
    step = 10.0 ** (math.floor(math.log10(biggest)) - 2) if biggest > 0 else 1.0
    if whole:
        step = max(step, 1.0)
    lo = math.floor(lo / step) * step
    hi = math.ceil(hi / step) * step
    digits = max(0, -math.floor(math.log10(step)))
    if whole:
        return float(int(lo)), float(int(hi))
    return round(lo, digits), round(hi, digits)


def _text(
    col: str, present: pd.Series, note: _Notes, warnings: list[str]
) -> tuple[str, list[dict[str, Any]]]:
    """Text: few distinct values are a category; long values free text; others a string."""
    strings = present.astype(str)
    numbers = pd.to_numeric(strings, errors="coerce").notna()
    if numbers.mean() >= 0.9:
        warnings.append(
            f"{col}: mostly numbers but read as text because of {_examples(strings[~numbers])}; "
            "fix those values (or the suite) before relying on it"
        )
    distinct = strings.nunique()
    if distinct <= MAX_CATEGORIES and distinct * 2 <= len(strings):
        return "category", _value_set(col, present, note, "the values seen")
    lengths = strings.str.len()
    median = float(lengths.median())
    free = median >= FREE_TEXT_CHARS or bool(strings.str.contains(r"\s").mean() >= 0.5)
    low, high = int(lengths.min()), int(lengths.max())
    bounds = _expect(
        "expect_column_value_lengths_to_be_between",
        note(f"lengths seen {low} to {high}; from half the shortest to twice the longest"),
        column=col,
        min_value=max(1, low // 2),
        max_value=max(2, high * 2),
    )
    if not free:
        return "string", [bounds]
    return "text", [
        bounds,
        _expect(
            "expect_column_values_to_not_match_regex",
            note("never empty or whitespace only"),
            column=col,
            regex=r"^\s*$",
        ),
    ]


def _value_set(col: str, present: pd.Series, note: _Notes, what: str) -> list[dict[str, Any]]:
    seen = sorted({_plain(v) for v in present}, key=lambda v: (str(type(v)), v))
    return [
        _expect(
            "expect_column_values_to_be_in_set",
            note(f"{what} ({len(seen)}); add any other valid value"),
            column=col,
            value_set=seen,
        )
    ]


# ---------------------------------------------------------------- input and output


def dataset_frame(
    dataset: str, settings: Settings, from_file: Path | None = None
) -> tuple[pd.DataFrame, str]:
    """The rows to scaffold from, and where they came from.

    ``from_file`` if given; else the dataset's ``raw.csv`` if ingest wrote one;
    else what ingest would write: the declared source plus the incoming files.
    Either way read through CSV, as the validate stage reads ``raw.csv``.

    Raises:
        DatasetNotFoundError: the dataset is not declared.
        DataValidationError: a file cannot be read as CSV.
        ConfigurationError: the declared source is unknown.
    """
    ds = ingest.spec(dataset, settings)
    raw = ingest.paths(dataset, settings).raw
    if from_file is not None:
        return _read(Path(from_file), dataset), str(from_file)
    if raw.is_file():
        return _read(raw, dataset), str(raw)
    frames = [ingest.load_source(ds, settings, dataset=dataset)]
    incoming = ingest.incoming_files(dataset, settings)
    frames += [_read(f, dataset) for f in incoming]
    merged = pd.concat(frames, ignore_index=True, sort=False)
    extra = f" + {len(incoming)} incoming file(s)" if incoming else ""
    return as_read_from_csv(merged), f"{ds.source}{extra}"


def as_read_from_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as the validate stage will see it once ingest has written it to CSV."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


def write_suite(scaffolded: ScaffoldedSuite, path: Path, force: bool = False) -> Path:
    """Write the suite as JSON, checked to be one GX accepts; never over a suite unasked.

    Raises:
        ConfigurationError: ``path`` exists and ``force`` is false (a reviewed
            suite must not be lost to a second scaffold), or GX rejects the suite.
    """
    path = Path(path)
    refuse_overwrite(path, force)
    validation.check_suite(scaffolded.suite, str(path))
    atomic_write(path, json.dumps(scaffolded.suite, indent=2) + "\n")
    return path


def refuse_overwrite(path: Path, force: bool) -> None:
    """Refuse to replace an existing suite unless asked: a reviewed suite holds a person's work.

    Raises:
        ConfigurationError: ``path`` exists and ``force`` is false.
    """
    if Path(path).exists() and not force:
        raise ConfigurationError(
            f"{path} already exists; pass --force to replace it (edits in it are lost) "
            "or --output PATH to write the scaffold elsewhere and compare"
        )


def _read(path: Path, dataset: str) -> pd.DataFrame:
    frame, error = validation.read_csv(path)
    if frame is None:
        raise DataValidationError(
            f"cannot scaffold a suite for {dataset} from {path}: {error}",
            report=validation.unreadable_report(dataset, path, error or "unreadable"),
        )
    return frame


# ---------------------------------------------------------------- helpers


class _Notes:
    """Each expectation's meta: scaffolded, from how many rows, what was seen."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __call__(self, seen: str) -> dict[str, Any]:
        return {
            "notes": f"scaffolded from {self.rows} rows: {seen}",
            "scaffolded_from_rows": self.rows,
        }


def _expect(kind: str, meta: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": meta, "severity": "critical"}


def _describe(checks: list[dict[str, Any]]) -> str:
    parts = []
    for c in checks:
        kw = c["kwargs"]
        if c["type"] == "expect_column_values_to_be_between":
            parts.append(f"between {_fmt(kw['min_value'])} and {_fmt(kw['max_value'])}")
        elif c["type"] == "expect_column_values_to_be_in_set":
            values = ", ".join(map(str, kw["value_set"][:6]))
            more = ", ..." if len(kw["value_set"]) > 6 else ""
            parts.append(f"in {{{values}{more}}}")
        elif c["type"] == "expect_column_value_lengths_to_be_between":
            parts.append(f"length {kw['min_value']} to {kw['max_value']}")
        elif c["type"] == "expect_column_values_to_not_match_regex":
            parts.append("not blank")
    return ", ".join(parts)


def _all_bool(present: pd.Series) -> bool:
    return bool(present.map(lambda v: isinstance(v, bool)).all())


def _not_numbers(present: pd.Series) -> pd.Series:
    strings = present.astype(str)
    return strings[pd.to_numeric(strings, errors="coerce").isna()]


def _examples(values: pd.Series) -> str:
    return ", ".join(repr(v) for v in list(dict.fromkeys(values))[:3])


def _plain(value: Any) -> Any:
    """A JSON value: numpy scalars as Python ones, whole floats as ints."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _fmt(value: float) -> str:
    return f"{value:g}"


def _gx_version() -> str:
    try:
        return metadata.version("great_expectations")
    except metadata.PackageNotFoundError:
        return "unknown"
