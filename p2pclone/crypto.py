"""Pairing and record protection: code -> SPAKE2 -> HKDF -> confirmation -> AEAD.

Theory of operation (docs/security.md has the threat model):

1. Both ends know a short code.  The sender runs SPAKE2 side A, the receiver side B,
   with fixed identities; each sends one PAKE message.  A wrong code gives two
   unrelated keys and the attacker learns nothing that lets them test a second guess
   offline: one session is one guess.
2. HKDF-SHA256 turns the SPAKE2 key into six secrets, salted with the SHA-256 of the
   handshake transcript (both HELLOs and both PAKE frames, headers included), so a
   man in the middle who altered any of them (a downgraded cipher, say) ends up with
   different keys.
3. Explicit key confirmation: each side sends HMAC-SHA256(its confirm key,
   transcript || role).  The receiver checks the sender's before it answers; either
   check failing ends the session (exit 3) before any plan is seen.
4. Every later frame is an AEAD record: AES-256-GCM when both CPUs have AES
   instructions, else ChaCha20-Poly1305.  One key and IV per direction; the nonce is
   IV XOR the frame's sequence number (TLS 1.3 style), so a replayed, dropped or
   reordered record fails to open.  The header is the associated data.
5. Rekeying: after REKEY_BYTES of payload or REKEY_RECORDS records under one key,
   both ends derive the next key with HKDF-Expand — deterministic, no message —
   which keeps AES-GCM far inside its safety limits on multi-terabyte disks.

Pure computation, no I/O: the sans-I/O connection uses it directly.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from spake2 import SPAKE2_A, SPAKE2_B

from .errors import AuthenticationError, RemoteProtocolError, WrongCode

AES_GCM = "aes-256-gcm"
CHACHA = "chacha20-poly1305"
TAG_SIZE = 16
ID_SENDER = b"p2pclone-v1-sender"
ID_RECEIVER = b"p2pclone-v1-receiver"

#: A key protects at most this much payload (2^34 bytes = 16 GiB) ...
REKEY_BYTES = 1 << 34
#: ... or this many records, whichever comes first.  AES-GCM's confidentiality
#: margin with 1 MiB records stays above 2^-57 per key at these volumes
#: (TLS 1.3's 2^24.5 full records of 16 KiB is ~380 GB; we rekey 20x earlier).
REKEY_RECORDS = 1 << 20

WRONG_CODE = (
    "the pairing failed: wrong code (a typo?), or someone in the middle; check the code "
    "the receiver shows and type it again"
)


def normalize_code(code: str) -> bytes:
    """Codes are compared case- and space-insensitively: ' 7 Guitar remind' == '7-guitar-remind'."""
    return "-".join(code.strip().lower().replace("-", " ").split()).encode()


@cache
def cpu_has_aes() -> bool:
    """True if this CPU has AES instructions (AES-NI on x86, the ARMv8 AES extension)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown: AES-GCM is the safe, common default
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return "aes" in value.split()
    return True


def choose_cipher(ours: bool, theirs: bool) -> str:
    return AES_GCM if ours and theirs else CHACHA


class Pairing:
    """One side of the SPAKE2 exchange for ``code``."""

    def __init__(self, code: str, *, sender: bool) -> None:
        cls = SPAKE2_A if sender else SPAKE2_B
        self._sender = sender
        self._spake = cls(normalize_code(code), idA=ID_SENDER, idB=ID_RECEIVER)
        self.message: bytes = self._spake.start()

    def finish(self, peer_message: bytes, transcript: bytes, cipher: str) -> SessionKeys:
        """Derive the session keys from the peer's PAKE message and the transcript hash.

        Raises:
            RemoteProtocolError: the peer's message is not a valid SPAKE2 element.
        """
        try:
            shared = self._spake.finish(peer_message)
        except Exception as exc:  # spake2 raises ValueError and several SPAKEErrors
            raise RemoteProtocolError(
                f"the peer's pairing message is invalid ({type(exc).__name__})"
            ) from None
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=4 * 32 + 2 * 12,
            salt=transcript,
            info=b"p2pclone v1 session keys",
        ).derive(shared)
        c_s, c_r, k_s, k_r = (okm[i : i + 32] for i in range(0, 128, 32))
        iv_s, iv_r = okm[128:140], okm[140:152]
        return SessionKeys(
            sender=self._sender,
            transcript=transcript,
            cipher=cipher,
            confirm_sender=c_s,
            confirm_receiver=c_r,
            send=RecordKey(cipher, k_s if self._sender else k_r, iv_s if self._sender else iv_r),
            recv=RecordKey(cipher, k_r if self._sender else k_s, iv_r if self._sender else iv_s),
        )


@dataclass
class SessionKeys:
    sender: bool
    transcript: bytes
    cipher: str
    confirm_sender: bytes
    confirm_receiver: bytes
    send: RecordKey
    recv: RecordKey

    def _mac(self, of_sender: bool) -> bytes:
        key = self.confirm_sender if of_sender else self.confirm_receiver
        role = b"sender" if of_sender else b"receiver"
        return hmac.new(key, self.transcript + role, hashlib.sha256).digest()

    def my_confirmation(self) -> bytes:
        return self._mac(self.sender)

    def check_peer_confirmation(self, mac: bytes) -> None:
        """Raises AuthenticationError unless ``mac`` proves the peer derived our keys."""
        if not hmac.compare_digest(mac, self._mac(not self.sender)):
            raise WrongCode(WRONG_CODE)


class RecordKey:
    """AEAD state for one direction: key, IV, and the rekey schedule."""

    def __init__(self, cipher: str, key: bytes, iv: bytes) -> None:
        self.cipher = cipher
        self._key = key
        self._iv = int.from_bytes(iv, "big")
        self._aead = self._make(key)
        self._bytes = 0
        self._records = 0
        self.generation = 0

    def _make(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        return AESGCM(key) if self.cipher == AES_GCM else ChaCha20Poly1305(key)

    def _nonce(self, seq: int) -> bytes:
        return (self._iv ^ seq).to_bytes(12, "big")

    def _account(self, n: int) -> None:
        self._bytes += n
        self._records += 1
        if self._bytes >= REKEY_BYTES or self._records >= REKEY_RECORDS:
            self._key = HKDFExpand(hashes.SHA256(), 32, b"p2pclone v1 rekey").derive(self._key)
            self._aead = self._make(self._key)
            self._bytes = self._records = 0
            self.generation += 1

    def seal(self, seq: int, header: bytes, plaintext: bytes) -> bytes:
        """ciphertext || tag for frame ``seq`` with ``header`` as associated data."""
        out = self._aead.encrypt(self._nonce(seq), plaintext, header)
        self._account(len(plaintext))
        return out

    def open(self, seq: int, header: bytes, sealed: bytes | memoryview) -> bytes:
        """The plaintext, or AuthenticationError if the record was altered or misplaced."""
        try:
            out = self._aead.decrypt(self._nonce(seq), sealed, header)
        except InvalidTag:
            raise AuthenticationError(
                f"record {seq} failed authentication: someone on the link modified, replayed "
                "or reordered data (or the link corrupts it); the session was stopped and "
                "nothing unauthenticated was written"
            ) from None
        self._account(len(out))
        return out


_LEN = struct.Struct("<I")


def transcript_update(h: hashlib._Hash, frame_bytes: bytes) -> None:
    """Add one handshake frame (header + meta) to the transcript, length-prefixed."""
    h.update(_LEN.pack(len(frame_bytes)))
    h.update(frame_bytes)
