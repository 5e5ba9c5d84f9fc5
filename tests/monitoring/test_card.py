"""Model cards: rendered from the records (pure), and gathered from a real registry and chain."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aipaas.exceptions import GateFailedError, ModelNotFoundError
from aipaas.modeldef import Gates, Slice, load_definition
from aipaas.monitoring import card
from aipaas.monitoring.drift_report import DriftCheckRecord
from aipaas.monitoring.drift_stats import DriftDecision
from aipaas.settings import Settings
from aipaas.training.gates import GateResult
from aipaas.training.promote import promote
from aipaas.training.promotion_log import PromotionRecord
from tests.support.definitions import tiny_definition
from tests.support.registry import MODEL, register_tiny, tiny_settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _facts() -> card.CardFacts:
    definition = tiny_definition(
        description="Scores <b>m</b> & friends.",
        intended_use="Ranking demo rows; not for decisions about people.",
        limits=("Trained on 300 rows.", "Only features a and b."),
    )
    decision = PromotionRecord(
        model="m",
        version="2",
        action="promote",
        result="promoted",
        decided_by="alice",
        at="2026-12-01T10:00:00+00:00",
        gates=[GateResult("min roc_auc", True, 0.91, ">= 0.7", "")],
    )
    check = DriftCheckRecord(
        at=NOW.timestamp(),
        model="m",
        version="2",
        rows=300,
        windows=(1, 2),
        drifting=("a",),
        decision=DriftDecision(decided=True, retrain=False, reasons=("1 of 2 features",)),
    )
    lineage = {"model": "m v2", "dataset": "d", "dvc_hash": "abc123", "suite_passed": "true"}
    return card.CardFacts(
        definition, "2", ("champion",), lineage, {"roc_auc": 0.912345}, [decision], [check]
    )


def test_a_card_says_use_data_metrics_gates_drift_and_limits() -> None:
    made = card.render(_facts(), now=NOW)
    md = made.markdown
    assert md.startswith("# Model card: m v2\n")
    for section in (
        "Intended use",
        "Model",
        "Training data",
        "Holdout metrics",
        "Promotion decisions",
        "Gates",
        "Drift checks",
        "Known limits",
    ):
        assert f"## {section}" in md
    assert "Ranking demo rows; not for decisions about people." in md
    assert "| dvc_hash | abc123 |" in md and "| roc_auc | 0.9123 |" in md
    assert "| min roc_auc | 0.91 | >= 0.7 | pass |" in md
    assert "promoted | alice" in md and "v2 windows [1, 2]: 300 rows" in md
    assert "- Trained on 300 rows.\n- Only features a and b." in md
    # The HTML page escapes what the definition says; nothing runs in it.
    assert "Scores &lt;b&gt;m&lt;/b&gt; &amp; friends." in made.html
    assert "<b>m</b>" not in made.html and "<script" not in made.html


def test_a_version_without_records_says_so() -> None:
    facts = card.CardFacts(tiny_definition(), "1", (), {}, {})
    md = card.render(facts).markdown
    assert "Not stated in the model definition." in md
    assert "no promotion decision recorded for this version" in md
    assert "no drift check of this version yet" in md
    assert "None written in the model definition." in md


def test_the_card_of_a_promoted_version_is_gathered_printed_and_stored(
    settings: Settings, tmp_path: Path, use_settings: Callable[..., Settings]
) -> None:
    import mlflow

    from aipaas.cli import app
    from aipaas.training import registry

    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    promote(s, load_definition(MODEL, s.models_dir), decided_by="alice")
    use_settings(
        env={
            "AIPAAS_HOME": str(s.home),
            "AIPAAS_MODELS_DIR": str(s.models_dir),
            "AIPAAS_MLFLOW__TRACKING_URI": s.mlflow_tracking_uri,
        }
    )
    page = tmp_path / "card.html"
    out = CliRunner().invoke(app, ["models", "card", MODEL, "--html", str(page)])
    assert out.exit_code == 0, out.output
    assert f"# Model card: tiny v{v1}" in out.stdout
    assert "| promote | promoted | alice |" in out.stdout.replace("  ", " ")
    assert "min roc_auc" in out.stdout and "| dvc_hash | abc123 |" in out.stdout
    assert "<h1>Model card: tiny v" in page.read_text()
    # Stored with the version's training run, so the card travels with the model.
    run_id = registry.get_version(MODEL, v1).run_id
    stored = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card/tiny-v{v1}.md")
    assert stored.startswith(f"# Model card: tiny v{v1}")


# -- slices --------------------------------------------------------------------------------

AGES = (Slice("young", "age", range=(None, 40)), Slice("old", "age", range=(40, None)))


def test_a_card_shows_the_definitions_slices_and_each_slices_metrics() -> None:
    facts = _facts()
    policy = Gates(
        slices=AGES, min_slice_metrics={"accuracy": 0.7}, max_slice_gap={"accuracy": 0.1}
    )
    readings = "young 0.610 (40 rows), old 0.880 (60 rows)"
    gates = [
        GateResult("min roc_auc", True, 0.91, ">= 0.7"),
        GateResult(
            "slice min accuracy",
            False,
            0.61,
            ">= 0.7 on every slice",
            f"below on young; {readings}",
        ),
        GateResult(
            "slice gap accuracy",
            False,
            0.27,
            "<= 0.1 between slices",
            "best old 0.880, worst..",
        ),
    ]
    rejected = replace(facts.decisions[0], result="rejected", gates=gates)
    sliced = replace(facts, definition=tiny_definition(gates=policy), decisions=[rejected])
    md = card.render(sliced, now=NOW).markdown
    assert (
        "## Slices\n\n- young: age < 40\n- old: age >= 40\n"
        "- gate min slice metrics: accuracy 0.7\n- gate max slice gap: accuracy 0.1\n"
    ) in md
    assert (
        "| slice min accuracy | 0.6100 | >= 0.7 on every slice | FAIL | below on young; "
        "young 0.610 (40 rows), old 0.880 (60 rows) |"
    ) in md
    assert "| slice gap accuracy | 0.2700 | <= 0.1 between slices | FAIL | best old 0.880" in md
    assert md.index("## Metrics per slice") < md.index("## Promotion decisions")


def test_slice_metrics_logged_at_training_are_shown_beside_the_gates() -> None:
    facts = replace(_facts(), slice_metrics={"holdout_accuracy_slice_old": 0.8812})
    md = card.render(facts, now=NOW).markdown
    assert "| holdout_accuracy_slice_old | 0.8812 | - | logged at training | old |" in md


def test_a_card_without_slices_says_so_and_has_no_slice_table() -> None:
    md = card.render(_facts(), now=NOW).markdown
    assert "## Slices\n\nNo slices named in the model definition." in md
    assert "## Metrics per slice" not in md


# -- the stored page -----------------------------------------------------------------------


def test_only_a_page_as_render_writes_it_is_trusted() -> None:
    page = card.render(_facts(), now=NOW).html
    body = card.body_of(page)
    assert body is not None and body.startswith("<h1>Model card: m v2</h1>")
    for evil in (
        "<script>alert(1)</script>",
        '<p onclick="x()">hi</p>',
        '<a href="https://elsewhere.example">x</a>',
        "<img src=x>",
        "<!-- note -->",
        '<meta http-equiv="refresh" content="0;url=https://elsewhere.example">',
    ):
        assert card.body_of(page.replace("</body>", evil + "</body>")) is None, evil
    assert card.body_of("no page at all") is None


@pytest.mark.slow  # a real MLflow store
def test_read_gives_the_stored_card_else_renders_one_and_never_passes_on_a_tampered_page(
    settings: Settings, tmp_path: Path
) -> None:
    import mlflow

    from aipaas.training import registry

    s = tiny_settings(settings, tmp_path)
    definition = load_definition(MODEL, s.models_dir)
    v1 = register_tiny(s)
    first = card.read(s, MODEL, v1)  # nothing stored yet: rendered from the records
    assert not first.stored and first.markdown.startswith(f"# Model card: tiny v{v1}")
    assert "no promotion decision recorded for this version" in first.markdown

    promote(s, definition, decided_by="alice")
    published = card.publish(s, definition, v1)
    again = card.read(s, MODEL, v1)
    assert again.stored and again.markdown == published.markdown
    assert "| promote | promoted | alice |" in again.markdown

    run_id = registry.get_version(MODEL, v1).run_id
    _, page = card.card_paths(MODEL, v1)
    mlflow.MlflowClient().log_text(
        run_id, published.html.replace("</body>", "<script>steal()</script></body>"), page
    )
    rendered = card.read(s, MODEL, v1)
    assert not rendered.stored and "<script" not in rendered.html

    with pytest.raises(ModelNotFoundError, match="has no registered version 42"):
        card.read(s, MODEL, "42")
    # A host without the definition shows stored cards only, and says why it cannot render.
    elsewhere = s.model_copy(update={"models_dir": tmp_path / "no-models"})
    v2 = register_tiny(s)
    with pytest.raises(ModelNotFoundError, match=f"tiny v{v2} has no stored model card"):
        card.read(elsewhere, MODEL, v2)


@pytest.mark.slow  # a real MLflow store, a real promotion on a sliced holdout
def test_a_promoted_versions_card_shows_each_slices_reading_as_the_gates_recorded_it(
    settings: Settings, tmp_path: Path
) -> None:
    import re

    from sklearn.linear_model import LogisticRegression

    from aipaas.modeldef import ModelDefinition, Uniform
    from tests.support.registry import HOLDOUT

    s = tiny_settings(settings, tmp_path)
    bands = (
        Slice("low", "a", range=(None, -1.0)),
        Slice("mid", "a", range=(-1.0, 1.0)),
        Slice("high", "a", range=(1.0, None)),
    )
    definition = ModelDefinition(
        name=MODEL,
        dataset="tiny",
        target="y",
        features=("a", "b"),
        build_estimator=lambda p: LogisticRegression(**p),
        search_space={"C": Uniform(0.1, 1.0)},
        metrics=("roc_auc", "accuracy"),
        gates=Gates(
            min_metrics={"roc_auc": 0.7},
            slices=bands,
            min_slice_metrics={"accuracy": 0.6},
            max_slice_gap={"accuracy": 0.5},
        ),
    )
    v1 = register_tiny(s)
    assert promote(s, definition, holdout=HOLDOUT, decided_by="alice").result == "promoted"
    md = card.publish(s, definition, v1).markdown
    assert "- low: a < -1\n- mid: a in [-1, 1)\n- high: a >= 1\n" in md
    reading = r"[01]\.\d{3} \(\d+ rows\)"
    assert re.search(
        rf"\| slice min accuracy \| 0\.\d{{4}} \| >= 0\.6 on every slice \| pass \| "
        rf"low {reading}, mid {reading}, high {reading} \|",
        md,
    ), md
    assert re.search(r"\| slice gap accuracy \| 0\.\d{4} \| <= 0\.5 between slices \| pass \|", md)


# -- the flows keep every version's card current ---------------------------------------------


@pytest.mark.slow
def test_the_promote_flow_refreshes_the_card_after_each_decision(
    settings: Settings,
    tmp_path: Path,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
) -> None:
    from flows.promote import promote_flow

    s = tiny_settings(settings, tmp_path)
    use_settings(s)
    v1 = register_tiny(s)
    assert promote_flow(MODEL).result == "promoted"
    stored = card.stored(s, MODEL, v1)
    assert stored is not None and "| promote | promoted | flow-run " in stored.markdown
    assert "| min roc_auc |" in stored.markdown

    bad = register_tiny(s, latency=900.0)
    state = promote_flow(MODEL, bad, return_state=True)
    assert state.is_failed()  # the rejection still fails the run, with its gates
    with pytest.raises(GateFailedError, match="p99 latency ms"):
        state.result()
    rejected = card.stored(s, MODEL, bad)
    assert rejected is not None and "| promote | rejected | flow-run " in rejected.markdown
    assert "| p99 latency ms | 900.0 | <= 50.0 | FAIL |" in rejected.markdown


@pytest.mark.slow
def test_a_card_that_cannot_be_made_is_a_warning_and_the_flow_goes_on(
    settings: Settings,
    tmp_path: Path,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect import flow

    from flows.tasks import refresh_card

    s = tiny_settings(settings, tmp_path)
    use_settings(s)
    register_tiny(s)
    definition = load_definition(MODEL, s.models_dir)

    @flow(name="card-test")
    def after_registration() -> str:
        refresh_card(definition, "999")  # no such version: its card cannot be made
        return "went on"

    runs = logging.getLogger("prefect.flow_runs")  # prefect's loggers do not reach the root
    runs.addHandler(caplog.handler)
    try:
        state = after_registration(return_state=True)
    finally:
        runs.removeHandler(caplog.handler)
    assert state.is_completed() and state.result() == "went on"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "the model card of tiny v999 was not stored (the flow goes on)" in m
        and "has no registered version 999" in m
        for m in warned
    ), warned
