"""Serving tests: ``TestClient(create_app(settings))`` with a fake model source."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from aipaas.inference import keys
from aipaas.settings import Settings
from serving.app import create_app
from tests.support.serving import FakeSource


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def make_client(settings: Settings, source: FakeSource):
    clients: list[TestClient] = []

    def make(s: Settings | None = None, **kwargs: Any) -> TestClient:
        app = create_app(
            s or settings, model_source=kwargs.pop("model_source", source), follow=False, **kwargs
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def predict_key(settings: Settings) -> str:
    return keys.create_key(settings, "app-one", "predict,feedback", rate="1000/s")[1]


@pytest.fixture
def admin_key(settings: Settings) -> str:
    return keys.create_key(settings, "ops", "admin")[1]


@pytest.fixture
def feedback_only_key(settings: Settings) -> str:
    return keys.create_key(settings, "labeller", "feedback")[1]
