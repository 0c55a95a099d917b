"""What each candidate metric means, whatever key a team logs it under: direction, unit, the words for it.

The decision, the prompt, the composed answer, the verifier and the rule extractor read metric keys through
`metric_spec` and `MetricVocabulary`, so "higher is better", "ms" and "95th percentile latency" are decided in
one place. A key is understood from the catalog of common ML metrics (`KINDS`) and from its own parts
(`val_auc`, `latency_p99_ms`, `ndcg_at_10`, `peak_ram_gb`); what neither tells (a team's own score) has no
direction until a document or an admin gives one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import cache, lru_cache

MAX_DECIMALS = 8  # past this a value is written as 0 (scientific notation would not be read back as a metric)


@dataclass(frozen=True)
class MetricKind:
    """A metric as the field knows it, with the phrases people write for it (lower case, longest first wins)."""

    name: str
    label: str
    higher_is_better: bool
    words: tuple[str, ...]
    bounded: bool = False  # a score in [0, 1]: a threshold written as "90%" means 0.9
    decimals: int = 3
    dimension: str = ""  # "time" or "size": thresholds in other units of it are converted
    default_unit: str = ""  # the unit assumed when the key does not say


KINDS: tuple[MetricKind, ...] = (
    MetricKind("accuracy", "accuracy", True, ("accuracy", "acc", "top-1 accuracy", "top1 accuracy"), bounded=True),
    MetricKind("balanced_accuracy", "balanced accuracy", True, ("balanced accuracy",), bounded=True),
    MetricKind("f1", "F1", True, ("f1", "f1 score", "f1-score", "f score", "f-score", "f measure", "f-measure", "macro f1"), bounded=True),
    MetricKind("precision", "precision", True, ("precision", "ppv", "positive predictive value"), bounded=True),
    MetricKind("recall", "recall", True, ("recall", "sensitivity", "true positive rate", "tpr", "detection rate"), bounded=True),
    MetricKind("npv", "negative predictive value", True, ("npv", "negative predictive value"), bounded=True),
    MetricKind("mos", "mean opinion score", True, ("mos", "mean opinion score", "opinion score")),
    MetricKind("specificity", "specificity", True, ("specificity", "true negative rate", "tnr", "selectivity"), bounded=True),
    MetricKind("roc_auc", "ROC AUC", True, ("roc auc", "roc-auc", "auc", "auroc", "auc roc", "area under the roc curve",
                                           "area under the curve"), bounded=True),
    MetricKind("pr_auc", "PR AUC", True, ("pr auc", "pr-auc", "auprc", "average precision", "area under the precision-recall curve",
                                         "precision-recall auc"), bounded=True),
    MetricKind("log_loss", "log loss", False, ("log loss", "logloss", "log-loss", "cross-entropy", "cross entropy", "logistic loss")),
    MetricKind("brier", "Brier score", False, ("brier score", "brier"), bounded=True),
    MetricKind("ece", "expected calibration error", False, ("expected calibration error", "calibration error", "ece"), bounded=True),
    MetricKind("mcc", "MCC", True, ("mcc", "matthews correlation coefficient", "matthews correlation")),
    MetricKind("kappa", "Cohen's kappa", True, ("kappa", "cohen's kappa", "cohen kappa")),
    MetricKind("fpr", "false positive rate", False, ("false positive rate", "fpr", "false alarm rate", "fall-out"), bounded=True),
    MetricKind("fnr", "false negative rate", False, ("false negative rate", "fnr", "miss rate"), bounded=True),
    MetricKind("r2", "R²", True, ("r2", "r²", "r^2", "r squared", "r-squared", "coefficient of determination"), bounded=True),
    MetricKind("rmse", "RMSE", False, ("rmse", "root mean squared error", "root mean square error", "root-mean-square error"), decimals=2),
    MetricKind("rmsle", "RMSLE", False, ("rmsle", "root mean squared log error"), decimals=3),
    MetricKind("mse", "MSE", False, ("mse", "mean squared error", "mean square error"), decimals=2),
    MetricKind("mae", "MAE", False, ("mae", "mean absolute error"), decimals=2),
    MetricKind("medae", "median absolute error", False, ("median absolute error", "medae"), decimals=2),
    MetricKind("mape", "MAPE", False, ("mape", "mean absolute percentage error", "mean absolute percent error"), decimals=2),
    MetricKind("smape", "sMAPE", False, ("smape", "symmetric mape", "symmetric mean absolute percentage error"), decimals=2),
    MetricKind("wape", "WAPE", False, ("wape", "weighted absolute percentage error", "weighted mape"), decimals=2),
    MetricKind("mase", "MASE", False, ("mase", "mean absolute scaled error"), decimals=3),
    MetricKind("pinball", "pinball loss", False, ("pinball loss", "quantile loss", "pinball")),
    MetricKind("ndcg", "NDCG", True, ("ndcg", "normalized discounted cumulative gain", "normalised discounted cumulative gain"), bounded=True),
    MetricKind("map", "MAP", True, ("map", "mean average precision"), bounded=True),
    MetricKind("mrr", "MRR", True, ("mrr", "mean reciprocal rank"), bounded=True),
    MetricKind("hit_rate", "hit rate", True, ("hit rate", "hitrate", "hit ratio"), bounded=True),
    MetricKind("wer", "word error rate", False, ("wer", "word error rate"), bounded=True),
    MetricKind("cer", "character error rate", False, ("cer", "character error rate"), bounded=True),
    MetricKind("bleu", "BLEU", True, ("bleu", "bleu score")),
    MetricKind("perplexity", "perplexity", False, ("perplexity", "ppl")),
    MetricKind("miou", "mean IoU", True, ("miou", "mean iou", "mean intersection over union"), bounded=True),
    MetricKind("iou", "IoU", True, ("iou", "intersection over union", "jaccard"), bounded=True),
    MetricKind("loss", "loss", False, ("loss", "validation loss")),
    MetricKind("latency", "latency", False, ("latency", "response time", "inference latency", "prediction latency",
                                            "serving latency", "scoring latency"), decimals=2, dimension="time", default_unit="ms"),
    MetricKind("inference_time", "inference time", False, ("inference time", "prediction time", "scoring time", "time per prediction",
                                                                  "time to score", "time to predict"),
               decimals=2, dimension="time", default_unit="ms"),
    MetricKind("training_time", "training time", False, ("training time", "train time", "fit time", "training duration",
                                                                   "time to retrain", "time to train", "retraining time",
                                                                   "retrain time", "train wall", "training wall time",
                                                                   "retraining", "full retraining"),
               decimals=2, dimension="time", default_unit="s"),
    MetricKind("model_size", "model size", False, ("model size", "artefact size", "artifact size", "serialized size", "checkpoint size", "checkpoint",
                                                   "serialised size", "serialized model", "serialised model", "file size",
                                                   "disk size", "size on disk", "model footprint", "model file"),
               decimals=2, dimension="size", default_unit="MB"),
    MetricKind("memory", "memory", False, ("memory", "ram", "peak memory", "peak ram", "memory footprint", "memory use",
                                           "memory usage", "resident memory", "rss"), decimals=2, dimension="size", default_unit="MB"),
    MetricKind("throughput", "throughput", True, ("throughput", "requests per second", "predictions per second", "rps", "qps",
                                                    "fps", "frames per second", "messages per second", "queries per second",
                                                    "items per second", "per second"),
               decimals=1),
    MetricKind("cost", "cost", False, ("cost", "serving cost", "price"), decimals=2, dimension="money", default_unit="USD"),
    MetricKind("lift", "lift", True, ("lift",)),
    MetricKind("gini", "Gini", True, ("gini", "gini coefficient", "accuracy ratio")),
    MetricKind("ks", "KS statistic", True, ("ks", "ks statistic", "ks stat", "kolmogorov-smirnov", "kolmogorov-smirnov statistic")),
    MetricKind("psi", "PSI", False, ("psi", "population stability index", "stability index")),
    MetricKind("dice", "Dice", True, ("dice", "dice coefficient", "dice similarity coefficient", "dice score", "f1 overlap"),
               bounded=True),
    MetricKind("hausdorff", "Hausdorff distance", False, ("hausdorff distance", "hausdorff"), dimension="length",
               default_unit="mm", decimals=2),
    MetricKind("chrf", "chrF", True, ("chrf", "chrf++", "chrf score")),
    MetricKind("comet", "COMET", True, ("comet", "comet score")),
    MetricKind("normalized_entropy", "normalized entropy", False, ("normalized entropy", "normalised entropy", "ne")),
    MetricKind("false_alarms", "false alarms", False, ("false alarms", "false alarm count", "false accepts", "false acceptances",
                                                      "false wakes", "false triggers")),
    MetricKind("frr", "false rejection rate", False, ("false rejection rate", "false reject rate", "frr", "false rejections"),
               bounded=True),
    MetricKind("detection_delay", "detection delay", False, ("detection delay", "time to detection", "time to detect",
                                                            "detection latency"), decimals=1, dimension="time", default_unit="s"),
    MetricKind("coverage", "coverage", True, ("coverage", "catalog coverage", "item coverage", "interval coverage", "picp",
                                              "prediction interval coverage probability", "prediction interval coverage",
                                              "prediction interval covers", "interval covers", "covers")),
    MetricKind("novelty", "novelty", True, ("novelty",)),
    MetricKind("rtf", "real-time factor", False, ("real-time factor", "real time factor", "rtf")),
    MetricKind("mdape", "median absolute percentage error", False, ("median absolute percentage error", "mdape", "median ape",
                                                                     "median absolute percent error"), decimals=3),
    MetricKind("fid", "FID", False, ("fid", "fréchet inception distance", "frechet inception distance"), decimals=2),
    MetricKind("clip_score", "CLIP score", True, ("clip score", "clipscore")),
    MetricKind("c_index", "C-index", True, ("c-index", "c index", "concordance index", "harrell's c", "harrell's c-index",
                                            "concordance"), bounded=True),
    MetricKind("ibs", "integrated Brier score", False, ("integrated brier score", "integrated brier", "ibs"), bounded=True),
    MetricKind("crps", "CRPS", False, ("crps", "continuous ranked probability score"), decimals=3),
    MetricKind("demographic_parity", "demographic parity difference", False,
               ("demographic parity difference", "demographic parity gap", "demographic parity", "statistical parity difference",
                "dp difference", "dp diff", "dp gap"), bounded=True),
    MetricKind("equal_opportunity", "equal opportunity gap", False,
               ("equal opportunity gap", "equal opportunity difference", "equal opportunity", "eo gap", "eo difference",
                "eo diff"), bounded=True),
    MetricKind("hallucination_rate", "hallucination rate", False, ("hallucination rate", "hallucinations", "halluc rate"),
               bounded=True),
    MetricKind("toxicity_rate", "toxicity rate", False, ("toxicity rate", "toxicity", "toxic responses"), bounded=True),
    MetricKind("win_rate", "win rate", True, ("win rate", "winrate"), bounded=True),
    MetricKind("ttft", "time to first token", False, ("time to first token", "ttft", "first token latency"),
               decimals=1, dimension="time", default_unit="ms"),
    MetricKind("hamming_loss", "Hamming loss", False, ("hamming loss",), bounded=True, decimals=4),
    MetricKind("gpu_memory", "GPU memory", False, ("gpu memory", "vram", "video memory", "gpu ram", "peak gpu memory"),
               decimals=2, dimension="size", default_unit="MB"),
    MetricKind("energy", "energy", False, ("energy per inference", "energy use", "energy consumption", "energy"),
               decimals=2, dimension="energy", default_unit="J"),
    MetricKind("power", "power", False, ("power draw", "average power", "power consumption", "power use", "power"),
               decimals=2, dimension="power", default_unit="mW"),
    MetricKind("emissions", "CO2 emissions", False, ("co2 emissions", "co2", "co₂", "carbon emissions", "carbon footprint",
                                                     "emissions", "co2e"), decimals=1, dimension="mass", default_unit="kg"),
    MetricKind("runtime", "runtime", False, ("runtime", "run time", "wall time", "wall-clock time", "batch time"),
               decimals=1, dimension="time", default_unit="s"),
)
SPELLINGS = (("tumor", "tumour"), ("color", "colour"), ("behavior", "behaviour"), ("center", "centre"),
             ("optimize", "optimise"), ("catalog", "catalogue"), ("analyze", "analyse"), ("labor", "labour"),
             ("hemoglobin", "haemoglobin"), ("anemia", "anaemia"), ("pediatric", "paediatric"), ("fiber", "fibre"),
             ("normalized", "normalised"), ("serialized", "serialised"), ("artifact", "artefact"), ("modeling", "modelling"))


@lru_cache(maxsize=16384)
def spelled_both_ways(text: str) -> tuple[str, ...]:
    """The text in American and British spelling (tumor/tumour, catalog/catalogue)."""
    variants = {text}
    for american, british in SPELLINGS:
        for variant in list(variants):
            variants |= {re.sub(rf"{american}(?!{british[len(american):]})", british, variant) if british.startswith(american)
                         else variant.replace(american, british), variant.replace(british, american)}
    return tuple(sorted(variants))
_GENERIC_KINDS = {"loss", "cost", "memory", "model_size", "throughput", "map"}  # their words are everyday English too
_KIND_BY_WORD = {word: kind for kind in KINDS for word in (kind.name.replace("_", " "), *kind.words)}

# Unit tokens of metric keys and of written thresholds, in the spelling pint understands.
UNIT_TOKENS = {
    "ms": "ms", "msec": "ms", "millis": "ms", "milliseconds": "ms", "millisecond": "ms",
    "us": "µs", "µs": "µs", "microseconds": "µs", "microsecond": "µs",
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min", "h": "h", "hour": "h", "hours": "h",
    "kb": "kB", "kilobyte": "kB", "kilobytes": "kB", "kib": "KiB",
    "mb": "MB", "megabyte": "MB", "megabytes": "MB", "mib": "MiB", "mebibytes": "MiB",
    "gb": "GB", "gigabyte": "GB", "gigabytes": "GB", "gib": "GiB", "gibibytes": "GiB",
    "pct": "%", "percent": "%", "%": "%", "perc": "%", "percentage points": "%", "percentage point": "%", "pp": "%",
    "points": "%", "point": "%",  # "no more than 8 points of UAR"
    "usd": "USD", "dollar": "USD", "dollars": "USD", "cent": "¢", "cents": "¢",
    "mm": "mm", "millimetre": "mm", "millimetres": "mm", "millimeter": "mm", "millimeters": "mm",
    "cm": "cm", "centimetre": "cm", "centimetres": "cm", "centimeter": "cm", "centimeters": "cm",
    "day": "day", "days": "day", "week": "week", "weeks": "week",
    "j": "J", "joule": "J", "joules": "J", "mj": "mJ", "millijoule": "mJ", "millijoules": "mJ", "kj": "kJ",
    "wh": "Wh", "kwh": "kWh", "watt-hour": "Wh", "watt-hours": "Wh",
    "mw": "mW", "milliwatt": "mW", "milliwatts": "mW", "w": "W", "watt": "W", "watts": "W", "kw": "kW",
    "megawatt": "MW", "megawatts": "MW",
    "g": "g", "gram": "g", "grams": "g", "kg": "kg", "kilogram": "kg", "kilograms": "kg", "tonne": "t", "tonnes": "t",
    "m": "m", "metre": "m", "metres": "m", "meter": "m", "meters": "m", "km": "km", "kilometre": "km", "kilometres": "km",
    "kilometer": "km", "kilometers": "km",
    "t/ha": "t/ha", "tonnes per hectare": "t/ha", "tonnes/ha": "t/ha", "kg/ha": "kg/ha", "kilograms per hectare": "kg/ha",
}
_COMPOUND_UNITS = {("kg", "ha"): "kg/ha", ("t", "ha"): "t/ha"}  # rmse_kg_ha: kilograms per hectare
RATE_UNITS = {"second": "s", "sec": "s", "s": "s", "minute": "min", "min": "min", "hour": "h", "hr": "h", "h": "h",
              "day": "day", "week": "week", "month": "month"}  # "per <this>": a rate
_KEY_UNITS = {token: unit for token, unit in UNIT_TOKENS.items() if unit not in ("min", "h", "day", "week")}  # "min_recall"
_ITEM_COUNTS = {"1k": 1000.0, "k": 1000.0, "1000": 1000.0, "thousand": 1000.0, "1m": 1e6, "million": 1e6, "100": 100.0}  # cost_usd_per_1k
_TIME_UNITS = {"ms", "µs", "s", "min", "h", "day", "week"}
_SIZE_UNITS = {"kB", "KiB", "MB", "MiB", "GB", "GiB"}
_SPLIT_PREFIXES = {"val", "valid", "validation", "test", "holdout", "eval", "offline", "mean", "avg", "average", "overall"}
_LOWER_WORDS = {"error", "loss", "latency", "time", "duration", "size", "memory", "ram", "cost", "delay", "lag", "drift",
                "gap", "bias", "mb", "gb", "ms", "kb", "alarm", "alarms", "false", "misses", "rejection", "distance", "runtime"}


_OTHER_DIMENSIONS = {"USD": "money", "¢": "money", "mm": "length", "cm": "length", "m": "length", "km": "length",
                     "J": "energy", "mJ": "energy", "kJ": "energy", "Wh": "energy", "kWh": "energy",
                     "mW": "power", "W": "power", "kW": "power", "MW": "power", "g": "mass", "kg": "mass", "t": "mass",
                     "t/ha": "yield", "kg/ha": "yield"}


def unit_dimension(unit: str) -> str:
    return ("time" if unit in _TIME_UNITS else "size" if unit in _SIZE_UNITS else "percent" if unit == "%"
            else "rate" if unit.startswith("1/") else _OTHER_DIMENSIONS.get(unit, ""))


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


def _tokens(key: str) -> list[str]:
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
    tokens = _tokens(name)
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
    at_k = next((tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "at" and re.fullmatch(r"\d+(?:pct|percent|p)?", tokens[i + 1])), None)
    if at_k is None and re.search(r"@(\d+)", name):
        at_k = re.search(r"@(\d+)", name).group(1)
    counted = ("per", *_ITEM_COUNTS) if items != 1.0 else ()
    tokens = [ABBREVIATIONS.get(t, t) if t in _EXPANDED_IN_KINDS else t for t in tokens]  # gpu_mem_gib: GPU memory
    core = [t for t in tokens if t not in UNIT_TOKENS and not re.fullmatch(r"p\d{2,3}", t) and t != "at" and t != at_k
            and t not in _SPLIT_PREFIXES and not (per and t in ("per", per)) and t not in counted]
    whole = [t for t in tokens if t not in UNIT_TOKENS and not re.fullmatch(r"p\d{2,3}", t) and t != "at" and t != at_k
             and not (per and t in ("per", per)) and t not in counted]
    kind = _kind_of(whole) if _kind_of(whole) and " ".join(whole) in _KIND_BY_WORD else _kind_of(core)  # "average precision"
    if kind is None and percentile is not None and unit in _TIME_UNITS:
        kind = _KIND_BY_WORD["latency"]  # score_p99_ms: a percentile of a time is a latency
    if kind is None:
        higher = False if any(t in _LOWER_WORDS or t.endswith("error") for t in tokens) else None
        label = " ".join(core) or name
        own = MetricKind(label.replace(" ", "_"), label, bool(higher), (label,)) if core else None
        words = _key_words(name) + [word for word in (_kind_words(own, percentile, at_k) if own and (at_k or percentile) else [])
                                    if word not in _GENERIC_TOKENS]  # p90_err_m is not every "error"
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
    prefix = [t for t in tokens if t in _SPLIT_PREFIXES and t not in ("mean", "avg", "average", "overall")]
    if prefix:
        label = f"{prefix[0]} {label}"
    words = _own_top_k(_key_words(name) + _iou_words(kind, core) + _kind_words(kind, percentile, at_k), name)
    return MetricSpec(name, label, kind.higher_is_better, unit, kind.bounded, kind.decimals, kind.name, percentile,
                      tuple(dict.fromkeys(words)), items)


def _kind_of(core: list[str]) -> MetricKind | None:
    """The catalog kind the key's words name: the whole core first, then its longest run of words."""
    for length in range(len(core), 0, -1):
        for start in range(len(core) - length + 1):
            phrase = " ".join(core[start:start + length])
            if phrase in _KIND_BY_WORD:
                return _KIND_BY_WORD[phrase]
    return None


