"""The sans-I/O protocol core: frames, typed events and the session state machine.

Pure: importing it pulls in neither trio nor sockets (a test checks this).
"""

from .connection import CLOSED, NEED_DATA, Connection, Sentinel, zero_digest
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
from .messages import (
    HASH_SIZE,
    Accept,
    Chunk,
    Confirm,
    Encoding,
    End,
    Error,
    Event,
    Hello,
    Pake,
    Plan,
    Result,
    Zero,
    decode_event,
)
from .state import TRANSITIONS, Direction, Role, State, next_state

__all__ = [
    "CLOSED",
    "HASH_SIZE",
    "HEADER_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_META",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "TRAILER_SIZE",
    "TRANSITIONS",
    "Accept",
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
    "Hello",
    "Pake",
    "Plan",
    "RawFrame",
    "Result",
    "Role",
    "Sentinel",
    "State",
    "Zero",
    "decode_event",
    "encode_frame",
    "next_state",
    "zero_digest",
]
