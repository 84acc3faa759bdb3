"""Multicast: one sender, many receivers (work in progress: the sans-I/O data plane)."""