_AT_K_WORDS = {"ndcg", "mrr", "recall", "precision", "prec", "hit", "hitrate", "map"}  # "ndcg10": at 10 results


def _key_words(name: str) -> list[str]:
    spaced = " ".join(re.sub(r"^(\d+)([a-z]+)$", r"\1 \2", token) for token in _tokens(name))  # within_50m_rate: "50 m"
    written = [re.sub(r"\btop(\d+)\b", rf"top{sep}\1", spaced) for sep in ("-", " ")]  # top5 accuracy: "top-5 accuracy"
    return list(dict.fromkeys([name.lower(), spaced, *written]))


def _own_top_k(words: list[str], name: str) -> list[str]:
    """top5_accuracy is not named by the catalog's "top-1 accuracy": words of another top-k are not the key's."""
    own = re.search(r"top[-_ ]?(\d+)", name.lower())
    if not own:
        return words
    return [w for w in words if not (other := re.search(r"top[- ]?(\d+)", w)) or other.group(1) == own.group(1)]


_ENGLISH_SHORT_WORDS = {"a", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my", "no", "of",
                        "on", "or", "so", "to", "up", "us", "we", "and", "are", "but", "can", "for", "has", "its", "may",
                        "not", "our", "the", "was", "who", "all", "any", "new", "one", "per", "top", "use", "set", "run"}
