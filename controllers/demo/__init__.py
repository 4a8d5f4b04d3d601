"""``diskplane demo`` (what ``make run`` shows): the three user flows end to end.

It runs ``diskplane up`` as a subprocess on the data dir and drives it through
the store, as the CLI does: the suite's tiny guest disk is built as a qcow2 and
served over HTTP from this process (aiohttp, with Range); a DataVolume imports
it (live progress); a VirtualMachine boots it (console streamed until the ready
line) and is halted; the volume is pushed to a local ``docker-registry`` as a
containerDisk, inspected and pulled back. Then a summary, and everything the
demo started is stopped and its temp dir removed (``--keep-serving`` waits for
Ctrl-C first). Any failing step ends it with a message and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from controllers.api.kinds import DATAVOLUME, VIRTUALMACHINE
from controllers.demo.steps import Demo
from controllers.demo.support import DV_NAME, VM_NAME, DemoError, Stack, delete_and_wait
from controllers.store.embedded import EmbeddedStore

__all__ = ["DemoError", "register", "run_demo"]

# -- the command ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _stack_and_store(demo: Demo) -> AsyncIterator[EmbeddedStore]:
    began = time.monotonic()
    stack = Stack(demo.data_dir, demo.work / "up.log")
    store: EmbeddedStore | None = None
    try:
        await stack.start()
        assert stack.process is not None
        demo.out.step(
            f"stack up: diskplane up (pid {stack.process.pid}) on {demo.data_dir}",
            time.monotonic() - began,
        )
        for line in stack.startup:
            demo.out.detail(f"up | {line}")
        store = await EmbeddedStore.open(demo.data_dir)
        for kind, name in ((VIRTUALMACHINE, VM_NAME), (DATAVOLUME, DV_NAME)):
            if await delete_and_wait(store, kind, name):
                demo.out.detail(f"removed {kind.singular} {name} left by an earlier demo")
        yield store
    finally:
        try:
            if store is not None:
                await _remove_objects(demo, store)
        finally:
            if store is not None:
                await store.close()
            stopping = time.monotonic()
            await stack.stop()
            demo.out.step("diskplane up stopped", time.monotonic() - stopping)


async def _remove_objects(demo: Demo, store: EmbeddedStore) -> None:
    began = time.monotonic()
    removed = [
        name
        for kind, name in ((VIRTUALMACHINE, VM_NAME), (DATAVOLUME, DV_NAME))
        if await delete_and_wait(store, kind, name)
    ]
    if removed:
        demo.out.step(
            f"deleted {', '.join(removed)} (guest stopped, volume removed)",
            time.monotonic() - began,
        )


async def _wait_for_interrupt(demo: Demo, host: str) -> None:
    assert demo.served is not None
    demo.out.step("--keep-serving: the stack keeps serving; Ctrl-C stops everything")
    demo.out.detail(f"diskplane --data-dir {demo.data_dir} get dv; ... get vm")
    demo.out.detail(f"diskplane --data-dir {demo.data_dir} start {VM_NAME}   # boot it again")
    demo.out.detail(f"disk {demo.served.url}; registry http://{host}/v2/")
    await asyncio.Event().wait()  # until the signal handler cancels the demo


async def _steps(demo: Demo, keep_serving: bool) -> None:
    from virtnode.tinyguest import READY_LINE

    disk = await demo.build_disk()
    async with _stack_and_store(demo) as store:
        await demo.import_disk(store, disk)
        await demo.boot_vm(store, READY_LINE)
        await demo.halt_vm(store)
        host = await demo.start_registry()
        await demo.push_and_pull(host)
        demo.summary()
        if keep_serving:
            await _wait_for_interrupt(demo, host)


async def run_demo(data_dir: Path, keep_serving: bool = False) -> int:
    """Run every step; stop and remove what was started whatever happens."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = asyncio.Event()

    def on_signal() -> None:
        if not interrupted.is_set():
            interrupted.set()
            demo.out.step("interrupted: stopping what the demo started")
            task.cancel()

    work = Path(tempfile.mkdtemp(prefix="diskplane-demo-"))
    demo = Demo(data_dir=data_dir, work=work)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    print(f"diskplane demo: data dir {data_dir}, temp dir {work}", flush=True)
    code = 0
    try:
        await _steps(demo, keep_serving)
    except asyncio.CancelledError:
        if not interrupted.is_set():
            raise
        code = 0 if keep_serving else 130
    except Exception as exc:  # every step's failure ends here, after its own cleanup
        demo.out.end_line()
        print(f"error: diskplane demo failed: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        await _cleanup(demo)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    ending = "done" if code == 0 else "failed" if code == 1 else "interrupted"
    demo.out.step(f"{ending}: everything the demo started is stopped")
    return code


async def _cleanup(demo: Demo) -> None:
    await demo.stop_registry()
    if demo.served is not None:
        await demo.served.runner.cleanup()
    shutil.rmtree(demo.work, ignore_errors=True)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="what `make run` shows: import a disk, boot it, push it to a registry, clean up",
    )
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the summary keep the stack, HTTP server and registry up until Ctrl-C",
    )

    def handler(args: argparse.Namespace) -> int:
        return asyncio.run(run_demo(args.data_dir, args.keep_serving))

    parser.set_defaults(handler=handler)
