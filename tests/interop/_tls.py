"""Mutual TLS contexts for the interop tests and the pynetdicom peer (no aiodicom in it)."""

from __future__ import annotations

import os
import ssl


def mutual_tls_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str],
    *,
    server: bool,
) -> ssl.SSLContext:
    """Our certificate and key; the peer must present one that chains to ``ca``."""
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=str(ca))
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