_GENERIC_TOKENS = {"rate", "score", "error", "time", "model", "size", "test", "mean", "total", "count", "value", "metric",
                   "loss", "ratio", "per", "at", "avg", "max", "min", "top", "overall", "offline", "online", "valid", "holdout"}


# Short forms teams use in metric keys, for the word a sentence writes instead
ABBREVIATIONS = {"img": "image", "imgs": "images", "gen": "generation", "lat": "latency", "mem": "memory", "spk": "speaker",
                  "req": "request", "reqs": "requests", "resp": "response", "doc": "document", "docs": "documents",
                  "pred": "prediction", "preds": "predictions", "inf": "inference", "tok": "token", "toks": "tokens",
                  "seq": "sequence", "err": "error", "fcst": "forecast", "trn": "training", "util": "utilisation",
                  "calib": "calibration", "cnt": "count", "num": "number", "txn": "transaction", "cust": "customer",
                  "pvalue": "p-value", "pval": "p-value", "dcal": "d-calibration", "de": "german", "en": "english",
                  "fr": "french", "es": "spanish", "ped": "pedestrian", "sens": "sensitivity", "spec": "specificity"}


def _quantity_phrase(token: str) -> str | None:
    """A number with its unit inside a key ("50m", "5min", "10pct") as prose writes it: "50 m", "±5 minutes", "10%"."""
    found = re.fullmatch(r"(\d+)([a-z%]+)", token)
    if not found or found.group(2) not in UNIT_TOKENS:
        return None
    unit = UNIT_TOKENS[found.group(2)]
    spellings = sorted({word for word, same in UNIT_TOKENS.items() if same == unit}, key=len, reverse=True)
    return rf"(?:±|\+/-)?\s*{found.group(1)}\s*(?:{'|'.join(map(re.escape, spellings))})"


