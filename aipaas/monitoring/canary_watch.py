"""The live evidence of a canary or shadow release, and the verdict on it.

A release (:mod:`aipaas.training.canary`) sends a share of live traffic to a
challenger. Serving records what happened in the platform database, and this
module reads it back, from the release's start event on, per arm:

- requests and answers are the audit trail's request records on a prediction
  route (``/predict``, ``/invocations``, ``/v2/.../infer``) after the start
  event's ``seq``: ``version`` names the version that answered. A request the
  challenger failed was answered by the champion and recorded with event
  ``canary.fallback`` (``detail.canary.version``): it counts as a challenger
  request *and* a challenger error, and its latency (the failed try and the
  champion's answer, what the client waited) as the challenger's. A 5xx
  answer is an error of the version that gave it; a 4xx is the client's;
- outputs are the ``predictions`` rows of each version made since the start
  (a fallback's output is the champion's, so it is the champion's evidence);
  labels are the ``feedback`` on those rows (joined on ``request_id``);
- in a shadow, the challenger's arm is the ``shadow_outputs`` table: its
  output beside the champion's for the same row, or its error.

:func:`judge` turns the evidence into one :class:`GateResult` per limit of
the release's :class:`~aipaas.modeldef.Canary` policy. A limit is judged
once the challenger has ``min_requests`` requests (and the champion too for
comparisons, ``min_labels`` labelled rows each for accuracy); before that it
passes as "not judged yet", except when it can no longer hold: more errors
(or requests slower than ``max_p99_ms``) than ``max_error_rate`` (1 %) of
``min_requests`` allows already. :func:`decide` then says what to do: a
broken limit rolls back at once; at the window's end the release is promoted
when the challenger served at least ``min_requests`` requests, and ends
``inconclusive`` otherwise (nothing changes). Output drift is the
sampling-corrected Hellinger distance the drift check uses
(:func:`aipaas.monitoring.drift_stats.hellinger_corrected`), on class
frequencies or on the champion's output deciles.

:func:`shadow_report` reads a shadow's rows: how often, and where, the
challenger disagrees with the champion (by the champion's class or output
bin, and by input feature bins when inputs were logged), its error rate and
latency; :func:`write_shadow_report` renders it as HTML with a PNG chart
under ``<home>/reports/canary/<model>/`` and stores both on the challenger's
MLflow run when MLflow answers (best effort: the report on disk stands).
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import and_, or_, select

from aipaas import db, files
from aipaas.audit import iso_utc
from aipaas.exceptions import ConfigurationError, RegistryUnavailableError
from aipaas.modeldef import Canary
from aipaas.monitoring.drift_stats import bins_for, hellinger_corrected, label_of, same_label
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training.canary import CanaryState, Outcome
from aipaas.training.gates import failure_reasons

FALLBACK = "canary.fallback"
# The audit routes that answer a prediction (others, like /feedback, name a version too).
PREDICT_ROUTES = ("%/predict", "%/invocations", "%/infer")
# A champion p99 below this counts as this much: a ratio over a sub-millisecond p99 is noise.
P99_FLOOR_MS = 1.0
# Numeric outputs with at most this many distinct integral values are classes.
MAX_CLASSES = 20
# Shadow: two numbers agree within this relative tolerance.
NUMBER_REL_TOL = 0.05
# Input feature bins shown in a shadow report, per feature.
FEATURE_BINS = 4

# The gates :func:`judge` returns, by name.
ERROR_RATE = "canary_error_rate"
P99_RATIO = "canary_p99_ratio"
P99_MS = "canary_p99_ms"
OUTPUT_DRIFT = "canary_output_drift"
ACCURACY_DROP = "canary_accuracy_drop"
REQUESTS = "canary_requests"
NOT_YET = "not judged yet"

OutputKind = Literal["classes", "numbers"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float | int) -> float:
    """``"90s"``, ``"15m"``, ``"1h"`` or a number of seconds -> seconds (> 0).

    Raises:
        ConfigurationError: not a positive duration.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ConfigurationError(f"watch {value!r} is not a duration like '90s', '15m' or '1h'")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"watch {value!r} must be a duration above zero, like '15m'")
    return seconds


