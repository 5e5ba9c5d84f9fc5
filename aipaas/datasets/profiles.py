"""The whylogs adapter: profile a frame, store, merge, summarise and compare profiles.

This is the only module that imports whylogs. Upstream whylogs is no longer
maintained, so everything else in the platform sees :class:`Profile` (an
opaque handle that serialises to plain bytes) and the plain dataclasses
below; replacing whylogs means rewriting this one file.

A profile is a mergeable sketch of a frame: counts, missing values, inferred
types, a KLL quantile sketch per numeric column and frequent items per
string-like column. Merging the profiles of two frames gives (within the
sketches' error) the profile of their union, which is how serving windows are
built from batches and how drift checks combine windows.

A text column (named ``text``, the platform's convention for a text model's
one feature) gets two more things when a frame is profiled: a derived
numeric column ``text.length`` (characters), sketched like any number, and
a :class:`TextSketch` (rows, empty inputs, token counts), which travels
inside the profile's bytes and merges with it. The training data's sketch
is the vocabulary out-of-vocabulary rates are measured against.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# whylogs must send nothing home; set before its first import.
os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")

import pandas as pd  # noqa: E402

from aipaas.exceptions import ConfigurationError  # noqa: E402
from aipaas.files import atomic_write  # noqa: E402

ColumnKind = Literal["numeric", "categorical"]

# An integer-typed column with at most this many distinct values (a class
# label, a flag, a small count) is compared as categories, not as a curve.
MAX_CATEGORICAL_INTEGERS = 20
# Columns profiled as text (see the module docstring) and the derived
# statistics' names: ``<column>.<statistic>``.
TEXT_COLUMNS = ("text",)
TEXT_LENGTH, TEXT_TOKENS, TEXT_OOV, TEXT_EMPTY = "length", "tokens", "oov", "empty"
# A sketch keeps at most this many distinct tokens (the rarest go first).
MAX_VOCABULARY = 50_000
# How many of the reference's most frequent tokens the token distribution compares.
TOP_TOKENS = 200
# Profile bytes holding text sketches start with this (plain whylogs bytes otherwise).
_MAGIC = b"AIPAAS-PROFILE-1\n"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Points at which numeric distributions are compared.
_QUANTILES = [i / 100 for i in range(1, 100)]


class Profile:
    """A whylogs profile behind an opaque handle.

    Build one with :func:`profile_frame`, :func:`read_profile` or
    :meth:`from_bytes`; combine with :meth:`merge`. Nothing outside this
    module touches the wrapped object.
    """

    __slots__ = ("_text", "_view")

    def __init__(self, view: Any, text: dict[str, TextSketch] | None = None) -> None:
        self._view = view
        self._text: dict[str, TextSketch] = dict(text or {})

    @classmethod
    def from_bytes(cls, data: bytes) -> Profile:
        from whylogs.core import DatasetProfileView

        try:
            text, view = _split_bytes(data)
            return cls(DatasetProfileView.deserialize(view), text)
        except Exception as err:  # whylogs raises bare protobuf/assert errors
            raise ConfigurationError(f"not a readable profile ({len(data)} bytes): {err}") from err

    def to_bytes(self) -> bytes:
        view = bytes(self._view.serialize())
        if not self._text:
            return view
        sketches = zlib.compress(
            json.dumps({k: v.to_dict() for k, v in self._text.items()}).encode()
        )
        return _MAGIC + struct.pack(">I", len(sketches)) + sketches + view

    def merge(self, other: Profile) -> Profile:
        """The profile of both frames together; neither input changes."""
        text = dict(self._text)
        for name, sketch in other._text.items():
            text[name] = text[name].merge(sketch) if name in text else sketch
        return Profile(self._view.merge(other._view), text)

    def text(self, column: str) -> TextSketch | None:
        """The text sketch of ``column`` (None: not profiled as text)."""
        return self._text.get(column)

    @property
    def columns(self) -> list[str]:
        return list(self._view.get_columns())

    @property
    def num_rows(self) -> int:
        """Rows profiled (every column sees every row)."""
        counts = [_count(col, "n") for col in self._view.get_columns().values()]
        return max(counts, default=0)

    def summary(self, column: str) -> ColumnSummary:
        return _summarise(column, self._column(column))

    def summaries(self) -> dict[str, ColumnSummary]:
        return {name: _summarise(name, col) for name, col in self._view.get_columns().items()}

    def quantiles(self, column: str, qs: Sequence[float]) -> list[float]:
        """Approximate quantiles of a numeric column (empty if it has no numbers)."""
        sketch = self._sketch(column)
        if sketch is None:
            return []
        return [float(x) for x in sketch.get_quantiles(list(qs))]

    def cdf(self, column: str, points: Sequence[float]) -> list[float]:
        """Fraction of the column's numbers <= each point (strictly increasing points)."""
        sketch = self._sketch(column)
        if sketch is None or not points:
            return [0.0] * len(points)
        return [float(x) for x in sketch.get_cdf(list(points))[:-1]]

    def histogram(self, column: str, edges: Sequence[float]) -> list[float]:
        """Fractions of the column's numbers in ``(-inf, e0), [e0, e1), ..., [en, inf)``."""
        sketch = self._sketch(column)
        if sketch is None:
            return [0.0] * (len(edges) + 1)
        return [float(x) for x in sketch.get_pmf(list(edges))]

    def _column(self, column: str) -> Any:
        col = self._view.get_column(column)
        if col is None:
            raise ConfigurationError(
                f"profile has no column {column!r} (it has: {', '.join(self.columns)})"
            )
        return col

    def _sketch(self, column: str) -> Any:
        dist = self._column(column).get_metric("distribution")
        if dist is None or dist.kll.value.is_empty():
            return None
        return dist.kll.value

    def __repr__(self) -> str:
        return f"Profile(rows={self.num_rows}, columns={len(self.columns)})"


