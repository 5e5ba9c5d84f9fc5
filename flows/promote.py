"""Flow ``promote``: check the gates, ask a person if the definition says so, decide.

The decision itself is :mod:`aipaas.training.promote` (the policy,
:mod:`aipaas.training.gates`); this flow adds what Prefect is for: the gates
as a table artifact on the run, the pause for approval in the UI, and a
Failed run when a gate fails. Gate failures are never retried; only registry
I/O is, and only when the server was unreachable. The model definition is
loaded once and passed down. Who decided is this flow run
(``flow-run <id> (promote)``), as the audit trail records it.

After a decision is recorded (promoted or rejected), the version's model card
is refreshed so it shows the decision and its gates; a card that cannot be
made is a warning, never a failed promotion (:func:`flows.tasks.refresh_card`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from aipaas.modeldef import ModelDefinition
from aipaas.settings import get_settings
from aipaas.training import promote
from aipaas.training.gates import Approval, format_gates, gates_table, with_approval
from aipaas.training.promote import Assessment
from aipaas.training.promotion_log import PromotionRecord
from flows._common import artifact_key, registry_unreachable
from flows.tasks import load_model_definition, refresh_card

# How long a promotion waits for a person before the run fails (nothing changes).
APPROVAL_TIMEOUT_S = 24 * 3600
APPROVAL_POLL_S = 5


class ApprovalInput(RunInput):
    """What a reviewer fills in on the paused run in the Prefect UI."""

    approve: bool = False
    reviewer: str = ""
    comment: str = ""


@task(
    name="check gates",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=registry_unreachable,
)
def check_gates(definition: ModelDefinition, version: str | None) -> Assessment:
    return promote.assess(get_settings(), definition, version)


@task(name="publish gates")
def publish_gates(assessment: Assessment, approval: Approval | None) -> None:
    if assessment.already_champion:  # nothing was checked: keep the last table
        get_run_logger().info("%s v%s is already champion", assessment.model, assessment.version)
        return
    gates = with_approval(assessment.gates, assessment.requires_approval, approval)
    outcome = "passed" if all(g.passed for g in gates) else "FAILED"
    create_table_artifact(
        table=gates_table(gates),
        key=artifact_key("promotion-gates", assessment.model),
        description=(
            f"Promotion gates of {assessment.model} v{assessment.version}: {outcome}. "
            f"Champion before: {assessment.champion or 'none'}. Compared on: {assessment.basis}."
        ),
    )


@task(name="record decision")
def record_decision(
    assessment: Assessment, approval: Approval | None, decided_by: str
) -> PromotionRecord:
    return promote.decide_promotion(
        get_settings(), assessment, decided_by=decided_by, approval=approval
    )


def this_run() -> str:
    """Who acts in a flow: this run, as the audit trail names it."""
    return f"flow-run {flow_run.id} ({flow_run.flow_name})"


def ask_approval(assessment: Assessment) -> Approval:
    """Pause the run until a reviewer answers in the Prefect UI."""
    logger = get_run_logger()
    logger.info(
        "%s v%s passed its automatic gates and needs a person's approval: "
        "resume this run in the Prefect UI with approve and your name.",
        assessment.model,
        assessment.version,
    )
    answer = pause_flow_run(
        wait_for_input=ApprovalInput.with_initial_data(
            description=(
                f"Promote **{assessment.model} v{assessment.version}** to champion "
                f"(current: {assessment.champion or 'none'})? Every automatic gate passed.\n\n"
                + format_gates(assessment.gates)
            ),
        ),
        timeout=APPROVAL_TIMEOUT_S,
        poll_interval=APPROVAL_POLL_S,
    )
    reviewer = (answer.reviewer or "").strip() or "anonymous reviewer (Prefect UI)"
    return Approval(approved=bool(answer.approve), reviewer=reviewer, comment=answer.comment)


@flow(name="promote", persist_result=True, log_prints=True)
def promote_flow(model: str = "diagnosis", version: str | None = None) -> PromotionRecord:
    """Promote ``version`` (default: the challenger) of ``model`` if it earns it."""
    definition = load_model_definition(model)
    assessment = check_gates(definition, version)
    approval = ask_approval(assessment) if assessment.awaits_approval else None
    publish_gates(assessment, approval)
    decision = record_decision(assessment, approval, this_run(), return_state=True)
    if not assessment.already_champion:  # a decision was recorded, a rejection too
        refresh_card(definition, assessment.version)
    return decision.result()  # a rejection fails the run with its gates