def format_duration(seconds: float) -> str:
    """``905`` -> ``"15m05s"``: how the CLI and artifacts show a time left."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# -- the evidence -----------------------------------------------------------------------


@dataclass(frozen=True)
class ArmEvidence:
    """What one version did since the release started.

    ``latencies_ms`` is every request's latency (kept for the judge; left out
    of :meth:`summary`); ``distribution`` counts outputs per class, or per
    bin of the champion's output deciles for numbers.
    """

    version: str
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latencies_ms: tuple[float, ...] = ()
    rows: int = 0
    distribution: dict[str, int] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.asarray(self.latencies_ms), q))

    @property
    def p50_ms(self) -> float | None:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float | None:
        return self.percentile(99)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "error_rate": _round(self.error_rate),
            "p50_ms": _round(self.p50_ms, 2),
            "p99_ms": _round(self.p99_ms, 2),
            "rows": self.rows,
            "distribution": dict(self.distribution),
            "labelled": self.labelled,
            "accuracy": _round(self.accuracy),
        }


@dataclass(frozen=True)
class Evidence:
    """Both arms of a release at time ``at`` (epoch seconds)."""

    model: str
    mode: str
    champion: ArmEvidence
    challenger: ArmEvidence
    started_at: float
    until: float
    at: float
    output_kind: OutputKind | None = None
    output_drift: float | None = None

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.until - self.at)

    @property
    def window_over(self) -> bool:
        return self.at >= self.until

    def summary(self) -> dict[str, Any]:
        """What the audit record and the artifacts keep: numbers, no raw latencies."""
        return {
            "model": self.model,
            "mode": self.mode,
            "champion": self.champion.summary(),
            "challenger": self.challenger.summary(),
            "started_at": self.started_at,
            "until": self.until,
            "at": self.at,
            "output_kind": self.output_kind,
            "output_drift": _round(self.output_drift),
        }


def read_evidence(settings: Settings, state: CanaryState, now: float | None = None) -> Evidence:
    """Both arms' requests, errors, latencies, outputs and labels since ``state`` started."""
    at = time.time() if now is None else now
    since = iso_utc(datetime.fromtimestamp(state.started_at, UTC))
    champion: dict[str, Any] = _blank()
    challenger: dict[str, Any] = _blank()
    for row in _requests(settings, state):
        if row.event == FALLBACK:
            if _fallback_version(row.detail) in (None, state.version):
                challenger["requests"] += 1
                challenger["errors"] += 1
                challenger["fallbacks"] += 1
                _latency(challenger, row.latency_ms)
            continue
        arm = (
            challenger
            if row.version == state.version
            else champion
            if row.version == state.champion
            else None
        )
        if arm is None:  # a pinned version: neither arm
            continue
        arm["requests"] += 1
        arm["errors"] += int((row.status or 0) >= 500)
        _latency(arm, row.latency_ms)
    outputs: dict[str, list[Any]] = {state.champion: [], state.version: []}
    labelled: dict[str, list[tuple[Any, Any]]] = {state.champion: [], state.version: []}
    for version, output, label in _predictions(settings, state, since):
        outputs[version].append(output)
        if label is not _UNLABELLED:
            labelled[version].append((output, label))
    if state.mode == "shadow":
        challenger = _blank()
        outputs[state.version] = []
        for r in _shadow_rows(settings, state):
            challenger["requests"] += 1
            if r.output is None:
                challenger["errors"] += 1
            else:
                outputs[state.version].append(label_of(json.loads(r.output)))
            _latency(challenger, r.latency_ms)
    kind = output_kind([*outputs[state.champion], *outputs[state.version]])
    dist_a, dist_b, drift = _distributions(outputs[state.champion], outputs[state.version], kind)
    return Evidence(
        model=state.model,
        mode=state.mode,
        champion=_arm(state.champion, champion, outputs[state.champion], dist_a, labelled),
        challenger=_arm(state.version, challenger, outputs[state.version], dist_b, labelled),
        started_at=state.started_at,
        until=state.until,
        at=at,
        output_kind=kind,
        output_drift=drift,
    )


_UNLABELLED = object()


def _blank() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "fallbacks": 0, "latencies": []}


