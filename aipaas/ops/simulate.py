"""Simulated client applications: what ``aipaas demo`` sends to the API.

Each client has its own API key and sends one-row ``POST .../predict`` requests,
paced under its rate limit, optionally labelling each answer through
``POST /feedback`` as a clinic would once the biopsy result is known. What is sent is a
:class:`Scenario`: ordinary traffic sampled from the data the model first
learnt from (the demo passes the dataset's shipped source), and a shifted
population with its true labels. For a tabular model
(:class:`ScaledFeatures`) the shift scales some features (a recalibrated
imaging device); for a text model (:class:`NewTexts`) it is text of another
kind (quotes about Linux and Perl from Debian's ``fortunes``, sent to a model
that learnt from general quotes). Every response is counted, so the demo can
say how many requests failed, and which model versions answered.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

# One request row and the true label that /feedback would send for it.
Traffic = list[tuple[dict[str, Any], Any]]


@dataclass
class ClientStats:
    name: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    labelled: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, other: ClientStats) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.failed += other.failed
        self.labelled += other.labelled
        self.versions.update(other.versions)
        self.errors.extend(other.errors)


def sample_traffic(
    frame: pd.DataFrame,
    features: Sequence[str],
    target: str,
    n: int,
    *,
    seed: int,
    noise: float = 0.02,
    scale: Mapping[str, float] | None = None,
) -> list[tuple[dict[str, float], Any]]:
    """``n`` (row, true label) pairs drawn from ``frame``, jittered and optionally scaled."""
    rng = np.random.default_rng(seed)
    picked = frame.iloc[rng.integers(0, len(frame), size=n)]
    values = picked[list(features)].to_numpy(dtype=float)
    values = values * rng.normal(1.0, noise, size=values.shape)
    for name, factor in (scale or {}).items():
        values[:, list(features).index(name)] *= factor
    labels = picked[target].tolist()
    return [
        ({f: round(float(v), 6) for f, v in zip(features, row, strict=True)}, label)
        for row, label in zip(values, labels, strict=True)
    ]


def sample_texts(frame: pd.DataFrame, column: str, target: str, n: int, *, seed: int) -> Traffic:
    """``n`` (row, true label) pairs drawn from ``frame``'s text column, as they are."""
    rng = np.random.default_rng(seed)
    picked = frame.iloc[rng.integers(0, len(frame), size=n)]
    return [
        ({column: str(text)}, label)
        for text, label in zip(picked[column], picked[target], strict=True)
    ]


@dataclass(frozen=True)
class ScaledFeatures:
    """A tabular model's demo: ordinary rows are jittered, shifted rows have features scaled."""

    factors: Mapping[str, float]
    description: str

    def ordinary(
        self, frame: pd.DataFrame, features: Sequence[str], target: str, n: int, seed: int
    ) -> Traffic:
        return sample_traffic(frame, features, target, n, seed=seed)

    def shifted(
        self, frame: pd.DataFrame, features: Sequence[str], target: str, n: int, seed: int
    ) -> Traffic:
        return sample_traffic(frame, features, target, n, seed=seed, scale=self.factors)


@dataclass(frozen=True)
class NewTexts:
    """A text model's demo: ordinary texts are training texts, shifted ones come from ``texts``.

    ``texts`` loads the new population (called once per use), each labelled ``label``.
    """

    texts: Callable[[], Sequence[str]]
    label: str
    description: str

    def ordinary(
        self, frame: pd.DataFrame, features: Sequence[str], target: str, n: int, seed: int
    ) -> Traffic:
        return sample_texts(frame, features[0], target, n, seed=seed)

    def shifted(
        self,
        frame: pd.DataFrame,
        features: Sequence[str],
        target: str,
        n: int,
        seed: int,
        exclude: Collection[str] = (),
    ) -> Traffic:
        """``n`` distinct texts of the new kind, none of ``exclude``, each labelled ``label``.

        Labelled, they become training rows, and the data suite refuses a
        text column of repeats (as it should): texts an earlier retrain
        already learnt from (``exclude``) are not sent again. When too few
        fresh ones are left, two of them joined make a new text of the same
        kind; with fewer than two, texts repeat.
        """
        pool = list(dict.fromkeys(self.texts()))
        seen = set(exclude)
        fresh = [t for t in pool if t not in seen]
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(fresh), size=min(n, len(fresh)), replace=False)
        texts = [fresh[i] for i in picked]
        made = seen | set(texts)
        tries = 0
        while len(texts) < n and len(pool) >= 2 and tries < 20 * n:
            tries += 1
            a, b = rng.choice(len(pool), size=2, replace=False)
            joined = f"{pool[a]} {pool[b]}"
            if joined not in made:
                texts.append(joined)
                made.add(joined)
        while len(texts) < n and pool:  # a pool too small to make new texts
            texts.append(pool[int(rng.integers(len(pool)))])
        return [({features[0]: t}, self.label) for t in texts]


Scenario = ScaledFeatures | NewTexts


def run_client(
    base_url: str,
    name: str,
    key: str,
    traffic: Sequence[tuple[dict[str, Any], Any]],
    *,
    rate_per_s: float,
    feedback: bool = False,
    stop: threading.Event | None = None,
    transport: httpx.BaseTransport | None = None,
    path: str = "/predict",
) -> ClientStats:
    """Send ``traffic`` one row per request to ``path``, at most ``rate_per_s``; label if asked.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests).
    """
    stats = ClientStats(name)
    headers = {"Authorization": f"Bearer {key}"}
    interval = 1.0 / rate_per_s
    with httpx.Client(
        base_url=base_url, headers=headers, timeout=30.0, transport=transport
    ) as http:
        next_at = time.monotonic()
        for row, label in traffic:
            if stop is not None and stop.is_set():
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + interval, time.monotonic())
            stats.sent += 1
            try:
                resp = http.post(path, json=row)
            except httpx.HTTPError as err:
                stats.failed += 1
                stats.errors.append(f"{type(err).__name__}: {err}")
                continue
            if resp.status_code != 200:
                stats.failed += 1
                stats.errors.append(f"{resp.status_code}: {resp.text[:200]}")
                continue
            body = resp.json()
            stats.ok += 1
            stats.versions[str(body["model_version"])] += 1
            if feedback:
                fb = http.post("/feedback", json={"request_id": body["request_id"], "label": label})
                if fb.is_success:
                    stats.labelled += 1
                else:
                    stats.errors.append(f"feedback {fb.status_code}: {fb.text[:200]}")
    return stats


def run_clients(
    base_url: str,
    clients: Sequence[tuple[str, str]],
    traffic: Sequence[tuple[dict[str, Any], Any]],
    *,
    rate_per_s: float,
    feedback: bool = False,
    path: str = "/predict",
) -> list[ClientStats]:
    """Split ``traffic`` over ``clients`` (name, key), one thread each; wait for all."""
    shares = [traffic[i :: len(clients)] for i in range(len(clients))]
    results: list[ClientStats] = [ClientStats(name) for name, _ in clients]

    def work(i: int) -> None:
        name, key = clients[i]
        results[i] = run_client(
            base_url, name, key, shares[i], rate_per_s=rate_per_s, feedback=feedback, path=path
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
