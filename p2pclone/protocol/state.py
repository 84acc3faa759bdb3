"""The session state machines, as one transition table.

A session has two roles.  The *sender* connects and speaks first; the *receiver*
listens.  Each side runs its own copy of the machine for its own role, and every
frame it sends or receives must be an edge of this table: anything else moves the
connection to ERROR and raises.  ``docs/protocol.md`` §9 draws the same table.

Sender::

    START --send HELLO--> AWAIT_HELLO --recv HELLO--> PAKE --send PAKE--> AWAIT_PAKE
    AWAIT_PAKE --recv PAKE--> CONFIRM --send CONFIRM--> AWAIT_CONFIRM
    AWAIT_CONFIRM --recv CONFIRM--> PLAN --send PLAN--> AWAIT_ACCEPT
    AWAIT_ACCEPT --recv ACCEPT--> DATA --send CHUNK|PATCH|ZERO|SAME|LOST|LATER--> DATA
    DATA --send GROUP|REF|POLL--> DATA;  DATA --recv REPORT--> DATA        (multicast)
    DATA --send EVICT--> DONE                                              (multicast)
    DATA --send END--> AWAIT_RESULT
    DATA and AWAIT_RESULT --recv HAVE|ACK--> (same state);  AWAIT_RESULT --recv RESULT--> DONE
    AWAIT_RESULT --recv NAK--> AWAIT_RESULT --send CHUNK (repairs)--> AWAIT_RESULT

Receiver::

    START --recv HELLO--> HELLO --send HELLO--> AWAIT_PAKE --recv PAKE--> PAKE
    PAKE --send PAKE--> AWAIT_CONFIRM --recv CONFIRM--> CONFIRM
    CONFIRM --send CONFIRM--> AWAIT_PLAN --recv PLAN--> DECIDE
    DECIDE --send ACCEPT--> DATA --recv CHUNK|PATCH|ZERO|SAME|LOST|LATER--> DATA
    DATA --recv END--> FINISH
    DATA --recv GROUP|REF|POLL--> DATA;  DATA --send REPORT--> DATA        (multicast)
    DATA --recv EVICT--> DONE                                              (multicast)
    DATA --send HAVE|ACK--> DATA;  FINISH --send ACK--> FINISH --send RESULT--> DONE
    FINISH --send NAK--> FINISH --recv CHUNK (repairs)--> FINISH      (--verify found damage)

The multicast frames travel only on a group member's own control connection, and only
in DATA (docs/protocol.md, "Multicast"): GROUP gives the data plane's key and session
number; REF says which chunks, with which hashes, come in which multicast slice, and
counts for coverage and the root exactly like SAME; POLL asks what the member misses of
a slice and REPORT answers with a bitmap of the missing fragments; EVICT sends the
member out of the group, which ends the session (DONE on both sides, no END or
RESULT): it connects again for a unicast session that resumes from its journal.

Both, from any state but DONE and ERROR: send or receive ERROR --> ERROR.  A side
that has just detected an error (and so is in ERROR) may still send one ERROR frame
to tell its peer why.
"""

from __future__ import annotations

import enum

from .frames import FrameType


class Role(enum.Enum):
    SENDER = "sender"
    RECEIVER = "receiver"

    @property
    def peer(self) -> Role:
        return Role.RECEIVER if self is Role.SENDER else Role.SENDER


class State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await-hello"  # sender: HELLO sent, waiting for the receiver's
    HELLO = "hello"  # receiver: HELLO received, must answer with its own
    PAKE = "pake"  # must send our PAKE message
    AWAIT_PAKE = "await-pake"
    CONFIRM = "confirm"  # must send our key confirmation
    AWAIT_CONFIRM = "await-confirm"
    PLAN = "plan"  # sender: must send PLAN
    AWAIT_PLAN = "await-plan"  # receiver
    AWAIT_ACCEPT = "await-accept"  # sender: PLAN sent, waiting for ACCEPT (or ERROR)
    DECIDE = "decide"  # receiver: must accept (ACCEPT) or refuse (ERROR)
    DATA = "data"  # chunks flow sender -> receiver until END
    AWAIT_RESULT = "await-result"  # sender: END sent
    FINISH = "finish"  # receiver: END received, must sync/verify and send RESULT
    DONE = "done"
    ERROR = "error"


class Direction(enum.Enum):
    SEND = "send"
    RECV = "recv"


S, R = Role.SENDER, Role.RECEIVER
OUT, IN = Direction.SEND, Direction.RECV

