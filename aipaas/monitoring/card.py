"""Model cards: one page per registered version, from what the platform already knows.

Nothing on a card is typed by hand for it: the definition says what the model
is for, its features, gates, slices and known limits (``models/<name>.py``);
the registry holds the training data version, its suite result and the
holdout metrics (overall and per slice, when training logged them); the audit
chain holds every promotion decision with its gates (slice gates among them);
the drift history holds every check of the version. :func:`gather` reads
them, :func:`render` (pure) writes the Markdown and the HTML, and
:func:`log_card` stores both as artifacts of the version's training run, so
the card travels with the model in MLflow. :func:`publish` is the three in a
row: the train and promote flows call it after each registration and each
promotion decision, so every registered version has a card and it is current.

Readers (the serving API, the console) call :func:`read`: the stored card, or
one rendered now from the records when none was stored. A stored HTML page is
trusted only if it holds nothing but the few bare tags :func:`render` writes
(:func:`body_of`): an artifact store is writable by more people than the
console's admins, so anything else in it is ignored and the card rendered
afresh.

Slices are optional everywhere. The definition names them (``gates.slices``,
with the slice gates' bounds); promotion records one gate per slice-gated
metric, its worst value (or gap) and every slice's reading in its detail
(:mod:`aipaas.training.gates`); the card shows those as recorded, and any
metric training logged with "slice" in its name. A definition, a run or a
decision that says nothing of slices gives a card that says there are none.
"""

from __future__ import annotations

import dataclasses
import html
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from aipaas.exceptions import AipaasError, ModelNotFoundError, RegistryUnavailableError
from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.monitoring.drift_report import DriftCheckRecord, drift_history
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promotion_log, registry, tags
from aipaas.training.promotion_log import PromotionRecord

CARD_DIR = "model_card"  # under the version's training run
SLICE = "slice"  # a metric or gate whose name says "slice" is about one
# What :func:`render` writes in a page's body: bare tags, escaped text, no attributes.
BODY_TAGS = frozenset({"h1", "h2", "p", "em", "table", "tr", "td", "ul", "li"})


@dataclass(frozen=True)
class CardFacts:
    """What a card says about one version, gathered from the platform's records."""

    definition: ModelDefinition
    version: str
    aliases: tuple[str, ...]
    lineage: dict[str, str]  # dataset, DVC hash, rows, suite, run, commits
    metrics: dict[str, float]  # holdout metrics logged at training
    decisions: list[PromotionRecord] = field(default_factory=list)
    drift: list[DriftCheckRecord] = field(default_factory=list)
    # Per-slice metrics training logged (names holding "slice"), as logged.
    slice_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    model: str
    version: str
    markdown: str
    html: str
    stored: bool = False  # read back from the version's training run (else rendered now)


def gather(settings: Settings, definition: ModelDefinition, version: str) -> CardFacts:
    """Read the version's facts from the registry, the audit chain and the drift history.

    Raises:
        ModelNotFoundError: no such registered version.
    """
    from aipaas.training.train import lineage

    registry.connect(settings)
    info = registry.get_version(definition.name, version)
    facts = lineage(definition.name, info.version, settings)
    metrics = registry.run_metrics(info.run_id) if info.run_id else {}
    holdout = {
        k.removeprefix(tags.HOLDOUT_PREFIX): v
        for k, v in metrics.items()
        if k.startswith(tags.HOLDOUT_PREFIX) and SLICE not in k.lower()
    }
    slices = {k: v for k, v in metrics.items() if SLICE in k.lower()}
    decisions = [
        r for r in promotion_log.read(settings, definition.name) if r.version == info.version
    ]
    checks = [c for c in drift_history(settings, definition.name) if c.version == info.version]
    return CardFacts(
        definition, info.version, tuple(info.aliases), facts, holdout, decisions, checks, slices
    )


