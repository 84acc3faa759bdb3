"""p2pclone: clone one machine's disk straight onto another's.

The public pieces: :mod:`p2pclone.protocol` (the sans-I/O core), :func:`send` and
:func:`receive` (the trio drivers), :mod:`p2pclone.disks` and the error classes.
"""

__version__ = "0.1.0"
