"""``make demo``: the whole flow on one machine, on embedded defaults.

Starts the three services as separate processes (mutual TLS between them), then:

1. S1: creates an organisation and an organisation key in the SoftHSM2 token; the HSM signs its
   CSR and the CA (key also in the HSM) issues the organisation certificate (``org.pem``,
   ``ca.pem``); the key signs a document's digest through the HSM proxy (``document.txt``,
   ``document.sig``, ``org-key.pub.pem``);
2. S2: registers a user, issues an enrolment ticket, enrols the user's phone with the cosigner
   (two-party DKG), signs a message jointly (``joint.pub.pem``, ``hello.txt``, ``hello.sig``),
   and gets the personal certificate for the joint key with a co-signed CSR (``user-csr.pem``,
   ``user.pem``); the current CRL is written to ``crl.pem``.

Each artefact is verified with the ``openssl`` command. Output goes to ``demo-out/`` (or
``DEMO_OUT``); service state to ``var/demo`` (or ``MOBILESIGN_STATE_DIR``), started afresh.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import client
from launcher import Deployment
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, hsm_pb2, hsm_pb2_grpc

_MARKER = ".mobilesign-demo-state"
DEMO_PIN = "246810"


def _fresh_state(path: Path) -> Path:
    """A clean state directory; only one the demo created itself is ever wiped."""
    if path.exists():
        if not (path / _MARKER).exists():
            raise SystemExit(f"{path} exists and was not made by the demo; not touching it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / _MARKER).touch()
    return path


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _openssl(*args: str) -> None:
    """Run openssl, show its output, and fail the demo if it fails."""
    print("$ openssl " + " ".join(args), flush=True)
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    print((result.stdout + result.stderr).strip(), flush=True)
    if result.returncode != 0:
        raise SystemExit(f"openssl {args[0]} failed")


def _pem(kind: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join(
        [f"-----BEGIN {kind}-----".encode(), *lines, f"-----END {kind}-----\n".encode()]
    )


async def organisation_certificate(deployment: Deployment, out: Path) -> None:
    """S1: organisation key in the HSM, its CSR signed inside the HSM, the certificate, and a
    document signature made with the key through the HSM proxy."""
    _step("S1: organisation key in the HSM and its organisation certificate (gateway RA/CA)")
    async with deployment.channel("gateway", "admin") as channel:
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateOrganisation(
            gateway_pb2.CreateOrganisationRequest(organisation_id="acme", name="ACME Trading Ltd")
        )
        created = await admin.CreateOrganisationKey(
            gateway_pb2.CreateOrganisationKeyRequest(
                organisation_id="acme",
                label="acme-seal",
                algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
            )
        )
        ca_der = (
            await gateway_pb2_grpc.GatewayServiceStub(channel).GetCaCertificate(
                gateway_pb2.GetCaCertificateRequest()
            )
        ).certificate
    key = created.key
    print(f"organisation key {key.key_id} generated in the token (non-extractable)")
    print(f"organisation certificate serial {key.certificate_serial}")
    (out / "ca.pem").write_bytes(_pem("CERTIFICATE", ca_der))
    (out / "org.pem").write_bytes(_pem("CERTIFICATE", key.certificate))
    _openssl("verify", "-CAfile", str(out / "ca.pem"), str(out / "org.pem"))

    _step("The organisation key signs a document inside the HSM (HSM proxy, mutual TLS)")
    document = b"Purchase order 2026-117: 40 units at EUR 125.00, delivery by 2026-12-15.\n"
    digest = hashlib.sha256(document).digest()
    async with deployment.channel("hsm-proxy", "admin") as channel:
        signature = (
            await hsm_pb2_grpc.HsmServiceStub(channel).SignDigest(
                hsm_pb2.SignDigestRequest(
                    key_id=key.key_id,
                    mechanism=hsm_pb2.SIGNATURE_MECHANISM_ECDSA_SHA256,
                    digest=digest,
                )
            )
        ).signature
    public = x509.load_der_x509_certificate(key.certificate).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    (out / "document.txt").write_bytes(document)
    (out / "document.sig").write_bytes(signature)
    (out / "org-key.pub.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _openssl(
        "dgst",
        "-sha256",
        "-verify",
        str(out / "org-key.pub.pem"),
        "-signature",
        str(out / "document.sig"),
        str(out / "document.txt"),
    )


async def joint_signature(deployment: Deployment, out: Path) -> client.Keystore:
    """S2 and the two-party signature: enrol a phone, sign with phone and cosigner together."""
    _step("Enrol a user's phone with the cosigner (two-party FROST key generation)")
    async with deployment.channel("gateway", "admin") as channel:
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateUser(
            gateway_pb2.CreateUserRequest(user_id="alice", display_name="Alice Martin")
        )
        ticket = await admin.IssueEnrollmentTicket(
            gateway_pb2.IssueEnrollmentTicketRequest(user_id="alice", ttl_seconds=600)
        )
    print(f"gateway issued enrolment ticket {ticket.ticket_id} for alice")
    async with deployment.public_channel("cosigner") as channel:
        keystore = await client.enroll(channel, ticket.ticket, DEMO_PIN)
        print(f"joint key {keystore.key_id}: phone holds share 1, cosigner holds share 2")
        _step("Sign a message jointly (one round trip; PIN and device proven first)")
        message = b"hello from alice's phone\n"
        async with client.SigningSession(channel, keystore, DEMO_PIN) as session:
            signature = await session.sign(message)
            _step(
                "S2: personal certificate for the joint key (CSR co-signed by phone and cosigner)"
            )
            async with deployment.public_channel("gateway") as gateway:
                certificates, csr = await client.request_personal_certificate(
                    gateway, session, keystore, ticket.ticket
                )
                crl = (
                    await gateway_pb2_grpc.GatewayServiceStub(gateway).GetCrl(
                        gateway_pb2.GetCrlRequest()
                    )
                ).crl
    joint = Ed25519PublicKey.from_public_bytes(keystore.group_public_key)
    joint.verify(signature, message)
    joint_pem = joint.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (out / "joint.pub.pem").write_bytes(joint_pem)
    (out / "hello.txt").write_bytes(message)
    (out / "hello.sig").write_bytes(signature)
    _openssl(
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(out / "joint.pub.pem"),
        "-rawin",
        "-in",
        str(out / "hello.txt"),
        "-sigfile",
        str(out / "hello.sig"),
    )
    (out / "user-csr.pem").write_bytes(_pem("CERTIFICATE REQUEST", csr))
    (out / "user.pem").write_bytes(_pem("CERTIFICATE", certificates.certificate))
    (out / "crl.pem").write_bytes(_pem("X509 CRL", crl))
    print(f"personal certificate for alice, verified on the phone against {out / 'ca.pem'}")
    _openssl("req", "-verify", "-in", str(out / "user-csr.pem"), "-noout")
    _openssl("verify", "-CAfile", str(out / "ca.pem"), str(out / "org.pem"), str(out / "user.pem"))
    _openssl("crl", "-in", str(out / "crl.pem"), "-CAfile", str(out / "ca.pem"), "-noout")
    user_key = x509.load_der_x509_certificate(certificates.certificate).public_key()
    if (
        user_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != joint_pem
    ):
        raise SystemExit("the personal certificate is not for the joint key")
    print("the public key in user.pem is the joint key in joint.pub.pem")
    return keystore


async def _flow(deployment: Deployment, out: Path) -> None:
    await organisation_certificate(deployment, out)
    await joint_signature(deployment, out)


def main() -> None:
    """Run the demo; exit non-zero if any step or verification fails."""
    out = Path(os.environ.get("DEMO_OUT", "demo-out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = _fresh_state(Path(os.environ.get("MOBILESIGN_STATE_DIR", "var/demo")).resolve())
    deployment = Deployment(state)
    _step(f"Starting hsm-proxy, gateway and cosigner (state in {state})")
    deployment.start_all()
    try:
        asyncio.run(_flow(deployment, out))
    finally:
        deployment.stop_all()
    _step(f"Done: artefacts in {out}")


if __name__ == "__main__":
    main()
