"""A challenger that is as accurate as the champion and slow: what a canary must catch live.

Its class lives here, not in the test, so that a serving process (another
interpreter) can unpickle the registered model by importing this module.
"""

from __future__ import annotations

import time
from typing import Any

from sklearn.linear_model import LogisticRegression

# Each call sleeps this long. The p99 latency gate reads the training run's
# metric, so only live evidence shows it: far above the champion's live p99
# (a few milliseconds; tens on a loaded host), over the ratio a canary allows.
DELAY_S = 0.2


class SlowLogistic(LogisticRegression):
    """:class:`LogisticRegression` whose predictions take :data:`DELAY_S` longer."""

    def predict_proba(self, X: Any) -> Any:
        time.sleep(DELAY_S)
        return super().predict_proba(X)

    def predict(self, X: Any) -> Any:
        time.sleep(DELAY_S)
        return super().predict(X)
