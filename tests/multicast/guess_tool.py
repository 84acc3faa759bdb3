"""Pairing attempts at a multicast sender's control port, as a guesser or a stranger
would make them (run inside a test namespace by tests/multicast/test_multicast.py).

    guess_tool.py GROUP PORT STEP...    STEP = LOCAL_ADDR,CODE,COUNT  (CODE "-": silent)

Finds the control port from the sender's ANNOUNCE, then makes COUNT attempts from
LOCAL_ADDR with CODE, one after another: it pairs as a receiver would and, when the
sender's key confirmation does not check (a wrong guess), hangs up without a word.
Prints one JSON line per step: how the attempts ended — "wrong" (the sender confirmed:
a guess spent), "plan" (paired, and the PLAN came), "closed" (the sender hung up before
confirming), "refused" (nobody listens any more).  CODE "-" opens COUNT connections
that never speak, prints "silent" and keeps them open until killed.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import trio

from p2pclone.errors import AuthenticationError, P2PCloneError
from p2pclone.protocol import Connection, Plan, Role
from p2pclone.session import Channel, pair
from p2pclone.transports.multicast import MulticastGroup, decode_announce


async def control_port(group: str, port: int) -> tuple[str, int]:
    sock = MulticastGroup(f"multicast://{group}:{port}?iface=eth0").receiver_socket()
    while True:
        await trio.lowlevel.wait_readable(sock)
        data, (host, _) = sock.recvfrom(65536)
        found = decode_announce(data)
        if found is not None:
            sock.close()
            return host, found[1]


async def attempt(host: str, port: int, local: str, code: str) -> str:
    try:
        stream = await trio.open_tcp_stream(host, port, local_address=local)
    except OSError:
        return "refused"
    channel = Channel(Connection(Role.RECEIVER, code=code), stream, f"tcp://{host}:{port}")
    try:
        with trio.fail_after(10):
            await pair(channel)
            await channel.expect(Plan, "the PLAN")
        return "plan"
    except AuthenticationError:
        return "wrong"
    except (P2PCloneError, trio.TooSlowError):
        return "closed"
    finally:
        await stream.aclose()


async def main(group: str, port: int, steps: list[str]) -> None:
    host, control = await control_port(group, port)
    for step in steps:
        local, code, count = step.split(",")
        if code == "-":
            held = [
                await trio.open_tcp_stream(host, control, local_address=local)
                for _ in range(int(count))
            ]
            print(json.dumps({"silent": len(held)}), flush=True)
            await trio.sleep_forever()
        ends = Counter([await attempt(host, control, local, code) for _ in range(int(count))])
        print(json.dumps(ends), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3:])
