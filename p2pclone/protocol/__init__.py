"""The sans-I/O protocol core: frames, typed events and the session state machine.

Pure: importing it pulls in neither trio nor sockets (a test checks this).
"""

from .connection import CLOSED, NEED_DATA, Connection, Sentinel
from .fields import HASH_SIZE, MAX_HASHES, SUB_HASH_SIZE, Encoding
from .frames import (
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MAX_META,
    PROTOCOL_VERSION,
    TRAILER_SIZE,
    FrameDecoder,
    FrameType,
    RawFrame,
    encode_frame,
)
from .group import Evict, Group, Poll, Ref, Report, bitmap, from_bitmap
from .messages import (
    Ack,
    Chunk,
    End,
    Error,
    Event,
    Have,
    Later,
    Lost,
    Nak,
    Patch,
    Result,
    Same,
    Zero,
    decode_event,
)
from .pairing import Confirm, Hello, Pake
from .plan import Accept, Plan
from .root import zero_digest
from .state import TRANSITIONS, Direction, Role, State, next_state

__all__ = [
    "CLOSED",
    "HASH_SIZE",
    "SUB_HASH_SIZE",
    "bitmap",
    "from_bitmap",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_META",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "TRAILER_SIZE",
    "TRANSITIONS",
    "MAX_HASHES",
    "Accept",
    "Ack",
    "Chunk",
    "Connection",
    "Direction",
    "Confirm",
    "Encoding",
    "End",
    "Error",
    "Event",
    "FrameDecoder",
    "FrameType",
    "Have",
    "Hello",
    "Nak",
    "Pake",
    "Patch",
    "Plan",
    "RawFrame",
    "Result",
    "Same",
    "Role",
    "Sentinel",
    "State",
    "Zero",
    "Later",
    "Lost",
    "Group",
    "Ref",
    "Poll",
    "Report",
    "Evict",
    "decode_event",
    "encode_frame",
    "next_state",
    "zero_digest",
]
