"""AE context bookkeeping (no network)."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aiodicom import AE, build_context, sop_class

VERIFICATION = sop_class.Verification
CT = sop_class.CTImageStorage


def test_requested_contexts_defaults_and_removal() -> None:
    ae = AE()
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    ae.add_requested_context(CT)
    assert [cx.transfer_syntax for cx in ae.requested_contexts] == [
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        [ImplicitVRLittleEndian],
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
    ]
    ae.remove_requested_context(VERIFICATION, ImplicitVRLittleEndian)
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in ae.requested_contexts] == [
        (VERIFICATION, [ExplicitVRLittleEndian]),
        (CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    ]
    ae.remove_requested_context(CT)
    assert [cx.abstract_syntax for cx in ae.requested_contexts] == [VERIFICATION]


def test_at_most_128_requested_contexts() -> None:
    ae = AE()
    for _ in range(128):
        ae.add_requested_context(VERIFICATION)
    with pytest.raises(ValueError):
        ae.add_requested_context(VERIFICATION)


def test_supported_contexts_merge_roles_and_removal() -> None:
    ae = AE()
    ae.add_supported_context(CT, ImplicitVRLittleEndian)
    ae.add_supported_context(CT, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    (cx,) = ae.supported_contexts
    assert cx.transfer_syntax == [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    assert (cx.scu_role, cx.scp_role) == (True, True)
    ae.remove_supported_context(CT, [ImplicitVRLittleEndian])
    assert ae.supported_contexts[0].transfer_syntax == [ExplicitVRLittleEndian]
    ae.remove_supported_context(CT, ExplicitVRLittleEndian)
    assert ae.supported_contexts == []
    ae.supported_contexts = [build_context(VERIFICATION)]
    assert [cx.abstract_syntax for cx in ae.supported_contexts] == [VERIFICATION]
    ae.remove_supported_context(VERIFICATION)
    assert ae.supported_contexts == []


def test_associate_needs_contexts_and_is_scoped() -> None:
    ae = AE()
    with pytest.raises(ValueError):
        ae.associate("127.0.0.1", 104)
    ae.add_requested_context(VERIFICATION)
    ctx = ae.associate("127.0.0.1", 104)
    with pytest.raises(TypeError):
        ctx.__await__()
