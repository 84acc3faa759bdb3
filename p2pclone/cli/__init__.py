"""The command line: arguments, questions, progress display, exit codes.

The only part of p2pclone that prints (with ``demo.py`` for ``p2pclone demo``).
Drivers report through callbacks; errors arrive as
:class:`~p2pclone.errors.P2PCloneError` and leave as one sentence on stderr (and a
JSON line with ``--json``) plus the documented exit code.  Tracebacks only with
``--debug``, or for a real bug (anything that is not a P2PCloneError).

Rooms: ``commands`` (``main`` and one ``cmd_*`` per subcommand), ``parser``
(arguments and help), ``output`` (reports to the screen or JSON lines), ``prompts``
(code, passphrases, the overwrite question), ``tuning`` (malloc, once per process).
"""

from .commands import main
from .output import Output

__all__ = ["Output", "main"]