def _latency(arm: dict[str, Any], value: float | None) -> None:
    if value is not None:
        arm["latencies"].append(float(value))


def _arm(
    version: str,
    counts: dict[str, Any],
    outputs: list[Any],
    distribution: dict[str, int],
    labelled: dict[str, list[tuple[Any, Any]]],
) -> ArmEvidence:
    pairs = labelled.get(version, []) if outputs else []
    return ArmEvidence(
        version=version,
        requests=counts["requests"],
        errors=counts["errors"],
        fallbacks=counts["fallbacks"],
        latencies_ms=tuple(counts["latencies"]),
        rows=len(outputs),
        distribution=distribution,
        labelled=len(pairs),
        correct=sum(1 for out, label in pairs if same_label(label, out)),
    )


def _fallback_version(detail: str | None) -> str | None:
    try:
        canary = (json.loads(detail or "{}") or {}).get("canary") or {}
    except (ValueError, AttributeError):
        return None
    version = canary.get("version") if isinstance(canary, dict) else None
    return None if version is None else str(version)


def _requests(settings: Settings, state: CanaryState) -> list[Any]:
    t = db.audit_log
    stmt = select(t.c.version, t.c.event, t.c.status, t.c.latency_ms, t.c.detail).where(
        t.c.seq > state.seq,
        t.c.kind == "request",
        t.c.model == state.model,
        or_(*(t.c.route.like(p) for p in PREDICT_ROUTES)),
    )
    with db.reachable(), db.engine(settings).connect() as conn:
        return list(conn.execute(stmt))


def _predictions(
    settings: Settings, state: CanaryState, since: str
) -> Iterable[tuple[str, Any, Any]]:
    """(version, output label, label or _UNLABELLED) per predicted row of either arm."""
    p, f = db.predictions, db.feedback
    stmt = (
        select(p.c.request_id, p.c.row, p.c.version, p.c.output, f.c.label)
        .outerjoin(f, f.c.request_id == p.c.request_id)
        .where(
            p.c.model == state.model,
            p.c.created_at >= since,
            p.c.version.in_((state.version, state.champion)),
        )
    )
    with db.reachable(), db.engine(settings).connect() as conn:
        rows = list(conn.execute(stmt))
    sizes = Counter(r.request_id for r in rows)
    for r in rows:
        output = label_of(json.loads(r.output))
        label: Any = _UNLABELLED
        if r.label is not None:
            label = json.loads(r.label)
            # A batch's label may be one list with a value per row (as feedback stores it).
            if isinstance(label, list) and len(label) == sizes[r.request_id] > 1:
                label = label[r.row]
        yield str(r.version), output, label


def _shadow_rows(settings: Settings, state: CanaryState) -> list[Any]:
    s = db.shadow_outputs
    stmt = (
        select(s)
        .where(
            s.c.model == state.model,
            s.c.version == state.version,
            s.c.at >= state.started_at,
        )
        .order_by(s.c.id)
    )
    with db.reachable(), db.engine(settings).connect() as conn:
        return list(conn.execute(stmt))


def output_kind(outputs: Sequence[Any]) -> OutputKind | None:
    """Classes (strings, booleans, few integral numbers) or numbers; None with no output."""
    if not outputs:
        return None
    numbers = [o for o in outputs if isinstance(o, int | float) and not isinstance(o, bool)]
    if len(numbers) < len(outputs):
        return "classes"
    integral = all(float(o).is_integer() for o in numbers)
    return "classes" if integral and len(set(numbers)) <= MAX_CLASSES else "numbers"


