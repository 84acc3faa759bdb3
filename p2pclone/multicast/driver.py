"""The multicast scheme's plug-in for the drivers (see p2pclone/endpoints.py, GROUP)."""

from __future__ import annotations

from typing import Any

import trio

from p2pclone.transports.multicast import MulticastTransport

from ..session import Done, Reporter
from .receiver import receive_multicast
from .sender import send_multicast


class _Group:
    async def send(
        self,
        source_path: str,
        url: str,
        *,
        code: str,
        report: Reporter,
        chunk_size: int | None = None,
        allow_mounted: bool = False,
        passphrase: str | None = None,
        password: str | None = None,
        receivers: int = 1,
        wait: float = 60.0,
        group_report: Any = None,
        **_: Any,
    ) -> Done:
        from ..sender import DEFAULT_CHUNK_SIZE, check_chunk_size

        transport = MulticastTransport(url)
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        check_chunk_size(chunk_size)
        return await send_multicast(
            source_path,
            transport,
            code=code,
            receivers=receivers,
            wait=wait,
            chunk_size=chunk_size,
            allow_mounted=allow_mounted,
            passphrase=passphrase,
            password=password,
            report=report,
            group_report=group_report,
        )

    async def receive(
        self,
        target_path: str,
        url: str,
        *,
        code: str,
        report: Reporter,
        task_status: trio.TaskStatus[str],
        **options: Any,
    ) -> Done:
        return await receive_multicast(
            target_path,
            MulticastTransport(url),
            code=code,
            report=report,
            task_status=task_status,
            **options,
        )


DRIVER = _Group()
