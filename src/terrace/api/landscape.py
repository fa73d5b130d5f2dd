"""Deploying and running a workspace's landscape, in the spirit of Codesphere's API:
``/workspaces/{id}/landscape/...``, ``.../pipeline/...`` and ``.../logs/...``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request, status
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import Field
from sqlalchemy import select

from terrace.api.auth import CurrentCaller, require_workspace
from terrace.api.context import AppContext, context
from terrace.api.models import Model, WorkspaceId
from terrace.engine.deploy import (
    MAX_REPLICAS,
    active_deployment,
    deploy,
    deployed_runs,
    scale,
    teardown,
)
from terrace.engine.pipeline import StepPlan, last_run, step_log
from terrace.engine.plans import PlanTable, load_plans
from terrace.engine.reconciler import logs_dir
from terrace.errors import Conflict
from terrace.sources.local import read_landscape
from terrace.spec.landscape_parser import parse_landscape
from terrace.spec.names import DNS_LABEL, PROFILE
from terrace.store.roles import Role
from terrace.store.tables import Deployment
from terrace.store.workspaces import env_vars

__all__ = ["router"]

router = APIRouter(prefix="/workspaces", tags=["landscape"])

Profile = Annotated[str, Path(max_length=64, pattern=PROFILE.pattern)]
Stage = Annotated[Literal["prepare", "test", "run"], Path()]
JobStage = Annotated[Literal["prepare", "test"], Path()]
ServiceName = Annotated[str, Path(max_length=63, pattern=DNS_LABEL.pattern)]
Slot = Annotated[int, Path(ge=0, le=MAX_REPLICAS)]
StepIndex = Annotated[int, Path(ge=0, le=1000)]
LOG_TAIL = 1 << 20
FOLLOW_POLL = 0.25


class DeploymentOut(Model):
    id: int
    file: str
    profile: str | None
    created_at: datetime
    services: list[str]
    routes: list[str]


class StepOut(Model):
    index: int
    name: str | None
    command: str
    state: str
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


class ReplicaOut(Model):
    slot: int
    state: str
    restarts: int
    last_exit: str | None
    revision: str
    started_at: float


class ServiceStatus(Model):
    name: str
    revision: str
    """The revision the engine converges to: ``healthy`` counts only replicas of it."""
    replicas: int
    healthy: int
    asleep: bool = False
    """Stopped after ``sleepAfter`` without a request; the next request wakes it."""
    instances: list[ReplicaOut]


class RollbackOut(Model):
    """A deployment whose rollout failed and was undone (the previous one serves)."""

    deployment: int
    created_at: datetime
    reason: str


class StageStatus(Model):
    stage: str
    state: str
    """prepare/test: none, running, success, failure, aborted. run: deployed, not-deployed."""
    profile: str | None = None
    steps: list[StepOut] = Field(default_factory=list)
    services: list[ServiceStatus] = Field(default_factory=list)
    deployment: int | None = None
    """The active deployment (run)."""
    rollback: RollbackOut | None = None
    """The last deploy made after the active one, if its rollout failed and was undone."""
    engine: bool = True
    sandboxed: bool | None = None


def _plans(ctx: AppContext) -> PlanTable:
    return ctx.engine.plans if ctx.engine is not None else load_plans(ctx.home)


def _poke(ctx: AppContext) -> None:
    if ctx.engine is not None:
        ctx.engine.poke()


def _deploy(
    request: Request, caller: CurrentCaller, workspace_id: int, profile: str | None
) -> DeploymentOut:
    ctx = context(request)
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        deployment, landscape = deploy(
            session,
            row,
            profile=profile,
            vault=ctx.vault,
            plans=_plans(ctx),
            user_id=caller.user_id,
        )
        out = DeploymentOut(
            id=deployment.id,
            file=deployment.file,
            profile=deployment.profile,
            created_at=deployment.created_at,
            services=list(landscape.services),
            routes=[p.path for s in landscape.services.values() for p in s.network.paths],
        )
    _poke(ctx)
    return out


@router.post(
    "/{workspaceId}/landscape/deploy",
    summary="Deploy the workspace's landscape (ci.yml)",
    description="Checks the whole landscape first (vault secrets, env vars, plans, runtimes); "
    "a bad one is a 422 listing every problem, and what runs keeps running.",
)
def deploy_default(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId
) -> DeploymentOut:
    return _deploy(request, caller, workspace_id, None)


@router.post(
    "/{workspaceId}/landscape/deploy/{profile}",
    summary="Deploy the workspace's landscape of a profile (ci.<profile>.yml)",
)
def deploy_profile(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, profile: Profile
) -> DeploymentOut:
    return _deploy(request, caller, workspace_id, profile)


@router.patch(
    "/{workspaceId}/landscape/scale",
    summary="Change the replica count of deployed services",
    description='The body maps service names to replica counts, e.g. `{"api": 3}`.',
)
def scale_services(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    body: Annotated[
        dict[Annotated[str, Field(max_length=63)], Annotated[int, Field(ge=0, le=MAX_REPLICAS)]],
        Body(),
    ],
) -> dict[str, int]:
    ctx = context(request)
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        deployment = scale(session, row, body)
        replicas: dict[str, int] = json.loads(deployment.replicas)
    _poke(ctx)
    return replicas


@router.delete(
    "/{workspaceId}/landscape/teardown",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Stop every service of the landscape",
    description="Idempotent: tearing down a landscape that is not deployed changes nothing.",
)
def teardown_landscape(request: Request, caller: CurrentCaller, workspace_id: WorkspaceId) -> None:
    ctx = context(request)
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        teardown(session, row)
    _poke(ctx)


# --- pipeline -------------------------------------------------------------------------------


def _start(
    request: Request, caller: CurrentCaller, workspace_id: int, stage: str, profile: str | None
) -> StageStatus:
    if stage == "run":
        _deploy(request, caller, workspace_id, profile)
        return _status(request, caller, workspace_id, "run")
    ctx = context(request)
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        team_id, folder = row.team_id, FsPath(row.path)
        env = env_vars(session, workspace_id)
    if ctx.engine is None:
        raise Conflict("no engine runs in this server process, so stages cannot run here")
    landscape = read_landscape(folder, profile).parsed.value
    steps = landscape.prepare.steps if stage == "prepare" else landscape.test.steps
    ctx.engine.pipeline.start(
        workspace_id=workspace_id,
        team_id=team_id,
        workspace=folder,
        stage=stage,
        profile=landscape.profile,
        steps=[StepPlan(s.name or f"step {i}", s.command) for i, s in enumerate(steps)],
        env={**env, "WORKSPACE_ID": str(workspace_id), "TEAM_ID": str(team_id)},
    )
    return _status(request, caller, workspace_id, stage)


@router.post("/{workspaceId}/pipeline/{stage}/start", summary="Start a stage (run = deploy)")
def start_stage(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, stage: Stage
) -> StageStatus:
    return _start(request, caller, workspace_id, stage, None)


@router.post(
    "/{workspaceId}/pipeline/{stage}/start/{profile}",
    summary="Start a stage of a profile (ci.<profile>.yml)",
)
def start_stage_profile(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    stage: Stage,
    profile: Profile,
) -> StageStatus:
    return _start(request, caller, workspace_id, stage, profile)


@router.post(
    "/{workspaceId}/pipeline/{stage}/stop",
    summary="Stop a stage (run = tear the landscape down)",
)
def stop_stage(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, stage: Stage
) -> StageStatus:
    ctx = context(request)
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.DEVELOPER)
        if stage == "run":
            teardown(session, row)
    if stage == "run":
        _poke(ctx)
    elif ctx.engine is None or not ctx.engine.pipeline.stop(workspace_id, stage):
        raise Conflict(f"the {stage} stage is not running")
    return _status(request, caller, workspace_id, stage)


@router.get("/{workspaceId}/pipeline/{stage}", summary="The state of a stage, per step or replica")
def get_stage(
    request: Request, caller: CurrentCaller, workspace_id: WorkspaceId, stage: Stage
) -> StageStatus:
    return _status(request, caller, workspace_id, stage)


def _status(request: Request, caller: CurrentCaller, workspace_id: int, stage: str) -> StageStatus:
    ctx = context(request)
    engine = ctx.engine
    sandboxed = None if engine is None else engine.runtime.sandboxed
    with ctx.db.session() as session:
        row = require_workspace(session, caller, workspace_id, Role.VIEWER)
        if stage != "run":
            run = last_run(session, workspace_id, stage)
            if run is None:
                return StageStatus(stage=stage, state="none", engine=engine is not None)
            return StageStatus(
                stage=stage,
                state=run.state,
                profile=run.profile,
                steps=[StepOut(index=i, **s) for i, s in enumerate(json.loads(run.steps))],
                engine=engine is not None,
                sandboxed=sandboxed,
            )
        deployment = active_deployment(session, workspace_id)
        if deployment is None:
            return StageStatus(stage="run", state="not-deployed", engine=engine is not None)
        landscape = parse_landscape(
            deployment.source, file=deployment.file, profile=deployment.profile
        ).value
        runs = deployed_runs(
            session,
            workspace=row,
            deployment=deployment,
            landscape=landscape,
            vault=ctx.vault,
            plans=_plans(ctx),
        )
        failed = session.scalar(
            select(Deployment)
            .where(Deployment.workspace_id == workspace_id, Deployment.id > deployment.id)
            .order_by(Deployment.id.desc())
            .limit(1)
        )
        rollback = None
        if failed is not None and failed.failure is not None:
            rollback = RollbackOut(
                deployment=failed.id, created_at=failed.created_at, reason=failed.failure
            )
    replicas = [] if engine is None else engine.status.get(workspace_id, [])
    asleep = set() if engine is None else engine.asleep
    services = []
    for service in runs:
        name = service.key.service
        mine = [r for r in replicas if r.service == name]
        services.append(
            ServiceStatus(
                name=name,
                revision=service.revision,
                replicas=service.replicas,
                healthy=sum(r.state == "healthy" and r.revision == service.revision for r in mine),
                asleep=service.key in asleep,
                instances=[
                    ReplicaOut(
                        slot=r.slot,
                        state=r.state,
                        restarts=r.restarts,
                        last_exit=r.last_exit,
                        revision=r.revision,
                        started_at=r.started_at,
                    )
                    for r in mine
                ],
            )
        )
    return StageStatus(
        stage="run",
        state="deployed",
        profile=deployment.profile,
        services=services,
        deployment=deployment.id,
        rollback=rollback,
        engine=engine is not None,
        sandboxed=sandboxed,
    )


# --- logs -----------------------------------------------------------------------------------


def _tail(path: FsPath) -> tuple[bytes, int]:
    """The last MiB of a log and where it ended; nothing for a step or replica that has not
    run yet."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - LOG_TAIL))
            data = log.read()
            return data, log.tell()
    except FileNotFoundError:
        return b"", 0