def _class(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _distributions(
    champion: list[Any], challenger: list[Any], kind: OutputKind | None
) -> tuple[dict[str, int], dict[str, int], float | None]:
    """Each arm's output counts (by class, or by the champion's output bins) and their drift."""
    if kind is None:
        return {}, {}, None
    a: Mapping[str, int]
    b: Mapping[str, int]
    if kind == "classes":
        a, b = Counter(map(_class, champion)), Counter(map(_class, challenger))
        keys = sorted(set(a) | set(b))
    else:
        edges = _edges(champion or challenger)
        a, b = _binned(champion, edges), _binned(challenger, edges)
        keys = list(a)
    dist_a = {k: int(a.get(k, 0)) for k in keys}
    dist_b = {k: int(b.get(k, 0)) for k in keys}
    if not champion or not challenger:
        return dist_a, dist_b, None
    drift = hellinger_corrected(
        [dist_a[k] for k in keys], [dist_b[k] for k in keys], len(champion), len(challenger)
    )
    return dist_a, dist_b, drift


def _edges(values: Sequence[float]) -> list[float]:
    """Inner bin edges: the deciles (fewer for fewer rows) of ``values``, distinct."""
    n = bins_for(len(values))
    qs = np.quantile(np.asarray(values, dtype=float), [i / n for i in range(1, n)])
    return sorted({float(q) for q in qs})


def _bin_labels(edges: Sequence[float]) -> list[str]:
    bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
    return [f"[{lo}, {hi})" for lo, hi in zip(bounds, bounds[1:], strict=False)]


def _binned(values: Sequence[Any], edges: Sequence[float]) -> dict[str, int]:
    labels = _bin_labels(edges)
    counts = dict.fromkeys(labels, 0)
    if values:
        idx = np.searchsorted(np.asarray(edges), np.asarray(values, dtype=float), side="right")
        for i in idx:
            counts[labels[int(i)]] += 1
    return counts


# -- the judge ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the evidence says now: ``outcome`` None while the release should go on."""

    outcome: Outcome | None
    gates: list[GateResult]
    reasons: list[str]

    @property
    def broken(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed and g.name != REQUESTS]


def judge(evidence: Evidence, policy: Canary, *, final: bool | None = None) -> list[GateResult]:
    """One gate per limit of ``policy`` (unset limits are left out), and the request count.

    ``final`` (default: the window is over) makes the request count a gate:
    fewer than ``min_requests`` challenger requests fail it (inconclusive).
    """
    final = evidence.window_over if final is None else final
    ch, champ = evidence.challenger, evidence.champion
    n, enough = ch.requests, ch.requests >= policy.min_requests
    gates = [_error_rate(ch, policy, enough)]
    if policy.max_p99_ms is not None:
        gates.append(_p99_ms(ch, policy, policy.max_p99_ms, enough))
    if policy.max_p99_ratio is not None:
        gates.append(_p99_ratio(ch, champ, policy, policy.max_p99_ratio))
    if policy.max_output_drift is not None:
        gates.append(_output_drift(evidence, policy, policy.max_output_drift))
    if policy.max_accuracy_drop is not None:
        gates.append(_accuracy(evidence, policy, policy.max_accuracy_drop))
    gates.append(
        GateResult(
            REQUESTS,
            n >= policy.min_requests or not final,
            n,
            f">= {policy.min_requests} by the window's end",
            "" if enough else f"{n} of {policy.min_requests} challenger requests so far",
        )
    )
    return gates


def decide(evidence: Evidence, policy: Canary) -> Decision:
    """Roll back on a broken limit; at the window's end promote, or inconclusive on too few.

    A shadow is never rolled back (the challenger answers no client): it is
    ``completed`` at the window's end, and its gates are shown, not acted on.
    """
    gates = judge(evidence, policy)
    if evidence.mode == "shadow":  # the challenger answers nobody: nothing to roll back
        over = evidence.window_over
        return Decision("completed" if over else None, gates, ["the shadow window is over"] * over)
    broken = [g for g in gates if not g.passed and g.name != REQUESTS]
    if broken:
        return Decision("rolled-back", gates, failure_reasons(broken))
    if not evidence.window_over:
        return Decision(None, gates, [])
    requests = next(g for g in gates if g.name == REQUESTS)
    if not requests.passed:
        return Decision(
            "inconclusive",
            gates,
            [
                f"only {evidence.challenger.requests} challenger requests in the window "
                f"(needs {policy.min_requests}): nothing was decided"
            ],
        )
    held = [g.name for g in gates if g.name != REQUESTS and not g.detail.startswith(NOT_YET)]
    return Decision(
        "promoted",
        gates,
        [
            f"every limit held over {format_duration(evidence.until - evidence.started_at)} "
            f"and {evidence.challenger.requests} challenger requests"
            + (f" (judged: {', '.join(held)})" if held else "")
        ],
    )


def _not_yet(name: str, threshold: str, value: Any, why: str) -> GateResult:
    return GateResult(name, True, value, threshold, f"{NOT_YET}: {why}")


def _error_rate(ch: ArmEvidence, policy: Canary, enough: bool) -> GateResult:
    limit = policy.max_error_rate
    threshold = f"<= {limit}"
    rate = _round(ch.error_rate)
    detail = f"{ch.errors} of {ch.requests} challenger requests failed"
    if enough:
        return GateResult(ERROR_RATE, rate is not None and rate <= limit, rate, threshold, detail)
    # Already more errors than min_requests allows: the limit cannot hold any more.
    if ch.errors > limit * policy.min_requests:
        return GateResult(
            ERROR_RATE,
            False,
            rate,
            threshold,
            f"{detail}: more than {limit:.2%} of the first {policy.min_requests} can be",
        )
    return _not_yet(ERROR_RATE, threshold, rate, f"{ch.requests} of {policy.min_requests} requests")


def _p99_ms(ch: ArmEvidence, policy: Canary, limit: float, enough: bool) -> GateResult:
    threshold = f"<= {limit} ms"
    p99 = _round(ch.p99_ms, 2)
    if enough:
        ok = p99 is not None and p99 <= limit
        return GateResult(P99_MS, ok, p99, threshold, f"challenger p99 over {ch.requests}")
    slow = sum(1 for x in ch.latencies_ms if x > limit)
    if slow > 0.01 * policy.min_requests:
        return GateResult(
            P99_MS,
            False,
            p99,
            threshold,
            f"{slow} of {ch.requests} requests slower than {limit} ms: more than 1% of "
            f"the first {policy.min_requests} can be",
        )
    return _not_yet(P99_MS, threshold, p99, f"{ch.requests} of {policy.min_requests} requests")


def _p99_ratio(ch: ArmEvidence, champ: ArmEvidence, policy: Canary, limit: float) -> GateResult:
    threshold = f"<= {limit}x the champion's p99"
    need = policy.min_requests
    if ch.requests < need or champ.requests < need or ch.p99_ms is None or champ.p99_ms is None:
        return _not_yet(
            P99_RATIO,
            threshold,
            None,
            f"{ch.requests} challenger and {champ.requests} champion requests of {need} each",
        )
    ratio = ch.p99_ms / max(champ.p99_ms, P99_FLOOR_MS)
    detail = f"p99 {ch.p99_ms:.1f} ms vs champion {champ.p99_ms:.1f} ms"
    return GateResult(P99_RATIO, ratio <= limit, _round(ratio, 3), threshold, detail)


def _output_drift(evidence: Evidence, policy: Canary, limit: float) -> GateResult:
    ch, champ = evidence.challenger, evidence.champion
    threshold = f"<= {limit} (Hellinger, {evidence.output_kind or 'outputs'})"
    need = policy.min_requests
    if ch.rows < need or champ.rows < need or evidence.output_drift is None:
        return _not_yet(
            OUTPUT_DRIFT,
            threshold,
            _round(evidence.output_drift),
            f"{ch.rows} challenger and {champ.rows} champion output rows of {need} each",
        )
    drift = _round(evidence.output_drift)
    detail = f"on {ch.rows} challenger and {champ.rows} champion rows"
    return GateResult(OUTPUT_DRIFT, drift is not None and drift <= limit, drift, threshold, detail)


def _accuracy(evidence: Evidence, policy: Canary, limit: float) -> GateResult:
    ch, champ = evidence.challenger, evidence.champion
    threshold = f"<= {limit} below the champion's"
    if evidence.output_kind == "numbers":
        return _not_yet(ACCURACY_DROP, threshold, None, "outputs are numbers, not classes")
    need = policy.min_labels
    if ch.accuracy is None or champ.accuracy is None or min(ch.labelled, champ.labelled) < need:
        return _not_yet(
            ACCURACY_DROP,
            threshold,
            None,
            f"{ch.labelled} challenger and {champ.labelled} champion labels of {need} each",
        )
    drop = champ.accuracy - ch.accuracy
    detail = (
        f"accuracy {ch.accuracy:.3f} on {ch.labelled} labels vs champion "
        f"{champ.accuracy:.3f} on {champ.labelled}"
    )
    return GateResult(ACCURACY_DROP, drop <= limit, _round(drop), threshold, detail)


def progress_line(evidence: Evidence, decision: Decision) -> str:
    """One line per check, as the CLI prints it and the flow logs it."""
    ch, champ = evidence.challenger, evidence.champion

    def arm(name: str, a: ArmEvidence) -> str:
        rate = "-" if a.error_rate is None else f"{a.error_rate:.1%}"
        p99 = "-" if a.p99_ms is None else f"{a.p99_ms:.0f} ms"
        return f"{name} v{a.version}: {a.requests} req, err {rate}, p99 {p99}"

    drift = "-" if evidence.output_drift is None else f"{evidence.output_drift:.3f}"
    if decision.outcome is not None:
        verdict = decision.outcome + (
            f": {'; '.join(decision.reasons)}" if decision.reasons else ""
        )
    else:
        verdict = f"{format_duration(evidence.remaining_s)} left, within limits"
    return f"{arm('challenger', ch)} | {arm('champion', champ)} | drift {drift} | {verdict}"


# -- shadow report -----------------------------------------------------------------------


@dataclass(frozen=True)
class Disagreement:
    """Rows compared in one group and how many disagreed."""

    group: str
    rows: int
    disagree: int

    @property
    def rate(self) -> float:
        return self.disagree / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class ShadowReport:
    """How a shadowed challenger's answers compare with the champion's on the same rows."""

    model: str
    version: str
    champion: str
    started_at: float
    at: float
    rows: int  # shadowed rows, failed ones too
    compared: int  # rows the challenger answered
    disagree: int
    errors: int
    output_kind: OutputKind | None
    by_output: list[Disagreement] = field(default_factory=list)
    by_feature: dict[str, list[Disagreement]] = field(default_factory=dict)
    inputs_known: bool = False
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_abs_diff: float | None = None
    html_path: str | None = None
    png_path: str | None = None
    mlflow_run: str | None = None
    store_error: str | None = None

    @property
    def disagreement_rate(self) -> float | None:
        return self.disagree / self.compared if self.compared else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.rows if self.rows else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["disagreement_rate"] = _round(self.disagreement_rate)
        d["error_rate"] = _round(self.error_rate)
        return d

    def summary(self) -> str:
        rate = "-" if self.disagreement_rate is None else f"{self.disagreement_rate:.1%}"
        err = "-" if self.error_rate is None else f"{self.error_rate:.1%}"
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.1f} ms"
        return (
            f"shadow {self.model} v{self.version} vs champion v{self.champion}: "
            f"{self.compared} rows compared, {rate} disagree, challenger errors {err}, "
            f"challenger p99 {p99}"
        )


