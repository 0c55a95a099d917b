"""The unseen use cases of tests/rule_cases/: loading them, writing their registry, and a reference decision.

Each folder of tests/rule_cases/ is one use case: a guideline in plain prose (guideline.md or guideline.txt) and a
case.yaml with the registered models, the expected recommendation and the rules a careful reader takes from the
guideline (tests/rule_cases/README.md describes the fields). Nothing here reads the product's extraction: the
reference decision below works from the hand-written `expected_rules`, so the data set can check its own
arithmetic without the product.
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric

CASES_DIR = Path(__file__).parent / "rule_cases"
COMPARISONS = (">=", "<=", ">", "<")
GUIDELINE_NAMES = ("guideline.md", "guideline.txt", "guideline.html")


@dataclass(frozen=True)
class CaseModel:
    name: str
    family: str
    description: str
    metrics: dict[str, float]
    extra_tags: dict[str, str] = field(default_factory=dict)

    def tags(self, case: RuleCase) -> dict[str, str]:
        """The registered model's tags; `extra_tags` may move a decoy model to another use case."""
        return {"use_case": case.use_case, "task": case.task, "family": self.family, **self.extra_tags}


@dataclass(frozen=True)
class ExpectedRule:
    metric: str
    comparison: str
    threshold: float
    hard: bool

    def holds_for(self, value: float | None) -> bool:
        """A metric the model did not log cannot be shown to meet the rule, so the rule fails."""
        if value is None or not math.isfinite(value):
            return False
        return {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}[self.comparison](value, self.threshold)

    @property
    def label(self) -> str:
        return f"{self.metric} {self.comparison} {self.threshold:g} ({'hard' if self.hard else 'soft'})"


@dataclass(frozen=True)
class Ranking:
    metric: str
    higher_is_better: bool


@dataclass(frozen=True)
class RuleCase:
    name: str  # the folder name, also the test id
    folder: Path
    guideline_path: Path
    use_case: str
    task: str
    question: str
    models: tuple[CaseModel, ...]
    expected_recommendation: str | None
    expected_rules: tuple[ExpectedRule, ...]
    priority: Ranking | None
    tie_breaker: Ranking | None
    traps: tuple[str, ...]
    batch: int = 1  # 1: the set the extractor was tuned on; 2: the held-out set written after it

    @property
    def candidates(self) -> tuple[CaseModel, ...]:
        """The models registered for this case's use case (decoys tagged for another use case left out)."""
        return tuple(m for m in self.models if m.tags(self)["use_case"] == self.use_case)

    @property
    def hard_rules(self) -> tuple[ExpectedRule, ...]:
        return tuple(rule for rule in self.expected_rules if rule.hard)


def _ranking(raw) -> Ranking | None:
    if raw is None:
        return None
    return Ranking(str(raw["metric"]), bool(raw["higher_is_better"]))


def load_case(folder: Path) -> RuleCase:
    raw = yaml.safe_load((folder / "case.yaml").read_text(encoding="utf-8"))
    guidelines = [folder / name for name in GUIDELINE_NAMES if (folder / name).is_file()]
    if len(guidelines) != 1:
        raise ValueError(f"{folder.name}: expected exactly one of {GUIDELINE_NAMES}, found {[p.name for p in guidelines]}")
    rules = []
    for rule in raw.get("expected_rules") or []:
        if rule["comparison"] not in COMPARISONS:
            raise ValueError(f"{folder.name}: comparison {rule['comparison']!r} is not one of {COMPARISONS}")
        rules.append(ExpectedRule(str(rule["metric"]), rule["comparison"], float(rule["threshold"]), bool(rule["hard"])))
    models = tuple(
        CaseModel(str(m["name"]), str(m["family"]), str(m.get("description") or ""),
                  {str(k): float(v) for k, v in (m.get("metrics") or {}).items()},
                  {str(k): str(v) for k, v in (m.get("extra_tags") or {}).items()})
        for m in raw["models"]
    )
    return RuleCase(
        name=folder.name,
        folder=folder,
        guideline_path=guidelines[0],
        use_case=str(raw["use_case"]),
        task=str(raw["task"]),
        question=str(raw["question"]).strip(),
        models=models,
        expected_recommendation=raw.get("expected_recommendation"),
        expected_rules=tuple(rules),
        priority=_ranking(raw.get("priority")),
        tie_breaker=_ranking(raw.get("tie_breaker")),
        traps=tuple(str(t) for t in raw.get("traps") or []),
        batch=int(raw.get("batch", 1)),
    )


def load_cases(cases_dir: Path = CASES_DIR) -> list[RuleCase]:
    """Every case folder (one holding a case.yaml), in folder-name order."""
    return [load_case(folder) for folder in sorted(cases_dir.iterdir()) if (folder / "case.yaml").is_file()]


def register_case(settings, case: RuleCase) -> MlflowClient:
    """Write the case's models to the workspace's MLflow the way a model team does: one run per model holding its
    metrics, a registered model tagged `use_case`/`task`/`family`, and a version pointing at the run's artifacts.

    Like tests/test_candidates.py's `Registry`, only client calls (no fluent API), an experiment whose artifacts
    live in the workspace, and a version `source` that is an artifact location rather than a `models:/` URI
    (MLflow's sqlite registry resolves those with the process-wide tracking URI). No model file is logged: the
    product reads only tags, descriptions and run metrics."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    artifacts = (settings.workspace / "mlartifacts").resolve()
    experiment_id = client.create_experiment(f"rule-case-{case.name}-{time.monotonic_ns()}", artifact_location=artifacts.as_uri())
    for model in case.models:
        run = client.create_run(experiment_id, run_name=model.name, tags={"family": model.family})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        if model.metrics:
            client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in model.metrics.items()])
        client.set_terminated(run_id)
        client.create_registered_model(model.name, tags=model.tags(case), description=model.description)
        client.create_model_version(model.name, source=run.info.artifact_uri, run_id=run_id)
    return client


@dataclass(frozen=True)
class ReferenceDecision:
    recommended: str | None
    passing: tuple[str, ...]  # names passing every expected hard rule, best on the priority metric first
    failures: dict[str, tuple[str, ...]]  # name -> labels of the hard rules it fails


def reference_decision(case: RuleCase) -> ReferenceDecision:
    """The decision as the case's README states it: every expected hard rule must hold (a missing metric fails),
    then the best on the priority metric wins, the tie-breaker deciding only an exact tie. Without a priority
    metric nothing is recommended (nothing says how to choose)."""
    failures = {m.name: tuple(r.label for r in case.hard_rules if not r.holds_for(m.metrics.get(r.metric)))
                for m in case.candidates}
    passing = [m for m in case.candidates if not failures[m.name]]

    def key(model: CaseModel, ranking: Ranking | None) -> float:
        value = model.metrics.get(ranking.metric) if ranking else None
        if value is None:
            return math.inf
        return -value if ranking.higher_is_better else value

    passing.sort(key=lambda m: (key(m, case.priority), key(m, case.tie_breaker), m.name))
    recommended = None
    if case.priority and passing and math.isfinite(key(passing[0], case.priority)):
        recommended = passing[0].name
    return ReferenceDecision(recommended, tuple(m.name for m in passing), failures)
