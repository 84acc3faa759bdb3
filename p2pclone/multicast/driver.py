"""The multicast scheme's plug-in for the drivers (p2pclone/endpoints.py names it as the
GROUP driver): the sender's side is the group sender, the receiver's side an ordinary
receiving session with the group's data plane as its feed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from p2pclone.transports.multicast import MulticastTransport

from ..receiver import Options
from ..sender import DEFAULT_CHUNK_SIZE, check_chunk_size
from ..session import Done, GroupProgress, Reporter
from .receiver import receive_multicast
from .sender import GroupSender


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
        group_report: Callable[[GroupProgress], None] | None = None,
        exact: bool = False,
        **_: Any,
    ) -> Done:
        transport = MulticastTransport(url)
        chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        check_chunk_size(chunk_size)
        sender = GroupSender(
            transport,
            source_path,
            code=code,
            receivers=receivers,
            wait=wait,
            chunk_size=chunk_size,
            allow_mounted=allow_mounted,
            passphrase=passphrase,
            password=password,
            exact=exact,
            report=report,
            group_report=group_report,
        )
        return await sender.run()

    async def receive(
        self,
        target_path: str,
        url: str,
        *,
        code: str,
        report: Reporter,
        task_status: trio.TaskStatus[str],
        options: Options,
        **_: Any,
    ) -> Done:
        return await receive_multicast(
            target_path,
            MulticastTransport(url),
            code=code,
            options=options,
            report=report,
            task_status=task_status,
        )


DRIVER = _Group()
