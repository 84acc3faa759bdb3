"""Questions for the person at the terminal: the pairing code, passphrases, the SMB
password, and the typed "yes" before a target is overwritten.  Without a terminal each
one is a usage or safety error that says what to pass instead.
"""

from __future__ import annotations

import os
import sys

from ..disks import Target
from ..errors import SafetyError, UsageError, printable
from ..options import Approve
from ..protocol import Plan
from ..units import human_bytes
from .output import Output

#: where scripts put an image's passphrase (and a new one, for an image saved from one)
PASSPHRASE_ENV = "P2PCLONE_PASSPHRASE"
NEW_PASSPHRASE_ENV = "P2PCLONE_NEW_PASSPHRASE"


def make_approve(out: Output) -> Approve:
    """The question before a target is overwritten (not asked with --yes: the receiving
    session does not call it then)."""

    def approve(plan: Plan, target: Target) -> None:
        # A new or empty file holds nothing to lose; anything else is overwritten
        # only with --yes or an explicit "yes" typed at a terminal.
        if not target.is_block and target.size == 0:
            return
        if not sys.stdin.isatty():
            raise SafetyError(
                f"the target {target.path} ({human_bytes(target.size)}) would be overwritten "
                "and there is no terminal to ask: pass --yes to confirm; nothing was written"
            )
        from ..disks.describe import describe
        from ..volumes.layout import left_out

        out.pause()
        layout = "".join(
            f"\n    partition {k[4:]}: {printable(str(v))}"
            for k, v in plan.source.items()
            if k.startswith("part") and k[4:].isdigit()
        )
        skipped = left_out(plan.source)
        print(
            f"About to OVERWRITE this target with {human_bytes(plan.source_size)} from "
            f"{printable(str(plan.source.get('name', 'the sender')))}{layout}\n"
            + (f"  ({printable(skipped)})\n" if skipped else "")
            + describe(target.path, target.size, target.device),
            file=sys.stderr,
        )
        answer = input("Type yes to overwrite it: ")
        if answer.strip().lower() != "yes":
            raise SafetyError("not confirmed: the target was left untouched")

    return approve


def ask_secret(prompt: str, *, missing: str, twice: bool = False) -> str:
    """A passphrase typed at the terminal (not echoed); without a terminal, ``missing``."""
    if not sys.stdin.isatty():
        raise UsageError(missing)
    import getpass

    value = getpass.getpass(prompt)
    if not value:
        raise UsageError("no passphrase given")
    if twice and getpass.getpass("Type it again: ") != value:
        raise UsageError("the two passphrases differ; nothing was done")
    return value


def smb_password(*urls: str) -> str | None:
    """The SMB password for the first smb:// URL: None to take it from the URL or
    $P2PCLONE_SMB_PASSWORD, else asked at the terminal."""
    from ..image.store import PASSWORD_ENV

    for url in urls:
        if url.lower().startswith("smb://"):
            if os.environ.get(PASSWORD_ENV) is not None or not sys.stdin.isatty():
                return None
            import getpass
            import urllib.parse

            if urllib.parse.urlsplit(url).password:
                return None
            return getpass.getpass(f"SMB password for {url}: ")
    return None


def image_passphrase(given: str | None, url: str, *, new: bool, env: str = PASSPHRASE_ENV) -> str:
    """The passphrase of the image at ``url``: ``given`` (--passphrase), ``$env``, or
    asked at the terminal (twice for a ``new`` image); "" for an image read with
    ``?plain=1``, which has none.

    Raises:
        UsageError: none given and no terminal to ask.
    """
    from ..image.urls import read_options

    if not new and read_options(url).plain:
        return given or ""
    return (
        given
        or os.environ.get(env)
        or ask_secret(
            f"Passphrase to encrypt the image {url}: "
            if new
            else f"Passphrase of the image {url}: ",
            twice=new,
            missing=f"the image {url} is encrypted with a passphrase and there is no "
            f"terminal to ask for it: set {env} (or pass --passphrase, which other "
            "users of this machine can see in the process list)",
        )
    )


def ask_code() -> str:
    """Prompt for the receiver's code on a terminal; without one, it is a usage error."""
    if not sys.stdin.isatty():
        raise UsageError(
            "no pairing code and no terminal to ask for it: set P2PCLONE_CODE to the code "
            "the receiver shows (or pass --code, which other users of this machine can "
            "see in the process list)"
        )
    code = input("Code shown by the receiver: ").strip()
    if not code:
        raise UsageError("no pairing code given")
    return code
