"""The reconcile loop: read desired state from the store and observed state from the runtime,
plan the difference with :func:`terrace.engine.planner.plan`, carry the plan out. Level-
triggered: a pass starts from what is, never from what the engine remembers, so a restarted
engine (or one that crashed half-way through a plan) simply converges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from terrace.engine.deploy import deployed_runs, roll_back
from terrace.engine.desired import ServiceRun, render_env
from terrace.engine.health import Health, HealthChecks
from terrace.engine.pipeline import Pipeline
from terrace.engine.planner import Backoff, Plan, Start, failed_rollouts, plan
from terrace.engine.plans import PlanTable
from terrace.engine.sleep import Sleepers
from terrace.engine.state import DesiredService, ObservedReplica, Phase, ServiceKey
from terrace.engine.traffic import Served, Traffic
from terrace.runtimes.base import Endpoint, Kind, Replica, ReplicaSpec, Runtime
from terrace.spec.landscape import Landscape
from terrace.spec.landscape_parser import parse_landscape
from terrace.store.db import Database
from terrace.store.tables import Deployment, Domain, Workspace
from terrace.store.workspaces import env_vars
from terrace.vault import Vault

__all__ = ["Engine", "PassReport", "ReplicaStatus", "logs_dir"]

log = logging.getLogger("terrace.engine")

IDLE_CHECK_INTERVAL = 1.0
"""How often the router is asked how long each service has been idle (for ``sleepAfter``)."""


def logs_dir(home: Path, workspace_id: int) -> Path:
    return home / "logs" / f"w{workspace_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatus:
    """One replica as the API shows it."""

    id: str
    service: str
    slot: int
    revision: str
    state: str
    restarts: int
    started_at: float
    last_exit: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PassReport:
    """What one pass did, and what it cost the engine (for the benchmark and the logs)."""

    desired: int
    replicas: int
    healthy: int
    started: int
    stopped: int
    cpu_seconds: float
    wall_seconds: float


@dataclass(slots=True)
class _Desired:
    runs: list[ServiceRun] = field(default_factory=list)
    landscapes: dict[int, Landscape] = field(default_factory=dict)
    deployments: dict[int, int] = field(default_factory=dict)
    """Per workspace, its active deployment's id."""
    domains: dict[int, tuple[str, ...]] = field(default_factory=dict)


