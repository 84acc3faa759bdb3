"""Coverage-guided fuzzing of the frame decoder and the handshake with atheris.

    python tests/fuzz/fuzz_protocol.py -runs=200000          # or -max_total_time=600

Each input is split: the first byte picks a role and how far the handshake has gone;
the rest is fed to that connection.  Anything but a P2PCloneError (or a clean event)
is a crash that atheris reports with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from p2pclone.errors import P2PCloneError
    from p2pclone.protocol import CLOSED, NEED_DATA, Connection, Role

# Handshakes are slow (SPAKE2 in pure Python): prepare the starting points once.
STARTS: list[bytes] = []


def _prefix(role: Role, steps: int) -> tuple[Role, bytes]:
    """The bytes a peer legally sends to bring ``role`` ``steps`` frames into the handshake."""
    s, r = Connection(Role.SENDER, code="1-a-b"), Connection(Role.RECEIVER, code="1-a-b")
    to_role = b""
    order = [
        (s, r, lambda: s.hello("t")),
        (r, s, lambda: r.hello("t")),
        (s, r, s.pake),
        (r, s, r.pake),
    ]
    for src, dst, make in order[:steps]:
        wire = b"".join(bytes(b) for b in src.send(make()))
        dst.receive_data(wire)
        dst.next_event()
        if dst.role is role:
            to_role += wire
    return role, to_role


PREFIXES = [_prefix(Role.RECEIVER, 0), _prefix(Role.SENDER, 1), _prefix(Role.RECEIVER, 1)]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    role, prefix = PREFIXES[data[0] % len(PREFIXES)]
    conn = Connection(role, code="1-a-b")
    conn.receive_data(prefix + data[1:])
    try:
        for _ in range(64):
            if conn.next_event() in (NEED_DATA, CLOSED):
                break
    except P2PCloneError:
        pass
    assert conn._decoder.buffered <= len(prefix) + len(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
