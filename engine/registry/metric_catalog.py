"""What each candidate metric means, whatever key a team logs it under: the catalog of common ML metrics.

The decision, the prompt, the composed answer, the verifier and the rule extractor read metric keys through
`metric_spec` (engine.registry.metric_keys) and `MetricVocabulary` (engine.registry.metric_vocabulary), so
"higher is better", "ms" and "95th percentile latency" are decided in one place. Both build on the tables here:
the kinds of metric the field knows (`KINDS`), their units and the spellings text uses. They are kept apart from
the code that reads keys and sentences so that teaching the product a new metric means editing a table, not a
parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache


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
    MetricKind("ndcg", "NDCG", True, ("ndcg", "normalized discounted cumulative gain", "normalised discounted cumulative gain"),
               bounded=True),
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
    MetricKind("model_size", "model size", False, ("model size", "artefact size", "artifact size", "serialized size", "checkpoint size",
                                                   "checkpoint", "serialised size", "serialized model", "serialised model", "file size",
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


KIND_BY_WORD = {word: kind for kind in KINDS for word in (kind.name.replace("_", " "), *kind.words)}

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
RATE_UNITS = {"second": "s", "sec": "s", "s": "s", "minute": "min", "min": "min", "hour": "h", "hr": "h", "h": "h",
              "day": "day", "week": "week", "month": "month"}  # "per <this>": a rate
TIME_UNITS = {"ms", "µs", "s", "min", "h", "day", "week"}
_SIZE_UNITS = {"kB", "KiB", "MB", "MiB", "GB", "GiB"}


_OTHER_DIMENSIONS = {"USD": "money", "¢": "money", "mm": "length", "cm": "length", "m": "length", "km": "length",
                     "J": "energy", "mJ": "energy", "kJ": "energy", "Wh": "energy", "kWh": "energy",
                     "mW": "power", "W": "power", "kW": "power", "MW": "power", "g": "mass", "kg": "mass", "t": "mass",
                     "t/ha": "yield", "kg/ha": "yield"}


def unit_dimension(unit: str) -> str:
    return ("time" if unit in TIME_UNITS else "size" if unit in _SIZE_UNITS else "percent" if unit == "%"
            else "rate" if unit.startswith("1/") else _OTHER_DIMENSIONS.get(unit, ""))