@dataclass(frozen=True)
class TextSketch:
    """What drift needs of a text column: rows, empty inputs and token counts.

    Tokens are lower-cased runs of letters and digits (apostrophes inside
    words kept). Counts are exact up to :data:`MAX_VOCABULARY` distinct
    tokens; past it the rarest are dropped and counted in ``pruned``.
    """

    rows: int = 0
    empty: int = 0  # null, empty or whitespace-only
    tokens: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    pruned: int = 0

    @classmethod
    def of(cls, values: Iterable[Any]) -> TextSketch:
        from collections import Counter

        counts: Counter[str] = Counter()
        rows = empty = 0
        for value in values:
            rows += 1
            words = tokenize(value) if isinstance(value, str) else []
            empty += not words and not (isinstance(value, str) and value.strip())
            counts.update(words)
        return cls(rows, empty, sum(counts.values()), dict(counts))._capped()

    def merge(self, other: TextSketch) -> TextSketch:
        counts = dict(self.counts)
        for token, n in other.counts.items():
            counts[token] = counts.get(token, 0) + n
        return TextSketch(
            rows=self.rows + other.rows,
            empty=self.empty + other.empty,
            tokens=self.tokens + other.tokens,
            counts=counts,
            pruned=self.pruned + other.pruned,
        )._capped()

    def _capped(self) -> TextSketch:
        if len(self.counts) <= MAX_VOCABULARY:
            return self
        kept = dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VOCABULARY])
        dropped = sum(self.counts.values()) - sum(kept.values())
        return TextSketch(self.rows, self.empty, self.tokens, kept, self.pruned + dropped)

    def oov_rate(self, vocabulary: TextSketch) -> float:
        """Share of this sketch's tokens that ``vocabulary`` never saw (pruned ones count)."""
        if self.tokens <= 0:
            return 0.0
        unseen = sum(n for token, n in self.counts.items() if token not in vocabulary.counts)
        return (unseen + self.pruned) / self.tokens

    def expected_oov_rate(self) -> float:
        """Good-Turing: the share of new tokens from this population that it has not seen.

        It is about the share of tokens seen exactly once; what ordinary
        traffic's out-of-vocabulary rate should be against this vocabulary.
        """
        if self.tokens <= 0:
            return 0.0
        once = sum(1 for n in self.counts.values() if n == 1)
        return (once + self.pruned) / self.tokens

    def empty_rate(self) -> float:
        return self.empty / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "empty": self.empty,
            "tokens": self.tokens,
            "counts": self.counts,
            "pruned": self.pruned,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextSketch:
        return cls(
            rows=int(d.get("rows", 0)),
            empty=int(d.get("empty", 0)),
            tokens=int(d.get("tokens", 0)),
            counts={str(k): int(v) for k, v in (d.get("counts") or {}).items()},
            pruned=int(d.get("pruned", 0)),
        )


def tokenize(text: str) -> list[str]:
    """The tokens of a text as the drift statistics count them."""
    return _TOKEN.findall(text.lower())


def text_statistic(column: str, statistic: str) -> str:
    """The name of a derived text statistic, e.g. ``text.length``."""
    return f"{column}.{statistic}"


def _split_bytes(data: bytes) -> tuple[dict[str, TextSketch], bytes]:
    """Text sketches and the whylogs bytes of a serialised :class:`Profile`."""
    if not data.startswith(_MAGIC):
        return {}, data
    start = len(_MAGIC) + 4
    (size,) = struct.unpack(">I", data[len(_MAGIC) : start])
    raw = json.loads(zlib.decompress(data[start : start + size]))
    return {k: TextSketch.from_dict(v) for k, v in raw.items()}, data[start + size :]


