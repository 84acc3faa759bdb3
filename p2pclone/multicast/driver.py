"""The multicast far end for the jobs (p2pclone/jobs.py): the sender's side is the
group sender, the receiver's side an ordinary receiving session with the group's data
plane as its feed.  What a group honours is declared here."""

from __future__ import annotations

import trio

from p2pclone.transports.multicast import MulticastGroup

from ..disks import Target
from ..endpoints import Place
from ..options import (
    RECEIVING_SESSION,
    SENDING_SESSION,
    Approve,
    ReceiveOptions,
    SendOptions,
)
from ..sender import DEFAULT_CHUNK_SIZE, check_chunk_size
from ..session import Done, GroupReporter, Reporter
from .receiver import receive_multicast
from .sender import GroupSender

#: A group sender honours the sending session's options (``delta``: every member
#: hashes its target first), its pairing ``code``, how many ``receivers`` it waits
#: for and how long its door stays open (``wait``).  Not ``fresh``: nothing is saved.
GROUP_SEND = SENDING_SESSION | {"code", "receivers", "wait"}
#: A member honours every receiving session's option but ``cut`` (a member must hold
#: the whole source: the group sends every member the same bytes), and pairs with
#: ``code``.
GROUP_RECEIVE = RECEIVING_SESSION - {"cut"} | {"code"}


async def send_group(
    origin: Place,
    group: MulticastGroup,
    options: SendOptions,
    report: Reporter,
    group_report: GroupReporter | None,
) -> Done:
    chunk_size = options.chunk_size or DEFAULT_CHUNK_SIZE
    check_chunk_size(chunk_size)
    sender = GroupSender(
        group, origin, options, chunk_size=chunk_size, report=report, group_report=group_report
    )
    return await sender.run()


async def receive_group(
    target: str,
    group: MulticastGroup,
    options: ReceiveOptions,
    report: Reporter,
    approve: Approve,
    task_status: trio.TaskStatus[str],
) -> Done:
    disk = await trio.to_thread.run_sync(Target.open, target)
    try:
        return await receive_multicast(
            disk, group, options, report=report, approve=approve, task_status=task_status
        )
    finally:
        disk.close()
