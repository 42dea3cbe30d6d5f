"""An error-rate experiment counts each arm's requests and errors from its model servers' /metrics, read
each tick since the last read, and decides for the arm that fails less."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gallery_common.contracts.serving_metrics import Scrape, SeriesKey, ServingCounts, ServingPage
from gallery_common.db import make_engine
from gallery_common.errors import Unavailable
from gallery_common.events import ModelExperimentConcluded, Payload
from gallery_deployer.deployer.migrations import upgrade
from gallery_deployer.deployer.records import DeploymentRecord, DeploymentStore, Stage
from gallery_deployer.experiments.controller import ExperimentPlan, Experiments
from gallery_deployer.experiments.records import ExperimentStatus, ExperimentStore
from gallery_deployer.gateway.routes import ModelRoute


class Servers:
    """What each version's model server has counted so far (cumulative, as a /metrics page is)."""

    def __init__(self) -> None:
        self.counts = {3: ServingCounts(), 4: ServingCounts()}

    def serve(self, version: int, ok: int, errors: int) -> None:
        self.counts[version].add(ServingCounts(requests={"ok": float(ok), "error": float(errors)}))

    async def read_metrics(self, model: str, version: int) -> Scrape:
        page = ServingPage({SeriesKey(model, str(version), "fp32"): self.counts[version].copy()})
        return Scrape({f"http://server-v{version}": page})


class Deployer(Servers):
    """The deployer controller as an experiment sees it: its records, its lock, its routes and the settle."""

    def __init__(self, store: DeploymentStore) -> None:
        super().__init__()
        self.store = store
        self.route_overlay: Any = None
        self.routes_written = 0
        self.settled: list[tuple[int, str]] = []
        self.refusals = 1  # the first settle fails: the experiment must stay running and conclude on a later look
        self._lock = asyncio.Lock()

    def lock(self, model: str) -> asyncio.Lock:
        return self._lock

    async def sync_routes(self, model: str) -> ModelRoute | None:
        self.routes_written += 1
        return None

    async def settle(self, model: str, version: int, reason: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise Unavailable("the registry is down")
        self.settled.append((version, reason))


def test_an_error_rate_experiment_decides_from_the_servers_counts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'deployer.db'}")
    upgrade(engine)
    deployments = DeploymentStore(engine)
    for version, stage in ((3, Stage.production), (4, Stage.canary)):
        deployments.save(
            DeploymentRecord(
                id=f"iris-v{version}",
                model="iris",
                version=version,
                artifact_uri="file:///m",
                artifact_sha256="0" * 64,
                stage=stage,
                traffic_percent=50.0,
            )
        )
    deployer = Deployer(deployments)
    published: list[Payload] = []

    async def publish(payload: Payload, event_id: str) -> None:
        published.append(payload)

    async def run() -> None:
        experiments = Experiments(deployer, ExperimentStore(engine), publish)  # type: ignore[arg-type]
        deployer.serve(3, ok=5000, errors=0)  # before the start: not part of the experiment
        deployer.serve(4, ok=5000, errors=0)
        plan = ExperimentPlan(model="iris", versions=[3, 4], split=[50.0, 50.0], metric="error_rate", mde=0.02)
        await experiments.start(plan)
        for _ in range(40):
            deployer.serve(3, ok=190, errors=10)  # 5 % errors
            deployer.serve(4, ok=198, errors=2)  # 1 %
            await experiments.tick()
            if not experiments._running:
                break

    asyncio.run(run())

    assert deployer.refusals == 0
    record = ExperimentStore(engine).all()[0]
    assert record.status == ExperimentStatus.concluded and record.winner == 4
    assert record.figures(3).n == record.figures(4).n <= 40 * 200  # the 5,000 before the start are not counted
    assert record.figures(3).total / record.figures(3).n == 0.05
    assert deployer.settled and deployer.settled[0][0] == 4 and "error_rate effect" in deployer.settled[0][1]
    concluded = [p for p in published if isinstance(p, ModelExperimentConcluded)]
    assert len(concluded) == 1 and concluded[0].winner == 4 and concluded[0].effect < 0
