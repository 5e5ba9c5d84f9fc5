"""Gated promotion and rollback, against a real MLflow registry on a SQLite file.

Small scikit-learn versions are registered here: a good one, a worse one
(trained on shuffled labels), a slow one, one with a changed signature. The
policy itself is tested on plain evidence in ``test_gates.py``. Every
decision is read back from the audit chain, as ``aipaas models show`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from aipaas import audit, db
from aipaas.exceptions import GateFailedError, ModelNotFoundError, UnsignedVersionError
from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.settings import Settings
from aipaas.training import attestation, promotion_log, registry, signals, tags
from aipaas.training.gates import Approval
from aipaas.training.promote import (
    assess,
    decide_promotion,
    model_status,
    promote,
    rollback,
)
from tests.support.registry import (
    HOLDOUT,
    MODEL,
    register_tiny,
    score_tiny,
    tiny_champion,
    tiny_settings,
)


def _tiny(s: Settings) -> ModelDefinition:
    return load_definition(MODEL, s.models_dir)


def test_promotion_rejection_idempotence_and_rollback(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)

    # The first model passes its absolute gates on the metrics training logged.
    v1 = register_tiny(s)
    record = promote(s, _tiny(s), decided_by="alice")
    assert record.result == "promoted" and record.version == v1
    assert tiny_champion() == v1
    assert registry.get_alias(MODEL, tags.PREVIOUS_CHAMPION) is None
    info = registry.get_version(MODEL, v1)
    assert info.tags[tags.PROMOTION_STATUS] == "promoted"
    assert info.tags[tags.PROMOTION_DECIDED_BY] == "alice"
    recorded = [g["name"] for g in json.loads(info.tags[tags.PROMOTION_GATES])]
    assert recorded == [g.name for g in record.gates] and "min roc_auc" in recorded
    assert signals.marker_mtime(s, MODEL) > 0

    # Promoting the same version again changes nothing and logs nothing.
    mtime = signals.marker_mtime(s, MODEL)
    again = promote(s, _tiny(s), v1)
    assert again.result == "unchanged" and tiny_champion() == v1
    assert len(promotion_log.read(s, MODEL)) == 1
    assert signals.marker_mtime(s, MODEL) == mtime

    # A worse challenger (shuffled labels), scored on the same holdout as the
    # champion, is rejected with its reasons; the champion stays.
    v2 = register_tiny(s, shuffle=True)
    with pytest.raises(GateFailedError) as err:
        promote(s, _tiny(s), holdout=HOLDOUT, scorer=score_tiny, decided_by="alice")
    assert f"champion stays v{v1}" in str(err.value) and "vs champion roc_auc" in str(err.value)
    assert tiny_champion() == v1
    rejected = registry.get_version(MODEL, v2)
    assert rejected.tags[tags.PROMOTION_STATUS] == "rejected"
    assert "roc_auc" in rejected.tags[tags.PROMOTION_REASONS]

    # A better one (here: as good, within tolerance, on new data) is promoted;
    # the old champion is kept as previous-champion.
    v3 = register_tiny(s, data_hash="def456")
    record = promote(s, _tiny(s), holdout=HOLDOUT, scorer=score_tiny, decided_by="bob")
    assert record.result == "promoted" and record.champion_before == v1
    assert tiny_champion() == v3
    prev = registry.get_alias(MODEL, tags.PREVIOUS_CHAMPION)
    assert prev is not None and prev.version == v1

    # Rollback restores the previous champion in one step, on record.
    back = rollback(s, MODEL, decided_by="carol")
    assert back.result == "rolled-back" and tiny_champion() == v1
    assert registry.get_version(MODEL, v3).tags[tags.PROMOTION_STATUS] == "rolled-back"
    with pytest.raises(ModelNotFoundError, match="no 'previous-champion'"):
        rollback(s, MODEL)

    history = promotion_log.read(s, MODEL)
    assert [(r.action, r.result, r.version, r.decided_by) for r in history] == [
        ("promote", "promoted", v1, "alice"),
        ("promote", "rejected", v2, "alice"),
        ("promote", "promoted", v3, "bob"),
        ("rollback", "rolled-back", v1, "carol"),
    ]
    assert (history[-1].champion_before, history[-1].champion_after) == (v3, v1)
    status = model_status(s, MODEL)
    assert status.aliases[tags.CHAMPION] == v1 and status.champion_refused is None
    assert [v.status for v in status.versions] == ["rolled-back", "rejected", "promoted"]
    rejected_gates = status.versions[1].gates
    assert "vs champion roc_auc" in [g.name for g in rejected_gates if not g.passed]
    assert [r.version for r in status.history] == [v1, v2, v3, v1]
    _signed_and_chained(s, history, v1, v2, v3)


def _signed_and_chained(s: Settings, history: list, v1: str, v2: str, v3: str) -> None:
    """Promotions and the rollback are signed on the version and on the chain; edits show."""

    def signed(v: str) -> attestation.Attestation:
        return attestation.verify(s, MODEL, v, registry.get_version(MODEL, v).tags)

    assert signed(v1).action == "rollback" and signed(v1).signature == history[-1].signature
    assert signed(v3).result == "promoted"  # rolled away from, still promoted once: pinnable
    with pytest.raises(UnsignedVersionError, match="no promotion record"):
        signed(v2)  # a rejection signs nothing
    rows = [r for r in audit.tail(s, 100) if (r["event"] or "").startswith("model.")]
    assert [(r["event"], r["version"], r["owner"]) for r in rows] == [
        ("model.promoted", v1, "alice"),
        ("model.rejected", v2, "alice"),
        ("model.promoted", v3, "bob"),
        ("model.rolled_back", v1, "carol"),
    ]
    detail = json.loads(rows[1]["detail"])
    assert detail["champion_before"] == v1 and "roc_auc" in "; ".join(detail["reasons"])
    assert json.loads(rows[3]["detail"])["signature"] == signed(v1).signature
    assert audit.verify(s).ok
    t = db.audit_log
    with db.engine(s).begin() as conn:  # someone rewrites who decided
        conn.execute(update(t).where(t.c.seq == rows[2]["seq"]).values(owner="mallory"))
    report = audit.verify(s)
    assert not report.ok and f"seq {rows[2]['seq']}: contents do not match" in report.problems[0]


def test_a_hand_moved_alias_is_refused_and_never_laundered(
    settings: Settings, tmp_path: Path
) -> None:
    """MLflow's own client moves aliases without a record: promotion and rollback see it."""
    from mlflow import MlflowClient

    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    promote(s, _tiny(s), v1, decided_by="alice")
    v2 = register_tiny(s)
    MlflowClient().set_registered_model_alias(MODEL, tags.CHAMPION, v2)
    refused = model_status(s, MODEL).champion_refused
    assert refused is not None and "no promotion record" in refused

    # Promoting the unsigned champion is not "unchanged": it earns its record
    # through the gates (compared with nothing: it cannot be its own baseline).
    record = promote(s, _tiny(s), v2, decided_by="bob")
    assert record.result == "promoted" and record.champion_before == v2
    assert model_status(s, MODEL).champion_refused is None
    prev = registry.get_alias(MODEL, tags.PREVIOUS_CHAMPION)
    assert prev is not None and prev.version == v1  # the last champion on record

    # A previous-champion pointed by hand at a never-promoted version is not rolled back to.
    v3 = register_tiny(s)
    MlflowClient().set_registered_model_alias(MODEL, tags.PREVIOUS_CHAMPION, v3)
    with pytest.raises(
        UnsignedVersionError, match=f"cannot roll tiny back to previous-champion v{v3}"
    ):
        rollback(s, MODEL)
    assert tiny_champion() == v2


