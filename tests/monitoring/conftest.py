"""Served traffic against a training split, on scikit-learn's bundled breast cancer data.

The reference is a training split (no download); served traffic is a
resampled, slightly perturbed copy (no drift) or a copy with some features
shifted (drift). One :class:`BreastCancer` per session: profiling the
reference costs a few hundred milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from aipaas.datasets import profiles
from aipaas.modeldef import DriftPolicy, ModelDefinition
from aipaas.settings import Settings
from tests.monitoring.mlflow_server import mlflow_server


def local_mlflow(home: Path) -> dict[str, str]:
    """MLflow on a SQLite file in ``home``: a check stores its report there, never on :5000."""
    return {"tracking_uri": f"sqlite:///{home / 'mlflow.db'}"}


@dataclass
class BreastCancer:
    data: pd.DataFrame
    features: tuple[str, ...]
    train: pd.DataFrame
    reference: profiles.Profile

    def definition(self, first: int | None = None, **policy: object) -> ModelDefinition:
        """The ``diagnosis`` definition over these (or the ``first`` n) features.

        A check plots every feature: tests of the check's mechanics use a few.
        """
        return ModelDefinition(
            name="diagnosis",
            dataset="breast_cancer",
            target="target",
            features=self.features[:first],
            build_estimator=lambda params: None,
            search_space={},
            drift=DriftPolicy(**policy),  # type: ignore[arg-type]
        )

    def served(self, n: int, seed: int, shift: float = 0.0, shifted: int = 10) -> pd.DataFrame:
        """Served rows: a resample with 1% noise; ``shift`` std-devs added to some features."""
        rng = np.random.default_rng(seed)
        cols = list(self.features)
        cur = self.data.sample(n, replace=True, random_state=seed).copy()
        cur[cols] = cur[cols] * (1 + rng.normal(0, 0.01, (n, len(cols))))
        for col in cols[:shifted]:
            cur[col] = cur[col] + shift * self.train[col].std()
        return cur.rename(columns={"target": "prediction"})

    def profile(self, n: int, seed: int, shift: float = 0.0, shifted: int = 10) -> profiles.Profile:
        return profiles.profile_frame(self.served(n, seed, shift, shifted))


@pytest.fixture(scope="session")
def cancer() -> BreastCancer:
    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    split = np.random.default_rng(0).permutation(len(data))
    train = data.iloc[split[:455]]
    return BreastCancer(
        data=data,
        features=tuple(c for c in data.columns if c != "target"),
        train=train,
        reference=profiles.profile_frame(train),
    )


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts), as ``aipaas up`` starts it."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture
def on_db(platform_settings: Settings) -> Callable[[int], Settings]:
    """Settings on each platform database backend, with windows of ``n`` rows."""

    def make(window_rows: int) -> Settings:
        monitoring = platform_settings.monitoring.model_copy(update={"window_rows": window_rows})
        return platform_settings.model_copy(update={"monitoring": monitoring})

    return make
