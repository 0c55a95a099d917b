"""What one logged metric key is: its kind, direction, unit, percentile, label and the words text names it by.

A key is understood from the catalog of common ML metrics (`KINDS`, engine.registry.metric_catalog) and from its
own parts (`val_auc`, `latency_p99_ms`, `ndcg_at_10`, `peak_ram_gb`); what neither tells (a team's own score) has
no direction until a document or an admin gives one. Reading one key is kept apart from the vocabulary of a whole
registry (engine.registry.metric_vocabulary): tables, prompts and decisions need only this.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import cache

from engine.registry.metric_catalog import KIND_BY_WORD, KINDS, RATE_UNITS, TIME_UNITS, UNIT_TOKENS, MetricKind, unit_dimension

MAX_DECIMALS = 8  # past this a value is written as 0 (scientific notation would not be read back as a metric)
_COMPOUND_UNITS = {("kg", "ha"): "kg/ha", ("t", "ha"): "t/ha"}  # rmse_kg_ha: kilograms per hectare
_KEY_UNITS = {token: unit for token, unit in UNIT_TOKENS.items() if unit not in ("min", "h", "day", "week")}  # "min_recall"
_ITEM_COUNTS = {"1k": 1000.0, "k": 1000.0, "1000": 1000.0, "thousand": 1000.0, "1m": 1e6, "million": 1e6, "100": 100.0}  # cost_usd_per_1k
SPLIT_PREFIXES = {"val", "valid", "validation", "test", "holdout", "eval", "offline", "mean", "avg", "average", "overall"}
_LOWER_WORDS = {"error", "loss", "latency", "time", "duration", "size", "memory", "ram", "cost", "delay", "lag", "drift",
                "gap", "bias", "mb", "gb", "ms", "kb", "alarm", "alarms", "false", "misses", "rejection", "distance", "runtime"}


@dataclass(frozen=True)
class MetricSpec:
    """One registry metric key: how it is shown, which way is better (None: nobody has said) and how text names it."""

    name: str
    label: str
    higher_is_better: bool | None
    unit: str = ""
    bounded: bool = False
    decimals: int = 3
    kind: str | None = None
    percentile: int | None = None
    words: tuple[str, ...] = ()
    per: float = 1.0  # items one value is for: cost_usd_per_1k is per 1000 requests

    def format(self, value: float) -> str:
        """The value as the product writes it everywhere (prompt, answer, tables), unit included.

        A value too small for the usual decimals keeps two significant digits (0.0020 MB, not 0.00 MB)."""
        decimals = self.decimals
        if value and abs(value) < 10 ** -decimals:
            decimals = min(MAX_DECIMALS, 1 - math.floor(math.log10(abs(value))))
        text = f"{value:.{decimals}f}"
        return f"{text} {self.unit}" if self.unit else text

    @property
    def dimension(self) -> str:
        return unit_dimension(self.unit)

    def with_direction(self, higher_is_better: bool | None) -> MetricSpec:
        return self if higher_is_better is None else replace(self, higher_is_better=higher_is_better)


def key_tokens(key: str) -> list[str]:
    """The key's words; "hausdorff95" is the word and its percentile (p95), while "f1", "r2", "map50" stay whole."""
    tokens = []
    for token in re.split(r"[_\-.@/\s:]+", key.lower()):
        if (split := re.fullmatch(r"([a-z]{3,})(\d{1,3})", token)) and split.group(1) in _AT_K_WORDS:
            tokens += [split.group(1), "at", split.group(2)]  # ndcg10 is nDCG@10
        elif split := re.fullmatch(r"([a-z]{4,})(\d{2,3})", token):
            tokens += [split.group(1), f"p{split.group(2)}"]
        elif token:
            tokens.append(token)
    return tokens