def test_rollback_to_a_version_that_served_and_never_to_one_that_did_not(
    settings: Settings, tmp_path: Path
) -> None:
    """``rollback --to V``: back over several promotions in one signed step; never a stranger."""
    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    promote(s, _tiny(s), v1, decided_by="alice")
    v2 = register_tiny(s, data_hash="def456")
    promote(s, _tiny(s), v2, holdout=HOLDOUT, scorer=score_tiny, decided_by="alice")
    v3 = register_tiny(s, data_hash="ghi789")
    promote(s, _tiny(s), v3, holdout=HOLDOUT, scorer=score_tiny, decided_by="alice")
    rejected = register_tiny(s, shuffle=True)
    with pytest.raises(GateFailedError):
        promote(s, _tiny(s), rejected, holdout=HOLDOUT, scorer=score_tiny)
    never = register_tiny(s)  # registered, never judged
    assert tiny_champion() == v3
    prev = registry.get_alias(MODEL, tags.PREVIOUS_CHAMPION)
    assert prev is not None and prev.version == v2  # a plain rollback would go to v2

    # Neither a rejected nor a never-promoted version, nor a missing one, is rolled back to.
    for stranger, why in ((rejected, "no promotion record"), (never, "no promotion record")):
        with pytest.raises(UnsignedVersionError, match=f"cannot roll tiny back to v{stranger}"):
            rollback(s, MODEL, to_version=stranger)
        with pytest.raises(UnsignedVersionError, match=why):
            rollback(s, MODEL, to_version=stranger)
    with pytest.raises(ModelNotFoundError, match="no registered version 99"):
        rollback(s, MODEL, to_version="99")
    assert tiny_champion() == v3 and len(promotion_log.read(s, MODEL)) == 4

    mtime = signals.marker_mtime(s, MODEL)
    back = rollback(s, MODEL, to_version=v1, decided_by="carol")
    assert (back.action, back.result, back.version) == ("rollback", "rolled-back", v1)
    assert (back.champion_before, back.champion_after) == (v3, v1)
    assert tiny_champion() == v1 and signals.marker_mtime(s, MODEL) >= mtime
    assert registry.get_alias(MODEL, tags.PREVIOUS_CHAMPION) is None
    assert registry.get_version(MODEL, v3).tags[tags.PROMOTION_STATUS] == "rolled-back"
    att = attestation.verify(s, MODEL, v1, registry.get_version(MODEL, v1).tags)
    assert att.action == "rollback" and att.signature == back.signature
    assert model_status(s, MODEL).champion_refused is None  # serving takes it

    # Again to the champion: nothing changes, nothing is recorded.
    same = rollback(s, MODEL, to_version=v1)
    assert same.result == "unchanged" and len(promotion_log.read(s, MODEL)) == 5
    # A version rolled away from was promoted once: it may serve again.
    forth = rollback(s, MODEL, to_version=v3, decided_by="dave")
    assert forth.result == "rolled-back" and tiny_champion() == v3
    rows = [r for r in audit.tail(s, 100) if r["event"] == "model.rolled_back"]
    assert [(r["version"], r["owner"]) for r in rows] == [(v1, "carol"), (v3, "dave")]
    assert audit.verify(s).ok


