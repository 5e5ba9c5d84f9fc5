"""Tasks more than one flow runs: one definition each, so every flow shows the same step."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.settings import get_settings


@task(name="load model definition", cache_policy=NO_CACHE, persist_result=False)
def load_model_definition(model: str) -> ModelDefinition:
    """``models/<model>.py``, executed once per flow run and passed down to every step."""
    return load_definition(model, get_settings().models_dir)