@cache
def metric_spec(name: str) -> MetricSpec:
    """What a registry metric key is: from the catalog and the key's own parts (split prefix, percentile, unit, @k)."""
    tokens = key_tokens(name)
    unit = next((_COMPOUND_UNITS[pair] for pair in zip(tokens, tokens[1:]) if pair in _COMPOUND_UNITS), None) or next(
        (_KEY_UNITS[t] for t in reversed(tokens[1:]) if t in _KEY_UNITS), "")
    per = next((tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "per" and tokens[i + 1] in RATE_UNITS), None)
    if per:
        unit = f"1/{RATE_UNITS[per]}"  # false_alarms_per_day, pages_per_minute
    elif any(t in ("fps", "rps", "qps") for t in tokens):
        unit = "1/s"
    items = next((_ITEM_COUNTS[tokens[i + 1]] for i, t in enumerate(tokens[:-1]) if t == "per" and tokens[i + 1] in _ITEM_COUNTS), 1.0)
    written_percentiles = [int(m.group(1)) for t in tokens if (m := re.fullmatch(r"p(\d{2,3})", t))]
    percentile = written_percentiles[0] if len(written_percentiles) == 1 else None  # picp_p10_p90 is an interval
    at_k = next((tokens[i + 1] for i, t in enumerate(tokens[:-1])
                 if t == "at" and re.fullmatch(r"\d+(?:pct|percent|p)?", tokens[i + 1])), None)
    if at_k is None and re.search(r"@(\d+)", name):
        at_k = re.search(r"@(\d+)", name).group(1)
    counted = ("per", *_ITEM_COUNTS) if items != 1.0 else ()
    tokens = [ABBREVIATIONS.get(t, t) if t in _EXPANDED_IN_KINDS else t for t in tokens]  # gpu_mem_gib: GPU memory
    core = [t for t in tokens if t not in UNIT_TOKENS and not re.fullmatch(r"p\d{2,3}", t) and t != "at" and t != at_k
            and t not in SPLIT_PREFIXES and not (per and t in ("per", per)) and t not in counted]
    whole = [t for t in tokens if t not in UNIT_TOKENS and not re.fullmatch(r"p\d{2,3}", t) and t != "at" and t != at_k
             and not (per and t in ("per", per)) and t not in counted]
    kind = _kind_of(whole) if _kind_of(whole) and " ".join(whole) in KIND_BY_WORD else _kind_of(core)  # "average precision"
    if kind is None and percentile is not None and unit in TIME_UNITS:
        kind = KIND_BY_WORD["latency"]  # score_p99_ms: a percentile of a time is a latency
    if kind is None:
        higher = False if any(t in _LOWER_WORDS or t.endswith("error") for t in tokens) else None
        label = " ".join(core) or name
        own = MetricKind(label.replace(" ", "_"), label, bool(higher), (label,)) if core else None
        words = key_phrases(name) + [word for word in (_kind_words(own, percentile, at_k) if own and (at_k or percentile) else [])
                                    if word not in GENERIC_TOKENS]  # p90_err_m is not every "error"
        shares = not unit and any(t in ("rate", "share", "ratio", "fraction", "proportion", "coverage") for t in tokens)
        return MetricSpec(name, label, higher, unit, bounded=shares, decimals=2 if unit else 3, percentile=percentile,
                          words=tuple(words), per=items)  # within_50m_rate is a share: "85%" is 0.85
    if not unit and kind.default_unit and kind.dimension:
        unit = kind.default_unit
    phrase = " ".join(core)
    label = kind.label if phrase in (kind.name.replace("_", " "), kind.words[0]) else phrase
    if percentile is not None:
        label = f"p{percentile} {label}"
    if at_k:
        label = f"{label}@{at_k}"
    prefix = [t for t in tokens if t in SPLIT_PREFIXES and t not in ("mean", "avg", "average", "overall")]
    if prefix:
        label = f"{prefix[0]} {label}"
    words = _own_top_k(key_phrases(name) + _iou_words(kind, core) + _kind_words(kind, percentile, at_k), name)
    return MetricSpec(name, label, kind.higher_is_better, unit, kind.bounded, kind.decimals, kind.name, percentile,
                      tuple(dict.fromkeys(words)), items)


def _kind_of(core: list[str]) -> MetricKind | None:
    """The catalog kind the key's words name: the whole core first, then its longest run of words."""
    for length in range(len(core), 0, -1):
        for start in range(len(core) - length + 1):
            phrase = " ".join(core[start:start + length])
            if phrase in KIND_BY_WORD:
                return KIND_BY_WORD[phrase]
    return None


_AT_K_WORDS = {"ndcg", "mrr", "recall", "precision", "prec", "hit", "hitrate", "map"}  # "ndcg10": at 10 results


def key_phrases(name: str) -> list[str]:
    spaced = " ".join(re.sub(r"^(\d+)([a-z]+)$", r"\1 \2", token) for token in key_tokens(name))  # within_50m_rate: "50 m"
    written = [re.sub(r"\btop(\d+)\b", rf"top{sep}\1", spaced) for sep in ("-", " ")]  # top5 accuracy: "top-5 accuracy"
    return list(dict.fromkeys([name.lower(), spaced, *written]))


