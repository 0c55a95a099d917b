"""The promotion gate: GO or NO-GO for one evaluated LLM version, with its reasons.

Thresholds come from `configs/gate.yaml` (defaults: seed 004's evaluation targets, and a retention limit on
general perplexity). Every check must hold for GO; a metric the evaluation could not measure fails its check (a
GO must rest on measurements), and so does an evaluation of only part of the golden set. The reasons of a NO-GO
are the failed checks; those of a GO are the checks it passed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from engine.core.paths import CONFIGS_DIR
from training.config import ConfigError, read_mapping

DEFAULT_GATE = CONFIGS_DIR / "gate.yaml"
GO, NO_GO = "GO", "NO-GO"


class GateError(ValueError):
    """The gate configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class GateConfig:
    accuracy_min: float | None = 0.95
    citation_presence_min: float | None = 0.90
    refusal_accuracy_min: float | None = 0.90
    latency_p95_ms_max: float | None = 1500.0
    general_perplexity_max_increase_pct: float | None = 10.0
    citation_correctness_min: float | None = None
    agreement_min: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# metric, label, kind of threshold: a share (0..1) to reach, or a maximum
_SHARES = {"accuracy_min": ("accuracy", "accuracy"), "citation_presence_min": ("citation_presence", "citation presence"),
           "refusal_accuracy_min": ("refusal_accuracy", "refusal accuracy"),
           "citation_correctness_min": ("citation_correctness", "citation correctness"),
           "agreement_min": ("agreement", "recommendation agreement")}


def load_gate_config(source: Path | str | dict | None = DEFAULT_GATE) -> GateConfig:
    """A checked gate: a YAML file, a mapping, or None for the defaults. GateError names the first bad key."""
    where = "gate" if source is None or isinstance(source, dict) else str(source)
    try:
        data = read_mapping(source)  # the CPT recipe's reader: a mapping from a YAML file or given as one
    except ConfigError as error:
        raise GateError(str(error).replace("the configuration", "the gate configuration")) from None
    known = [f.name for f in fields(GateConfig)]
    values = {}
    for key, value in data.items():
        if key not in known:
            raise GateError(f"{where}: {key}: unknown key (known: {', '.join(known)})")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise GateError(f"{where}: {key}: must be a number or null (got {value!r})")
            if key in _SHARES and not 0 <= value <= 1:
                raise GateError(f"{where}: {key}: must be a share between 0 and 1 (got {value!r})")
            if key == "latency_p95_ms_max" and value <= 0:
                raise GateError(f"{where}: {key}: must be a positive number of milliseconds (got {value!r})")
            if key == "general_perplexity_max_increase_pct" and value < 0:
                raise GateError(f"{where}: {key}: must be a percentage of at least 0 (got {value!r})")
            value = float(value)
        values[key] = value
    return GateConfig(**values)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    text: str


@dataclass(frozen=True)
class GateVerdict:
    verdict: str  # GO | NO-GO
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]

    @property
    def go(self) -> bool:
        return self.verdict == GO


def judge(metrics: dict[str, float], config: GateConfig, *, base_general_perplexity: float | None,
          items_evaluated: int, items_total: int) -> GateVerdict:
    """The verdict on one version's metrics; `base_general_perplexity` is its base model's on the same text."""
    checks = []
    if items_evaluated < items_total:
        checks.append(Check("golden_set", False, f"only {items_evaluated} of the {items_total} golden items were scored "
                                                 "(not selected, or not applicable to this registry): a GO needs them all"))
    for key, (metric, label) in _SHARES.items():
        threshold = getattr(config, key)
        if threshold is None:
            continue
        value = metrics.get(metric)
        if value is None:
            checks.append(Check(metric, False, f"{label} was not measured (no golden item of its kind was scored)"))
        elif value >= threshold:
            checks.append(Check(metric, True, f"{label} {value:.0%} meets the gate's {threshold:.0%}"))
        else:
            checks.append(Check(metric, False, f"{label} {value:.0%} is below the gate's {threshold:.0%}"))
    if (budget := config.latency_p95_ms_max) is not None:
        value = metrics.get("latency_p95_ms")
        if value is None:
            checks.append(Check("latency_p95_ms", False, "p95 latency was not measured"))
        else:
            verb = "is within" if value <= budget else "is over"
            checks.append(Check("latency_p95_ms", value <= budget, f"p95 latency {value:,.0f} ms {verb} the {budget:,.0f} ms budget"))
    if (allowed := config.general_perplexity_max_increase_pct) is not None:
        checks.append(_retention(metrics.get("general_perplexity"), base_general_perplexity, allowed))
    failed = [check.text for check in checks if not check.passed]
    passed = [check.text for check in checks if check.passed]
    return GateVerdict(NO_GO if failed else GO, tuple(failed or passed), tuple(checks))


def _retention(value: float | None, base: float | None, allowed: float) -> Check:
    if value is None or base is None:
        return Check("general_perplexity", False, "general perplexity (the forgetting check) was not measured: "
                                                  "the snapshot has no held-out replay text")
    rise = (value / base - 1) * 100
    detail = f"general perplexity {value:.2f} vs the base model's {base:.2f} ({rise:+.1f}%)"
    if rise <= allowed:
        return Check("general_perplexity", True, f"{detail} is within the {allowed:g}% allowed rise")
    return Check("general_perplexity", False, f"{detail} rose more than the {allowed:g}% allowed: general ability was lost")