def render(facts: CardFacts, *, now: datetime | None = None) -> ModelCard:
    """The card as Markdown and as a standalone HTML page (no network, no script)."""
    d = facts.definition
    made = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    sections: list[tuple[str, list[str] | list[list[str]]]] = [
        ("Intended use", [d.intended_use or "Not stated in the model definition."]),
        (
            "Model",
            [
                ["what", "value"],
                ["task", f"{d.task} of `{d.target}`"],
                ["search metric", f"{d.metric} ({d.mode})"],
                ["features", ", ".join(f"`{f}`" for f in d.features)],
                ["aliases", ", ".join(facts.aliases) or "none"],
            ],
        ),
        (
            "Training data",
            [["what", "value"]]
            + [
                [k, str(v)]
                for k, v in facts.lineage.items()
                if not k.startswith(("model", "holdout"))
            ],
        ),
        (
            "Holdout metrics",
            [["metric", "value"]] + [[k, f"{v:.4f}"] for k, v in sorted(facts.metrics.items())],
        ),
        ("Slices", slice_lines(d)),
    ]
    per_slice = _slice_rows(facts)
    if per_slice:
        sections.append(("Metrics per slice", per_slice))
    sections += [
        ("Promotion decisions", _decision_rows(facts.decisions)),
        ("Gates", _gate_rows(facts.decisions)),
        ("Drift checks", _drift_rows(facts.drift)),
        ("Known limits", list(d.limits) or ["None written in the model definition."]),
    ]
    title = f"Model card: {d.name} v{facts.version}"
    lede = d.description or "No description in the model definition."
    md = [f"# {title}", "", lede, "", f"_Generated by aipaas at {made} from its records._", ""]
    page = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(lede)}</p>"]
    page.append(f"<p><em>Generated by aipaas at {html.escape(made)} from its records.</em></p>")
    for name, body in sections:
        md += [f"## {name}", ""]
        page.append(f"<h2>{html.escape(name)}</h2>")
        if body and isinstance(body[0], list):
            rows = [r for r in body if isinstance(r, list)]
            md += _md_table(rows)
            page.append(_html_table(rows))
        else:
            lines = [str(b) for b in body] or ["none"]
            md += [f"- {line}" for line in lines] if len(lines) > 1 else lines
            items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            page.append(f"<ul>{items}</ul>")
        md.append("")
    document = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td{border:1px solid #ccc;padding:.2em .5em}</style>"
        "</head><body>" + "".join(page) + "</body></html>"
    )
    return ModelCard(d.name, facts.version, "\n".join(md), document)


def log_card(settings: Settings, card: ModelCard) -> str:
    """Store the card (Markdown and HTML) under the version's training run; the run id."""
    import mlflow

    registry.connect(settings)
    info = registry.get_version(card.model, card.version)
    if not info.run_id:
        raise ModelNotFoundError(
            f"{card.model} v{card.version} has no training run to hold its card"
        )
    markdown, page = card_paths(card.model, card.version)
    client = mlflow.MlflowClient()
    client.log_text(info.run_id, card.markdown, markdown)
    client.log_text(info.run_id, card.html, page)
    return info.run_id


def publish(settings: Settings, definition: ModelDefinition, version: str) -> ModelCard:
    """Gather, render and store the card of ``version``: after a registration or a decision.

    Raises:
        ModelNotFoundError: no such registered version, or it has no training run.
        RegistryUnavailableError: MLflow did not answer.
    """
    made = render(gather(settings, definition, version))
    log_card(settings, made)
    return made


def card_paths(model: str, version: str) -> tuple[str, str]:
    """Where a version's card lives in its training run: (Markdown, HTML)."""
    stem = f"{CARD_DIR}/{model}-v{version}"
    return f"{stem}.md", f"{stem}.html"


def stored(settings: Settings, model: str, version: str) -> ModelCard | None:
    """The card stored with the version's training run; None when none was (or not as written).

    Raises:
        ModelNotFoundError: no such registered version.
        RegistryUnavailableError: MLflow did not return the stored card.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    registry.connect(settings)
    info = registry.get_version(model, version)
    if not info.run_id:
        return None
    markdown, page = card_paths(model, info.version)
    client = mlflow.MlflowClient()
    try:
        present = {a.path for a in client.list_artifacts(info.run_id, CARD_DIR)}
        if not {markdown, page} <= present:
            return None
        with tempfile.TemporaryDirectory(prefix="aipaas-card-") as tmp:
            texts = [
                Path(client.download_artifacts(info.run_id, p, dst_path=tmp)).read_text("utf-8")
                for p in (markdown, page)
            ]
    except (MlflowException, OSError, UnicodeDecodeError) as err:
        raise RegistryUnavailableError(
            f"MLflow at {settings.mlflow_tracking_uri} did not return the model card of "
            f"{model} v{info.version} (run {info.run_id}): {type(err).__name__}: {err}"
        ) from err
    if body_of(texts[1]) is None:  # not what render writes: do not pass it on
        return None
    return ModelCard(model, info.version, texts[0], texts[1], stored=True)


def read(settings: Settings, model: str, version: str) -> ModelCard:
    """The version's card as stored with its run, else rendered now from the records.

    Rendering needs the model's definition (``models/<name>.py``); a host
    without it can only show stored cards.

    Raises:
        ModelNotFoundError: no such registered version; or no stored card and
            no readable definition to render one.
        RegistryUnavailableError: MLflow did not answer.
    """
    found = stored(settings, model, version)
    if found is not None:
        return found
    try:
        definition = load_definition(model, settings.models_dir)
    except AipaasError as err:
        raise ModelNotFoundError(
            f"{model} v{version} has no stored model card, and this host cannot render one "
            f"({err}); run `aipaas models card {model} {version}` where the definition is"
        ) from err
    return render(gather(settings, definition, version))


def body_of(document: str) -> str | None:
    """The body of a card page, if it holds only what :func:`render` writes; else None.

    Only :data:`BODY_TAGS`, without attributes, with text and character
    references between them: no script, no link, no form, no comment.
    """
    start, end = document.find("<body>"), document.rfind("</body>")
    if start < 0 or end < start:
        return None
    body = document[start + len("<body>") : end]
    checker = _BareTags()
    checker.feed(body)
    checker.close()
    return body if checker.ok else None


class _BareTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ok = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ok = self.ok and tag in BODY_TAGS and not attrs

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ok = False

    def handle_endtag(self, tag: str) -> None:
        self.ok = self.ok and tag in BODY_TAGS

    def handle_comment(self, data: str) -> None:
        self.ok = False

    def handle_decl(self, decl: str) -> None:
        self.ok = False

    def handle_pi(self, data: str) -> None:
        self.ok = False

    def unknown_decl(self, data: str) -> None:
        self.ok = False


# -- slices -------------------------------------------------------------------------


def slices_of(definition: ModelDefinition) -> tuple[Any, ...]:
    """The slices a definition names (``gates.slices``); none when it names none."""
    named = getattr(definition.gates, "slices", None) or getattr(definition, "slices", None)
    return tuple(named or ())


def slice_lines(definition: ModelDefinition) -> list[str]:
    """One line per slice the definition names, then the slice gates' bounds."""
    lines = [_describe_slice(s) for s in slices_of(definition)]
    if not lines:
        return ["No slices named in the model definition."]
    kinds = getattr(definition.gates, "slice_gates", None)
    bounds = kinds() if callable(kinds) else {}
    for kind, by_metric in bounds.items():
        for metric, bound in by_metric.items():
            lines.append(f"gate {kind.replace('_', ' ')}: {metric} {bound}")
    return lines


