"""The exceptions aiodicom raises.

Every error the library raises derives from :class:`DicomNetworkError`, except
transport failures (``OSError`` subclasses, e.g. a refused connection) and
timeouts (``TimeoutError``), which keep their standard Python types so that
ordinary ``except OSError`` / ``except TimeoutError`` code works.

This module is part of the sans-IO core: it imports nothing but the standard
library.
"""

from __future__ import annotations

__all__ = (
    "AbortSource",
    "AssociationAborted",
    "AssociationRejected",
    "DIMSEError",
    "DatasetMismatch",
    "DicomNetworkError",
    "LocalProtocolError",
    "NoAcceptedContext",
    "PDUError",
)


class AbortSource:
    """A-ABORT source values, PS3.8 Table 9-26."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class DicomNetworkError(Exception):
    """Base class of every error raised by aiodicom."""


class PDUError(DicomNetworkError):
    """The peer sent a malformed PDU or violated the protocol.

    ``source`` and ``reason`` are the A-ABORT values (PS3.8 Table 9-26) that the
    local service provider sends in answer: the source is always the service
    provider (2); the reason is one of 0 (not specified), 1 (unrecognized PDU),
    2 (unexpected PDU), 4 (unrecognized PDU parameter), 5 (unexpected PDU
    parameter) or 6 (invalid PDU parameter value).
    """

    def __init__(self, message: str, *, reason: int = 6, source: int = 2) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


class LocalProtocolError(DicomNetworkError):
    """The local user asked for something the protocol does not allow now.

    For example sending P-DATA before the association is established. Nothing
    is sent to the peer when this is raised.
    """


class AssociationRejected(DicomNetworkError):
    """The peer rejected the association request (A-ASSOCIATE-RJ).

    ``result``, ``source`` and ``reason`` are the values of PS3.8 9.3.4:
    result 1 rejected-permanent, 2 rejected-transient; source 1 service-user,
    2 service-provider (ACSE), 3 service-provider (presentation).
    """

    _REASONS: dict[tuple[int, int], str] = {
        (1, 1): "no-reason-given",
        (1, 2): "application-context-name-not-supported",
        (1, 3): "calling-AE-title-not-recognized",
        (1, 7): "called-AE-title-not-recognized",
        (2, 1): "no-reason-given",
        (2, 2): "protocol-version-not-supported",
        (3, 1): "temporary-congestion",
        (3, 2): "local-limit-exceeded",
    }

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        kind = {1: "permanent", 2: "transient"}.get(result, f"result {result}")
        why = self._REASONS.get((source, reason), f"reason {reason}")
        super().__init__(f"association rejected ({kind}, source {source}): {why}")


class AssociationAborted(DicomNetworkError):
    """The association was aborted: by the peer (A-ABORT) or by a provider.

    ``source`` is the A-ABORT source (PS3.8 Table 9-26: 0 service-user,
    2 service-provider) and ``reason`` its reason/diagnostic. A provider abort
    detected locally (transport closed, protocol error) uses source 2.
    """

    def __init__(self, source: int, reason: int, message: str | None = None) -> None:
        self.source = source
        self.reason = reason
        if message is None:
            who = "peer service-user" if source == 0 else "service-provider"
            message = f"association aborted by {who} (source {source}, reason {reason})"
        super().__init__(message)


class NoAcceptedContext(DicomNetworkError, ValueError):
    """No accepted presentation context fits the SOP class (and transfer syntax)."""


class DIMSEError(DicomNetworkError):
    """A DIMSE message was malformed or did not fit the operation."""


class DatasetMismatch(DIMSEError):
    """A received data set's SOP Class UID is not the one its command names.

    Raised by ``event.dataset`` of EVT_C_STORE; a handler that lets it
    propagate answers 0xA900 (Error: Data Set does not match SOP Class,
    PS3.4 B.2.3).
    """
