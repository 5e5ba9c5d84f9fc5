"""Model cards: rendered from the records (pure), and gathered from a real registry and chain."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from aipaas.modeldef import load_definition
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