def _describe_slice(spec: Any) -> str:
    name = getattr(spec, "name", None)
    describe = getattr(spec, "describe", None)
    if callable(describe):
        said = str(describe())
    elif dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
        values.pop("name", None)
        said = ", ".join(f"{k} {_plain(v)}" for k, v in values.items() if not _empty(v))
    else:
        said = _plain(spec)
    metrics = getattr(spec, "metrics", None)
    if metrics and isinstance(metrics, (tuple, list)):
        said += f" (gated on {', '.join(map(str, metrics))} only)"
    return f"{name}: {said}" if name else said


def _empty(value: Any) -> bool:
    collection = isinstance(value, (Mapping, list, tuple, set, frozenset))
    return value is None or (collection and not value)


def _plain(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _slice_rows(facts: CardFacts) -> list[list[str]]:
    """The per-slice evidence: metrics training logged, and the last decision's slice gates.

    A slice gate records its worst value (or the gap) and every slice's
    reading in its detail; both are shown as recorded.
    """
    rows = [
        [k, _number(v), "-", "logged at training", _slice_name(k)]
        for k, v in sorted(facts.slice_metrics.items())
    ]
    gated = [r for r in facts.decisions if r.gates]
    if gated:
        rows += [_gate_slice_row(g) for g in gated[-1].gates if SLICE in g.name.lower()]
    header = ["gate or metric", "value", "threshold", "result", "per slice"]
    return [header, *rows] if rows else []


def _gate_slice_row(gate: GateResult) -> list[str]:
    result = "pass" if gate.passed else "FAIL"
    if isinstance(gate.value, Mapping):  # every slice's value, as a mapping
        shown = ", ".join(f"{k} {_number(v)}" for k, v in gate.value.items())
        return [gate.name, "-", gate.threshold, result, shown]
    value = "-" if gate.value is None else _number(gate.value)
    return [gate.name, value, gate.threshold, result, gate.detail or "-"]


def _slice_name(name: str) -> str:
    """The slice a logged metric's name is about: the part after "slice"."""
    at = name.lower().find(SLICE)
    rest = name[at + len(SLICE) :].strip(" _:.=-") if at >= 0 else ""
    return rest or name


# -- sections -----------------------------------------------------------------------


def _decision_rows(decisions: list[PromotionRecord]) -> list[list[str]]:
    if not decisions:
        return [["-", "no promotion decision recorded for this version"]]
    rows = [["when", "action", "result", "decided by", "why"]]
    for r in decisions:
        why = "; ".join(r.reasons) or (f"approved by {r.approved_by}" if r.approved_by else "")
        rows.append([r.at, r.action, r.result, r.decided_by, why or "-"])
    return rows


def _gate_rows(decisions: list[PromotionRecord]) -> list[list[str]]:
    gated = [r for r in decisions if r.gates]
    if not gated:
        return [["-", "no gates recorded"]]
    rows = [["gate", "value", "threshold", "result"]]
    for g in gated[-1].gates:
        rows.append([g.name, str(g.value), str(g.threshold), "pass" if g.passed else "FAIL"])
    return rows


def _drift_rows(checks: list[DriftCheckRecord]) -> list[list[str]]:
    if not checks:
        return [["-", "no drift check of this version yet"]]
    rows = [["when", "summary"]]
    for c in checks:
        when = datetime.fromtimestamp(c.at, UTC).isoformat(timespec="seconds")
        rows.append([when, c.summary])
    return rows


def _md_table(rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(rows[0]), "|" + "---|" * len(rows[0]), *(line(r) for r in rows[1:])]


def _html_table(rows: list[list[str]]) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table>{body}</table>"