@router.get(
    "/{workspaceId}/logs/{stage}/{step}",
    summary="The output of a step of prepare or test (the last MiB)",
    response_class=PlainTextResponse,
)
def step_logs(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    stage: JobStage,
    step: StepIndex,
) -> PlainTextResponse:
    ctx = context(request)
    with ctx.db.session() as session:
        require_workspace(session, caller, workspace_id, Role.VIEWER)
    data, _ = _tail(step_log(ctx.home, workspace_id, stage, step))
    return PlainTextResponse(data.decode(errors="replace"))


@router.get(
    "/{workspaceId}/logs/run/{service}/replica/{replica}",
    summary="The output of a replica of a service; ?follow=1 streams new output",
    response_class=PlainTextResponse,
    response_model=None,
)
def replica_logs(
    request: Request,
    caller: CurrentCaller,
    workspace_id: WorkspaceId,
    service: ServiceName,
    replica: Slot,
    follow: Annotated[bool, Query()] = False,
) -> Response:
    ctx = context(request)
    with ctx.db.session() as session:
        require_workspace(session, caller, workspace_id, Role.VIEWER)
    path = logs_dir(ctx.home, workspace_id) / "run" / service / f"{replica}.log"
    data, end = _tail(path)
    if not follow:
        return PlainTextResponse(data.decode(errors="replace"))
    return StreamingResponse(
        _follow(request, path, data, end), media_type="text/plain; charset=utf-8"
    )


async def _follow(request: Request, path: FsPath, first: bytes, end: int) -> AsyncIterator[bytes]:
    """What was there, then what gets appended (from exactly where the first read ended)."""
    yield first
    while not path.exists():  # a replica that has not started yet
        if await request.is_disconnected():
            return
        await asyncio.sleep(FOLLOW_POLL)
    with path.open("rb") as log:
        log.seek(end)
        while not await request.is_disconnected():
            chunk = log.read(65_536)
            if chunk:
                yield chunk
            else:
                await asyncio.sleep(FOLLOW_POLL)
