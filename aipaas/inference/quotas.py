"""Per-key quotas: requests per day and cost per month, counted from the audit trail.

CONTRACT SKELETON (issue 10): :class:`Quotas` is what serving's Guard calls
after the rate limit; ``check`` raises
:class:`aipaas.exceptions.QuotaExceededError` when a key is past its
``quota`` ("10000/day") or ``budget`` ("50/month"). Not implemented yet:
this version allows everything.
"""

from __future__ import annotations

from aipaas.inference.keys import ApiKey
from aipaas.settings import Settings


class Quotas:
    """Counts each key's requests and cost in its current period."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def check(self, key: ApiKey) -> None:
        """Refuse ``key`` when it is past a quota.

        Raises:
            QuotaExceededError: past its daily requests or monthly budget.
        """
        return None
