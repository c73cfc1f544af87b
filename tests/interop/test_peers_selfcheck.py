"""Self-check of the interop harness and its peers, without aiodicom.

Each test pairs two independent implementations (pynetdicom, dcmtk) through
the fixtures of conftest.py. When these pass, the peers and the harness are
sound, so a later interop failure against aiodicom is aiodicom's.
"""

from __future__ import annotations

import socket
import sys

import pytest
from pydicom import dcmread

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def _one(events, name, **match):
    found = [
        e for e in events if e["event"] == name and all(e.get(k) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"expected one {name!r} {match} in {events}"
    return found[0]


# --- pynetdicom <-> pynetdicom


def test_pynetdicom_scu_to_scp_echo_with_user_identity_and_role(pynetdicom_scp, run_pynetdicom_scu):
    scp = pynetdicom_scp(
        "--require-called-aet",
        "--user-identity-response",
        "welcome",
        "--role",
        f"{CT_IMAGE_STORAGE}:1:1",
        ae_title="SELFSCP",
    )
    cp, events = run_pynetdicom_scu(
        "--port",
        scp.port,
        "--called",
        "SELFSCP",
        "--calling",
        "SELFSCU",
        "--echo",
        "3",
        "--user-identity",
        "jwt:header.payload.sig:positive",
        "--role",
        f"{CT_IMAGE_STORAGE}:1:1",
    )
    assert cp.returncode == 0, cp.describe()

    # SCU side
    assoc = _one(events, "association")
    assert assoc["status"] == "accepted"
    assert assoc["user_identity_response"] == "welcome"
    assert assoc["roles"] == [
        {"sop_class_uid": CT_IMAGE_STORAGE, "scu_role": True, "scp_role": True}
    ]
    by_as = {c["abstract_syntax"]: c for c in assoc["contexts"]}
    assert by_as[VERIFICATION]["as_scu"] is True
    assert by_as[CT_IMAGE_STORAGE]["as_scu"] is True
    assert by_as[CT_IMAGE_STORAGE]["as_scp"] is True
    echoes = [e for e in events if e["event"] == "c_echo"]
    assert [(e["message_id"], e["status"]) for e in echoes] == [(1, 0), (2, 0), (3, 0)]
    assert [e["event"] for e in events][-2:] == ["released", "exit"]
    assert _one(events, "conn_open")["tcp_nodelay"] is True

    # SCP side
    scp.wait_for_event("released")
    rq = _one(scp.events(), "requested")
    assert (rq["calling_ae"], rq["called_ae"]) == ("SELFSCU", "SELFSCP")
    assert rq["roles"] == [{"sop_class_uid": CT_IMAGE_STORAGE, "scu_role": True, "scp_role": True}]
    assert rq["user_identity"]["type"] == 5
    assert rq["user_identity"]["primary"] == "header.payload.sig"
    assert rq["user_identity"]["positive_response_requested"] is True
    uid = _one(scp.events(), "user_id")
    assert uid["authorised"] is True
    assert uid["primary"] == "header.payload.sig"
    assert uid["response"] == "welcome"
    acc = _one(scp.events(), "accepted")
    scp_cx = {c["abstract_syntax"]: c for c in acc["contexts"]}
    assert scp_cx[VERIFICATION]["as_scp"] is True
    assert (scp_cx[CT_IMAGE_STORAGE]["as_scu"], scp_cx[CT_IMAGE_STORAGE]["as_scp"]) == (
        True,
        True,
    )
    assert [e["message_id"] for e in scp.events("c_echo")] == [1, 2, 3]
    assert _one(scp.events(), "conn_open")["tcp_nodelay"] is True
    assert scp.stop() == 0
    assert scp.events()[-1] == {"event": "shutdown"}


def test_pynetdicom_scp_rejects_unauthorised_user(pynetdicom_scp, run_pynetdicom_scu):
    scp = pynetdicom_scp("--reject-user", "mallory")
    cp, events = run_pynetdicom_scu(
        "--port",
        scp.port,
        "--called",
        scp.ae_title,
        "--echo",
        "1",
        "--user-identity",
        "password:mallory:hunter2",
    )
    assert cp.returncode == 1, cp.describe()
    assoc = _one(events, "association")
    # pynetdicom rejects a failed identity as rejected-transient, ACSE, no reason
    assert (assoc["status"], assoc["result"], assoc["source"], assoc["reason"]) == (
        "rejected",
        2,
        2,
        1,
    )
    uid = scp.wait_for_event("user_id")[0]
    assert (uid["type"], uid["primary"], uid["secondary"], uid["authorised"]) == (
        2,
        "mallory",
        "hunter2",
        False,
    )
    rj = scp.wait_for_event("rejected")[0]
    assert (rj["result"], rj["source"], rj["reason"]) == (2, 2, 1)


def test_pynetdicom_scu_connection_refused_exits_2(run_pynetdicom_scu, free_port):
    cp, events = run_pynetdicom_scu("--port", free_port, "--echo", "1")
    assert cp.returncode == 2, cp.describe()
    assert _one(events, "association")["status"] == "aborted"


def test_pynetdicom_peer_past_its_timeout_shows_where_it_is_stuck(run_pynetdicom_scu):
    """A peer that overran its timeout is killed, and the failure shows its threads' stacks."""
    with socket.socket() as silent:  # the handshake completes; nothing is ever answered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(pytest.fail.Exception) as failed:
            run_pynetdicom_scu("--port", port, "--echo", "1", timeout=3.0)
    message = str(failed.value)
    assert "timed out after 3.0 s" in message
    # faulthandler's dump: the main thread, waiting for the A-ASSOCIATE response
    assert "most recent call first" in message, message
    assert "in associate" in message, message


# --- dcmtk <-> pynetdicom


def test_dcmtk_echoscu_to_pynetdicom_scp(pynetdicom_scp, run_dcmtk):
    scp = pynetdicom_scp(ae_title="PYSCP")
    cp = run_dcmtk(
        "echoscu", "-v", "-aet", "ECHOSCU", "-aec", "PYSCP", "--repeat", "2", "127.0.0.1", scp.port
    )
    assert cp.returncode == 0, cp.describe()
    scp.wait_for_event("released")
    rq = _one(scp.events(), "requested")
    assert (rq["calling_ae"], rq["called_ae"]) == ("ECHOSCU", "PYSCP")
    assert rq["implementation_version_name"].startswith("OFFIS_DCMTK")
    assert len(scp.events("c_echo", calling_ae="ECHOSCU")) == 2


def test_echoscu_wrong_called_aet_is_rejected(pynetdicom_scp, run_dcmtk):
    scp = pynetdicom_scp("--require-called-aet", ae_title="RIGHT")
    cp = run_dcmtk("echoscu", "-v", "-aet", "ECHOSCU", "-aec", "WRONG", "127.0.0.1", scp.port)
    assert cp.returncode != 0, cp.describe()
    rj = scp.wait_for_event("rejected")[0]
    # rejected-permanent, service-user, called AE title not recognised
    assert (rj["called_ae"], rj["result"], rj["source"], rj["reason"]) == ("WRONG", 1, 1, 7)
    assert not scp.events("c_echo")


def test_pynetdicom_scu_to_dcmtk_storescp_echo_and_store(
    dcmtk_storescp, run_pynetdicom_scu, dicom_testfile
):
    ct = dicom_testfile("CT_small.dcm")
    sent = dcmread(ct)
    cp, events = run_pynetdicom_scu(
        "--port",
        dcmtk_storescp.port,
        "--called",
        dcmtk_storescp.ae_title,
        "--echo",
        "1",
        "--store",
        ct,
    )
    assert cp.returncode == 0, f"{cp.describe()}\n{dcmtk_storescp.process.describe()}"
    assoc = _one(events, "association")
    assert assoc["status"] == "accepted"
    assert assoc["peer_implementation_version_name"].startswith("OFFIS_DCMTK")
    assert _one(events, "c_echo")["status"] == 0
    store = _one(events, "c_store")
    assert store["status"] == 0
    assert store["sop_instance_uid"] == sent.SOPInstanceUID

    (received,) = dcmtk_storescp.wait_for_files(1)
    got = dcmread(received)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PixelData == sent.PixelData


# --- dcmtk <-> dcmtk


def test_echoscu_to_storescp(dcmtk_storescp, run_dcmtk):
    cp = run_dcmtk(
        "echoscu",
        "-v",
        "-aet",
        "ECHOSCU",
        "-aec",
        dcmtk_storescp.ae_title,
        "127.0.0.1",
        dcmtk_storescp.port,
    )
    assert cp.returncode == 0, f"{cp.describe()}\n{dcmtk_storescp.process.describe()}"
    assert dcmtk_storescp.files() == []


# --- the harness itself


def test_require_tool_finds_dcmtk_not_pynetdicom_apps(require_tool, run_dcmtk):
    path = require_tool("storescp")
    cp = run_dcmtk("storescp", "--version")
    assert "$dcmtk:" in cp.stdout, (path, cp.describe())


@pytest.mark.parametrize("required", ["1", ""])
def test_missing_peer_fails_or_skips(required, monkeypatch, require_tool):
    monkeypatch.setenv("AIODICOM_REQUIRE_PEERS", required)
    expected = pytest.fail.Exception if required == "1" else pytest.skip.Exception
    with pytest.raises(expected, match="aiodicom-no-such-tool"):
        require_tool("aiodicom-no-such-tool")


def test_readiness_waits_are_bounded(peer_process, free_port):
    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    p = peer_process(sleeper, ready_line="^started$", timeout=10)
    with pytest.raises(pytest.fail.Exception, match="NEVER"):
        p.wait_for_line("NEVER", timeout=0.3)
    with pytest.raises(pytest.fail.Exception, match="not listening"):
        p.wait_for_port(free_port, timeout=0.3)
    assert p.running
    assert p.stop(grace=5) is not None
    assert not p.running


def test_free_port_is_bindable(free_port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port))


# --- storage: pynetdicom <-> pynetdicom, dcmtk -> pynetdicom


def test_pynetdicom_store_every_syntax_to_pynetdicom_scp_output_dir(
    pynetdicom_scp, run_pynetdicom_scu, tmp_path
):
    """--store-dir --chunked -> --accept-all-storage --output-dir: every file lands
    with its own transfer syntax and its data set bytes unchanged."""
    from _storage_data import ONE_PER_SYNTAX, OTHER_FILES, copy_test_files, dataset_bytes, file_info

    folder = tmp_path / "send"
    sources = copy_test_files(ONE_PER_SYNTAX + OTHER_FILES, folder)
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--accept-all-storage", "--output-dir", str(out))
    cp, events = run_pynetdicom_scu(
        "--port", scp.port, "--called", scp.ae_title, "--store-dir", folder, "--chunked"
    )
    assert cp.returncode == 0, cp.describe()
    sent = [e for e in events if e["event"] == "c_store"]
    assert [e["status"] for e in sent] == [0] * len(sources)
    got = scp.wait_for_event("c_store", count=len(sources))
    for event, source in zip(got, sorted(sources), strict=True):
        assert event["transfer_syntax"] == file_info(source)[2]
        assert dataset_bytes(event["stored"]) == dataset_bytes(source), source.name


def test_storescu_to_pynetdicom_scp_output_dir(pynetdicom_scp, run_dcmtk, tmp_path):
    """storescu -R -xb sends a big endian file as it is; the peer stores it."""
    from _storage_data import assert_same_instance, bundled_file

    source = bundled_file("MR_small_bigendian.dcm")
    out = tmp_path / "received"
    out.mkdir()
    scp = pynetdicom_scp("--accept-all-storage", "--output-dir", str(out))
    cp = run_dcmtk("storescu", "-R", "-xb", "-aec", scp.ae_title, "127.0.0.1", scp.port, source)
    assert cp.returncode == 0, cp.describe()
    (event,) = scp.wait_for_event("c_store")
    assert event["transfer_syntax"] == "1.2.840.10008.1.2.2"
    assert_same_instance(source, event["stored"], transfer_syntax="1.2.840.10008.1.2.2")