class Engine:
    """One per installation (``terrace up`` and ``terrace server`` run it in-process)."""

    def __init__(
        self,
        *,
        db: Database,
        vault: Vault,
        runtime: Runtime,
        home: Path,
        plans: PlanTable,
        backoff: Backoff | None = None,
        check_interval: float = 1.0,
        startup_timeout: float = 120.0,
        grace: float = 10.0,
        poll_interval: float = 2.0,
        traffic: Traffic | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.db, self.vault, self.runtime, self.home, self.plans = db, vault, runtime, home, plans
        self.backoff = backoff or Backoff()
        self.check_interval = check_interval
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.poll_interval = poll_interval
        self.traffic = traffic
        self.drain_timeout = drain_timeout
        self._health = HealthChecks(
            runtime,
            check_interval=check_interval,
            startup_timeout=startup_timeout,
            on_change=self._nudge,
        )
        self._desired: _Desired | None = None
        self._desired_read_at = 0.0
        self._desired_stale = True
        self._served: tuple[object, ...] | None = None
        self._sleepers = Sleepers()
        self._idle_checked = 0.0
        self._last_exit: dict[tuple[ServiceKey, int], str] = {}
        self._published: dict[int, dict[str, Endpoint]] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        """Replicas out of the balancers, finishing their requests in flight before they are
        stopped (a task each pass that stops some): passes go on meanwhile and plan without
        them, so a 30 s request on an old replica holds up no other service's start or wake."""
        self._parsed: dict[int, Landscape] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.status: dict[int, list[ReplicaStatus]] = {}
        """Per workspace, its replicas after the last pass (read by the API from any thread)."""
        self.on_pass: list[Callable[[PassReport], None]] = []
        self.last_report: PassReport | None = None
        self.recovered = asyncio.Event()
        """Set once :meth:`run` has dealt with what an earlier engine left (stages it was
        running are aborted, their steps stopped): from then on a stage may start."""
        self.pipeline = Pipeline(db=db, runtime=runtime, home=home)

    # --- driving ------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed (a deploy, a scale, an exit): read the store and plan again now.
        Any thread."""
        self._desired_stale = True
        self._nudge()

    def _nudge(self) -> None:
        """Plan again now, from the desired state the engine has (nothing in the store
        changed: a replica got healthy, a request woke a service). Any thread."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Reconcile until :meth:`stop` (or cancellation)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.pipeline.attach(self._loop)
        await self.pipeline.recover()
        if removed := await self.runtime.sweep():
            log.warning("removed what a crash left behind: %s", ", ".join(removed))
        self.recovered.set()
        try:
            while not self._stopping:
                self._wake.clear()
                began = time.monotonic()
                try:
                    wake_at = await self.reconcile()
                except Exception:
                    log.exception("reconcile pass failed; trying again")
                    wake_at = time.monotonic() + self.poll_interval
                ended = time.monotonic()
                delay = max(0.0, min(wake_at, ended + self.poll_interval) - ended)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                # Passes at least as far apart as the last one took: however often replicas
                # get healthy (100 starting: a pass each), passes take at most half the
                # engine's time; a wake's pass takes milliseconds, so it hardly waits.
                if (gap := ended + (ended - began) - time.monotonic()) > 0 and not self._stopping:
                    await asyncio.sleep(gap)
        finally:
            await self._health.close()
            await self._stop_retiring()

    def stop(self) -> None:
        self._stopping = True
        self.poke()

    def wake(self, workspace_id: int, service: str) -> None:
        """A request waits for a sleeping service: start it now. Any thread."""
        if self._loop is None:
            return

        def wake() -> None:
            key = ServiceKey(workspace_id, service)
            if self._sleepers.wake(key, time.monotonic()):
                log.info("waking %s: a request waits for it", key)
                if self._wake is not None:
                    self._wake.set()

        self._loop.call_soon_threadsafe(wake)

    @property
    def asleep(self) -> frozenset[ServiceKey]:
        """The services stopped for having had no request for their ``sleepAfter``."""
        return frozenset(self._sleepers.asleep)

    async def stop_everything(self) -> None:
        """Stop every replica of this installation (``terrace up`` on Ctrl-C)."""
        await self._stop_retiring()
        replicas = await self.runtime.replicas()
        await asyncio.gather(*(self.runtime.stop(r.id, grace=self.grace) for r in replicas))
        for workspace_id in await self.runtime.landscapes() | set(self._published):
            await self.runtime.forget_landscape(workspace_id)
        self._published.clear()

    # --- one pass -----------------------------------------------------------------------------

    async def reconcile(self) -> float:
        """One pass; returns when (monotonic) the next pass is due at the latest."""
        cpu0, wall0 = time.process_time(), time.monotonic()
        desired = await self._desired_state()
        runs = {run.key: run for run in desired.runs}
        wanted = [self._sleepers.wanted(run.desired) for run in desired.runs]
        replicas = await self._serving_replicas()
        now = time.monotonic()
        await self._health.check(replicas, runs, now)
        observed = [self._observed(r) for r in replicas]
        if await self._roll_back(wanted, observed, desired):
            return time.monotonic()  # the desired state changed: plan again from it now
        todo = plan(wanted, observed, now=now, backoff=self.backoff)
        stopping = {s.replica_id for s in todo.stops}
        # Traffic first: the replicas about to stop leave the balancers, and (in the background)
        # the requests in flight on them finish, before they get SIGTERM.
        await self._publish(replicas, runs, stopping, desired)
        await self._carry_out(todo, replicas, runs)
        after = await self._serving_replicas()
        if todo.starts:  # watch the new replicas from now on, not from the next pass
            await self._health.check(after, runs, time.monotonic())
        if todo.starts or todo.stops:
            await self._publish(after, runs, set(), desired)
        self._snapshot(after)
        report = PassReport(
            desired=sum(run.replicas for run in desired.runs),
            replicas=len(after),
            healthy=sum(1 for r in after if self._health.phase(r.id) is Phase.HEALTHY),
            started=len(todo.starts),
            stopped=len(todo.stops),
            cpu_seconds=time.process_time() - cpu0,
            wall_seconds=time.monotonic() - wall0,
        )
        self.last_report = report
        for listener in self.on_pass:
            listener(report)
        # Last: asking how idle services are takes milliseconds that a pass which starts or
        # publishes a woken service must not wait for.
        if await self._sleep_idle(runs):
            return time.monotonic()  # something fell asleep: plan again from that now
        return self._next_pass(todo, after)

    def _next_pass(self, todo: Plan, replicas: list[Replica]) -> float:
        now = time.monotonic()
        due = now + self.check_interval
        if todo.wake_at is not None:
            due = min(due, todo.wake_at)
        if any(self._health.unwatched(r.id) for r in replicas):
            due = min(due, now + 0.05)  # something is coming up unwatched: look again soon
        return due

    # --- desired state --------------------------------------------------------------------------

    async def _desired_state(self) -> _Desired:
        """The desired state as the store has it: read again when :meth:`poke` said it changed
        (this installation's API does), else at most ``check_interval`` old (another process
        may have written it). A read takes milliseconds a wake should not wait for."""
        now = time.monotonic()
        if (
            self._desired is None
            or self._desired_stale
            or now - self._desired_read_at >= self.check_interval
        ):
            self._desired_stale = False  # a poke during the read marks it stale again
            self._desired = await asyncio.to_thread(self._read_desired)
            self._desired_read_at = now
        return self._desired

    def _read_desired(self) -> _Desired:
        desired = _Desired()
        with self.db.session() as session:
            rows = session.execute(
                select(Deployment, Workspace)
                .join(Workspace, Workspace.id == Deployment.workspace_id)
                .where(Deployment.active.is_(True))
            ).all()
            for deployment, workspace in rows:
                landscape = self._landscape(deployment)
                if landscape is None:
                    continue
                desired.landscapes[workspace.id] = landscape
                desired.deployments[workspace.id] = deployment.id
                desired.runs += deployed_runs(
                    session,
                    workspace=workspace,
                    deployment=deployment,
                    landscape=landscape,
                    vault=self.vault,
                    plans=self.plans,
                )
                desired.domains[workspace.id] = tuple(
                    session.scalars(
                        select(Domain.name)
                        .where(Domain.workspace_id == workspace.id)
                        .order_by(Domain.name)
                    )
                )
        return desired

    async def _sleep_idle(self, runs: Mapping[ServiceKey, ServiceRun]) -> bool:
        """Put to sleep each service with ``sleepAfter`` that has had no request for that long
        (nor since it last woke). True when one fell asleep."""
        sleepy = {k: r.service.sleep_after for k, r in runs.items() if r.service.sleep_after}
        self._sleepers.forget_all_but(sleepy)
        now = time.monotonic()
        if self.traffic is None or not sleepy or now - self._idle_checked < IDLE_CHECK_INTERVAL:
            return False
        self._idle_checked = now
        idle = await self.traffic.idle()
        # Calls by name from the landscape's own replicas count as use too.
        for ws in {key.workspace_id for key in sleepy}:
            for service, count in (await self.runtime.connections(ws)).items():
                self._sleepers.count_connections(ServiceKey(ws, service), count, now)
        asleep = self._sleepers.fall_asleep(sleepy, idle, now)
        for key in asleep:
            log.info("%s had no request for %.0f s: sleeping", key, sleepy[key])
        return bool(asleep)

    async def _roll_back(
        self, wanted: list[DesiredService], observed: list[ObservedReplica], desired: _Desired
    ) -> bool:
        """Undo the rollouts whose new revision keeps failing while the old one serves."""
        failed = failed_rollouts(wanted, observed)
        done = False
        for replica in failed:
            ws = replica.key.workspace_id
            deployment = desired.deployments.get(ws)
            health = self._health.get(replica.id)
            why = (health.reason if health else None) or replica.phase.value
            reason = (
                f"service {replica.key.service}: revision {replica.revision} failed "
                f"({why}, {replica.restarts + 1} time{'s' if replica.restarts else ''}); "
                "rolled back to the previous deployment, which kept serving"
            )
            if deployment is not None and await asyncio.to_thread(
                self._roll_back_in_store, ws, deployment, reason
            ):
                log.warning("workspace %s: %s", ws, reason)
                desired.deployments.pop(ws)
                self._desired_stale = True
                done = True
        return done

    def _roll_back_in_store(self, workspace_id: int, deployment_id: int, reason: str) -> bool:
        with self.db.session() as session:
            workspace = session.get(Workspace, workspace_id)
            return workspace is not None and roll_back(session, workspace, deployment_id, reason)

    def _landscape(self, deployment: Deployment) -> Landscape | None:
        cached = self._parsed.get(deployment.id)
        if cached is None:
            try:
                cached = parse_landscape(
                    deployment.source, file=deployment.file, profile=deployment.profile
                ).value
            except Exception:
                log.exception("deployment %s cannot be read back", deployment.id)
                return None
            self._parsed[deployment.id] = cached
        return cached

    def _observed(self, replica: Replica) -> ObservedReplica:
        health = self._health.get(replica.id)
        assert health is not None  # looked at in this pass
        return ObservedReplica(
            id=replica.id,
            key=ServiceKey(replica.workspace_id, replica.name),
            slot=replica.slot,
            revision=replica.revision,
            phase=health.phase,
            restarts=replica.restarts,
            changed_at=health.changed_at,
        )

    # --- acting ---------------------------------------------------------------------------------

    async def _carry_out(
        self, todo: Plan, replicas: list[Replica], runs: Mapping[ServiceKey, ServiceRun]
    ) -> None:
        by_id = {r.id: r for r in replicas}
        for stop in todo.stops:
            replica = by_id.get(stop.replica_id)
            health = self._health.get(stop.replica_id)
            if replica is not None and health is not None and health.reason is not None:
                key = (ServiceKey(replica.workspace_id, replica.name), replica.slot)
                self._last_exit[key] = health.reason
            log.info("stopping %s: %s", stop.replica_id, stop.reason)
        if todo.stops:
            ids = [s.replica_id for s in todo.stops]
            task = asyncio.create_task(self._retire(ids))
            self._retiring.update(dict.fromkeys(ids, task))
        starting = {s.key.workspace_id: runs[s.key].team_id for s in todo.starts}
        inputs = await asyncio.to_thread(self._env_inputs, starting) if starting else {}
        results = await asyncio.gather(
            *(self._start(s, runs[s.key], *inputs[s.key.workspace_id]) for s in todo.starts),
            return_exceptions=True,
        )
        for start, result in zip(todo.starts, results, strict=True):
            if isinstance(result, BaseException):
                log.error("could not start %s slot %s: %s", start.key, start.slot, result)
                self._last_exit[(start.key, start.slot)] = f"could not start: {result}"

    async def _serving_replicas(self) -> list[Replica]:
        """The service replicas a pass plans with: all but those retiring."""
        return [
            r
            for r in await self.runtime.replicas()
            if r.kind is Kind.SERVICE and r.id not in self._retiring
        ]

    async def _retire(self, replica_ids: list[str]) -> None:
        """Let the requests in flight on these replicas (already out of the balancers) finish,
        at most ``drain_timeout``, then stop them and plan again."""
        try:
            if self.traffic is not None:
                await self.traffic.drain(replica_ids, timeout=self.drain_timeout)
            results = await asyncio.gather(
                *(self.runtime.stop(r, grace=self.grace) for r in replica_ids),
                return_exceptions=True,
            )
            for replica_id, result in zip(replica_ids, results, strict=True):
                if isinstance(result, Exception):
                    log.error("could not stop %s: %s", replica_id, result)
        finally:
            for replica_id in replica_ids:
                self._retiring.pop(replica_id, None)
            self._nudge()

    async def _stop_retiring(self) -> None:
        """Cut the drains short (the engine stops): their replicas are stopped by whoever
        stops everything, or adopted by the next engine."""
        tasks = set(self._retiring.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._retiring.clear()

    def _env_inputs(
        self, teams: Mapping[int, int]
    ) -> dict[int, tuple[dict[str, str], dict[str, str]]]:
        """Per workspace (-> its team): its env vars and its secrets, opened (the only place
        the engine opens them: replicas are about to start)."""
        with self.db.session() as session:
            return {
                ws: (env_vars(session, ws), self.vault.reveal(session, team, workspace_id=ws))
                for ws, team in teams.items()
            }

    async def _start(
        self,
        start: Start,
        run: ServiceRun,
        workspace_env: Mapping[str, str],
        secrets: Mapping[str, str],
    ) -> None:
        ws = run.key.workspace_id
        env = render_env(
            run.service,
            workspace_id=ws,
            team_id=run.team_id,
            workspace_env=workspace_env,
            vault=secrets,
        )
        await self.runtime.start(
            ReplicaSpec(
                kind=Kind.SERVICE,
                workspace_id=ws,
                team_id=run.team_id,
                name=run.key.service,
                slot=start.slot,
                revision=start.revision,
                restarts=start.restarts,
                script=run.script,
                env=env,
                workspace=run.workspace,
                sub_path=run.service.mount_sub_path,
                ports=run.ports,
                limits=run.limits,
                log=logs_dir(self.home, ws) / "run" / run.key.service / f"{start.slot}.log",
                last_exit=self._last_exit.get((start.key, start.slot)),
            )
        )

    async def _publish(
        self,
        replicas: list[Replica],
        runs: Mapping[ServiceKey, ServiceRun],
        leaving: set[str],
        desired: _Desired,
    ) -> None:
        workspaces = set(desired.landscapes)
        wanted: dict[int, dict[str, Endpoint]] = {ws: {} for ws in workspaces}
        serving: dict[ServiceKey, tuple[Replica, ...]] = {}
        for run in runs.values():
            healthy = tuple(
                sorted(
                    (
                        r
                        for r in replicas
                        if r.workspace_id == run.key.workspace_id
                        and r.name == run.key.service
                        and r.id not in leaving
                        and r.running
                        and self._health.phase(r.id) is Phase.HEALTHY
                    ),
                    key=lambda r: r.id,
                )
            )
            serving[run.key] = healthy
            wake: tuple[tuple[int, int], ...] = ()
            if (
                not healthy
                and run.service.sleep_after
                and self.traffic is not None
                and self.runtime.sandboxed
            ):
                wake = tuple(sorted((await self.traffic.wake_ports(run.key, run.ports)).items()))
            wanted.setdefault(run.key.workspace_id, {})[run.key.service] = Endpoint(
                run.key.service, run.ports, tuple(r.id for r in healthy), wake
            )
        await self._serve(runs, serving, desired)
        for ws, endpoints in wanted.items():
            if self._published.get(ws) != endpoints:
                await self.runtime.publish(ws, endpoints)
                self._published[ws] = endpoints
        running = {r.workspace_id for r in replicas if r.id not in leaving}
        for ws in set(self._published) - set(wanted):
            await self.runtime.publish(ws, {})
            del self._published[ws]
            if ws not in running:
                await self.runtime.forget_landscape(ws)

    async def _serve(
        self,
        runs: Mapping[ServiceKey, ServiceRun],
        serving: Mapping[ServiceKey, tuple[Replica, ...]],
        desired: _Desired,
    ) -> None:
        """Tell the router what to serve, when that changed."""
        if self.traffic is None:
            return
        served = [
            Served(
                workspace_id=ws,
                landscape=landscape,
                replicas={
                    key.service: found for key, found in serving.items() if key.workspace_id == ws
                },
                wakeable=frozenset(
                    key.service
                    for key, run in runs.items()
                    if key.workspace_id == ws and run.service.sleep_after
                ),
                domains=desired.domains.get(ws, ()),
            )
            for ws, landscape in sorted(desired.landscapes.items())
        ]
        key = tuple(s.key() for s in served)
        if key != self._served:
            await self.traffic.serve(served)
            self._served = key

    def _snapshot(self, replicas: list[Replica]) -> None:
        status: dict[int, list[ReplicaStatus]] = {}
        for r in sorted(replicas, key=lambda r: (r.workspace_id, r.name, r.slot, r.started_at)):
            health = self._health.get(r.id) or Health(Phase.STARTING, 0)
            status.setdefault(r.workspace_id, []).append(
                ReplicaStatus(
                    id=r.id,
                    service=r.name,
                    slot=r.slot,
                    revision=r.revision,
                    state=health.phase.value,
                    restarts=r.restarts,
                    started_at=r.started_at,
                    last_exit=health.reason if health.phase is Phase.EXITED else r.last_exit,
                )
            )
        self.status = status
