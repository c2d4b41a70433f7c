"""Token objects kept per session (hsm_proxy.handles) on a real SoftHSM2 token: found once,
used again while their handle still names them, found afresh when it does not."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TypeVar

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, ObjectClass

from hsm_proxy import handles, keys, token
from hsm_proxy.config import HsmProxyConfig
from hsm_proxy.errors import HsmProxyError


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[token.SessionPool]:
    token.ensure_softhsm_token(tmp_path, "handles", tmp_path / "user.pin")
    sessions = token.SessionPool(
        HsmProxyConfig().module_path(), "handles", token.read_pin(tmp_path / "user.pin"), 1, 0
    )
    try:
        yield sessions
    finally:
        sessions.close()


T = TypeVar("T")


def _run(pool: token.SessionPool, operation: Callable[[pkcs11.Session], T]) -> T:
    return asyncio.run(pool.run(operation))


class _Counting:
    """Counts the lookups handles.kept makes (each a C_FindObjects with its attribute reads)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.finds = 0
        original = handles.kept

        def counted(
            session: pkcs11.Session, what: Hashable, find: Callable[[], pkcs11.Object | None]
        ) -> tuple[pkcs11.Object, bytes] | None:
            def counting() -> pkcs11.Object | None:
                self.finds += 1
                return find()

            return original(session, what, counting)

        monkeypatch.setattr(handles, "kept", counted)


def _organisation_key(pool: token.SessionPool, label: str) -> keys.KeyRecord:
    return _run(
        pool, lambda s: keys.generate(s, label, keys.Purpose.ORGANISATION, keys.Algorithm.EC_P256)
    )


def _destroy(template: dict[Attribute, object]) -> Callable[[pkcs11.Session], None]:
    def destroy(session: pkcs11.Session) -> None:
        for obj in list(session.get_objects(template)):
            obj.destroy()

    return destroy


def test_a_signing_key_is_found_once_and_signs_each_time(
    pool: token.SessionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _organisation_key(pool, "acme")
    public = load_der_public_key(record.spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    counting = _Counting(monkeypatch)
    for n in range(5):
        digest = hashlib.sha256(b"document %d" % n).digest()
        signature = _run(
            pool,
            lambda s, d=digest: keys.sign_digest(s, record, keys.SignMechanism.ECDSA_SHA256, d),  # type: ignore[misc]
        )
        public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    assert counting.finds == 1


def test_a_key_removed_behind_the_proxys_back_is_not_used(pool: token.SessionPool) -> None:
    record = _organisation_key(pool, "gone")
    digest = hashlib.sha256(b"d").digest()

    def sign(session: pkcs11.Session) -> bytes:
        return keys.sign_digest(session, record, keys.SignMechanism.ECDSA_SHA256, digest)

    _run(pool, sign)  # kept now
    _run(pool, _destroy({Attribute.ID: record.key_id}))
    with pytest.raises(HsmProxyError) as refused:
        _run(pool, sign)
    assert refused.value.reason == "KEY_NOT_FOUND"


def test_a_sealing_key_is_kept_and_blobs_still_name_it(
    pool: token.SessionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(pool, lambda s: keys.ensure_sealing_key(s, "cosigner"))
    counting = _Counting(monkeypatch)
    blobs = [
        _run(pool, lambda s, n=n: keys.seal(s, "cosigner", b"secret %d" % n, b"aad"))  # type: ignore[misc]
        for n in range(3)
    ]
    assert len({b[1:17] for b in blobs}) == 1  # every blob names the one key
    for n, blob in enumerate(blobs):
        opened = _run(pool, lambda s, b=blob: keys.unseal(s, "cosigner", b, b"aad"))  # type: ignore[misc]
        assert opened == b"secret %d" % n
    assert counting.finds == 2  # the first seal's, and the first unseal's (by the blob's id)
    with pytest.raises(HsmProxyError):
        _run(pool, lambda s: keys.unseal(s, "cosigner", blobs[0], b"other aad"))


def test_a_replaced_object_under_a_kept_name_is_found_again(pool: token.SessionPool) -> None:
    """The kept handle's CKA_ID is read on each use: another object (here a new sealing key
    after the old one was destroyed out of band) is found afresh, never taken for the old."""
    _run(pool, lambda s: keys.ensure_sealing_key(s, "cosigner"))
    old = _run(pool, lambda s: keys.seal(s, "cosigner", b"x", b"aad"))

    _run(
        pool, _destroy({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: "seal:cosigner"})
    )
    _run(pool, lambda s: keys.ensure_sealing_key(s, "cosigner"))
    new = _run(pool, lambda s: keys.seal(s, "cosigner", b"x", b"aad"))
    assert new[1:17] != old[1:17]
    assert _run(pool, lambda s: keys.unseal(s, "cosigner", new, b"aad")) == b"x"
    with pytest.raises(HsmProxyError):  # its key is gone
        _run(pool, lambda s: keys.unseal(s, "cosigner", old, b"aad"))