def shadow_report(settings: Settings, state: CanaryState, now: float | None = None) -> ShadowReport:
    """The shadow's rows since ``state`` started, compared (nothing is written)."""
    rows = _shadow_rows(settings, state)
    answered = [r for r in rows if r.output is not None]
    pairs = [
        (label_of(json.loads(r.champion_output)), label_of(json.loads(r.output))) for r in answered
    ]
    kind = output_kind([a for a, _ in pairs])
    differs = [not _agree(a, b, kind) for a, b in pairs]
    groups: dict[str, list[bool]] = defaultdict(list)
    if kind == "numbers":
        edges = _edges([float(a) for a, _ in pairs])
        labels = _bin_labels(edges)
        for (a, _), d in zip(pairs, differs, strict=True):
            groups[labels[int(np.searchsorted(edges, float(a), side="right"))]].append(d)
        order = labels
    else:
        for (a, _), d in zip(pairs, differs, strict=True):
            groups[_class(a)].append(d)
        order = sorted(groups)
    by_output = [Disagreement(g, len(groups[g]), sum(groups[g])) for g in order if groups.get(g)]
    inputs = _inputs(settings, state.model, [(r.request_id, r.row) for r in answered])
    by_feature = _by_feature([inputs.get((r.request_id, r.row)) for r in answered], differs)
    latencies = [float(r.latency_ms) for r in rows if r.latency_ms is not None]
    diffs = [abs(float(a) - float(b)) for a, b in pairs] if kind == "numbers" else []
    return ShadowReport(
        model=state.model,
        version=state.version,
        champion=state.champion,
        started_at=state.started_at,
        at=time.time() if now is None else now,
        rows=len(rows),
        compared=len(answered),
        disagree=sum(differs),
        errors=len(rows) - len(answered),
        output_kind=kind,
        by_output=by_output,
        by_feature=by_feature,
        inputs_known=bool(inputs),
        p50_ms=float(np.percentile(latencies, 50)) if latencies else None,
        p99_ms=float(np.percentile(latencies, 99)) if latencies else None,
        mean_abs_diff=float(np.mean(diffs)) if diffs else None,
    )