_EXPANDED_IN_KINDS = {"mem", "lat", "sens", "spec", "calib", "inf", "pred", "err"}  # short forms that name a kind


def _is_initialism(token: str) -> bool:
    """"ttfa", "mttr": a key word with no vowel where English needs one, read as the initials of a phrase."""
    return 2 <= len(token) <= 5 and token.isalpha() and token not in _ENGLISH_SHORT_WORDS and not re.search(r"[aeiou]", token[1:-1] or "x")


def _inflected(tokens: list[str]) -> str:
    """A regex for the key's words as prose writes them: "serve_p95_ms" also reads "serving p95"."""
    parts = []
    for token in tokens:
        stem = token[:-1] if token.endswith("e") and len(token) > 3 else token
        parts.append(re.escape(stem) + (r"(?:e|es|ed|ing)?" if stem != token else r"(?:s|es|ed|ing)?") if token.isalpha() else re.escape(token))
    return r"[\s_\-]+".join(parts)


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


@dataclass(frozen=True)
class MetricMention:
    start: int
    end: int
    keys: tuple[str, ...]  # several when the words fit several logged keys ("latency" with p50 and p95 logged)
    words: str
    partial: bool = False  # named by one word of the key ("voice" for voice_size_mb) or its initials, not its name


@lru_cache(maxsize=64)
def vocabulary_for(keys: frozenset[str], directions: tuple[tuple[str, bool], ...] = (), catalog_fallback: bool = False) -> MetricVocabulary:
    """One vocabulary per set of logged keys, built once per process (its pattern takes tens of milliseconds)."""
    return MetricVocabulary(keys, dict(directions), catalog_fallback=catalog_fallback)


