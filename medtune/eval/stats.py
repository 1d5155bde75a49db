"""Small statistics used by every evaluation: Wilson intervals and medians."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion.

    Source: E. B. Wilson, "Probable inference, the law of succession, and statistical
    inference", JASA 22 (1927). Unlike the normal approximation it stays inside [0, 1] and is
    sensible for small ``n`` and proportions near 0 or 1.

    Args:
        successes: number of successes (0 <= successes <= n).
        n: number of trials.
        z: standard-normal quantile (1.96 for 95%).

    Returns:
        ``(low, high)`` rounded to 4 decimals; ``(0.0, 0.0)`` when ``n`` is 0.

    Raises:
        ValueError: if ``successes`` is outside ``[0, n]``.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def proportion(successes: int, n: int) -> dict:
    """``{"n", "k", "rate", "ci95"}`` for ``successes`` out of ``n`` (rate 0 when n is 0)."""
    return {"n": n, "k": successes, "rate": round(successes / n, 4) if n else 0.0,
            "ci95": list(wilson_interval(successes, n))}


def median(values: list[float]) -> float:
    """Median of a non-empty list (mean of the two middle values for even lengths)."""
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for paired yes/no outcomes on the same items.

    Source: Q. McNemar, "Note on the sampling error of the difference between correlated proportions
    or percentages", Psychometrika 12 (1947); the exact form is a two-sided binomial test of the
    discordant pairs at 1/2. For a before/after on the same questions it is the right test: the
    overlap of two separate 95% intervals ignores the pairing and is far more conservative.

    Args:
        only_a: items where only model A's outcome is yes.
        only_b: items where only model B's outcome is yes.

    Returns:
        p in [0, 1]; 1.0 when there is no discordant item.
    """
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return round(min(1.0, 2 * tail), 6)
