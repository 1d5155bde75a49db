"""Small statistics used by every evaluation: Wilson intervals, medians, McNemar, bootstrap intervals."""

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


def clipped_mean(values: list[float], low: float = 0.0, high: float = 1.0) -> float:
    """Mean of ``values`` clipped to ``[low, high]`` (HealthBench clips the mean, not each example)."""
    return min(high, max(low, sum(values) / len(values)))


def bootstrap_mean(values: list[float], samples: int = 1000, seed: int = 0) -> dict:
    """Clipped mean with a 95% percentile bootstrap interval over the items.

    Source: B. Efron and R. Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13 (percentile
    interval); the clipped mean and the bootstrap over examples follow HealthBench (Arora et al. 2025,
    OpenAI simple-evals ``healthbench_eval.py``: mean clipped to [0, 1], 1000 resamples, std reported).

    Args:
        values: one score per item (may lie outside [0, 1]).
        samples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``{"n", "score", "std", "ci95"}`` (4 decimals); score 0 and interval (0, 0) when ``values`` is empty.
    """
    import random

    n = len(values)
    if n == 0:
        return {"n": 0, "score": 0.0, "std": 0.0, "ci95": [0.0, 0.0]}
    rng = random.Random(seed)
    means = sorted(clipped_mean([values[rng.randrange(n)] for _ in range(n)]) for _ in range(samples))
    avg = sum(means) / samples
    std = math.sqrt(sum((m - avg) ** 2 for m in means) / samples)
    return {"n": n, "score": round(clipped_mean(values), 4), "std": round(std, 4),
            "ci95": [round(means[int(0.025 * samples)], 4), round(means[min(samples - 1, int(0.975 * samples))], 4)]}


def paired_bootstrap(a: list[float], b: list[float], samples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of the difference of clipped means, ``b - a``, over the same items.

    Items are resampled together (each draw keeps an item's two scores), so the spread between items
    cancels; the two-sided p-value is twice the smaller share of resampled differences on either side
    of 0 (Efron and Tibshirani 1993, ch. 16).

    Args:
        a: per-item scores of the first model (e.g. base).
        b: the second model's scores on the same items, same order.

    Returns:
        ``{"n", "diff", "ci95", "p"}``.

    Raises:
        ValueError: ``a`` and ``b`` differ in length or are empty.
    """
    import random

    if len(a) != len(b) or not a:
        raise ValueError(f"paired bootstrap needs two equal, non-empty lists, got {len(a)} and {len(b)}")
    n, rng = len(a), random.Random(seed)
    diffs = []
    for _ in range(samples):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(clipped_mean([b[i] for i in idx]) - clipped_mean([a[i] for i in idx]))
    diffs.sort()
    below, above = sum(d <= 0 for d in diffs) / samples, sum(d >= 0 for d in diffs) / samples
    return {"n": n, "diff": round(clipped_mean(b) - clipped_mean(a), 4),
            "ci95": [round(diffs[int(0.025 * samples)], 4), round(diffs[min(samples - 1, int(0.975 * samples))], 4)],
            "p": round(min(1.0, 2 * min(below, above)), 4)}