class MetricVocabulary:
    """The metric keys a registry logs and every phrase that names them, for reading sentences of documents and answers."""

    def __init__(self, keys, directions: dict[str, bool] | None = None, *, catalog_fallback: bool = False):
        """`catalog_fallback`: words of catalog metrics no key logs name the catalog's own key ("recall" with no
        recall logged), so that a rule on a metric nobody logged fails every candidate instead of vanishing."""
        self.keys = tuple(sorted(set(keys)))
        directions = directions or {}
        specs = {key: metric_spec(key).with_direction(directions.get(key)) for key in self.keys}
        if catalog_fallback:
            logged = {spec.kind for spec in specs.values()}
            specs |= {kind.name: metric_spec(kind.name) for kind in KINDS if kind.name not in logged and kind.name not in specs
                      and kind.name not in _GENERIC_KINDS}
        self.specs = specs
        self.logged = frozenset(self.keys)
        phrases: dict[str, set[str]] = {}  # regex -> keys it names
        partial: set[str] = set()  # phrases that name a key by one of its words or its initials only: weak evidence
        for key, spec in self.specs.items():
            for word in spec.words or _key_words(key):
                for variant in spelled_both_ways(_normal(word)):
                    phrases.setdefault(re.escape(variant).replace(r"\ ", " "), set()).add(key)
            if key in self.logged:
                tokens = [t for t in _tokens(key) if t not in UNIT_TOKENS and t not in _SPLIT_PREFIXES]
                if tokens and all(t.isalpha() for t in tokens):
                    phrases.setdefault(_inflected(tokens), set()).add(key)
                    phrases.setdefault(_inflected([ABBREVIATIONS.get(t, t) for t in tokens]), set()).add(key)  # "median error"
                alpha = [t for t in tokens if t.isalpha()]
                if 2 <= len(alpha) <= 4 and len(alpha) == len(tokens):
                    acronym = "".join(t[0] for t in alpha)
                    if acronym not in _ENGLISH_SHORT_WORDS and acronym not in UNIT_TOKENS and not _KIND_BY_WORD.get(acronym):
                        phrases.setdefault(re.escape(acronym), set()).add(key)  # "NE" for normalized_entropy
                for token in tokens if len(tokens) > 1 else ():
                    token = ABBREVIATIONS.get(token, token)  # gen_ms_per_img: "per image"
                    if len(token) >= 4 and token.replace("-", "").isalpha() and token not in _GENERIC_TOKENS and not _KIND_BY_WORD.get(token):
                        for variant in spelled_both_ways(token):
                            phrases.setdefault(_inflected([variant]), set()).add(key)  # "batch" for batch_runtime_s
                            partial.add(_inflected([variant]))
                for before, token in zip([""] + tokens, tokens):
                    if quantity := _quantity_phrase(token):  # within_50m_rate: "within 50 m", share_within_5min: "±5 minutes"
                        phrase = (re.escape(before) + r"\s+" if before.isalpha() else "") + quantity
                        phrases.setdefault(phrase, set()).add(key)
                        partial.add(phrase)
                named_by = [t for t in tokens if t != "per"]
                if len(named_by) == 1 and _is_initialism(named_by[0]) and spec.kind is None:  # ttfa_ms: "time to first audio"
                    spelled_out = r"[\s\-]+".join(f"{letter}[a-z]*" for letter in named_by[0])
                    phrases.setdefault(spelled_out, set()).add(key)
                    partial.add(spelled_out)
        for phrase, keys in phrases.items():  # a phrase a logged key answers to is that key's, not the catalog's
            if keys & self.logged and keys - self.logged:
                keys -= keys - self.logged
        # A word several keys share ("latency", "auc", "batch") names all of them; a specific one names one.
        self._patterns = sorted(phrases, key=_literal_length, reverse=True)
        self._keys_of = [tuple(sorted(phrases[p])) for p in self._patterns]
        self._partial = [p in partial for p in self._patterns]
        self._pattern = re.compile(
            r"(?<![\w@])(?:" + "|".join(f"(?P<p{i}>{p})" for i, p in enumerate(self._patterns)) + r")(?![\w@])"
        ) if phrases else None
        self._seen: dict[str, list[MetricMention]] = {}

    def spec(self, key: str) -> MetricSpec:
        return self.specs.get(key) or metric_spec(key)

    def mentions(self, text: str) -> list[MetricMention]:
        """Every place the text names a metric, longest phrase first, in order of position (remembered per text)."""
        if self._pattern is None:
            return []
        if text in self._seen:
            return self._seen[text]
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[text] = found = self._find(text)
        return found

    def _find(self, text: str) -> list[MetricMention]:
        normal, positions = _normal_with_positions(text)
        found = []
        for match in self._pattern.finditer(normal):
            start, end = positions[match.start()], positions[match.end() - 1] + 1
            written = text[start:end]
            if len(written) <= 3 and written.isalpha() and written.islower() and written not in self.logged:
                continue  # "der" is an article, "DER" the diarization error rate; a logged key "mae" is itself
            index = int(match.lastgroup[1:])
            found.append(MetricMention(start, end, self._keys_of[index], text[start:end], self._partial[index]))
        return found

    def keys_of_kind(self, kind: str) -> list[str]:
        """The logged keys of one catalog kind."""
        return [key for key in self.keys if self.specs[key].kind == kind]


def _literal_length(pattern: str) -> int:
    """How long a phrase pattern is as written text, so that the longest phrase is tried first."""
    return len(re.sub(r"\(\?:[^)]*\)\??|\\[sS](?:\+|\*)?|[\\\[\]+*?]", "", pattern)) + pattern.count(r"[\s_\-]+")


def _normal(text: str) -> str:
    return re.sub(r"[\s_`*]+", " ", re.sub(r"[‑–—]", "-", text.lower())).strip()


def _normal_with_positions(text: str) -> tuple[str, list[int]]:
    """Lower case with runs of spaces, underscores, backticks and emphasis as one space, and where each character came from."""
    out, positions, space = [], [], False
    for index, char in enumerate(text):
        if char.isspace() or char in "_`*":
            if not space and out:
                out.append(" ")
                positions.append(index)
            space = True
            continue
        space = False
        out.append("-" if char in "‑–—" else char.lower())
        positions.append(index)
    return "".join(out), positions
