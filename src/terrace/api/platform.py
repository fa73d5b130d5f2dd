"""One process running the API and the engine on one event loop (``terrace server`` and
``terrace up``), and stopping both cleanly: on SIGINT or SIGTERM the API stops taking requests,
the engine stops planning, every replica is stopped (SIGTERM, grace, SIGKILL), then the process
ends. After a SIGKILL the next start adopts what still runs and converges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Coroutine, Generator
from dataclasses import replace

import uvicorn

from terrace.api.app import create_app
from terrace.api.context import AppContext
from terrace.api.edge import Edge, EdgeSettings
from terrace.engine.plans import load_plans
from terrace.engine.reconciler import Engine
from terrace.runtimes.process import ProcessRuntime

__all__ = ["OnReady", "run_platform"]

log = logging.getLogger("terrace.platform")

OnReady = Callable[[AppContext], Coroutine[None, None, None]]
_Task = asyncio.Task[None] | asyncio.Task[bool]


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: the platform owns SIGINT and SIGTERM, so that it
    can stop the engine and the replicas after the API (uvicorn would re-raise the signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_engine(
    ctx: AppContext, *, sandbox: bool | None = None, edge: EdgeSettings | None = None
) -> AppContext:
    """The context with an engine over this machine's process runtime, and with ``edge``, a
    public router it keeps up to date."""
    engine: Engine | None = None

    def exited(_replica_id: str) -> None:
        if engine is not None:
            engine.poke()

    def wake(workspace_id: int, service: str) -> None:
        if engine is not None:
            engine.wake(workspace_id, service)

    router = None
    if edge is not None:
        router = Edge(edge, state_dir=ctx.home / "run" / "router", wake=wake)
    runtime = ProcessRuntime(ctx.home, sandbox=sandbox, on_exit=exited)
    engine = Engine(
        db=ctx.db,
        vault=ctx.vault,
        runtime=runtime,
        home=ctx.home,
        plans=load_plans(ctx.home),
        traffic=router,
    )
    return replace(ctx, engine=engine, edge=router)


async def run_platform(
    ctx: AppContext,
    sock: socket.socket,
    *,
    on_ready: OnReady | None = None,
    log_level: str = "info",
) -> None:
    """Serve until SIGINT/SIGTERM (or until ``on_ready`` fails); then stop everything."""
    server = _Server(
        uvicorn.Config(
            create_app(ctx),
            log_level=log_level,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if ctx.edge is not None:
        await ctx.edge.start()
    background = [asyncio.create_task(server.serve(sockets=[sock]))]
    engine = ctx.engine
    if engine is not None:
        log.warning("%s", engine.runtime.description)
        background.append(asyncio.create_task(engine.run()))
    waiter = asyncio.create_task(stop.wait())
    ready = asyncio.create_task(_when_recovered(ctx, on_ready)) if on_ready is not None else None
    pending: set[_Task] = {*background, waiter}
    if ready is not None:
        pending.add(ready)
    try:
        while waiter not in (done := await _first(pending)):
            pending -= done
            for task in done:
                task.result()  # an error in the API, the engine or on_ready ends the process
                if task is not ready:
                    return  # the API or the engine ended by itself
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        server.should_exit = True
        if engine is not None:
            engine.stop()
        for job in (ready, *background[1:]):
            if job is not None and not job.done():
                job.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if ready is not None:
            await asyncio.gather(ready, return_exceptions=True)
        waiter.cancel()
        if engine is not None:
            await engine.stop_everything()
            await engine.runtime.close()
        if ctx.edge is not None:
            await ctx.edge.close()


async def _when_recovered(ctx: AppContext, on_ready: OnReady) -> None:
    """``on_ready`` once the engine has dealt with what an earlier one left (``terrace up``
    after a crash would find the stage that engine ran still marked as running)."""
    if ctx.engine is not None:
        await ctx.engine.recovered.wait()
    await on_ready(ctx)


async def _first(tasks: set[_Task]) -> set[_Task]:
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    return done