#: (role, state, direction, frame type) -> next state.  The whole protocol.
TRANSITIONS: dict[tuple[Role, State, Direction, FrameType], State] = {
    (S, State.START, OUT, FrameType.HELLO): State.AWAIT_HELLO,
    (S, State.AWAIT_HELLO, IN, FrameType.HELLO): State.PAKE,
    (S, State.PAKE, OUT, FrameType.PAKE): State.AWAIT_PAKE,
    (S, State.AWAIT_PAKE, IN, FrameType.PAKE): State.CONFIRM,
    (S, State.CONFIRM, OUT, FrameType.CONFIRM): State.AWAIT_CONFIRM,
    (S, State.AWAIT_CONFIRM, IN, FrameType.CONFIRM): State.PLAN,
    (S, State.PLAN, OUT, FrameType.PLAN): State.AWAIT_ACCEPT,
    (S, State.AWAIT_ACCEPT, IN, FrameType.ACCEPT): State.DATA,
    (S, State.DATA, OUT, FrameType.CHUNK): State.DATA,
    (S, State.DATA, OUT, FrameType.ZERO): State.DATA,
    (S, State.DATA, OUT, FrameType.SAME): State.DATA,
    (S, State.DATA, OUT, FrameType.PATCH): State.DATA,
    (S, State.DATA, OUT, FrameType.LOST): State.DATA,
    (S, State.DATA, OUT, FrameType.LATER): State.DATA,
    (S, State.DATA, OUT, FrameType.GROUP): State.DATA,  # multicast: the data plane
    (S, State.DATA, OUT, FrameType.REF): State.DATA,
    (S, State.DATA, OUT, FrameType.POLL): State.DATA,
    (S, State.DATA, IN, FrameType.REPORT): State.DATA,
    (S, State.DATA, OUT, FrameType.EVICT): State.DONE,
    (S, State.DATA, IN, FrameType.HAVE): State.DATA,
    (S, State.DATA, IN, FrameType.ACK): State.DATA,
    (S, State.DATA, OUT, FrameType.END): State.AWAIT_RESULT,
    (S, State.AWAIT_RESULT, IN, FrameType.HAVE): State.AWAIT_RESULT,
    (S, State.AWAIT_RESULT, IN, FrameType.ACK): State.AWAIT_RESULT,
    (S, State.AWAIT_RESULT, IN, FrameType.NAK): State.AWAIT_RESULT,
    (S, State.AWAIT_RESULT, OUT, FrameType.CHUNK): State.AWAIT_RESULT,  # a repair
    (S, State.AWAIT_RESULT, IN, FrameType.RESULT): State.DONE,
    (R, State.START, IN, FrameType.HELLO): State.HELLO,
    (R, State.HELLO, OUT, FrameType.HELLO): State.AWAIT_PAKE,
    (R, State.AWAIT_PAKE, IN, FrameType.PAKE): State.PAKE,
    (R, State.PAKE, OUT, FrameType.PAKE): State.AWAIT_CONFIRM,
    (R, State.AWAIT_CONFIRM, IN, FrameType.CONFIRM): State.CONFIRM,
    (R, State.CONFIRM, OUT, FrameType.CONFIRM): State.AWAIT_PLAN,
    (R, State.AWAIT_PLAN, IN, FrameType.PLAN): State.DECIDE,
    (R, State.DECIDE, OUT, FrameType.ACCEPT): State.DATA,
    (R, State.DATA, IN, FrameType.CHUNK): State.DATA,
    (R, State.DATA, IN, FrameType.ZERO): State.DATA,
    (R, State.DATA, IN, FrameType.SAME): State.DATA,
    (R, State.DATA, IN, FrameType.PATCH): State.DATA,
    (R, State.DATA, IN, FrameType.LOST): State.DATA,
    (R, State.DATA, IN, FrameType.LATER): State.DATA,
    (R, State.DATA, IN, FrameType.GROUP): State.DATA,  # multicast: the data plane
    (R, State.DATA, IN, FrameType.REF): State.DATA,
    (R, State.DATA, IN, FrameType.POLL): State.DATA,
    (R, State.DATA, OUT, FrameType.REPORT): State.DATA,
    (R, State.DATA, IN, FrameType.EVICT): State.DONE,
    (R, State.DATA, OUT, FrameType.HAVE): State.DATA,
    (R, State.DATA, OUT, FrameType.ACK): State.DATA,
    (R, State.DATA, IN, FrameType.END): State.FINISH,
    (R, State.FINISH, OUT, FrameType.ACK): State.FINISH,
    (R, State.FINISH, OUT, FrameType.NAK): State.FINISH,
    (R, State.FINISH, IN, FrameType.CHUNK): State.FINISH,  # a repair
    (R, State.FINISH, OUT, FrameType.RESULT): State.DONE,
}

TERMINAL = frozenset({State.DONE, State.ERROR})


def next_state(role: Role, state: State, direction: Direction, ftype: FrameType) -> State | None:
    """The state after this frame, or ``None`` if the frame is illegal here."""
    if ftype is FrameType.ERROR:
        return None if state in TERMINAL else State.ERROR
    return TRANSITIONS.get((role, state, direction, ftype))
