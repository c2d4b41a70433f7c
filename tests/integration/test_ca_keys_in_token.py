"""The CA and organisation private keys stay in the SoftHSM2 token: inspected in the token
itself, from this process, with python-pkcs11 (sensitive, never extractable, not wrappable, no
copies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from hsm_proxy.config import HsmProxyConfig
from mobilesign.testing import Deployment
from tests.certificate_checks import spki_of
from tests.integration.certificates import (
    CA_KEY_LABEL,
    Pki,
)

pytestmark = pytest.mark.integration
TOKEN_LABEL = "mobilesign"


@pytest.fixture
def deployment(certificates_deployment: Deployment) -> Deployment:
    """The shared HSM proxy, gateway (RA/CA) and cosigner."""
    return certificates_deployment


@contextlib.contextmanager
def _token(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A read-only user session on the deployment's SoftHSM2 token, from this process."""
    hsm_dir = deployment.state_dir / "hsm"
    module = HsmProxyConfig().module_path()
    # SoftHSM2 reads its configuration when the module is initialised: unload any earlier copy.
    pkcs11.unload(module)
    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm_dir / "softhsm2.conf"))
    lib = pkcs11.lib(module)
    try:
        token = lib.get_token(token_label=TOKEN_LABEL)
        pin = (hsm_dir / "user.pin").read_text().strip()
        with token.open(user_pin=pin) as session:
            yield session
    finally:
        pkcs11.unload(module)


def _check_private_key_stays_in_token(session: Any, token_label: str, key_id: str) -> Any:
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=token_label)
    assert bytes(private[Attribute.ID]).hex() == key_id
    assert private[Attribute.TOKEN] is True
    assert private[Attribute.PRIVATE] is True
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.ALWAYS_SENSITIVE] is True
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    secret_parts = (
        [Attribute.VALUE]
        if private.key_type == KeyType.EC
        else [
            Attribute.PRIVATE_EXPONENT,
            Attribute.PRIME_1,
            Attribute.PRIME_2,
            Attribute.EXPONENT_1,
            Attribute.EXPONENT_2,
            Attribute.COEFFICIENT,
        ]
    )
    for part in secret_parts:
        with pytest.raises(p11e.AttributeSensitive):
            private[part]
    if private.key_type == KeyType.RSA:
        # An RSA private key has no CKA_VALUE at all.
        with pytest.raises((p11e.AttributeSensitive, p11e.AttributeTypeInvalid)):
            private[Attribute.VALUE]
    return private


def test_ca_and_organisation_private_keys_never_leave_the_token(
    deployment: Deployment, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = x509.load_der_x509_certificate(pki.root_der)
    with _token(deployment, monkeypatch) as session:
        ca_public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=f"ca:{CA_KEY_LABEL}")
        ca_key_id = bytes(ca_public[Attribute.ID]).hex()
        assert pkcs11.util.ec.encode_ec_public_key(ca_public) == spki_of(root.public_key())
        keys = [(f"ca:{CA_KEY_LABEL}", ca_key_id)] + [
            (f"organisation:{k.key.label}", k.key.key_id) for k in pki.organisation_keys.values()
        ]
        # A session key that could wrap (export) another key, if the token allowed it.
        wrapping = session.generate_key(
            KeyType.AES, 256, store=False, capabilities=pkcs11.MechanismFlag.WRAP
        )
        for token_label, key_id in keys:
            private = _check_private_key_stays_in_token(session, token_label, key_id)
            with pytest.raises((p11e.KeyUnextractable, p11e.KeyNotWrappable)):
                wrapping.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            # Exactly one private object carries the label: no copy was ever made.
            found = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: token_label}
                )
            )
            assert len(found) == 1
        # No secret-key or data object holds key material next to them.
        assert list(session.get_objects({Attribute.CLASS: ObjectClass.DATA})) == []
