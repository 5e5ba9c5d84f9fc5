"""Schemathesis fuzzes the served OpenAPI of the in-process app: no 5xx, nothing off-schema.

Every operation is called with generated data, valid and invalid, and one
key holding every scope (predict, feedback, admin), so the requests reach
the handlers rather than stopping at 401/403. Each response must not be a
server error and must conform to the schema: a documented status, its
content type, its body schema and its documented headers.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation

from aipaas.exceptions import UnsignedVersionError
from aipaas.inference import keys
from aipaas.inference.predictor import LoadedModel
from aipaas.training import registry
from tests.support.serving import FakeSource, bearer

MAX_EXAMPLES = 25  # per operation and mode: the file runs in about 20 s on 2 cores


class SignedSource(FakeSource):
    """The fake registry, where only the champion's version may also be pinned."""

    def load_pinned(self, name: str, version: str) -> LoadedModel:
        if version != self.champions.get(name):
            raise UnsignedVersionError(f"{name} v{version} has no promotion record")
        return self.load(name, version)


@pytest.fixture
def source() -> SignedSource:
    return SignedSource()


@pytest.fixture
def every_scope(settings) -> dict[str, str]:
    _, token = keys.create_key(settings, "fuzzer", "predict,feedback,admin", rate="100000/s")
    return bearer(token)


@pytest.fixture
def api(make_client, settings):
    # The admin rollback route reaches the real registry: create its store now,
    # not inside the first fuzzed request (seconds on a busy machine).
    registry.connect(settings)
    app = make_client().app  # started: the champion is loaded
    return schemathesis.openapi.from_asgi("/openapi.json", app)


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]


def _fuzz(
    operation: APIOperation,
    mode: GenerationMode,
    headers: dict[str, str],
    path: dict[str, str] | None = None,
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def _with_served_names(
    operations: list[APIOperation],
) -> list[tuple[APIOperation, dict[str, str] | None]]:
    """Each operation with generated path parameters, and again with the served model's name.

    Random names only ever reach the 404; the served name reaches the handlers.
    """
    runs: list[tuple[APIOperation, dict[str, str] | None]] = []
    for operation in operations:
        runs.append((operation, None))
        if "{name}" in operation.path:  # the version, if any, is generated: pinned loads
            runs.append((operation, {"name": "diagnosis"}))
    return runs


# The pytest plugin's lazy fixture mode (schemathesis.pytest.from_fixture) sets
# ``Function._nodeid``, which pytest 9 no longer has; each operation's Hypothesis
# strategy is driven here instead, with the same checks.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_nothing_off_schema(api, every_scope, mode):
    failures = {}
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 16
    for operation, path in _with_served_names(operations):
        label = f"{operation.label} {path or ''}"
        try:
            _fuzz(operation, mode, dict(every_scope), path)
        except Unsatisfiable:  # no parameters and no body: nothing to make invalid
            assert mode is GenerationMode.NEGATIVE, label
        except Exception as err:  # noqa: BLE001 - collected: one report for every operation
            failures[label] = f"{type(err).__name__}: {err}"
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
