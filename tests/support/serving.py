"""Serving test doubles: a fake model and an in-memory registry (the ``ModelSource`` seam)."""

from __future__ import annotations

from typing import Any

from aipaas.exceptions import ModelNotFoundError, RegistryUnavailableError
from aipaas.inference.predictor import FieldSpec, LoadedModel, PredictFn, Prediction, VersionMeta

FIELDS = (FieldSpec("mean_radius", "float"), FieldSpec("mean_texture", "float"))


def fake_predict(rows: list[list[Any]]) -> Prediction:
    """``malignant`` when the first feature is positive (a non-empty string), with probabilities."""
    outs, probs = [], []
    for r in rows:
        p = 0.9 if (r[0] if isinstance(r[0], float) else len(r[0])) > 0 else 0.1
        outs.append("malignant" if p > 0.5 else "benign")
        probs.append({"benign": 1 - p, "malignant": p})
    return Prediction(outs, probs)


def fake_model(
    name: str = "diagnosis",
    version: str = "1",
    fields: tuple[FieldSpec, ...] = FIELDS,
    *,
    log_inputs: bool = False,
    predict: PredictFn = fake_predict,
) -> LoadedModel:
    """A loaded version answering with ``predict``; ``log_inputs`` stands for its tag."""
    return LoadedModel(
        name=name,
        version=version,
        fields=fields,
        flavor="fake",
        classes=("benign", "malignant"),
        meta=VersionMeta(run_id=f"run-{version}", data_version="abc", log_inputs=log_inputs),
        predict_fn=predict,
    )


class FakeSource:
    """A registry in memory: ``champions`` maps model -> version.

    ``log_inputs`` holds the models whose versions carry ``aipaas.log_inputs=true``;
    ``models`` serves a prepared version as is.
    """

    def __init__(self) -> None:
        self.champions: dict[str, str | None] = {"diagnosis": "1"}
        self.broken: set[tuple[str, str]] = set()
        self.crashing: set[tuple[str, str]] = set()  # load raises a non-aipaas error (a bug)
        self.down = False
        self.fields: dict[str, tuple[FieldSpec, ...]] = {}
        self.log_inputs: set[str] = set()
        self.models: dict[tuple[str, str], LoadedModel] = {}

    def champion(self, name: str) -> str | None:
        if self.down:
            raise RegistryUnavailableError("fake registry is down")
        return self.champions.get(name)

    def load_pinned(self, name: str, version: str) -> LoadedModel:
        return self.load(name, version)

    def served_models(self) -> list[str]:
        if self.down:
            raise RegistryUnavailableError("fake registry is down")
        return [name for name, version in self.champions.items() if version is not None]

    def load(self, name: str, version: str) -> LoadedModel:
        if (name, version) in self.crashing:
            raise ValueError("warm-up prediction failed: could not convert string to float")
        if (name, version) in self.broken:
            raise ModelNotFoundError(f"cannot load models:/{name}/{version}: corrupt artifact")
        if (name, version) in self.models:
            return self.models[(name, version)]
        fields = self.fields.get(name, FIELDS)
        return fake_model(name, version, fields, log_inputs=name in self.log_inputs)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ROW = {"mean_radius": 1.5, "mean_texture": -0.5}
