"""``prepare`` and ``test``: a stage's steps run in order, each once, in the workspace.

Each step is a one-off sandboxed process (a runtime ``JOB``) in the landscape's network, with
the workspace at ``/home/user/app``; its output goes to ``logs/w<id>/<stage>/<n>.log``. The
first step that fails ends the stage, naming the step and its exit status. The run and its
steps are rows in the store, so the API shows them from any process; a stage that was running
when the engine died is marked ``aborted`` when it starts again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from terrace.engine.desired import step_script
from terrace.errors import Conflict
from terrace.runtimes.base import Kind, ReplicaSpec, Runtime
from terrace.store.db import Database
from terrace.store.tables import StageRun

__all__ = ["STAGES", "Pipeline", "StepPlan", "last_run", "step_log"]

log = logging.getLogger("terrace.engine.pipeline")

STAGES = ("prepare", "test")


def last_run(session: Session, workspace_id: int, stage: str) -> StageRun | None:
    """The workspace's latest run of ``stage``."""
    return session.scalar(
        select(StageRun)
        .where(StageRun.workspace_id == workspace_id, StageRun.stage == stage)
        .order_by(StageRun.id.desc())
        .limit(1)
    )


def step_log(home: Path, workspace_id: int, stage: str, index: int) -> Path:
    return home / "logs" / f"w{workspace_id}" / stage / f"{index}.log"


@dataclass(frozen=True, slots=True)
class StepPlan:
    name: str
    command: str


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Pipeline:
    """Runs stages on the engine's event loop; callable from API threads."""

    def __init__(self, *, db: Database, runtime: Runtime, home: Path) -> None:
        self.db, self.runtime, self.home = db, runtime, home
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[tuple[int, str], asyncio.Task[str]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def recover(self) -> None:
        """After a restart: a stage that was running has lost its engine; its step stops."""
        for replica in await self.runtime.replicas():
            if replica.kind is Kind.JOB:
                await self.runtime.stop(replica.id, grace=0)

        def mark() -> None:
            with self.db.session() as session:
                for row in session.scalars(select(StageRun).where(StageRun.state == "running")):
                    steps = json.loads(row.steps)
                    for step in steps:
                        if step["state"] in ("running", "waiting"):
                            step["state"] = "aborted"
                    row.steps = json.dumps(steps)
                    row.state = "aborted"
                    row.finished_at = datetime.now(UTC)

        await asyncio.to_thread(mark)

    # --- from API threads ---------------------------------------------------------------------

    def start(self, **run: Any) -> None:
        """:meth:`run` from another thread (an API request); returns once the run is recorded,
        so that a status read right after shows it."""
        if self._loop is None:
            raise Conflict("the engine is not running on this server, so stages cannot run")
        recorded = threading.Event()
        future = asyncio.run_coroutine_threadsafe(self.run(**run, recorded=recorded), self._loop)
        while not recorded.wait(0.05):
            if future.done():
                future.result()  # a conflict or a store error, raised in the caller's thread
                return

    async def run(
        self,
        *,
        workspace_id: int,
        team_id: int,
        workspace: Path,
        stage: str,
        profile: str | None,
        steps: Sequence[StepPlan],
        env: Mapping[str, str],
        recorded: threading.Event | None = None,
    ) -> str:
        """Record a run and carry it out; its final state. A stage already running here or in
        the store is a conflict."""
        key = (workspace_id, stage)
        if key in self._tasks:
            raise Conflict(f"the {stage} stage is already running (stop it first)")
        run_id = await asyncio.to_thread(self._record, workspace_id, stage, profile, steps)
        task = asyncio.create_task(
            self._run(
                run_id,
                workspace_id=workspace_id,
                team_id=team_id,
                workspace=workspace,
                stage=stage,
                steps=list(steps),
                env=dict(env),
            )
        )
        self._tasks[key] = task
        if recorded is not None:
            recorded.set()
        try:
            return await task
        finally:
            if self._tasks.get(key) is task:
                del self._tasks[key]

    def _record(
        self, workspace_id: int, stage: str, profile: str | None, steps: Sequence[StepPlan]
    ) -> int:
        with self.db.session() as session:
            running = session.scalar(
                select(StageRun.id).where(
                    StageRun.workspace_id == workspace_id,
                    StageRun.stage == stage,
                    StageRun.state == "running",
                )
            )
            if running is not None:
                raise Conflict(f"the {stage} stage is already running (stop it first)")
            row = StageRun(
                workspace_id=workspace_id,
                stage=stage,
                profile=profile,
                state="running",
                steps=json.dumps(
                    [{"name": s.name, "command": s.command, "state": "waiting"} for s in steps]
                ),
            )
            session.add(row)
            session.flush()
            return row.id

    def stop(self, workspace_id: int, stage: str) -> bool:
        """Abort a running stage; False if none was running here."""
        task = self._tasks.get((workspace_id, stage))
        if task is None or self._loop is None:
            return False
        self._loop.call_soon_threadsafe(task.cancel)
        return True

    # --- on the loop ---------------------------------------------------------------------------

    async def _run(
        self,
        run_id: int,
        *,
        workspace_id: int,
        team_id: int,
        workspace: Path,
        stage: str,
        steps: list[StepPlan],
        env: dict[str, str],
    ) -> str:
        state = "success"
        for index, step in enumerate(steps):
            await self._update(run_id, index, state="running", startedAt=_now())
            logfile = step_log(self.home, workspace_id, stage, index)
            logfile.parent.mkdir(parents=True, exist_ok=True)
            logfile.write_bytes(b"")
            replica_id: str | None = None
            try:
                replica = await self.runtime.start(
                    ReplicaSpec(
                        kind=Kind.JOB,
                        workspace_id=workspace_id,
                        team_id=team_id,
                        name=stage,
                        slot=index,
                        revision=f"run{run_id}",
                        script=step_script([step.command]),
                        env=env,
                        workspace=workspace,
                        log=logfile,
                    )
                )
                replica_id = replica.id
                code = await self.runtime.wait(replica.id)
            except asyncio.CancelledError:
                if replica_id is not None:
                    await asyncio.shield(self.runtime.stop(replica_id, grace=2.0))
                await self._update(run_id, index, state="aborted", finishedAt=_now())
                await self._finish(run_id, "aborted")
                raise
            except Exception as exc:
                with logfile.open("a") as out:
                    out.write(f"terrace: the step could not start: {exc}\n")
                code = None
            if replica_id is not None:
                await self.runtime.stop(replica_id, grace=0)
            ok = code == 0
            await self._update(
                run_id,
                index,
                state="success" if ok else "failure",
                exitCode=code,
                finishedAt=_now(),
            )
            if not ok:
                state = "failure"
                for rest in range(index + 1, len(steps)):
                    await self._update(run_id, rest, state="skipped")
                break
        await self._finish(run_id, state)
        await self.runtime.forget_landscape(workspace_id)  # unless its services run
        return state

    async def _update(self, run_id: int, index: int, **values: object) -> None:
        def write() -> None:
            with self.db.session() as session:
                row = session.get(StageRun, run_id)
                if row is None:
                    return
                steps = json.loads(row.steps)
                steps[index].update(values)
                row.steps = json.dumps(steps)

        await asyncio.to_thread(write)

    async def _finish(self, run_id: int, state: str) -> None:
        def write() -> None:
            with self.db.session() as session:
                session.execute(
                    update(StageRun)
                    .where(StageRun.id == run_id)
                    .values(state=state, finished_at=datetime.now(UTC))
                )

        await asyncio.to_thread(write)
