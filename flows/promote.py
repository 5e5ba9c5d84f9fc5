"""Flow ``promote``: check the gates, ask a person if the definition says so, decide.

The decision itself is :mod:`aipaas.training.promote`; this flow adds what Prefect is
for: the gates as a table artifact on the run, the pause for approval in the
UI, and a Failed run when a gate fails. Gate failures are never retried; only
registry I/O is, and only when the server was unreachable.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from aipaas.settings import get_settings
from aipaas.training import promote
from aipaas.training.promote import Approval, Evaluation
from flows._common import artifact_key, registry_unreachable

# How long a promotion waits for a person before the run fails (nothing changes).
APPROVAL_TIMEOUT_S = 24 * 3600
APPROVAL_POLL_S = 5


class ApprovalInput(RunInput):
    """What a reviewer fills in on the paused run in the Prefect UI."""

    approve: bool = False
    reviewer: str = ""
    comment: str = ""


@task(name="check gates", retries=2, retry_delay_seconds=5, retry_condition_fn=registry_unreachable)
def check_gates(model: str, version: str | None) -> Evaluation:
    return promote.evaluate(get_settings(), model, version)


@task(name="publish gates")
def publish_gates(evaluation: Evaluation, gates: list[dict[str, Any]]) -> None:
    outcome = "passed" if all(g["passed"] for g in gates) else "FAILED"
    create_table_artifact(
        table=promote.gates_table(gates),
        key=artifact_key("promotion-gates", evaluation.model),
        description=(
            f"Promotion gates of {evaluation.model} v{evaluation.version}: {outcome}. "
            f"Champion before: {evaluation.champion or 'none'}. Compared on: {evaluation.basis}."
        ),
    )


@task(name="record decision")
def record_decision(
    evaluation: Evaluation, decided_by: str, approval: Approval | None
) -> dict[str, Any]:
    return promote.decide(
        get_settings(), evaluation, decided_by=decided_by, approval=approval
    ).to_dict()


def ask_approval(evaluation: Evaluation) -> Approval:
    """Pause the run until a reviewer answers in the Prefect UI."""
    logger = get_run_logger()
    logger.info(
        "%s v%s passed its automatic gates and needs a person's approval: "
        "resume this run in the Prefect UI with approve and your name.",
        evaluation.model,
        evaluation.version,
    )
    answer = pause_flow_run(
        wait_for_input=ApprovalInput.with_initial_data(
            description=(
                f"Promote **{evaluation.model} v{evaluation.version}** to champion "
                f"(current: {evaluation.champion or 'none'})? Every automatic gate passed.\n\n"
                + promote.format_gates(list(evaluation.gates))
            ),
        ),
        timeout=APPROVAL_TIMEOUT_S,
        poll_interval=APPROVAL_POLL_S,
    )
    reviewer = (answer.reviewer or "").strip() or "anonymous reviewer (Prefect UI)"
    return Approval(approved=bool(answer.approve), reviewer=reviewer, comment=answer.comment)


@flow(name="promote", persist_result=True, log_prints=True)
def promote_flow(model: str = "diagnosis", version: str | None = None) -> dict[str, Any]:
    """Promote ``version`` (default: the challenger) of ``model`` if it earns it."""
    evaluation = check_gates(model, version)
    if evaluation.already_champion:
        get_run_logger().info("%s v%s is already champion; nothing changed", model, version)
        return {"model": model, "version": evaluation.version, "result": "unchanged"}
    approval = None
    if evaluation.requires_approval and evaluation.auto_passed:
        approval = ask_approval(evaluation)
    gates = [g.to_dict() for g in evaluation.gates]
    if approval is not None:
        gates.append(promote.approval_gate(approval).to_dict())
    publish_gates(evaluation, gates)
    return record_decision(evaluation, f"prefect flow run {flow_run.name}", approval)
