"""Multicast: one sender, a group of receivers, one copy of the data on the wire.

The ``multicast://`` far end, opened by the jobs (p2pclone/jobs.py) through
``driver.py``; the sessions (p2pclone/sender, p2pclone/receiver) import nothing from
here.  Each receiver runs the ordinary receiver session over its own
sealed TCP control connection to the sender (pairing, PLAN, target checks, journal), and
``feed.py`` plugs the group's data plane into it: GROUP, REF, POLL/REPORT and EVICT
frames on that connection, sealed datagrams beside it (``plane.py``), whose chunks are
written only if they match the hashes the receiver's own connection gave.  The sender
(``sender.py``) reads, hashes and compresses each chunk once, multicasts it in slices
with repair rounds for the union of the members' losses, and evicts a member that falls
too far behind; an evicted or restarted receiver (``receiver.py``) connects again for
an ordinary unicast session, which resumes from its journal.  The sans-I/O parts are
``dataplane.py`` (fragments, assembly, repair rounds, eviction, the rate governor) and
``guard.py`` (how many guesses at the code pairing allows); see docs/protocol.md and
docs/transports.md.
"""
