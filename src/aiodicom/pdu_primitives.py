"""User Information sub-items of the A-ASSOCIATE PDUs (PS3.8 D.3.3, PS3.7 D.3.3).

Each class is both the negotiation primitive a user builds and the sub-item the
PDU codec encodes: there is one representation per concept. The names are
pynetdicom's, so code written for pynetdicom's ``ext_neg`` keeps working::

    item = UserIdentityNegotiation()
    item.user_identity_type = 2
    item.primary_field = b"user"
    item.secondary_field = b"secret"
    async with ae.associate(host, port, ext_neg=[item]) as assoc: ...

The classes are mutable (as pynetdicom's) and slotted, so a misspelt attribute
is an error rather than a silently ignored field. This module is sans-IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import UID

__all__ = (
    "AsynchronousOperationsWindowNegotiation",
    "ImplementationClassUIDNotification",
    "ImplementationVersionNameNotification",
    "MaximumLengthNotification",
    "SCP_SCU_RoleSelectionNegotiation",
    "SOPClassCommonExtendedNegotiation",
    "SOPClassExtendedNegotiation",
    "UnknownUserItem",
    "UserIdentityNegotiation",
    "UserItem",
)


@dataclass(slots=True)
class MaximumLengthNotification:
    """Maximum Length sub-item (0x51), PS3.8 D.1.

    The largest P-DATA-TF variable field the sender will receive; 0 is no limit.
    """

    maximum_length_received: int = 0
    item_type = 0x51


@dataclass(slots=True)
class ImplementationClassUIDNotification:
    """Implementation Class UID sub-item (0x52), PS3.7 D.3.3.2."""

    implementation_class_uid: UID | str | None = None
    item_type = 0x52


@dataclass(slots=True)
class ImplementationVersionNameNotification:
    """Implementation Version Name sub-item (0x55), PS3.7 D.3.3.2 (1-16 chars)."""

    implementation_version_name: str | None = None
    item_type = 0x55


@dataclass(slots=True)
class AsynchronousOperationsWindowNegotiation:
    """Asynchronous Operations Window sub-item (0x53), PS3.7 D.3.3.3.

    0 means unlimited; 1 and 1 (the default when the item is absent) means
    operations are performed one at a time.
    """

    maximum_number_operations_invoked: int = 1
    maximum_number_operations_performed: int = 1
    item_type = 0x53


@dataclass(slots=True)
class SCP_SCU_RoleSelectionNegotiation:
    """SCP/SCU Role Selection sub-item (0x54), PS3.7 D.3.3.4.

    In a request, ``scu_role``/``scp_role`` propose the roles the requestor
    wants; in an acceptance they are the roles the acceptor agrees to. ``None``
    in a request is sent as 0 (not proposed).
    """

    sop_class_uid: UID | str | None = None
    scu_role: bool | None = None
    scp_role: bool | None = None
    item_type = 0x54


@dataclass(slots=True)
class SOPClassExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item (0x56), PS3.7 D.3.3.5."""

    sop_class_uid: UID | str | None = None
    service_class_application_information: bytes | None = None
    item_type = 0x56


@dataclass(slots=True)
class SOPClassCommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (0x57), PS3.7 D.3.3.6.

    Only ever sent by the requestor; the acceptor answers nothing.
    """

    sop_class_uid: UID | str | None = None
    service_class_uid: UID | str | None = None
    related_general_sop_class_identification: list[UID] = field(default_factory=list)
    item_type = 0x57


@dataclass(slots=True)
class UserIdentityNegotiation:
    """User Identity sub-item: request (0x58) or response (0x59), PS3.7 D.3.3.7.

    A request sets ``user_identity_type`` (1 username, 2 username and passcode,
    3 Kerberos, 4 SAML, 5 JWT), ``primary_field`` and, for type 2,
    ``secondary_field``. An acceptance sets ``server_response`` only.
    """

    user_identity_type: int | None = None
    positive_response_requested: bool = False
    primary_field: bytes | None = None
    secondary_field: bytes | None = None
    server_response: bytes | None = None

    @property
    def item_type(self) -> int:
        """0x59 when this is a response (``server_response`` set), else 0x58."""
        return 0x59 if self.server_response is not None else 0x58


@dataclass(slots=True)
class UnknownUserItem:
    """A User Information sub-item this implementation does not know.

    Kept as received (type and raw value) rather than dropped, PS3.8 D.1.
    """

    item_type: int
    data: bytes = b""


UserItem = (
    MaximumLengthNotification
    | ImplementationClassUIDNotification
    | ImplementationVersionNameNotification
    | AsynchronousOperationsWindowNegotiation
    | SCP_SCU_RoleSelectionNegotiation
    | SOPClassExtendedNegotiation
    | SOPClassCommonExtendedNegotiation
    | UserIdentityNegotiation
    | UnknownUserItem
)