def test_gates_read_from_the_registry_fail_a_bad_first_model(
    settings: Settings, tmp_path: Path
) -> None:
    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s, shuffle=True, latency=400.0, suite="false")
    with pytest.raises(GateFailedError) as err:
        promote(s, _tiny(s), v1)
    failed = {g.name for g in err.value.gates if not g.passed}
    assert failed == {"min roc_auc", "p99 latency ms", "data suite passed"}
    assert "there is still no champion" in str(err.value)
    assert tiny_champion() is None


def test_a_removed_input_fails_the_signature_gate(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)
    promote(s, _tiny(s), register_tiny(s))
    narrow = register_tiny(s, features=("a",))
    assessment = assess(s, _tiny(s), narrow, holdout=HOLDOUT, scorer=score_tiny)
    [sig] = [g for g in assessment.gates if g.name == "signature compatible"]
    assert not sig.passed and sig.value == "removed: b"


def test_approval_is_required_and_recorded(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path, approval=True)
    v1 = register_tiny(s)
    with pytest.raises(GateFailedError, match="--approve-as"):
        promote(s, _tiny(s))
    assert tiny_champion() is None and promotion_log.read(s) == []  # nothing decided yet
    assert tags.PROMOTION_STATUS not in registry.get_version(MODEL, v1).tags

    assessment = assess(s, _tiny(s))
    with pytest.raises(GateFailedError):
        decide_promotion(s, assessment, approval=Approval(approved=False, reviewer="dana"))
    assert tiny_champion() is None

    record = decide_promotion(s, assessment, approval=Approval(approved=True, reviewer="erin"))
    assert record.result == "promoted" and record.approved_by == "erin"
    [approval] = [g for g in record.gates if g.name == "approval"]
    assert approval.passed and "approved by erin" in approval.value
    assert tiny_champion() == v1
    events = [(r["event"], r["owner"]) for r in audit.tail(s, 100) if r["kind"] == "admin"]
    assert events == [
        ("model.rejected", record.decided_by),  # dana said no
        ("model.approved", "erin"),
        ("model.promoted", record.decided_by),
    ]
    assert record.decided_by.endswith("(cli)")  # the OS user, when nobody is named