def _own_top_k(words: list[str], name: str) -> list[str]:
    """top5_accuracy is not named by the catalog's "top-1 accuracy": words of another top-k are not the key's."""
    own = re.search(r"top[-_ ]?(\d+)", name.lower())
    if not own:
        return words
    return [w for w in words if not (other := re.search(r"top[- ]?(\d+)", w)) or other.group(1) == own.group(1)]


GENERIC_TOKENS = {"rate", "score", "error", "time", "model", "size", "test", "mean", "total", "count", "value", "metric",
                   "loss", "ratio", "per", "at", "avg", "max", "min", "top", "overall", "offline", "online", "valid", "holdout"}


# Short forms teams use in metric keys, for the word a sentence writes instead
ABBREVIATIONS = {"img": "image", "imgs": "images", "gen": "generation", "lat": "latency", "mem": "memory", "spk": "speaker",
                  "req": "request", "reqs": "requests", "resp": "response", "doc": "document", "docs": "documents",
                  "pred": "prediction", "preds": "predictions", "inf": "inference", "tok": "token", "toks": "tokens",
                  "seq": "sequence", "err": "error", "fcst": "forecast", "trn": "training", "util": "utilisation",
                  "calib": "calibration", "cnt": "count", "num": "number", "txn": "transaction", "cust": "customer",
                  "pvalue": "p-value", "pval": "p-value", "dcal": "d-calibration", "de": "german", "en": "english",
                  "fr": "french", "es": "spanish", "ped": "pedestrian", "sens": "sensitivity", "spec": "specificity"}


_EXPANDED_IN_KINDS = {"mem", "lat", "sens", "spec", "calib", "inf", "pred", "err"}  # short forms that name a kind


def _iou_words(kind: MetricKind, core: list[str]) -> list[str]:
    """Detection mAP keys name their IoU thresholds in hundredths: map_50 is mAP@0.5, map_50_95 is mAP@0.5:0.95."""
    iou = [t for t in core if t.isdigit() and len(t) == 2]
    if kind.name != "map" or not iou:
        return []
    values = [f"0.{t.rstrip('0') or '0'}" for t in iou]
    written = ":".join(values)
    short = ":".join(v[1:] for v in values)
    return [f"map@{written}", f"map @ {written}", f"map@[{short}]", f"map at iou {written}", f"map at an iou of {written}",
            f"map (iou {written})", f"map {written}", f"map@{':'.join(iou)}", f"map{'-'.join(iou)}", f"map at {written}"]


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _kind_words(kind: MetricKind, percentile: int | None, at_k: str | None) -> list[str]:
    words = []
    share = re.fullmatch(r"(\d+)(?:pct|percent|p)", at_k) if at_k else None
    for word in sorted(kind.words, key=len, reverse=True):
        if share:  # lift_at_10pct: "lift at 10%", "lift in the top 10%", "lift at the top decile"
            n = share.group(1)
            words += [f"{word} at {n}%", f"{word}@{n}%", f"{word} at {n} %", f"{word} in the top {n}%", f"{word} at top {n}%",
                      f"{word} at the top {n}%"] + ([f"{word} at the top decile", f"{word} in the top decile"] if n == "10" else [])
        elif at_k:
            words += [f"{word}@{at_k}", f"{word} @ {at_k}", f"{word} at {at_k}", f"{word}@k", f"{word} at k"]
        if percentile is not None:
            p, nth = f"p{percentile}", _ordinal(percentile)
            words += [f"{p} {word}", f"{word} {p}", f"{nth} percentile {word}", f"{nth}-percentile {word}",
                      f"{word} at the {nth} percentile", f"{word} at {p}", f"{nth} percentile of {word}"]
        words.append(word)
    if percentile is not None:
        words.append(f"p{percentile}")
        if kind.name == "latency":
            words.append(f"{_ordinal(percentile)} percentile")
        if percentile >= 90:
            words.append("tail latency" if kind.name == "latency" else f"tail {kind.words[0]}")
        if percentile == 50:
            words += [f"median {kind.words[0]}"]
    return words


_KIND_ORDER = {kind.name: index for index, kind in enumerate(KINDS)}


def display_order(keys) -> list[str]:
    """Metric keys in the order every table shows them: the catalog's order of kinds (quality, then serving), then
    keys the catalog does not know, alphabetically."""
    return sorted(set(keys), key=lambda key: (_KIND_ORDER.get(metric_spec(key).kind, len(KINDS)), metric_spec(key).percentile or 0, key))
