"""A small spam project, a retrain spec and fake evidence providers for the loop's tests."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

from loopstack import Project
from loopstack.experiments.guardrails import Guardrail
from loopstack.loop.core import ExperimentPlan, Goal, LiveChecks, LoopPolicy
from loopstack.loop.evidence import EvidenceProvider, ManualClock
from loopstack.loop.pipeline import RetrainPipeline
from loopstack.loop.spec import LoopSpec
from loopstack.registry.gate import ModelValidationGate
from tests.meta.helpers import use_metadata
from tests.training.conftest import FEATURES, T0, author, author_stats, comments, labels_for

START = T0 + timedelta(days=23)   # the data covers T0 .. T0 + 21 days


def make_project(root: Path, meta_url: str | None = None) -> Project:
    """The spam project with 1200 comments and labels.parquet; metadata at `meta_url` (default: SQLite file)."""
    from loopstack.demo.data import generate_comments
    events = [{"author_id": c["author_id"], "is_spam": c["is_spam"], "n_urls": c["n_urls"], "ts": c["ts"]}
              for c in generate_comments(n=1200, n_authors=50, days=21, spam_rate=0.06, seed=3, start=T0)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "loopstack.yaml").write_text("name: loop-test\n")   # every other setting: the defaults
    use_metadata(root, meta_url)
    p = Project.init(root, example=False)
    p.apply([author, comments, author_stats])
    assert p.log.append("comments", events).rejected == 0
    (root / "labels.parquet").parent.mkdir(exist_ok=True)
    labels_for(events).to_parquet(root / "labels.parquet")
    return p


def policy(**kw) -> LoopPolicy:
    plan = ExperimentPlan(goal=Goal("reports_caught", tau=0.02, alpha=0.05),
                          guardrails=(Guardrail("latency_ms", higher_is_better=False, tolerance=0.05),),
                          treatment_percent=50, max_minutes=24 * 60)
    return LoopPolicy(experiment=plan, shadow=LiveChecks(min_requests=1000, max_minutes=60),
                      canary=LiveChecks(min_requests=500, max_minutes=60), poll_seconds=600, **kw)


def spec(project: Project, **kw) -> LoopSpec:
    from sklearn.linear_model import LogisticRegression
    return LoopSpec(model="spam", labels=str(project.root / "labels.parquet"), features=FEATURES,
                    estimator=lambda: LogisticRegression(max_iter=200),
                    gate=ModelValidationGate(absolute={"roc_auc": 0.6}, relative={"guarded": {"roc_auc": 0.02}}),
                    policy=kw.pop("policy", None) or policy(), label_delay="24h", **kw)


class FakeEvidence(EvidenceProvider):
    """Cumulative numbers that grow with each look. Goal: share of spam reports caught (proportion);
    guardrail: latency (mean, variance)."""

    def __init__(self, *, per_look: int = 400, error_rate: float = 0.001, p99_ms: float = 40.0,
                 score_psi: float = 0.03, goal: tuple[float, float] = (0.10, 0.12),
                 latency: tuple[float, float] = (50.0, 50.0), users_per_look: int = 2000) -> None:
        self.per_look, self.error_rate, self.p99_ms, self.score_psi = per_look, error_rate, p99_ms, score_psi
        self.goal, self.latency, self.users_per_look = goal, latency, users_per_look
        self.calls: Counter = Counter()

    def shadow(self, model, version):
        self.calls["shadow"] += 1
        return {"requests": self.per_look * self.calls["shadow"], "error_rate": self.error_rate,
                "p99_ms": self.p99_ms, "score_psi": self.score_psi}

    def canary(self, model, version):
        self.calls["canary"] += 1
        return {"requests": self.per_look * self.calls["canary"], "error_rate": self.error_rate,
                "p99_ms": self.p99_ms, "score_psi": self.score_psi}

    def experiment(self, model, control, treatment):
        self.calls["experiment"] += 1
        n = self.users_per_look * self.calls["experiment"]

        def arm(rate, lat):
            return {"users": n, "metrics": {"reports_caught": {"successes": round(rate * n)},
                                            "latency_ms": {"mean": lat, "var": 100.0}}}
        return {"control": arm(self.goal[0], self.latency[0]), "treatment": arm(self.goal[1], self.latency[1])}


def pipeline(project: Project, evidence=None, clock=None, **kw) -> RetrainPipeline:
    return RetrainPipeline(project, spec(project), evidence or FakeEvidence(), clock=clock or ManualClock(START), **kw)
