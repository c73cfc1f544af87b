"""Pin the public surface of API.md: names users import must not move."""

from __future__ import annotations

import inspect

import aiodicom
from aiodicom import errors, evt, pdu_primitives, sop_class


def test_top_level_names() -> None:
    for name in ("AE", "Association", "evt", "sop_class", "build_context", "build_role"):
        assert name in aiodicom.__all__
        assert getattr(aiodicom, name) is not None


def test_error_hierarchy() -> None:
    base = errors.DicomNetworkError
    for name in ("AssociationRejected", "AssociationAborted", "NoAcceptedContext", "PDUError"):
        assert issubclass(getattr(errors, name), base), name
    assert issubclass(errors.NoAcceptedContext, ValueError)
    rejected = errors.AssociationRejected(1, 1, 7)
    assert (rejected.result, rejected.source, rejected.reason) == (1, 1, 7)
    assert "called-AE-title-not-recognized" in str(rejected)
    aborted = errors.AssociationAborted(2, 6)
    assert (aborted.source, aborted.reason) == (2, 6)


def test_event_types() -> None:
    notifications = [
        "EVT_CONN_OPEN",
        "EVT_CONN_CLOSE",
        "EVT_REQUESTED",
        "EVT_ACCEPTED",
        "EVT_REJECTED",
        "EVT_ESTABLISHED",
        "EVT_RELEASED",
        "EVT_ABORTED",
        "EVT_PDU_RECV",
        "EVT_PDU_SENT",
        "EVT_DIMSE_RECV",
        "EVT_DIMSE_SENT",
        "EVT_FSM_TRANSITION",
    ]
    interventions = [
        "EVT_C_ECHO",
        "EVT_C_STORE",
        "EVT_C_FIND",
        "EVT_C_GET",
        "EVT_C_MOVE",
        "EVT_N_ACTION",
        "EVT_N_CREATE",
        "EVT_N_DELETE",
        "EVT_N_EVENT_REPORT",
        "EVT_N_GET",
        "EVT_N_SET",
        "EVT_USER_ID",
        "EVT_SOP_EXTENDED",
        "EVT_SOP_COMMON",
        "EVT_ASYNC_OPS",
    ]
    for name in notifications:
        assert getattr(evt, name).is_notification, name
    for name in interventions:
        assert getattr(evt, name).is_intervention, name


def test_event_attributes() -> None:
    attrs = [
        "assoc",
        "context",
        "request",
        "timestamp",
        "message_id",
        "dataset",
        "identifier",
        "file_meta",
        "encoded_dataset",
        "is_cancelled",
        "move_destination",
        "action_type",
        "action_information",
        "event_type",
        "event_information",
        "attribute_identifiers",
        "attribute_list",
        "modification_list",
        "dataset_path",
    ]
    members = dict(inspect.getmembers(evt.Event))
    event = evt.Event(None, evt.EVT_C_ECHO)  # type: ignore[arg-type]
    for name in attrs:
        assert name in members or hasattr(event, name), name


def test_pdu_primitives_names() -> None:
    for name in (
        "UserIdentityNegotiation",
        "SOPClassExtendedNegotiation",
        "SOPClassCommonExtendedNegotiation",
        "AsynchronousOperationsWindowNegotiation",
        "SCP_SCU_RoleSelectionNegotiation",
    ):
        assert hasattr(pdu_primitives, name), name


def test_ae_surface_and_defaults() -> None:
    ae = aiodicom.AE()
    assert ae.acse_timeout == 30
    assert ae.dimse_timeout == 30
    assert ae.network_timeout == 60
    assert ae.connection_timeout == 10
    assert ae.maximum_associations == 64
    assert ae.maximum_pdu_size == 262_144
    assert ae.spool_threshold == 16 * 1024 * 1024
    assert ae.require_called_aet is False
    assert ae.require_calling_aet == []
    for name in (
        "associate",
        "start_server",
        "serve",
        "add_requested_context",
        "add_supported_context",
    ):
        assert callable(getattr(ae, name)), name
    params = inspect.signature(ae.associate).parameters
    for name in (
        "ae_title",
        "contexts",
        "ext_neg",
        "evt_handlers",
        "ssl_context",
        "max_pdu",
        "bind_address",
    ):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["ae_title"].default == "ANY-SCP"


def test_ae_title_validation() -> None:
    import pytest

    for bad in ("", "   ", "A" * 17, "BAD\\TITLE", "TAB\tX"):
        with pytest.raises(ValueError):
            aiodicom.AE(bad)
    assert aiodicom.AE(" PADDED ").ae_title == "PADDED"


def test_sop_class_context_lists() -> None:
    assert len(sop_class.StoragePresentationContexts) == 120
    assert sop_class.Verification == "1.2.840.10008.1.1"
    for name in (
        "VerificationPresentationContexts",
        "QueryRetrievePresentationContexts",
        "BasicWorklistManagementPresentationContexts",
        "AllStoragePresentationContexts",
    ):
        assert getattr(sop_class, name), name


def test_imports_with_runtime_dependencies_only() -> None:
    """pydicom and anyio are the only runtime dependencies: nothing else may be
    imported (sniffio, for one, is no longer installed with anyio)."""
    import subprocess
    import sys

    blocked = ["sniffio", "trio", "pynetdicom", "uvloop", "hypothesis", "pytest"]
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + "import aiodicom, aiodicom.cli, aiodicom.testing\n"
        + "import anyio\n"
        + "from aiodicom import AE, sop_class\n"
        + "from aiodicom.testing import memory_pair\n"
        + "async def main():\n"
        + "    scu, scp = AE('A'), AE('B')\n"
        + "    scu.add_requested_context(sop_class.Verification)\n"
        + "    scp.add_supported_context(sop_class.Verification)\n"
        + "    async with memory_pair(scu, scp) as assoc:\n"
        + "        assert (await assoc.send_c_echo()).Status == 0\n"
        + "anyio.run(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_event_types_are_singletons_through_pickle_and_copy() -> None:
    """Event types compare by identity (handler tables are looked up on every
    message), so pickling and copying must give back the module's object."""
    import copy
    import pickle

    for name in evt.__all__:
        kind = getattr(evt, name)
        if isinstance(kind, evt.EventType):
            assert pickle.loads(pickle.dumps(kind)) is kind
            assert copy.copy(kind) is kind and copy.deepcopy(kind) is kind
    assert evt.InterventionEvent("EVT_C_ECHO", "C-ECHO request received") != evt.EVT_C_ECHO
    other = evt.NotificationEvent("EVT_MINE", "not a module constant")
    clone = pickle.loads(pickle.dumps(other))
    assert clone.name == "EVT_MINE" and not clone.is_intervention
    assert {evt.EVT_C_ECHO: 1}.get(evt.EVT_C_ECHO) == 1