@dataclass(frozen=True)
class ColumnSummary:
    """What a person (or a drift check) needs to know about one profiled column."""

    name: str
    count: int
    missing: int
    types: dict[str, int]  # integral, fractional, boolean, string, object, tensor
    mean: float | None = None
    stddev: float | None = None
    min: float | None = None
    max: float | None = None
    median: float | None = None
    cardinality: float | None = None
    # Approximate counts of the most frequent values, as strings.
    frequent: dict[str, int] = field(default_factory=dict)

    @property
    def missing_fraction(self) -> float:
        return self.missing / self.count if self.count else 0.0

    @property
    def dominant_type(self) -> str:
        """The inferred type most values have ("none" when every value is missing)."""
        if not any(self.types.values()):
            return "none"
        return max(self.types, key=lambda t: self.types[t])

    @property
    def kind(self) -> ColumnKind:
        t = self.dominant_type
        if t == "fractional":
            return "numeric"
        if t == "integral":
            small = self.cardinality is not None and self.cardinality <= MAX_CATEGORICAL_INTEGERS
            return "categorical" if small and self.frequent else "numeric"
        return "categorical"


@dataclass(frozen=True)
class ColumnComparison:
    """Two profiles' views of one column, aligned on a common support.

    Numeric columns carry both CDFs at the same points and both histograms on
    the reference's quantile bins; categorical columns carry both value
    frequencies over the union of their frequent values. Scoring is
    :mod:`aipaas.monitoring.drift`'s job.
    """

    column: str
    current_column: str
    kind: ColumnKind
    reference: ColumnSummary
    current: ColumnSummary
    points: list[float] = field(default_factory=list)
    reference_cdf: list[float] = field(default_factory=list)
    current_cdf: list[float] = field(default_factory=list)
    bin_edges: list[float] = field(default_factory=list)
    reference_hist: list[float] = field(default_factory=list)
    current_hist: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    reference_freq: list[float] = field(default_factory=list)
    current_freq: list[float] = field(default_factory=list)


def profile_frame(df: pd.DataFrame) -> Profile:
    """Profile a frame: one pass, cost dominated by a fixed ~5 ms per call, so batch rows.

    A text column (:data:`TEXT_COLUMNS`) also gets its ``<column>.length``
    column and a :class:`TextSketch`.
    """
    import whylogs as why

    text = [c for c in TEXT_COLUMNS if c in df.columns]
    if text:
        df = df.assign(
            **{text_statistic(c, TEXT_LENGTH): df[c].map(_length, na_action="ignore") for c in text}
        )
    return Profile(why.log(df).view(), {c: TextSketch.of(df[c]) for c in text})


def _length(value: Any) -> float:
    return float(len(value)) if isinstance(value, str) else math.nan


def write_profile(df: pd.DataFrame, path: Path) -> Path:
    """Profile ``df`` and write the profile to ``path`` (parents created)."""
    return save_profile(profile_frame(df), path)


def save_profile(profile: Profile, path: Path) -> Path:
    """Write atomically: a reader never sees half a profile."""
    return atomic_write(Path(path), profile.to_bytes())


def read_profile(path: Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"no profile at {path}")
    return Profile.from_bytes(path.read_bytes())


def merge_profiles(profiles: Iterable[Profile]) -> Profile | None:
    """Merge any number of profiles; None when there are none."""
    merged: Profile | None = None
    for p in profiles:
        merged = p if merged is None else merged.merge(p)
    return merged


def compare(
    reference: Profile,
    current: Profile,
    column: str,
    current_column: str | None = None,
    bins: int = 10,
) -> ColumnComparison:
    """Align one column of two profiles for scoring.

    ``current_column`` lets a different column stand in on the current side:
    serving's ``prediction`` is compared with the reference's target.
    """
    cur_name = current_column or column
    ref_s = reference.summary(column)
    cur_s = current.summary(cur_name)
    kind = ref_s.kind
    if kind == "numeric" and cur_s.dominant_type in ("fractional", "integral", "boolean"):
        ref_q = reference.quantiles(column, _QUANTILES)
        cur_q = current.quantiles(cur_name, _QUANTILES)
        ends = [v for v in (ref_s.min, ref_s.max, cur_s.min, cur_s.max) if v is not None]
        points = _increasing([*ref_q, *cur_q, *ends])
        edges = _increasing(reference.quantiles(column, [i / bins for i in range(1, bins)]))
        return ColumnComparison(
            column=column,
            current_column=cur_name,
            kind="numeric",
            reference=ref_s,
            current=cur_s,
            points=points,
            reference_cdf=reference.cdf(column, points),
            current_cdf=current.cdf(cur_name, points),
            bin_edges=edges,
            reference_hist=reference.histogram(column, edges),
            current_hist=current.histogram(cur_name, edges),
        )
    categories = sorted(set(ref_s.frequent) | set(cur_s.frequent))
    return ColumnComparison(
        column=column,
        current_column=cur_name,
        kind="categorical",
        reference=ref_s,
        current=cur_s,
        categories=categories,
        reference_freq=_fractions(ref_s, categories),
        current_freq=_fractions(cur_s, categories),
    )


