"""Every error a user can see, and the exit code it maps to.

Each class's ``str()`` is one sentence a person at the keyboard can act on: what went
wrong and what to do.  The CLI prints it as ``p2pclone: error: <sentence>`` and exits
with ``exit_code``; anything that is *not* a :class:`P2PCloneError` is a bug and shows
its traceback.  ``code`` is the stable machine-readable name used in ``--json`` output
and in ERROR frames, so both ends of a session exit with the same code.

The table of codes is ``docs/errors.md``.
"""

from __future__ import annotations

import enum
import re


class ExitCode(enum.IntEnum):
    OK = 0
    OTHER = 1
    USAGE = 2
    AUTH = 3
    SAFETY = 4
    LINK = 5
    INTEGRITY = 6
    UNREADABLE = 7  # completed, except for source ranges that could not be read


# scheme://user:password@host: the password part, up to the netloc's last "@".
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/:@\s'\"]*):[^/\s'\"]*@")


def redact(text: str) -> str:
    """``text`` with any password written into a URL (``smb://user:secret@host``)
    taken out (``smb://user@host``): a password is never printed, logged or sent."""
    return _URL_PASSWORD.sub(r"\1@", text)


class P2PCloneError(Exception):
    """Base class: ``str(err)`` is a user-facing sentence (never with a URL's password)."""

    exit_code: ExitCode = ExitCode.OTHER
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(redact(message))
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(P2PCloneError):
    """Bad command line or URL."""

    exit_code = ExitCode.USAGE
    code = "usage"


class ProtocolError(P2PCloneError):
    """The byte stream broke the p2pclone protocol."""

    exit_code = ExitCode.OTHER
    code = "protocol"


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids: a bug in p2pclone."""

    code = "local-protocol"


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not valid p2pclone protocol."""

    code = "remote-protocol"


class AuthenticationError(P2PCloneError):
    exit_code = ExitCode.AUTH
    code = "auth"


class WrongCode(AuthenticationError):
    """The pairing failed: the codes differ (a typo, most likely) or someone in the
    middle altered the handshake.  A receiver may take another try (jobs.Typos)."""


class TransportError(P2PCloneError):
    """A link could not be opened, or it broke mid-session."""

    exit_code = ExitCode.LINK
    code = "link"


class StorageError(P2PCloneError):
    """An image's storage (a mounted share, an SMB server) failed mid-session.  Not a
    TransportError: the session's own link (in-process, for an image) is fine, so the
    other side is told why, and the exit code is the same (5)."""

    exit_code = ExitCode.LINK
    code = "storage"


class GroupError(P2PCloneError):
    """Multicast: receivers did not finish.  The exit code is theirs when they all failed
    alike (3: wrong code, 4: a target refused...), else 5."""

    code = "group"

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SourceError(P2PCloneError):
    code = "source"


class UnreadableError(SourceError):
    """A media error reading the source (EIO and the like): ``offset`` and ``length``
    are the read that failed; the sender narrows it down (disks/rescue.py)."""

    def __init__(self, message: str, offset: int = 0, length: int = 0, *, hung: bool = False):
        super().__init__(message)
        self.offset, self.length = offset, length
        #: the read did not answer in time (``--read-timeout``): not narrowed down
        self.hung = hung


class TargetError(P2PCloneError):
    code = "target"


class SafetyError(P2PCloneError):
    """Refused: going on could destroy data that should not be touched."""

    exit_code = ExitCode.SAFETY
    code = "safety"


class IntegrityError(P2PCloneError):
    """A hash did not match: the copy is not byte-identical."""

    exit_code = ExitCode.INTEGRITY
    code = "integrity"


def printable(text: str, limit: int = 1000) -> str:
    """``text`` that came from outside (a peer, an image header), safe to show on a
    terminal: every character that is not printable (ANSI escapes, carriage returns,
    newlines, bidirectional overrides) is shown as its escape, and it is cut at ``limit``."""
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[:limit] + "…"


_CODE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class PeerError(P2PCloneError):
    """The peer ended the session with an ERROR frame.

    After pairing (``authenticated``) we exit as it did.  Before, anyone who can reach
    the port can send an ERROR: its words are shown as said by an unauthenticated peer,
    with control characters escaped, and it cannot choose our exit code (3 if it
    claims a wrong code, else 5: the session did not happen)."""

    def __init__(
        self, message: str, *, code: str, exit_code: int, authenticated: bool = True
    ) -> None:
        message = printable(message)
        if not authenticated:
            message += " (said by the peer before pairing: not authenticated)"
        super().__init__(message, code=code if _CODE.fullmatch(code) else "peer")
        try:
            self.exit_code = ExitCode(exit_code)
        except ValueError:
            self.exit_code = ExitCode.OTHER
        if self.exit_code is ExitCode.OK:  # an ERROR is never a success
            self.exit_code = ExitCode.OTHER
        if not authenticated and self.exit_code is not ExitCode.AUTH:
            self.exit_code = ExitCode.LINK
