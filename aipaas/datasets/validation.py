"""Great Expectations 1.x adapter: validate a file against its dataset's suite.

The only module that imports ``great_expectations``. A suite is plain JSON in
``expectations/<dataset>.json`` (what ``ExpectationSuite.to_json_dict()``
writes), so a team edits it without code. Results leave this module as
:class:`aipaas.schemas.ValidationReport`: which expectation failed, on which
column, how many rows, a few of the failing values.

GX never raises on a failed validation, and a file that cannot be read never
reaches GX: both come back as a report with ``success=False``. Callers decide
how loud to be (the CLI exits non-zero, the pipeline raises
:class:`aipaas.exceptions.DataValidationError`).

A context is ephemeral (nothing written under the project, no ``gx/``
directory) with analytics and progress bars off; only the Data Docs site is
written, under the directory the caller passes (``<AIPAAS_HOME>/data_docs``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.exceptions import ConfigurationError
from aipaas.schemas import FailedExpectation, ValidationReport

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
_SITE = "aipaas"
# GX contexts share global registries; one validation at a time per process.
_GX_LOCK = threading.Lock()


def suite_path(expectations_dir: Path, dataset: str) -> Path:
    return Path(expectations_dir) / f"{dataset}.json"


def load_suite(path: Path) -> dict[str, Any]:
    """The suite as JSON, checked to be one GX accepts.

    Raises:
        ConfigurationError: the suite is missing or is not a GX 1.x suite.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(
            f"no expectation suite at {path}: every dataset needs one (expectations/<dataset>.json)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigurationError(f"expectation suite {path} is not valid JSON: {err}") from err
    check_suite(data, str(path))
    return data


def check_suite(data: Any, origin: str) -> None:
    """Check that ``data`` is a suite GX 1.x accepts, before it is used or written.

    Raises:
        ConfigurationError: it is not (``origin`` names it in the message).
    """
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise ConfigurationError(
            f"expectation suite {origin} has no 'expectations' list; write it with "
            "great_expectations.ExpectationSuite(...).to_json_dict()"
        )
    from great_expectations import ExpectationSuite

    try:
        ExpectationSuite(**data)
    except Exception as err:  # GX raises assorted types for a bad suite
        raise ConfigurationError(f"expectation suite {origin} is not valid: {err}") from err


def read_csv(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """Read a CSV the way the stages do, or say in one line why it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None, f"file not found: {path}"
    if not path.is_file():
        return None, f"not a file: {path}"
    if path.stat().st_size == 0:
        return None, f"file is empty: {path}"
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None, f"file has no columns (empty or blank): {path}"
    except UnicodeDecodeError:
        return None, f"not a CSV file (binary or not UTF-8 text): {path}"
    except pd.errors.ParserError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "parse error"
        return None, f"not a CSV file ({first}): {path}"
    return frame, None


def validate_file(
    path: Path,
    suite_file: Path,
    dataset: str,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate a CSV file; an unreadable file is a failed report, not an exception."""
    frame, error = read_csv(path)
    if frame is None:
        return unreadable_report(dataset, path, error or "unreadable")
    return validate_frame(frame, suite_file, dataset, docs_dir=docs_dir, path=str(path))


def unreadable_report(dataset: str, path: Path, error: str) -> ValidationReport:
    """The failed report of a file that never reached the suite: ``error`` says why."""
    return ValidationReport(
        dataset=dataset, path=str(path), success=False, rows=0, evaluated=0, error=error
    )


def validate_frame(
    frame: pd.DataFrame,
    suite_file: Path,
    dataset: str,
    docs_dir: Path | None = None,
    path: str = "<dataframe>",
) -> ValidationReport:
    """Run the suite on a DataFrame and build the report (and Data Docs, if asked)."""
    suite_json = load_suite(suite_file)
    with _GX_LOCK:
        suite_result, docs_page = _run_suite(frame, suite_json, dataset, docs_dir)
    failures = [_explain_types(_failure(r), frame) for r in suite_result.results if not r.success]
    failed = _tidy(failures)
    failed.sort(key=lambda f: (f.column is not None, f.column or "", f.expectation))
    return ValidationReport(
        dataset=dataset,
        path=path,
        success=bool(suite_result.success),
        rows=len(frame),
        evaluated=len(suite_result.results),
        failed=failed,
        data_docs=docs_page,
    )


def _run_suite(
    frame: pd.DataFrame, suite_json: dict[str, Any], dataset: str, docs_dir: Path | None
) -> tuple[Any, str | None]:
    """One checkpoint run on a fresh ephemeral context: GX's suite result and the docs page."""
    context = _context(docs_dir)
    checkpoint = _checkpoint(context, suite_json, dataset, with_docs=docs_dir is not None)
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (key, suite_result), *_ = result.run_results.items()
    return suite_result, _docs_page(context, key, docs_dir)


def _checkpoint(context: Any, suite_json: dict[str, Any], dataset: str, with_docs: bool) -> Any:
    """The suite, a whole-dataframe batch and a checkpoint over them, added to ``context``."""
    import great_expectations as gx

    suite = context.suites.add(gx.ExpectationSuite(**{**suite_json, "name": dataset}))
    batch_def = (
        context.data_sources.add_pandas(f"{dataset}_source")
        .add_dataframe_asset(dataset)
        .add_batch_definition_whole_dataframe("whole")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=dataset, data=batch_def, suite=suite)
    )
    actions: list[Any] = []
    if with_docs:
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[_SITE]))
    return context.checkpoints.add(
        gx.Checkpoint(
            name=dataset,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
    )


def _docs_page(context: Any, key: Any, docs_dir: Path | None) -> str | None:
    """The Data Docs page of this run (the site index when GX names none that exists)."""
    if docs_dir is None:
        return None
    urls = context.get_docs_sites_urls(resource_identifier=key, site_names=[_SITE])
    page = _url_to_path(urls[0]["site_url"]) if urls else None
    if not page or not Path(page).exists():
        page = str(Path(docs_dir) / "index.html")
    return page


def _context(docs_dir: Path | None) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[_SITE] = {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _url_to_path(url: str) -> str:
    return url.removeprefix("file://")


def _failure(result: Any) -> FailedExpectation:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    column = kwargs.get("column")
    res = dict(result.result or {})
    # Distinct values: "unsure" once, not once per failing row.
    examples = list(dict.fromkeys(_plain(v) for v in res.get("partial_unexpected_list") or []))
    examples = examples[:MAX_EXAMPLES]
    count = res.get("unexpected_count")
    details = _describe(config.type, kwargs, res)
    error = _exception_message(result.exception_info)
    if error:
        details = f"{details}; could not be evaluated: {error}" if details else error
    if count is None:
        # Table-level expectations (row count, column set) fail as a whole.
        count = 0 if error else 1
    return FailedExpectation(
        expectation=config.type,
        column=column,
        unexpected_count=int(count),
        examples=examples,
        details=details,
    )


def _tidy(failed: list[FailedExpectation]) -> list[FailedExpectation]:
    """Fold the failures that follow from another one into it.

    A missing column makes every expectation on it fail with an exception,
    and a numeric column read as text makes its range check fail the same
    way: report the cause once, not a list of GX errors.
    """
    missing = {f.column for f in failed if f.expectation == "expect_column_to_exist"}
    not_numeric = {
        f.column for f in failed if f.expectation == "expect_column_values_to_be_in_type_list"
    }
    kept: list[FailedExpectation] = []
    skipped: dict[str | None, int] = {}
    for f in failed:
        if f.column in missing and f.expectation != "expect_column_to_exist":
            skipped[f.column] = skipped.get(f.column, 0) + 1
            continue
        if f.column in not_numeric and "could not be evaluated" in f.details:
            kept.append(replace(f, details="not checked: the column is not numeric"))
            continue
        if f.expectation == "expect_column_values_to_not_be_null":
            f = replace(f, examples=[])
        kept.append(f)
    return [
        replace(f, details=f"{f.details} ({skipped[f.column]} expectations on it not checked)")
        if f.expectation == "expect_column_to_exist" and skipped.get(f.column)
        else f
        for f in kept
    ]


def _explain_types(failure: FailedExpectation, frame: pd.DataFrame) -> FailedExpectation:
    """A numeric column read as text: name the values that are not numbers.

    GX checks the column's values one by one, so one stray word in a numeric
    column reports every row as failing, with numbers as the examples. What a
    person needs is the few values that made the column text.
    """
    if (
        failure.expectation != "expect_column_values_to_be_in_type_list"
        or failure.column not in frame.columns
        or frame[failure.column].dtype != object
    ):
        return failure
    values = frame[failure.column]
    bad = values[values.notna() & pd.to_numeric(values, errors="coerce").isna()]
    if bad.empty:
        return failure
    return FailedExpectation(
        expectation=failure.expectation,
        column=failure.column,
        unexpected_count=len(bad),
        examples=[_plain(v) for v in bad.unique()[:MAX_EXAMPLES]],
        details=f"column read as text; {len(bad)} values are not numbers. {failure.details}",
    )


def _describe(kind: str, kwargs: dict[str, Any], res: dict[str, Any]) -> str:
    """A one-line statement of what was expected and what was observed."""
    observed = res.get("observed_value")
    if kind == "expect_column_to_exist":
        return "column is missing"
    if kind == "expect_table_columns_to_match_set":
        expected = set(kwargs.get("column_set") or [])
        seen = set(observed or [])
        parts = []
        if missing := sorted(expected - seen):
            parts.append(f"missing columns: {', '.join(missing)}")
        if extra := sorted(seen - expected):
            parts.append(f"unexpected columns: {', '.join(extra)}")
        return "; ".join(parts) or "columns do not match the suite"
    if kind == "expect_table_row_count_to_be_between":
        return (
            f"{observed} rows; expected between {kwargs.get('min_value')} "
            f"and {kwargs.get('max_value')}"
        )
    if kind == "expect_column_values_to_be_in_type_list":
        return f"expected types {kwargs.get('type_list')}" + (
            f", found {observed}" if observed else ""
        )
    if kind == "expect_column_values_to_be_of_type":
        return f"type {observed}; expected {kwargs.get('type_')}"
    if kind == "expect_column_values_to_be_between":
        return f"values outside [{kwargs.get('min_value')}, {kwargs.get('max_value')}]"
    if kind == "expect_column_values_to_be_in_set":
        return f"values not in {sorted(map(str, kwargs.get('value_set') or []))}"
    if kind == "expect_column_values_to_not_be_null":
        return "null values"
    return f"observed {observed}" if observed is not None else ""


def _exception_message(info: Any) -> str:
    """GX nests exception info by metric; keep the first message, one line."""
    if not info:
        return ""
    if isinstance(info, dict) and info.get("raised_exception"):
        return str(info.get("exception_message") or "").strip().splitlines()[0][:200]
    if isinstance(info, dict):
        for value in info.values():
            msg = _exception_message(value if isinstance(value, dict) else _as_dict(value))
            if msg:
                return msg
    return ""


def _as_dict(value: Any) -> dict[str, Any]:
    if hasattr(value, "to_json_dict"):
        return dict(value.to_json_dict())
    return {}


def _plain(value: Any) -> Any:
    """A JSON-safe example value (NaN becomes None, numpy scalars Python ones)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def report_from_dict(data: dict[str, Any]) -> ValidationReport:
    """Rebuild a report written with :meth:`ValidationReport.to_dict`."""
    failed = [FailedExpectation(**f) for f in data.get("failed", [])]
    return ValidationReport(**{**data, "failed": failed})


def render_markdown(report: ValidationReport) -> str:
    """The report as a markdown table: the Prefect artifact and the CLI's failure output."""
    status = "passed" if report.success else "FAILED"
    lines = [
        f"## Data validation {status}: `{report.dataset}`",
        "",
        f"File: `{report.path}`, {report.rows} rows, {report.evaluated} expectations evaluated.",
    ]
    if report.error:
        lines += ["", f"**The file could not be validated:** {report.error}"]
    if report.failed:
        lines += [
            "",
            "| expectation | column | failing rows | examples | details |",
            "|---|---|---|---|---|",
        ]
        for f in report.failed:
            examples = ", ".join(map(str, f.examples)) if f.examples else ""
            lines.append(
                f"| {f.expectation} | {f.column or '(table)'} | {f.unexpected_count} "
                f"| {_md(examples)} | {_md(f.details)} |"
            )
    if report.data_docs:
        lines += ["", f"Data Docs: `{report.data_docs}`"]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
