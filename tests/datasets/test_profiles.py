"""The whylogs adapter: round trips, merges and summaries a drift check relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas.datasets import profiles
from aipaas.exceptions import ConfigurationError


def _frame(n: int, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "radius": rng.normal(14.0 + shift, 3.0, n),
            "texture": rng.normal(19.0, 4.0, n),
            "label": rng.integers(0, 2, n),
            "site": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def test_write_then_read_profile_round_trips(tmp_path: Path) -> None:
    df = _frame(300)
    path = profiles.write_profile(df, tmp_path / "deep" / "profile.bin")
    assert path.is_file() and path.stat().st_size > 0

    profile = profiles.read_profile(path)
    assert profile.num_rows == 300
    assert set(profile.columns) == {"radius", "texture", "label", "site"}
    radius = profile.summary("radius")
    assert radius.kind == "numeric"
    assert radius.mean == pytest.approx(df["radius"].mean(), rel=1e-6)
    assert profile.summary("label").kind == "categorical"
    site = profile.summary("site")
    assert site.kind == "categorical"
    assert sum(site.frequent.values()) == 300


def test_merge_counts_every_row_once() -> None:
    a = profiles.profile_frame(_frame(120, seed=1))
    b = profiles.profile_frame(_frame(80, seed=2))
    merged = profiles.merge_profiles([a, b])
    assert merged is not None
    assert merged.num_rows == 200
    # Inputs are untouched.
    assert a.num_rows == 120 and b.num_rows == 80
    assert profiles.merge_profiles([]) is None
    again = profiles.Profile.from_bytes(merged.to_bytes())
    assert again.num_rows == 200


def test_missing_values_and_types_are_summarised() -> None:
    df = pd.DataFrame({"x": [1.5, None, 2.5, None], "s": ["a", None, "b", "c"]})
    profile = profiles.profile_frame(df)
    x = profile.summary("x")
    assert x.missing == 2 and x.missing_fraction == 0.5
    assert x.dominant_type == "fractional"
    assert profile.summary("s").dominant_type == "string"


def test_compare_aligns_numeric_and_categorical_columns() -> None:
    ref = profiles.profile_frame(_frame(500, seed=3))
    cur = profiles.profile_frame(_frame(500, seed=4, shift=6.0))
    radius = profiles.compare(ref, cur, "radius")
    assert radius.kind == "numeric"
    assert len(radius.reference_cdf) == len(radius.current_cdf) == len(radius.points)
    # The current distribution sits to the right: its CDF is below the reference's.
    gap = max(r - c for r, c in zip(radius.reference_cdf, radius.current_cdf, strict=True))
    assert gap > 0.5
    assert sum(radius.reference_hist) == pytest.approx(1.0)

    site = profiles.compare(ref, cur, "site")
    assert site.kind == "categorical"
    assert site.categories == ["a", "b", "c"]
    assert sum(site.reference_freq) == pytest.approx(1.0)


def test_unreadable_or_absent_profile_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no profile"):
        profiles.read_profile(tmp_path / "absent.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a profile")
    with pytest.raises(ConfigurationError, match="not a readable profile"):
        profiles.read_profile(bad)
    profile = profiles.profile_frame(_frame(10))
    with pytest.raises(ConfigurationError, match="no column"):
        profile.summary("nope")
