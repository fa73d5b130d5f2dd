"""What ``terrace up`` does once the platform runs: the local workspace, the stages, the
deploy, the router and the progress display. Loaded only by ``terrace up``."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import select

from terrace.api.context import AppContext
from terrace.engine.deploy import deploy
from terrace.engine.pipeline import StepPlan, last_run, step_log
from terrace.engine.reconciler import Engine
from terrace.errors import SpecError, TerraceError
from terrace.router.landscapes import host_for
from terrace.sources.local import read_landscape
from terrace.spec.landscape import DEFAULT_PORT
from terrace.store.tables import Team, User, Workspace
from terrace.store.tenancy import create_team
from terrace.store.workspaces import add_workspace, env_vars

__all__ = ["Up", "UpFailed"]


class UpFailed(TerraceError):
    """A stage failed, or the landscape cannot be deployed: ``terrace up`` stops."""


class Up:
    def __init__(self, folder: Path | None, *, profile: str | None, port: int, run_tests: bool):
        self.folder, self.profile, self.port, self.run_tests = folder, profile, port, run_tests

    async def ready(self, ctx: AppContext) -> None:
        engine = ctx.engine
        if engine is None:
            raise UpFailed("terrace up needs the engine")
        out = Console(highlight=False)
        if not engine.runtime.sandboxed:
            out.print(f"[bold red]WARNING:[/] {engine.runtime.description}")
        if self.folder is None:
            out.print(
                "terrace up: the platform runs; deploy with the API or the CLI. Ctrl-C stops."
            )
            return
        edge = ctx.edge
        if edge is None:
            raise UpFailed("terrace up needs the router")
        workspace_id, team_id = await asyncio.to_thread(_local_workspace, ctx, self.folder)
        out.print(f"workspace {workspace_id} (team {team_id}): {self.folder}")
        out.print(f"router: {edge.plane.name} on 127.0.0.1:{edge.port}")
        await edge.set_default_workspace(workspace_id)
        stages = ["prepare", "test"] if self.run_tests else ["prepare"]
        for stage in stages:
            await _run_stage(
                ctx,
                engine,
                out,
                workspace_id=workspace_id,
                team_id=team_id,
                folder=self.folder,
                stage=stage,
                profile=self.profile,
            )
        routes = await asyncio.to_thread(_deploy, ctx, engine, workspace_id, self.profile)
        engine.poke()
        await _show_progress(engine, out, workspace_id)
        for path, service in routes:
            out.print(f"  {service:<16} http://127.0.0.1:{edge.port}{path}")
        host = host_for(workspace_id, DEFAULT_PORT, edge.settings.domain)
        out.print(f"  (also at http://{host}:{edge.port}/)")
        out.print("serving; Ctrl-C stops everything")


def _local_workspace(ctx: AppContext, folder: Path) -> tuple[int, int]:
    with ctx.db.session() as session:
        admin = session.scalar(
            select(User).where(User.cluster_admin.is_(True)).order_by(User.id).limit(1)
        )
        assert admin is not None  # bootstrap made one
        team = session.scalar(select(Team).where(Team.name == "local"))
        if team is None:
            team = create_team(session, name="local", admin_user_id=admin.id)
        found = session.scalar(
            select(Workspace).where(Workspace.team_id == team.id, Workspace.path == str(folder))
        )
        if found is None:
            taken = set(session.scalars(select(Workspace.name).where(Workspace.team_id == team.id)))
            name = next(
                n
                for n in (folder.name, *(f"{folder.name}-{i}" for i in range(2, 10_000)))
                if n not in taken
            )
            found = add_workspace(
                session,
                Workspace(
                    team_id=team.id,
                    name=name[:100],
                    source="local",
                    path=str(folder),
                    created_by=admin.id,
                ),
            )
        return found.id, team.id


async def _run_stage(
    ctx: AppContext,
    engine: Engine,
    out: Console,
    *,
    workspace_id: int,
    team_id: int,
    folder: Path,
    stage: str,
    profile: str | None,
) -> None:
    landscape = (await asyncio.to_thread(read_landscape, folder, profile)).parsed.value
    steps = landscape.prepare.steps if stage == "prepare" else landscape.test.steps
    if not steps:
        return

    def env() -> dict[str, str]:
        with ctx.db.session() as session:
            return env_vars(session, workspace_id)

    started = time.monotonic()
    out.print(f"{stage}: {len(steps)} step{'s' if len(steps) != 1 else ''}")
    state = await engine.pipeline.run(
        workspace_id=workspace_id,
        team_id=team_id,
        workspace=folder,
        stage=stage,
        profile=landscape.profile,
        steps=[StepPlan(s.name or s.command, s.command) for s in steps],
        env={
            **await asyncio.to_thread(env),
            "WORKSPACE_ID": str(workspace_id),
            "TEAM_ID": str(team_id),
        },
    )
    if state == "success":
        out.print(f"{stage}: [green]ok[/] in {time.monotonic() - started:.1f} s")
        return
    failed = await asyncio.to_thread(_failed_step, ctx, workspace_id, stage)
    index, name, code = failed if failed else (0, "?", None)
    tail = step_log(ctx.home, workspace_id, stage, index)
    lines = tail.read_text(errors="replace").splitlines()[-20:] if tail.exists() else []
    for line in lines:
        out.print(f"  | {line}", markup=False)
    raise UpFailed(
        f"{stage} failed: step {index} ({name!r}) "
        + (f"exited with status {code}" if code is not None else state)
    )


def _failed_step(
    ctx: AppContext, workspace_id: int, stage: str
) -> tuple[int, str, int | None] | None:
    with ctx.db.session() as session:
        run = last_run(session, workspace_id, stage)
        if run is None:
            return None
        for index, step in enumerate(json.loads(run.steps)):
            if step["state"] in ("failure", "aborted"):
                return index, step["name"], step.get("exitCode")
    return None


def _deploy(
    ctx: AppContext, engine: Engine, workspace_id: int, profile: str | None
) -> list[tuple[str, str]]:
    try:
        with ctx.db.session() as session:
            row = session.get(Workspace, workspace_id)
            assert row is not None
            _, landscape = deploy(
                session,
                row,
                profile=profile,
                vault=ctx.vault,
                plans=engine.plans,
                user_id=row.created_by,
            )
    except SpecError as exc:
        problems = "\n".join(f"  {p}" for p in exc.problems)
        raise UpFailed(f"the landscape cannot be deployed:\n{problems}") from None
    return [(p.path, name) for name, s in landscape.services.items() for p in s.network.paths]


async def _show_progress(engine: Engine, out: Console, workspace_id: int) -> None:
    """A live table of the landscape's replicas until every one is healthy."""
    started = time.monotonic()

    def table() -> tuple[Table, bool]:
        grid = Table("service", "replica", "state", "restarts", "last exit", box=None)
        replicas = engine.status.get(workspace_id, [])
        report = engine.last_report
        for r in replicas:
            style = {"healthy": "green", "starting": "yellow"}.get(r.state, "red")
            grid.add_row(
                r.service, str(r.slot), f"[{style}]{r.state}[/]", str(r.restarts), r.last_exit or ""
            )
        desired = report.desired if report else -1
        done = bool(replicas) and desired == sum(
            1 for r in replicas if r.state == "healthy"
        ) == len(replicas)
        return grid, done

    with Live(table()[0], console=out, refresh_per_second=8) as live:
        while True:
            grid, done = table()
            live.update(grid)
            if done:
                break
            await asyncio.sleep(0.1)
    if not out.is_terminal:
        out.line()  # a live display that is not a terminal's leaves its last line open
    out.print(f"run: every replica healthy in {time.monotonic() - started:.1f} s")
