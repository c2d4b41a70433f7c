"""The HSM proxy as a real process over a real SoftHSM2 token, called over mutual TLS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from mobilesign import records
from mobilesign.hosting import devpki
from mobilesign.rpc import channels
from mobilesign.rpc.status import reason_of
from mobilesign.testing import Deployment
from mobilesign.v1 import hsm_pb2, hsm_pb2_grpc
from tests.integration.authorisations import Authority

pytestmark = pytest.mark.integration

DIGEST = hashlib.sha256(b"a business document").digest()


def _stub(channel: grpc.aio.Channel) -> hsm_pb2_grpc.HsmServiceAsyncStub:
    return hsm_pb2_grpc.HsmServiceStub(channel)


async def _generate(
    deployment: Deployment,
    label: str,
    algorithm: hsm_pb2.KeyAlgorithm.ValueType,
    purpose: hsm_pb2.KeyPurpose.ValueType = hsm_pb2.KEY_PURPOSE_TICKET,
) -> hsm_pb2.KeyInfo:
    async with deployment.channel("hsm-proxy", "ra") as channel:
        reply = await _stub(channel).GenerateKeyPair(
            hsm_pb2.GenerateKeyPairRequest(label=label, purpose=purpose, algorithm=algorithm)
        )
    return reply.key


def _verify(key: hsm_pb2.KeyInfo, mechanism: int, signature: bytes, digest: bytes) -> None:
    public = serialization.load_der_public_key(key.public_key_spki)
    prehashed = utils.Prehashed(hashes.SHA256())
    if mechanism == hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, digest, ec.ECDSA(prehashed))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if mechanism == hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256
            else padding.PSS(padding.MGF1(hashes.SHA256()), 32)
        )
        public.verify(signature, digest, pad, prehashed)


async def _expect_error(call: object, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert reason_of(info.value) == reason


@pytest.mark.parametrize(
    ("algorithm", "mechanisms", "size"),
    [
        (hsm_pb2.KEY_ALGORITHM_EC_P256, [hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256], 256),
        (
            hsm_pb2.KEY_ALGORITHM_RSA_2048,
            [
                hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256,
                hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256,
            ],
            2048,
        ),
        (
            hsm_pb2.KEY_ALGORITHM_RSA_3072,
            [
                hsm_pb2.SIGNATURE_MECHANISM_RSA_PKCS1V15_SHA256,
                hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256,
            ],
            3072,
        ),
    ],
)
async def test_generate_describe_and_sign(
    hsm_deployment: Deployment,
    algorithm: hsm_pb2.KeyAlgorithm.ValueType,
    mechanisms: list[hsm_pb2.SignatureMechanism.ValueType],
    size: int,
) -> None:
    key = await _generate(hsm_deployment, f"sign-{algorithm}", algorithm)
    assert len(key.key_id) == 32
    assert serialization.load_der_public_key(key.public_key_spki).key_size == size  # type: ignore[union-attr]
    async with (
        hsm_deployment.channel("hsm-proxy", "gateway") as gateway,
        hsm_deployment.channel("hsm-proxy", "ra") as channel,
    ):
        # Every service that uses keys may see them; only the RA signs with its own.
        for stub in (_stub(gateway), _stub(channel)):
            described = await stub.GetPublicKey(hsm_pb2.GetPublicKeyRequest(key_id=key.key_id))
            assert described.key == key
            listed = await stub.ListKeys(
                hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KEY_PURPOSE_TICKET)
            )
            assert key in listed.keys
        stub = _stub(channel)
        for mechanism in mechanisms:
            digest = hashlib.sha256(os.urandom(16)).digest()
            reply = await stub.SignDigest(
                hsm_pb2.SignDigestRequest(key_id=key.key_id, mechanism=mechanism, digest=digest)
            )
            _verify(key, mechanism, reply.signature, digest)


async def test_200_concurrent_signatures_all_verify(hsm_deployment: Deployment) -> None:
    key = await _generate(hsm_deployment, "concurrent", hsm_pb2.KEY_ALGORITHM_EC_P256)
    digests = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(200)]
    async with hsm_deployment.channel("hsm-proxy", "ra") as channel:
        stub = _stub(channel)
        replies = await asyncio.gather(
            *(
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(
                        key_id=key.key_id,
                        mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                        digest=digest,
                    )
                )
                for digest in digests
            )
        )
    for digest, reply in zip(digests, replies, strict=True):
        _verify(key, hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256, reply.signature, digest)


async def test_decrypt_round_trips_oaep(hsm_deployment: Deployment) -> None:
    key = await _generate(
        hsm_deployment, "decrypt", hsm_pb2.KEY_ALGORITHM_RSA_2048, hsm_pb2.KEY_PURPOSE_ORGANISATION
    )
    public = serialization.load_der_public_key(key.public_key_spki)
    assert isinstance(public, rsa.RSAPublicKey)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    decrypt = records.Operation.DECRYPT_RSA_OAEP_SHA256
    async with (
        hsm_deployment.channel("hsm-proxy", "ra") as ra,
        hsm_deployment.channel("hsm-proxy", "gateway") as channel,
        hsm_deployment.channel("hsm-proxy", "cosigner") as cosigner,
    ):
        stub = _stub(channel)
        authority = await Authority.create(_stub(ra), stub, _stub(cosigner))
        for message in (b"", b"a short secret", os.urandom(190)):
            ciphertext = public.encrypt(message, oaep)
            reply = await stub.Decrypt(
                hsm_pb2.DecryptRequest(
                    key_id=key.key_id,
                    mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                    ciphertext=ciphertext,
                    authorisation=await authority.authorise(
                        authority.record(key.key_id, decrypt, ciphertext)
                    ),
                )
            )
            assert reply.plaintext == message
        # A ciphertext with the wrong padding (PKCS#1 v1.5) is refused, not decrypted.
        ciphertext = public.encrypt(b"x", padding.PKCS1v15())
        await _expect_error(
            stub.Decrypt(
                hsm_pb2.DecryptRequest(
                    key_id=key.key_id,
                    mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                    ciphertext=ciphertext,
                    authorisation=await authority.authorise(
                        authority.record(key.key_id, decrypt, ciphertext)
                    ),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DECRYPTION_FAILED",
        )


async def test_seal_unseal_round_trip_and_tamper(hsm_deployment: Deployment) -> None:
    async with hsm_deployment.channel("hsm-proxy", "cosigner") as channel:
        stub = _stub(channel)
        secret = os.urandom(64)
        sealed = (
            await stub.Seal(hsm_pb2.SealRequest(plaintext=secret, associated_data=b"user-1"))
        ).sealed
        assert secret not in sealed
        opened = await stub.Unseal(hsm_pb2.UnsealRequest(sealed=sealed, associated_data=b"user-1"))
        assert opened.plaintext == secret
        for index in (0, 5, 20, len(sealed) - 1):
            tampered = bytearray(sealed)
            tampered[index] ^= 0x01
            await _expect_error(
                stub.Unseal(
                    hsm_pb2.UnsealRequest(sealed=bytes(tampered), associated_data=b"user-1")
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "SEALED_BLOB_INVALID",
            )
        await _expect_error(
            stub.Unseal(hsm_pb2.UnsealRequest(sealed=sealed, associated_data=b"user-2")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "SEALED_BLOB_INVALID",
        )
        await _expect_error(
            stub.Unseal(hsm_pb2.UnsealRequest(sealed=sealed[:10], associated_data=b"user-1")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "SEALED_BLOB_INVALID",
        )
        await _expect_error(
            stub.Seal(hsm_pb2.SealRequest(plaintext=b"")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PLAINTEXT_LENGTH",
        )


async def test_bad_input_is_refused_and_changes_nothing(hsm_deployment: Deployment) -> None:
    ec_key = await _generate(hsm_deployment, "bad-input-ec", hsm_pb2.KEY_ALGORITHM_EC_P256)
    rsa_key = await _generate(hsm_deployment, "bad-input-rsa", hsm_pb2.KEY_ALGORITHM_RSA_2048)
    rsa_organisation_key = await _generate(
        hsm_deployment,
        "bad-input-rsa-org",
        hsm_pb2.KEY_ALGORITHM_RSA_2048,
        hsm_pb2.KEY_PURPOSE_ORGANISATION,
    )
    async with (
        hsm_deployment.channel("hsm-proxy", "ra") as channel,
        hsm_deployment.channel("hsm-proxy", "gateway") as gateway_channel,
    ):
        stub = _stub(channel)
        gateway = _stub(gateway_channel)
        before = await stub.ListKeys(hsm_pb2.ListKeysRequest())
        ecdsa = hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256
        cases = [
            (
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(key_id="00" * 16, mechanism=ecdsa, digest=DIGEST)
                ),
                grpc.StatusCode.NOT_FOUND,
                "KEY_NOT_FOUND",
            ),
            (
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(key_id="not-hex", mechanism=ecdsa, digest=DIGEST)
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "MALFORMED_KEY_ID",
            ),
            (
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(key_id=rsa_key.key_id, mechanism=ecdsa, digest=DIGEST)
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "MECHANISM_NOT_ALLOWED",
            ),
            (
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(
                        key_id=ec_key.key_id,
                        mechanism=hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256,
                        digest=DIGEST,
                    )
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "MECHANISM_NOT_ALLOWED",
            ),
            (
                stub.SignDigest(hsm_pb2.SignDigestRequest(key_id=ec_key.key_id, digest=DIGEST)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "MECHANISM_REQUIRED",
            ),
            (
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(
                        key_id=ec_key.key_id, mechanism=ecdsa, digest=DIGEST[:31]
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "DIGEST_LENGTH",
            ),
            (
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(
                        key_id=ec_key.key_id, mechanism=ecdsa, digest=DIGEST + b"\0"
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "DIGEST_LENGTH",
            ),
            (
                gateway.Decrypt(
                    hsm_pb2.DecryptRequest(
                        key_id=ec_key.key_id,
                        mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                        ciphertext=b"x" * 256,
                    )
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "MECHANISM_NOT_ALLOWED",
            ),
            (
                gateway.Decrypt(
                    hsm_pb2.DecryptRequest(
                        key_id=rsa_organisation_key.key_id,
                        mechanism=hsm_pb2.DECRYPT_MECHANISM_RSA_OAEP_SHA256,
                        ciphertext=b"x" * 10,
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "CIPHERTEXT_LENGTH",
            ),
            (
                stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label="bad-input-ec",
                        purpose=hsm_pb2.KEY_PURPOSE_TICKET,
                        algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                    )
                ),
                grpc.StatusCode.ALREADY_EXISTS,
                "LABEL_IN_USE",
            ),
            (
                stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label="no spaces/allowed",
                        purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION,
                        algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "MALFORMED_LABEL",
            ),
            (
                stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label="no-algorithm", purpose=hsm_pb2.KEY_PURPOSE_ORGANISATION
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "ALGORITHM_REQUIRED",
            ),
            (
                stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label="no-purpose", algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PURPOSE_REQUIRED",
            ),
            (
                stub.GenerateKeyPair(
                    hsm_pb2.GenerateKeyPairRequest(
                        label="unknown-purpose",
                        purpose=hsm_pb2.KeyPurpose.ValueType(99),
                        algorithm=hsm_pb2.KEY_ALGORITHM_EC_P256,
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PURPOSE_REQUIRED",
            ),
            (
                stub.ListKeys(hsm_pb2.ListKeysRequest(purpose=hsm_pb2.KeyPurpose.ValueType(99))),
                grpc.StatusCode.INVALID_ARGUMENT,
                "PURPOSE_INVALID",
            ),
            # Neither the gateway nor the RA may use the cosigner's sealing service.
            (
                gateway.Seal(hsm_pb2.SealRequest(plaintext=b"x")),
                grpc.StatusCode.PERMISSION_DENIED,
                "CALLER_NOT_AUTHORISED",
            ),
            (
                stub.Seal(hsm_pb2.SealRequest(plaintext=b"x")),
                grpc.StatusCode.PERMISSION_DENIED,
                "CALLER_NOT_AUTHORISED",
            ),
        ]
        for call, code, reason in cases:
            await _expect_error(call, code, reason)
        # Oversized: over the proxy's 64 KiB message bound, a clear reason; over twice that, the
        # transport refuses the message itself.
        await _expect_error(
            stub.SignDigest(hsm_pb2.SignDigestRequest(key_id=ec_key.key_id, digest=bytes(100_000))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MESSAGE_TOO_LARGE",
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SignDigest(
                hsm_pb2.SignDigestRequest(key_id=ec_key.key_id, digest=bytes(200_000))
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        after = await stub.ListKeys(hsm_pb2.ListKeysRequest())
        assert after == before


#: Who may call each RPC: each service holds one power (stated here, independently of the
#: proxy's own table, so that a change there shows up).
_ALLOWED = {
    "GenerateKeyPair": {"ra"},
    "ListKeys": {"ra", "gateway", "admin"},
    "GetPublicKey": {"ra", "gateway", "admin"},
    "SignDigest": {"ra", "gateway"},
    "CreateCertificateRequest": {"ra"},
    "Decrypt": {"gateway"},
    "Seal": {"cosigner"},
    "Unseal": {"cosigner"},
    "GetLogState": {"gateway", "admin"},
    "SignCheckpoint": {"gateway"},
    "RecordRevocation": {"ra"},
    "GetGrantUsage": {"ra", "admin"},
}


async def test_callers_are_authorised_by_certificate_identity(
    hsm_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Every RPC, called with an empty request by every identity: the callers it does not admit
    # are refused before the request is looked at (the cosigner may only seal and unseal, the
    # gateway makes no key and neither revokes nor reads counts, ...); the others get past the
    # caller check (to an answer or a refusal of the empty request).
    service = hsm_pb2.DESCRIPTOR.services_by_name["HsmService"]
    assert set(_ALLOWED) == {m.name for m in service.methods}
    for identity in ("ra", "gateway", "cosigner", "admin", "hsm-proxy"):
        async with hsm_deployment.channel("hsm-proxy", identity) as channel:
            for method in service.methods:
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    f"/{service.full_name}/{method.name}",
                    request_serializer=lambda _: b"",
                    response_deserializer=lambda data: data,
                )
                try:
                    await call(b"", timeout=10)
                    reason = None
                except grpc.aio.AioRpcError as exc:
                    reason = reason_of(exc)
                refused = reason == "CALLER_NOT_AUTHORISED"
                assert refused == (identity not in _ALLOWED[method.name]), (identity, method.name)
    request = hsm_pb2.ListKeysRequest()
    # No client certificate: the TLS handshake itself fails.
    ca = (devpki.ensure(hsm_deployment.state_dir) / "ca.pem").read_bytes()
    async with channels.server_tls(hsm_deployment.address("hsm-proxy"), ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stub(channel).ListKeys(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A certificate named "gateway" but issued by another CA is not trusted.
    foreign = devpki.credential(tmp_path_factory.mktemp("foreign"), "gateway")
    foreign_with_our_ca = channels.Credential(
        "gateway", foreign.cert, foreign.key, devpki.ensure(hsm_deployment.state_dir) / "ca.pem"
    )
    async with channels.mutual_tls(
        hsm_deployment.address("hsm-proxy"), foreign_with_our_ca, "hsm-proxy"
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stub(channel).ListKeys(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_full_queue_answers_resource_exhausted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    deployment = Deployment(
        tmp_path_factory.mktemp("small-queue"),
        extra_env={"MOBILESIGN_HSM_PROXY_WORKERS": "1", "MOBILESIGN_HSM_PROXY_QUEUE_SIZE": "1"},
    )
    deployment.start("hsm-proxy")
    try:
        key = await _generate(deployment, "queue", hsm_pb2.KEY_ALGORITHM_RSA_3072)
        async with deployment.channel("hsm-proxy", "ra") as channel:
            stub = _stub(channel)
            calls = [
                stub.SignDigest(
                    hsm_pb2.SignDigestRequest(
                        key_id=key.key_id,
                        mechanism=hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256,
                        digest=DIGEST,
                    )
                )
                for _ in range(40)
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        signed = [r for r in results if isinstance(r, hsm_pb2.SignDigestResponse)]
        assert refused
        assert signed
        assert len(refused) + len(signed) == 40
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason_of(error) == "HSM_QUEUE_FULL"
        for reply in signed:
            _verify(key, hsm_pb2.SIGNATURE_MECHANISM_RSA_PSS_SHA256, reply.signature, DIGEST)
    finally:
        deployment.stop_all()


async def test_keys_survive_restart_and_sigterm_is_clean(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    deployment = Deployment(tmp_path_factory.mktemp("restart"))
    deployment.start("hsm-proxy")
    try:
        key = await _generate(deployment, "survivor", hsm_pb2.KEY_ALGORITHM_EC_P256)
        started = time.monotonic()
        assert deployment.stop("hsm-proxy", signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - started < 10
        log = deployment.services["hsm-proxy"].log.read_text()
        assert '"msg": "stopping"' in log
        assert '"msg": "stopped"' in log
        deployment.start("hsm-proxy")
        async with deployment.channel("hsm-proxy", "ra") as channel:
            stub = _stub(channel)
            listed = await stub.ListKeys(hsm_pb2.ListKeysRequest())
            assert [k for k in listed.keys if k.label == "survivor"] == [key]
            reply = await stub.SignDigest(
                hsm_pb2.SignDigestRequest(
                    key_id=key.key_id,
                    mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                    digest=DIGEST,
                )
            )
        _verify(key, hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256, reply.signature, DIGEST)
    finally:
        deployment.stop_all()