def test_no_challenger_says_what_to_do(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)
    with pytest.raises(ModelNotFoundError, match="aipaas train tiny"):
        promote(s, _tiny(s))


@pytest.mark.slow  # one real `aipaas` process (exit code, no traceback); the rest in-process
def test_cli_exits_non_zero_on_a_failed_gate_and_shows_the_model(
    settings: Settings, tmp_path: Path, use_settings: Callable[..., Settings]
) -> None:
    import os
    import subprocess
    import sys

    from click.testing import Result
    from typer.testing import CliRunner

    from aipaas.cli import app

    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s, latency=900.0)
    env = {
        "AIPAAS_HOME": str(s.home),
        "AIPAAS_MODELS_DIR": str(s.models_dir),
        "AIPAAS_MLFLOW__TRACKING_URI": s.mlflow_tracking_uri,
    }
    use_settings(env=env)

    # A real process: the exit code and the message a user's shell sees, no traceback.
    failed = subprocess.run(
        [sys.executable, "-c", "from aipaas.cli import main; main()", "promote", MODEL],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == GateFailedError.exit_code, failed.stderr
    assert "p99 latency ms" in failed.stderr and "FAIL" in failed.stderr
    assert "Traceback" not in failed.stderr

    def run(*args: str) -> Result:
        return CliRunner().invoke(app, list(args))

    v2 = register_tiny(s)
    ok = run("promote", MODEL)
    assert ok.exit_code == 0, ok.output
    assert f"promoted tiny v{v2} to champion" in ok.stdout
    assert "(cli); on the audit trail (sig " in ok.stdout
    # Each decision left the version's card stored with its gates (a rejection too).
    from aipaas.monitoring import card

    rejected, promoted = card.stored(s, MODEL, str(v1)), card.stored(s, MODEL, str(v2))
    assert rejected is not None and "p99 latency ms" in rejected.markdown
    assert promoted is not None and "promoted" in promoted.markdown

    shown = run("models", "show", MODEL)
    assert shown.exit_code == 0, shown.output
    assert "aliases: champion=v2, challenger=v2" in shown.stdout
    assert "champion v2 serves" in shown.stdout and "history (from the audit trail)" in shown.stdout
    assert "rejected" in shown.stdout and "p99 latency ms" in shown.stdout
    listed = run("models", "list", "--json")
    assert listed.exit_code == 0, listed.output
    [row] = [r for r in json.loads(listed.stdout) if r["model"] == MODEL]
    assert row["champion"] == v2 and row["versions"] == 2
    assert registry.get_version(MODEL, v1).tags[tags.PROMOTION_STATUS] == "rejected"
    norollback = run("rollback", MODEL)
    # main() turns this error into its exit code, as the process above shows for another.
    assert isinstance(norollback.exception, ModelNotFoundError), norollback.output
    refused = run("rollback", MODEL, "--to", v1)  # rejected: never served
    assert isinstance(refused.exception, UnsignedVersionError), refused.output
    unchanged = run("rollback", MODEL, "--to", v2)
    assert unchanged.exit_code == 0, unchanged.output
    assert f"tiny v{v2} is already champion; nothing changed" in unchanged.stdout


def test_a_failing_version_is_rejected_without_asking_for_approval(
    settings: Settings, tmp_path: Path
) -> None:
    s = tiny_settings(settings, tmp_path, approval=True)
    register_tiny(s, latency=900.0)
    with pytest.raises(GateFailedError) as err:
        promote(s, _tiny(s))
    gates = err.value.gates
    assert promotion_log.read(s)[-1].result == "rejected"
    assert [g.name for g in gates if not g.passed] == ["p99 latency ms"]
    assert "approval" not in {g.name for g in gates}
