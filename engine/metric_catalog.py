"""What each candidate metric means: which direction is better, its unit, how it is shown and compared.

The decision engine, the prompt, the verifier and the deterministic answer all read metric values through
this catalog, so "higher is better" and "1% relative margin" are decided in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_DECIMALS = 8  # past this a value is written as 0 (scientific notation would not be read back as a metric)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    higher_is_better: bool
    unit: str = ""
    bounded: bool = False  # a score in [0, 1]: near-best margins are absolute; errors get relative margins
    decimals: int = 3

    def format(self, value: float) -> str:
        """The value as the product writes it everywhere (prompt, answer, tables), unit included.

        A value too small for the usual decimals keeps two significant digits (0.0020 MB, not 0.00 MB)."""
        decimals = self.decimals
        if value and abs(value) < 10 ** -decimals:
            decimals = min(MAX_DECIMALS, 1 - math.floor(math.log10(abs(value))))
        text = f"{value:.{decimals}f}"
        return f"{text} {self.unit}" if self.unit else text

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b


CATALOG: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("accuracy", "accuracy", True, bounded=True),
        MetricSpec("f1", "F1", True, bounded=True),
        MetricSpec("roc_auc", "ROC AUC", True, bounded=True),
        MetricSpec("r2", "R²", True, bounded=True),
        MetricSpec("rmse", "RMSE", False, decimals=2),
        MetricSpec("mae", "MAE", False, decimals=2),
        MetricSpec("latency_p50_ms", "p50 latency", False, "ms", decimals=2),
        MetricSpec("latency_p95_ms", "p95 latency", False, "ms", decimals=2),
        MetricSpec("model_size_mb", "model size", False, "MB", decimals=2),
        MetricSpec("training_time_s", "training time", False, "s", decimals=2),
    )
}

NEAR_BEST_ABSOLUTE = 0.005  # guideline:model-selection, step 5
NEAR_BEST_RELATIVE = 0.01


def metric_spec(name: str) -> MetricSpec:
    """The catalog entry, or a neutral higher-is-better entry for a metric the catalog does not know."""
    return CATALOG.get(name) or MetricSpec(name, name, True)


def near_best(spec: MetricSpec, value: float, best: float) -> bool:
    """Whether a value is within the near-best margin of the best one (absolute for scores, relative for errors)."""
    margin = NEAR_BEST_ABSOLUTE if spec.bounded else abs(best) * NEAR_BEST_RELATIVE
    return abs(value - best) <= margin + 1e-12
