"""Flow ``retrain``: guardrails, new training rows, then data -> train -> promote.

Started by the drift flow (as a subflow) when a drift policy is violated, or
by hand. The guardrails (:mod:`aipaas.monitoring.retrain`: cooldown, daily
cap, suggest-only) decide first; then labelled feedback goes to
``data/incoming/<dataset>/`` and the same data, train and promote flows as
the lifecycle run, through the same suite and the same gates. Every
decision and its outcome is recorded with reasons in the platform
database by the core (:func:`retrain.attempt`), where every host sees it;
serving swaps to a promoted version by itself.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from aipaas.modeldef import ModelDefinition
from aipaas.monitoring import retrain
from aipaas.monitoring.retrain import FeedbackExport, GuardrailVerdict, RetrainOutcome
from aipaas.settings import get_settings
from flows.tasks import load_model_definition


@task(name="check guardrails", cache_policy=NO_CACHE)
def check_guardrails(model: str) -> GuardrailVerdict:
    # Checks and, when allowed, counts the retrain in one step on every host.
    return retrain.claim(get_settings(), model)


@task(name="record refusal", cache_policy=NO_CACHE)
def record_refusal(model: str, reason: str, verdict: GuardrailVerdict) -> RetrainOutcome:
    outcome = retrain.record_refusal(get_settings(), model, reason, verdict)
    get_run_logger().info("retrain of %s %s: %s", model, outcome.action, " ".join(verdict.reasons))
    return outcome


@task(name="export feedback", cache_policy=NO_CACHE)
def export_feedback(definition: ModelDefinition) -> FeedbackExport:
    return retrain.export_feedback(get_settings(), definition)


@flow(name="retrain", persist_result=True, log_prints=True)
def retrain_flow(model: str = "diagnosis", reason: str = "requested") -> RetrainOutcome:
    """Retrain ``model`` on its data plus labelled feedback, if the guardrails allow."""
    verdict = check_guardrails(model)
    if not verdict.allowed:
        return record_refusal(model, reason, verdict)
    # Imported here: a refused retrain needs none of the pipeline's flows.
    from flows.data import data_flow
    from flows.promote import promote_flow
    from flows.train import train_flow

    definition = load_model_definition(model)
    exported = export_feedback(definition)
    with retrain.attempt(get_settings(), model, reason, verdict, exported) as run:
        data_flow(definition.dataset)
        trained = train_flow(model)
        run.trained(trained.version, trained.data_hash)
        run.decided(promote_flow(model, trained.version).result)
    return run.outcome