def _agree(a: Any, b: Any, kind: OutputKind | None) -> bool:
    if kind == "numbers":
        try:
            return math.isclose(float(a), float(b), rel_tol=NUMBER_REL_TOL, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return same_label(a, b)


def _inputs(
    settings: Settings, model: str, keys: list[tuple[str, int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """The logged inputs of these rows (only rows of versions that may log inputs have them)."""
    if not keys:
        return {}
    p = db.predictions
    ids = sorted({k for k, _ in keys})
    out: dict[tuple[str, int], dict[str, Any]] = {}
    with db.reachable(), db.engine(settings).connect() as conn:
        for i in range(0, len(ids), 500):
            stmt = select(p.c.request_id, p.c.row, p.c.input).where(
                and_(
                    p.c.model == model,
                    p.c.request_id.in_(ids[i : i + 500]),
                    p.c.input.is_not(None),
                )
            )
            for r in conn.execute(stmt):
                value = json.loads(r.input)
                if isinstance(value, dict):
                    out[(r.request_id, int(r.row))] = value
    return out


def _by_feature(
    inputs: list[dict[str, Any] | None], differs: list[bool]
) -> dict[str, list[Disagreement]]:
    """Disagreement per bin of each logged input feature: quartiles of numbers, top values."""
    known = [(row, d) for row, d in zip(inputs, differs, strict=True) if row]
    if not known:
        return {}
    out: dict[str, list[Disagreement]] = {}
    for feature in sorted({k for row, _ in known for k in row}):
        values = [(row.get(feature), d) for row, d in known]
        numbers = [
            (float(v), d)
            for v, d in values
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        groups: dict[str, list[bool]] = defaultdict(list)
        if numbers and len(numbers) == len(values) and len({v for v, _ in numbers}) > FEATURE_BINS:
            qs = np.quantile(
                [v for v, _ in numbers], [i / FEATURE_BINS for i in range(1, FEATURE_BINS)]
            )
            edges = sorted({float(q) for q in qs})
            labels = _bin_labels(edges)
            for x, d in numbers:
                groups[labels[int(np.searchsorted(edges, x, side="right"))]].append(d)
            order = [g for g in labels if g in groups]
        else:
            for v, d in values:
                groups[_class(v) if not isinstance(v, str) else v[:40]].append(d)
            if len(groups) > MAX_CLASSES:  # free text, ids: no useful bins
                continue
            order = sorted(groups)
        out[feature] = [Disagreement(g, len(groups[g]), sum(groups[g])) for g in order]
    return out


def shadow_dir(settings: Settings, model: str) -> Path:
    return settings.reports_dir / "canary" / model


def write_shadow_report(settings: Settings, report: ShadowReport) -> ShadowReport:
    """Write the HTML page and its PNG chart under the home; store both in MLflow if it answers.

    Returns the report with ``html_path``, ``png_path`` and ``mlflow_run``
    (or ``store_error``: MLflow did not take it; the files on disk stand).
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report.at))
    base = shadow_dir(settings, report.model) / f"v{report.version}-shadow-{stamp}"
    png = _chart(report, base.with_suffix(".png"))
    page = base.with_suffix(".html")
    files.atomic_write(page, _html(report, png.name))
    done = _replace(report, html_path=str(page), png_path=str(png))
    try:
        run_id = _store(settings, report, [page, png])
    except RegistryUnavailableError as err:
        return _replace(done, store_error=str(err))
    return _replace(done, mlflow_run=run_id)


def _replace(report: ShadowReport, **changes: Any) -> ShadowReport:
    from dataclasses import replace

    return replace(report, **changes)


def _chart(report: ShadowReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.0), dpi=80)
    try:
        groups = report.by_output[:20]
        xs = range(len(groups))
        left.bar(list(xs), [g.rate for g in groups], color="#d62728")
        left.set_xticks(list(xs), [g.group for g in groups], rotation=45, fontsize=7, ha="right")
        left.set_ylim(0, 1)
        left.set_ylabel("disagreement rate")
        by = "champion's output bin" if report.output_kind == "numbers" else "champion's class"
        left.set_title(f"by {by}", fontsize=9)
        rate = report.disagreement_rate
        fig.suptitle(
            f"{report.model} v{report.version} shadowing v{report.champion}: "
            + ("no rows" if rate is None else f"{rate:.1%} of {report.compared} rows disagree"),
            fontsize=10,
        )
        right.set_title("challenger latency (ms)", fontsize=9)
        if report.p50_ms is not None and report.p99_ms is not None:
            right.bar(["p50", "p99"], [report.p50_ms, report.p99_ms], color="#1f77b4")
        fig.subplots_adjust(left=0.08, right=0.98, top=0.8, bottom=0.32, wspace=0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _table(title: str, groups: Sequence[Disagreement]) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(g.group)}</td><td>{g.rows}</td><td>{g.disagree}</td>"
        f"<td>{g.rate:.1%}</td></tr>"
        for g in groups
    )
    return (
        f"<h3>{esc(title)}</h3><table><tr><th>group</th><th>rows</th><th>disagree</th>"
        f"<th>rate</th></tr>{rows}</table>"
    )


def _html(report: ShadowReport, png_name: str) -> str:
    esc = html.escape
    by = "champion's output bin" if report.output_kind == "numbers" else "champion's class"
    features = "".join(_table(f"by input {name}", g) for name, g in report.by_feature.items())
    if not report.inputs_known:
        features = (
            "<p>Inputs were not logged for these requests (the model's <code>log_inputs</code> "
            "is off), so disagreement cannot be shown by input feature.</p>"
        )
    mad = (
        f"<li>mean absolute difference: {report.mean_abs_diff:.4g}</li>"
        if report.mean_abs_diff is not None
        else ""
    )
    started = datetime.fromtimestamp(report.started_at, UTC).isoformat(timespec="seconds")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>shadow {esc(report.model)} v{esc(report.version)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}</style></head><body>
<h1>Shadow: {esc(report.model)} v{esc(report.version)} beside champion v{esc(report.champion)}</h1>
<p>{esc(report.summary())}. Started {esc(started)} UTC.</p>
<ul><li>rows shadowed: {report.rows}; compared: {report.compared};
disagree: {report.disagree}</li>
<li>challenger errors: {report.errors}</li>
<li>challenger latency p50 / p99: {_ms(report.p50_ms)} / {_ms(report.p99_ms)}</li>{mad}</ul>
<img alt="disagreement chart" src="{esc(png_name)}">
{_table(f"by {by}", report.by_output)}
{features}
</body></html>"""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _store(settings: Settings, report: ShadowReport, paths: Sequence[Path]) -> str:
    """Log the report files on the challenger's training run; its id.

    Raises:
        RegistryUnavailableError: MLflow did not answer or refused.
    """
    from mlflow.exceptions import MlflowException

    from aipaas.exceptions import ModelNotFoundError
    from aipaas.training import registry

    try:
        client = registry.own_client(settings)
        run_id = registry.get_version(report.model, report.version).run_id
        if not run_id:
            raise RegistryUnavailableError(
                f"{report.model} v{report.version} has no training run to store the report on"
            )
        for path in paths:
            client.log_artifact(run_id, str(path), "shadow")
    except (MlflowException, OSError, ModelNotFoundError) as err:
        raise RegistryUnavailableError(
            f"MLflow at {settings.mlflow_tracking_uri} did not store the shadow report of "
            f"{report.model} v{report.version}: {type(err).__name__}: {err}"
        ) from err
    return str(run_id)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
