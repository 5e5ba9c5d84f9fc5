"""Served traffic against a training split, on scikit-learn's bundled breast cancer data.

The reference is a training split (no download); served traffic is a
resampled, slightly perturbed copy (no drift) or a copy with some features
shifted (drift). One :class:`BreastCancer` per session: profiling the
reference costs a few hundred milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from aipaas.datasets import profiles
from aipaas.modeldef import DriftPolicy, ModelDefinition


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
