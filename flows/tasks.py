"""Tasks more than one flow runs: one definition each, so every flow shows the same step."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.monitoring import card
from aipaas.settings import get_settings
from flows._common import registry_unreachable


@task(name="load model definition", cache_policy=NO_CACHE, persist_result=False)
def load_model_definition(model: str) -> ModelDefinition:
    """``models/<model>.py``, executed once per flow run and passed down to every step."""
    return load_definition(model, get_settings().models_dir)


@task(
    name="publish model card",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=registry_unreachable,
)
def publish_card(definition: ModelDefinition, version: str) -> str:
    """The version's card, stored with its training run in MLflow; its version."""
    return card.publish(get_settings(), definition, version).version


def refresh_card(definition: ModelDefinition, version: str) -> None:
    """Publish the version's card; if that fails, warn and let the flow go on."""
    state = publish_card(definition, version, return_state=True)
    if state.is_failed():
        get_run_logger().warning(
            "the model card of %s v%s was not stored (the flow goes on): %s. "
            "Make it later with `aipaas models card %s %s`.",
            definition.name,
            version,
            state.message,
            definition.name,
            version,
        )
