"""What a multicast sender says at the end when not every receiver made it: nobody
joined (and what it saw instead), or which members did not finish and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import ExitCode, GroupError
from ..transports.multicast import MulticastGroup
from .members import Peer

#: a refused receiver's name → (why, its exit code)
Refused = Mapping[str, tuple[str, ExitCode]]


def nobody_joined(group: MulticastGroup, wait: float, connections: int, refused: Refused) -> str:
    """What the sender saw, when no receiver joined: nobody at all, or who failed."""
    if not connections:
        return (
            f"no receiver joined the multicast group {group.where} within {wait:.0f} s, "
            "and none connected to the control port the group's announcements name: "
            "either no receiver runs with this group, or its datagrams do not reach "
            f"them (the announcements went out on {group.iface or 'the routed interface'}; "
            "check iface= on both sides and that the switch passes multicast)"
        )
    why = "; ".join(f"{name}: {r}" for name, (r, _c) in list(refused.items())[:3])
    return (
        f"no receiver joined the multicast group {group.where} within {wait:.0f} s: "
        f"{connections} connected to the control port but none joined"
        + (f" ({why})" if why else "")
        + "; see each receiver's own message"
    )


def unfinished(
    peers: Iterable[Peer], refused: Refused, finished_hosts: set[str], wait: float
) -> GroupError | None:
    """The error naming the members that did not finish (None: all did)."""
    members = list(peers)
    failed = [
        (p.name, p.member.evicted or "it did not confirm its clone", p.expelled or ExitCode.LINK)
        for p in members
        if p.host not in finished_hosts
    ] + [
        (name, f"refused: {why}", code)
        for name, (why, code) in refused.items()
        if name.rsplit(":", 1)[0] not in finished_hosts
    ]
    if not failed:
        return None
    details = "; ".join(f"{name}: {why}" for name, why, _ in failed[:3]) + (
        f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    )
    codes = {code for _, _, code in failed}
    return GroupError(
        f"{len(failed)} of {len(members) + len(refused)} receivers did not "
        f"finish ({details}); the sender waited {wait:.0f} s for them to come "
        "back: see each receiver's own message, then start them again and run the "
        "sender again",
        codes.pop() if len(codes) == 1 else ExitCode.LINK,
    )


__all__ = ["nobody_joined", "unfinished"]
