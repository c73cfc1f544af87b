"""Integration tests: aiodicom over loopback TCP, TLS and memory streams."""
