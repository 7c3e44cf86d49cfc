"""The product cache both services read: the port (``port.py``, versioned entries that
only move forward), the Redis adapter and the in-process one. Imports nothing of the
project."""
