"""aiodicom: asyncio-native DICOM networking (PS3.8 Upper Layer, PS3.7 DIMSE) on anyio.

The public surface::

    from aiodicom import AE, Association, evt, sop_class, build_context, build_role

Importing the package configures no logging; the library logs on the
``aiodicom`` logger (PDU summaries at DEBUG).
"""

from . import evt as evt
from . import sop_class as sop_class
from ._version import __version__ as __version__
from .ae import AE as AE
from .ae import ApplicationEntity as ApplicationEntity
from .ae import Server as Server
from .association import Association as Association
from .presentation import PresentationContext as PresentationContext
from .presentation import build_context as build_context
from .presentation import build_role as build_role

__all__ = (
    "AE",
    "ApplicationEntity",
    "Association",
    "PresentationContext",
    "Server",
    "__version__",
    "build_context",
    "build_role",
    "evt",
    "sop_class",
)
