"""``qemu-img convert -O raw`` for formats without a native reader, with fixed arguments."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

from cdi.errors import ConversionFailed
from cdi.safety import QemuInput
from cdi.settings import ImportSettings


async def qemu_img_convert(
    image: QemuInput,
    fmt: str,
    target: Path,
    *,
    block_device: bool,
    settings: ImportSettings,
    what: str,
) -> None:
    """Convert ``image`` (a file we named, explicit ``-f``; or our NBD export) to raw ``target``."""
    argv = ["qemu-img", "convert", "-q", "-O", "raw", "-W", "-m", "8"]
    if block_device:
        argv.append("-n")
    argv += [*image.argv(fmt), str(target)]
    memory = settings.qemu_img_memory_bytes * 2

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=image.cwd or target.parent,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit,
    )
    try:
        _out, err = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ConversionFailed(f"qemu-img could not convert {what} to raw: {reason}")