def compare_text(
    reference: Profile, current: Profile, column: str, bins: int = 10
) -> list[ColumnComparison]:
    """Align a text column's statistics: length, tokens, out-of-vocabulary, empty inputs.

    ``<column>.length`` is compared as a number (:func:`compare`). The others
    come as frequencies over a few categories, one comparison each: the
    reference's :data:`TOP_TOKENS` most frequent tokens plus ``(other)``
    (counts are tokens); in and out of the reference's vocabulary, where the
    reference's share is its Good-Turing estimate (what ordinary new text
    would show); and non-empty against empty inputs (counts are rows).
    """
    ref, cur = reference.text(column), current.text(column)
    if ref is None or cur is None:
        raise ConfigurationError(f"{column!r} was not profiled as text on both sides")
    top = [t for t, _ in sorted(ref.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TOKENS]]
    oov, expected = cur.oov_rate(ref), ref.expected_oov_rate()
    stats = [
        (TEXT_TOKENS, [*top, "(other)"], _token_shares(ref, top), _token_shares(cur, top),
         ref.tokens, cur.tokens),
        (TEXT_OOV, ["in vocabulary", "out of vocabulary"], [1 - expected, expected],
         [1 - oov, oov], ref.tokens, cur.tokens),
        (TEXT_EMPTY, ["non-empty", "empty"], [1 - ref.empty_rate(), ref.empty_rate()],
         [1 - cur.empty_rate(), cur.empty_rate()], ref.rows, cur.rows),
    ]  # fmt: skip
    length = text_statistic(column, TEXT_LENGTH)
    out = [compare(reference, current, length, bins=bins)]
    for statistic, categories, ref_freq, cur_freq, ref_n, cur_n in stats:
        name = text_statistic(column, statistic)
        out.append(
            ColumnComparison(
                column=name,
                current_column=name,
                kind="categorical",
                reference=_count_summary(name, ref_n),
                current=_count_summary(name, cur_n),
                categories=categories,
                reference_freq=ref_freq,
                current_freq=cur_freq,
            )
        )
    return out


def _token_shares(sketch: TextSketch, top: list[str]) -> list[float]:
    if sketch.tokens <= 0:
        return [0.0] * (len(top) + 1)
    shares = [sketch.counts.get(t, 0) / sketch.tokens for t in top]
    return [*shares, max(0.0, 1.0 - sum(shares))]


def _count_summary(name: str, count: int) -> ColumnSummary:
    return ColumnSummary(name=name, count=count, missing=0, types={"string": count})


def _fractions(s: ColumnSummary, categories: list[str]) -> list[float]:
    present = s.count - s.missing
    if present <= 0:
        return [0.0] * len(categories)
    return [s.frequent.get(c, 0) / present for c in categories]


def _increasing(values: Iterable[float]) -> list[float]:
    finite = sorted({float(v) for v in values if v is not None and math.isfinite(v)})
    return finite


def _count(col: Any, name: str) -> int:
    counts = col.get_metric("counts")
    if counts is None:
        return 0
    return int(getattr(counts, name).value)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _summarise(name: str, col: Any) -> ColumnSummary:
    d = col.to_summary_dict()
    types = {
        t: int(d.get(f"types/{t}", 0) or 0)
        for t in ("integral", "fractional", "boolean", "string", "object", "tensor")
    }
    has_numbers = int(d.get("distribution/n", 0) or 0) > 0
    frequent = {
        str(item.value): int(item.est) for item in d.get("frequent_items/frequent_strings") or []
    }
    return ColumnSummary(
        name=name,
        count=int(d.get("counts/n", 0) or 0),
        missing=int(d.get("counts/null", 0) or 0),
        types=types,
        mean=_num(d.get("distribution/mean")) if has_numbers else None,
        stddev=_num(d.get("distribution/stddev")) if has_numbers else None,
        min=_num(d.get("distribution/min")) if has_numbers else None,
        max=_num(d.get("distribution/max")) if has_numbers else None,
        median=_num(d.get("distribution/median")) if has_numbers else None,
        cardinality=_num(d.get("cardinality/est")),
        frequent=frequent,
    )
