"""Events and their handlers, as pynetdicom's ``evt`` module, made async.

There are two kinds of event. *Notification* events (EVT_CONN_OPEN,
EVT_PDU_RECV, EVT_ESTABLISHED, ...) tell every bound handler that something
happened; what they return is ignored and an exception they raise is logged.
*Intervention* events (EVT_C_ECHO, EVT_C_STORE, EVT_USER_ID, ...) ask the one
bound handler for an answer; when none is bound the default answer applies.

The end of an association is notified last: EVT_ABORTED or EVT_RELEASED,
then EVT_CONN_CLOSE, each once every service handler the association started
has returned (a handler still running when the association ends is cancelled
first), so a handler of these may release what the service handlers used.

A handler is ``handler(event)`` or, bound as ``(EVT_X, handler, [a, b])``,
``handler(event, a, b)``. It may be a plain function (run on the event loop: it
must not block) or an ``async def``. See the docs for each event's contract.

On asyncio, a plain EVT_C_ECHO or EVT_C_STORE handler may be called straight
from the event loop's I/O callback, outside any task, when that request is
the only one being served (the fast path): ``asyncio.current_task()`` is then
``None``. anyio's clock and primitives still work there; a handler that needs
a task of its own (cancel scopes, ``anyio.get_current_task()``) should be an
``async def``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from pydicom.dataset import Dataset, FileMetaDataset

if TYPE_CHECKING:
    from .association import Association
    from .presentation import ContextTuple

__all__ = (
    "EVT_ABORTED",
    "EVT_ACCEPTED",
    "EVT_ASYNC_OPS",
    "EVT_CONN_CLOSE",
    "EVT_CONN_OPEN",
    "EVT_C_ECHO",
    "EVT_C_FIND",
    "EVT_C_GET",
    "EVT_C_MOVE",
    "EVT_C_STORE",
    "EVT_DIMSE_RECV",
    "EVT_DIMSE_SENT",
    "EVT_ESTABLISHED",
    "EVT_FSM_TRANSITION",
    "EVT_N_ACTION",
    "EVT_N_CREATE",
    "EVT_N_DELETE",
    "EVT_N_EVENT_REPORT",
    "EVT_N_GET",
    "EVT_N_SET",
    "EVT_PDU_RECV",
    "EVT_PDU_SENT",
    "EVT_REJECTED",
    "EVT_RELEASED",
    "EVT_REQUESTED",
    "EVT_SOP_COMMON",
    "EVT_SOP_EXTENDED",
    "EVT_USER_ID",
    "Event",
    "EventHandlerType",
    "EventType",
    "InterventionEvent",
    "NotificationEvent",
)

LOGGER = logging.getLogger("aiodicom")


@dataclass(frozen=True, slots=True, eq=False)
class EventType:
    """An event type: its name, a description and whether it is an intervention.

    Each type is one object (``evt.EVT_C_ECHO`` ...), compared and hashed by
    identity: handler tables are looked up on every message. Pickling and
    copying return that same object.
    """

    name: str
    description: str
    is_intervention: bool

    @property
    def is_notification(self) -> bool:
        """True for a notification event."""
        return not self.is_intervention

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str | tuple[Any, ...]:
        if globals().get(self.name) is self:
            return str(self.name)  # the module's own object, by name
        return (EventType, (self.name, self.description, self.is_intervention))


def NotificationEvent(name: str, description: str) -> EventType:
    """A notification event type."""
    return EventType(name, description, False)


def InterventionEvent(name: str, description: str) -> EventType:
    """An intervention event type."""
    return EventType(name, description, True)


# Notification events
EVT_CONN_OPEN = NotificationEvent("EVT_CONN_OPEN", "Connection with remote opened")
EVT_CONN_CLOSE = NotificationEvent("EVT_CONN_CLOSE", "Connection with remote closed")
EVT_REQUESTED = NotificationEvent("EVT_REQUESTED", "Association requested")
EVT_ACCEPTED = NotificationEvent("EVT_ACCEPTED", "Association request accepted")
EVT_REJECTED = NotificationEvent("EVT_REJECTED", "Association request rejected")
EVT_ESTABLISHED = NotificationEvent("EVT_ESTABLISHED", "Association established")
EVT_RELEASED = NotificationEvent("EVT_RELEASED", "Association released")
EVT_ABORTED = NotificationEvent("EVT_ABORTED", "Association aborted")
EVT_PDU_RECV = NotificationEvent("EVT_PDU_RECV", "PDU received")
EVT_PDU_SENT = NotificationEvent("EVT_PDU_SENT", "PDU sent")
EVT_DIMSE_RECV = NotificationEvent("EVT_DIMSE_RECV", "DIMSE message received")
EVT_DIMSE_SENT = NotificationEvent("EVT_DIMSE_SENT", "DIMSE message sent")
EVT_FSM_TRANSITION = NotificationEvent("EVT_FSM_TRANSITION", "State machine transitioning")

# Intervention events
EVT_C_ECHO = InterventionEvent("EVT_C_ECHO", "C-ECHO request received")
EVT_C_STORE = InterventionEvent("EVT_C_STORE", "C-STORE request received")
EVT_C_FIND = InterventionEvent("EVT_C_FIND", "C-FIND request received")
EVT_C_GET = InterventionEvent("EVT_C_GET", "C-GET request received")
EVT_C_MOVE = InterventionEvent("EVT_C_MOVE", "C-MOVE request received")
EVT_N_ACTION = InterventionEvent("EVT_N_ACTION", "N-ACTION request received")
EVT_N_CREATE = InterventionEvent("EVT_N_CREATE", "N-CREATE request received")
EVT_N_DELETE = InterventionEvent("EVT_N_DELETE", "N-DELETE request received")
EVT_N_EVENT_REPORT = InterventionEvent("EVT_N_EVENT_REPORT", "N-EVENT-REPORT request received")
EVT_N_GET = InterventionEvent("EVT_N_GET", "N-GET request received")
EVT_N_SET = InterventionEvent("EVT_N_SET", "N-SET request received")
EVT_USER_ID = InterventionEvent("EVT_USER_ID", "User identity negotiation requested")
EVT_SOP_EXTENDED = InterventionEvent("EVT_SOP_EXTENDED", "SOP class extended negotiation")
EVT_SOP_COMMON = InterventionEvent("EVT_SOP_COMMON", "SOP class common extended negotiation")
EVT_ASYNC_OPS = InterventionEvent("EVT_ASYNC_OPS", "Asynchronous operations negotiation")

Handler: TypeAlias = Callable[..., Any]
#: What ``evt_handlers`` takes: ``(EVT_X, handler)`` or ``(EVT_X, handler, [args])``.
EventHandlerType: TypeAlias = tuple[EventType, Handler] | tuple[EventType, Handler, Sequence[Any]]


class Event:
    """What a handler receives: the event's type, association and details.

    Only the attributes that make sense for the event are set; the others are
    ``None``. ``event.event`` (pynetdicom's name) and ``event.event_kind`` are
    the :class:`EventType`.
    """

    # Defaults, overridden per instance by the attributes the event carries.
    context: ContextTuple | None = None
    message_id: int | None = None
    is_cancelled = False
    move_destination: str | None = None
    pdu: Any = None
    message: Any = None
    current_state: str | None = None
    fsm_event: str | None = None
    action: str | None = None
    next_state: str | None = None
    user_id_type: int | None = None
    primary_field: bytes | None = None
    secondary_field: bytes | None = None
    app_info: dict[Any, bytes] | None = None
    items: dict[Any, Any] | None = None
    invoked: int | None = None
    performed: int | None = None
    address: tuple[str, int] | None = None
    dataset_path: str | None = None
    _dataset: Dataset | None = None
    _encoded: bytes | None = None
    _transfer_syntax: Any = None
    _data_offset = 0
    _request: Any = None
    _raw_request: bytes | None = None
    #: The request's command set as the DIMSE layer decoded it (see request_value()).
    _command: dict[str, Any] | None = None

    def __init__(self, assoc: Association, event: EventType, **attrs: Any) -> None:
        self.assoc = assoc
        self.event = event
        self.timestamp = datetime.now()
        if _PROPERTIES.isdisjoint(attrs):
            self.__dict__.update(attrs)  # plain attributes: no setattr() each
        else:
            for key, value in attrs.items():
                setattr(self, key, value)

    @property
    def request(self) -> Any:
        """The request's command set as a Dataset (DIMSE service events), else ``None``.

        Built on first access from the received bytes.
        """
        if self._request is None and self._raw_request is not None:
            from .dimse import command_dataset

            self._request = command_dataset(self._raw_request)
        return self._request

    @request.setter
    def request(self, value: Any) -> None:
        self._request = value

    @property
    def event_kind(self) -> EventType:
        """The event type (same as ``event.event``)."""
        return self.event

    @property
    def dataset(self) -> Dataset:
        """The request's data set, decoded on first access (C-STORE, N-*).

        For a spooled C-STORE (see :attr:`dataset_path`) it is read from the
        file, meta included. For C-STORE, a data set whose SOP Class UID is not
        the command's Affected SOP Class UID raises
        :class:`~aiodicom.errors.DatasetMismatch` (answered 0xA900 if the
        handler lets it propagate); one that does not decode raises
        :class:`~aiodicom.errors.DIMSEError` (answered 0xC210).
        """
        if self._dataset is None:
            from .dsutils import decode_dataset

            if self.dataset_path is not None:
                ds = _read_spooled(self.dataset_path)
            elif self._encoded is None:
                raise AttributeError(f"{self.event.name} has no data set")
            else:
                ds = decode_dataset(self._encoded, self._transfer_syntax)
            if self.event is EVT_C_STORE:
                _check_sop_class(ds, self.request)
            self._dataset = ds
        return self._dataset

    @property
    def identifier(self) -> Dataset:
        """The request's identifier (C-FIND, C-GET, C-MOVE), decoded on first access."""
        return self.dataset

    def encoded_dataset(self) -> bytes:
        """The data set exactly as received, in its transfer syntax.

        For a spooled C-STORE this reads the whole data set from
        :attr:`dataset_path` into memory: prefer the file.
        """
        if self._encoded is None:
            if self.dataset_path is not None:
                with open(self.dataset_path, "rb") as f:
                    f.seek(self._data_offset)
                    return f.read()
            raise AttributeError(f"{self.event.name} has no data set")
        return self._encoded

    @property
    def file_meta(self) -> FileMetaDataset:
        """File meta information for saving the received data set as Part 10."""
        from .dsutils import file_meta_for

        assert self.context is not None and self.request is not None
        return file_meta_for(
            self.request.get("AffectedSOPClassUID"),
            self.request.get("AffectedSOPInstanceUID"),
            self.context.transfer_syntax,
        )

    # N-service aliases, as pynetdicom's Event.
    @property
    def action_type(self) -> int | None:
        """N-ACTION Action Type ID."""
        return None if self.request is None else self.request.get("ActionTypeID")

    @property
    def event_type(self) -> int | None:
        """N-EVENT-REPORT Event Type ID."""
        return None if self.request is None else self.request.get("EventTypeID")

    @property
    def attribute_identifiers(self) -> list[Any] | None:
        """N-GET Attribute Identifier List, as a list of tags (empty: every
        attribute is asked for); ``None`` for other events."""
        if self.event is not EVT_N_GET or self.request is None:
            return None
        value = self.request.get("AttributeIdentifierList")
        if value is None or value == "":
            return []
        if isinstance(value, int):  # one tag (BaseTag is an int)
            return [value]
        return list(value)

    @property
    def action_information(self) -> Dataset:
        """N-ACTION Action Information (the data set)."""
        return self.dataset

    @property
    def event_information(self) -> Dataset:
        """N-EVENT-REPORT Event Information (the data set)."""
        return self.dataset

    @property
    def attribute_list(self) -> Dataset:
        """N-CREATE Attribute List (the data set)."""
        return self.dataset

    @property
    def modification_list(self) -> Dataset:
        """N-SET Modification List (the data set)."""
        return self.dataset

    def __repr__(self) -> str:
        return f"<Event {self.event.name} at {self.timestamp.isoformat()}>"


class HandlerRegistry:
    """The handlers bound on an AE or association: ``{EventType: [(handler, args)]}``."""

    __slots__ = ("_handlers",)

    def __init__(self, handlers: Sequence[EventHandlerType] | None = None) -> None:
        self._handlers: dict[EventType, list[tuple[Handler, tuple[Any, ...]]]] = {}
        for entry in handlers or ():
            self.bind(*entry)

    def bind(self, event: EventType, handler: Handler, args: Sequence[Any] | None = None) -> None:
        """Bind ``handler``; an intervention event keeps only its latest handler."""
        if not isinstance(event, EventType):
            raise TypeError(f"{event!r} is not an event type")
        if not callable(handler):
            raise TypeError(f"handler {handler!r} is not callable")
        entry = (handler, tuple(args or ()))
        if event.is_intervention:
            self._handlers[event] = [entry]
        else:
            bound = self._handlers.setdefault(event, [])
            if all(h is not handler for h, _ in bound):
                bound.append(entry)

    def unbind(self, event: EventType, handler: Handler) -> None:
        """Remove ``handler`` from ``event``."""
        bound = self._handlers.get(event, [])
        self._handlers[event] = [(h, a) for h, a in bound if h is not handler]
        if not self._handlers[event]:
            del self._handlers[event]

    def get(self, event: EventType) -> list[tuple[Handler, tuple[Any, ...]]]:
        """The handlers bound to ``event`` (empty list if none)."""
        return self._handlers.get(event, [])

    def __contains__(self, event: object) -> bool:
        return event in self._handlers

    @property
    def bindings(self) -> dict[EventType, list[tuple[Handler, tuple[Any, ...]]]]:
        """The live table behind the registry (event -> handlers), for lookups
        on hot paths; change it through :meth:`bind` and :meth:`unbind` only."""
        return self._handlers

    def copy(self) -> HandlerRegistry:
        """A shallow copy, for an association to extend."""
        new = HandlerRegistry()
        new._handlers = {k: list(v) for k, v in self._handlers.items()}
        return new

    def as_list(self) -> list[EventHandlerType]:
        """Every binding as ``(event, handler, args)``."""
        return [(e, h, list(a)) for e, hs in self._handlers.items() for h, a in hs]


async def call_handler(handler: Handler, event: Event, args: tuple[Any, ...]) -> Any:
    """Call a handler, awaiting its result if it is awaitable."""
    result = handler(event, *args)
    if inspect.isawaitable(result):
        return await result
    return result


def request_value(event: Event, keyword: str) -> Any:
    """A field of ``event``'s request command set, or ``None`` if it has none.

    For the package's own handlers, which read one or two fields per request
    (the SOP Instance UID of every C-STORE, say): the value as the DIMSE layer
    already decoded it (a UID as ``str``), where ``event.request.get()``
    builds pydicom's Dataset and converts and validates the element again,
    which costs more than the rest of saving a small instance.
    """
    command = getattr(event, "_command", None)  # (a stand-in for an Event may lack it)
    if command is not None:
        return command.get(keyword)
    request = event.request
    return None if request is None else request.get(keyword)


#: Event's properties: an attribute given by one of these names goes through setattr().
_PROPERTIES: frozenset[str] = frozenset(
    name for name, value in vars(Event).items() if isinstance(value, property)
)


async def notify(registry: HandlerRegistry, event: Event) -> None:
    """Call every handler bound to a notification event, logging their failures."""
    for handler, args in registry.get(event.event):
        try:
            await call_handler(handler, event, args)
        except Exception:
            LOGGER.exception("Exception in the handler bound to %s", event.event.name)


AwaitableOrValue: TypeAlias = Awaitable[Any] | Any


def _read_spooled(path: str) -> Dataset:
    from pydicom import dcmread

    from .errors import DIMSEError

    try:
        return dcmread(path)
    except Exception as exc:  # pydicom raises many types on garbage
        raise DIMSEError(f"spooled data set does not decode: {exc}") from exc


def _check_sop_class(ds: Dataset, request: Any) -> None:
    expected = None if request is None else request.get("AffectedSOPClassUID")
    found = ds.get("SOPClassUID")
    if expected and found and str(found) != str(expected):
        from .errors import DatasetMismatch

        raise DatasetMismatch(
            f"the data set's SOP Class UID {found} is not the command's {expected}"
        )
