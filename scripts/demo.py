"""``make demo``: the whole flow on one machine, on embedded defaults.

Starts the four services (HSM proxy, RA, gateway, cosigner) as separate processes (mutual TLS
between them), then:

1. S1: creates an organisation and an organisation key in the SoftHSM2 token; the HSM signs its
   CSR and the CA (key also in the HSM) issues the organisation certificate (``org.pem``,
   ``ca.pem``); the key signs a document's digest through the HSM proxy (``document.txt``,
   ``document.sig``, ``org-key.pub.pem``);
2. S2: registers a user, issues an enrolment ticket, enrols the user's phone with the cosigner
   (two-party DKG), signs a message jointly (``joint.pub.pem``, ``hello.txt``, ``hello.sig``),
   and gets the personal certificate for the joint key with a co-signed CSR (``user-csr.pem``,
   ``user.pem``); the current CRL is written to ``crl.pem``;
3. S3 to S5: grants alice the organisation keys; her phone signs a document and decrypts a
   message with them, each use a record she co-signs, logged and checked by the HSM proxy
   (``document.sig``, ``receipt.json``), verified offline with the log's consistency;
4. CSC: registers an application, which seals ``contract.pdf`` through the gateway's CSC
   endpoint with pyHanko's ``CSCSigner`` while alice approves on her phone
   (``contract-sealed.pdf``, validated by the ``pyhanko`` command against ``ca.pem``;
   ``contract-receipt.json``, verified offline).

Each artefact is verified with the ``openssl`` command. Output goes to ``demo-out/`` (or
``DEMO_OUT``); service state to ``var/demo`` (or ``MOBILESIGN_STATE_DIR``), started afresh.

``--postgres`` (``make demo-postgres``) runs the same flow with every service's state in
PostgreSQL: a server started for the demo in a temporary directory (unix socket only), a
database and role per service, stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import client
from mobilesign.testing import Deployment
from mobilesign.testing.postgres import PostgresServer
from mobilesign.v1 import gateway_pb2, gateway_pb2_grpc, ra_pb2, ra_pb2_grpc
from scripts.demo_seal import seal_contract

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


async def organisation_certificate(
    deployment: Deployment, out: Path
) -> tuple[gateway_pb2.OrganisationKey, gateway_pb2.OrganisationKey]:
    """S1: organisation keys in the HSM, their CSRs signed inside the HSM, their certificates."""
    _step("S1: organisation keys in the HSM and their certificates (the RA and its CA)")
    async with deployment.channel("ra", "admin") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateOrganisation(
            ra_pb2.CreateOrganisationRequest(organisation_id="acme", name="ACME Trading Ltd")
        )
        seal = (
            await admin.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id="acme",
                    label="acme-seal",
                    algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_EC_P256,
                )
            )
        ).key
        encryption = (
            await admin.CreateOrganisationKey(
                ra_pb2.CreateOrganisationKeyRequest(
                    organisation_id="acme",
                    label="acme-encryption",
                    algorithm=gateway_pb2.ORGANISATION_KEY_ALGORITHM_RSA_2048,
                )
            )
        ).key
        ca_der = (
            await ra_pb2_grpc.RegistrationServiceStub(channel).GetCaCertificate(
                gateway_pb2.GetCaCertificateRequest()
            )
        ).certificate
    for key in (seal, encryption):
        print(
            f"organisation key {key.label} ({key.key_id}) in the token, non-extractable; "
            f"certificate serial {key.certificate_serial}"
        )
    (out / "ca.pem").write_bytes(_pem("CERTIFICATE", ca_der))
    (out / "org.pem").write_bytes(_pem("CERTIFICATE", seal.certificate))
    (out / "org-encryption.pem").write_bytes(_pem("CERTIFICATE", encryption.certificate))
    _openssl(
        "verify",
        "-CAfile",
        str(out / "ca.pem"),
        str(out / "org.pem"),
        str(out / "org-encryption.pem"),
    )
    return seal, encryption


async def joint_signature(
    deployment: Deployment, out: Path
) -> tuple[client.Keystore, client.Certificates]:
    """S2 and the two-party signature: enrol a phone, sign with phone and cosigner together;
    returns the phone's keystore and what the RA sent it through the cosigner."""
    _step("Enrol a user's phone with the cosigner (two-party FROST key generation)")
    async with deployment.channel("ra", "admin") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        await admin.CreateUser(
            ra_pb2.CreateUserRequest(user_id="alice", display_name="Alice Martin")
        )
        ticket = await admin.IssueEnrolmentTicket(
            ra_pb2.IssueEnrolmentTicketRequest(user_id="alice", ttl_seconds=600)
        )
    print(
        f"RA issued enrolment ticket {ticket.ticket_id} for alice, and an activation code "
        "handed to her beside it (it never passes through the cosigner)"
    )
    async with deployment.public_channel("cosigner") as channel:
        keystore = await client.enrol(channel, ticket.ticket, DEMO_PIN)
        print(f"joint key {keystore.key_id}: phone holds share 1, cosigner holds share 2")
        _step("Sign a message jointly (one round trip; PIN and device proven first)")
        message = b"hello from alice's phone\n"
        async with client.SigningSession(channel, keystore, DEMO_PIN) as session:
            signature = await session.sign(message)
            _step(
                "S2: personal certificate for the joint key (CSR co-signed by phone and cosigner)"
            )
            async with deployment.public_channel("gateway") as gateway:
                # The phone was provisioned with the CA certificate (ca.pem) and pins it.
                ca_der = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes()).public_bytes(
                    serialization.Encoding.DER
                )
                certificates, csr = await client.request_personal_certificate(
                    channel,
                    session,
                    keystore,
                    ticket.ticket,
                    ticket.activation_code,
                    trust_anchor=ca_der,
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
    return keystore, certificates


async def escrowed_use(
    deployment: Deployment,
    out: Path,
    keystore: client.Keystore,
    certificates: client.Certificates,
    seal: gateway_pb2.OrganisationKey,
    encryption: gateway_pb2.OrganisationKey,
) -> tuple[dict[str, str], client.TrustAnchors]:
    """S3 to S5: grants, co-signed service records, HSM-checked use, receipts, the log; returns
    the grants (by key label) and what alice's phone trusts."""
    _step("S3/S4: the administrator grants alice the organisation keys")
    now = int(time.time())
    async with deployment.channel("ra", "admin") as channel:
        admin = ra_pb2_grpc.AdminServiceStub(channel)
        grants = {}
        for key, operation in (
            (seal, gateway_pb2.OPERATION_SIGN_DIGEST),
            (encryption, gateway_pb2.OPERATION_DECRYPT),
        ):
            grant = (
                await admin.CreateGrant(
                    ra_pb2.CreateGrantRequest(
                        user_id="alice",
                        key_id=key.key_id,
                        operations=[operation],
                        not_before_unix=now - 60,
                        not_after_unix=now + 30 * 86_400,
                        quota_total=100,
                        quota_daily=10,
                        purpose="purchasing",
                    )
                )
            ).grant
            grants[key.label] = grant.grant_id
            print(f"grant {grant.grant_id}: alice may use {key.label}, 10 a day, 100 in all")
    ca_der = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    async with (
        deployment.public_channel("gateway") as gateway_channel,
        deployment.public_channel("cosigner") as cosigner_channel,
    ):
        gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
        log_key = await gateway.GetLogPublicKey(gateway_pb2.GetLogPublicKeyRequest())
        phone = client.GatewaySession(gateway_channel, keystore)
        await phone.login()
        print("alice's phone logged into the gateway with its device key")
        # The grant key came from the RA through the cosigner at enrolment, not from the gateway.
        trust = client.TrustAnchors(
            ca_der, log_key.public_key_spki, log_key.origin, certificates.grant_key_spki
        )
        document = b"Purchase order 2026-117: 40 units at EUR 125.00, delivery by 2026-12-15.\n"
        secret = b"Tender envelope 7: our bid is EUR 4,980,000.\n"
        encryption_key = x509.load_der_x509_certificate(encryption.certificate).public_key()
        assert isinstance(encryption_key, rsa.RSAPublicKey)
        ciphertext = encryption_key.encrypt(
            secret, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        )
        async with client.SigningSession(cosigner_channel, keystore, DEMO_PIN) as signing:
            _step("Sign a business document with the organisation key, from alice's phone")
            signed = await phone.use_key(
                signing,
                grant_id=grants["acme-seal"],
                operation=gateway_pb2.OPERATION_SIGN_DIGEST,
                data=hashlib.sha256(document).digest(),
                purpose="purchase order 2026-117",
                trust=trust,
            )
            print(
                f"alice's phone checked the RA's signature on the grant, and that the record names "
                f"key {signed.key.label!r} "
                f"({signed.key.organisation_id}), its certificate, the operation, the document's "
                f"digest and the purpose {signed.record.purpose!r}"
            )
            print(
                f"record {signed.record.record_id} co-signed by alice, logged as entry "
                f"{signed.receipt.entry_index}, checked by the HSM proxy, then signed in the HSM"
            )
            _step("Decrypt a message encrypted to the RSA organisation certificate")
            decrypted = await phone.use_key(
                signing,
                grant_id=grants["acme-encryption"],
                operation=gateway_pb2.OPERATION_DECRYPT,
                data=ciphertext,
                purpose="open tender envelope 7",
                trust=trust,
            )
        if decrypted.result != secret:
            raise SystemExit("the decrypted message differs")
        print(f"decrypted: {decrypted.result.decode().strip()}")
        # An auditor holding the checkpoint of the first receipt checks the log only grew.
        first = signed.receipt.checkpoint
        last = (await gateway.GetCheckpoint(gateway_pb2.GetCheckpointRequest())).checkpoint
        first_size = int(first.split(b"\n")[1])
        last_size = int(last.split(b"\n")[1])
        proof = (
            await gateway.GetConsistencyProof(
                gateway_pb2.GetConsistencyProofRequest(old_size=first_size, new_size=last_size)
            )
        ).proof

    (out / "document.txt").write_bytes(document)
    (out / "document.sig").write_bytes(signed.result)
    org_public = x509.load_der_x509_certificate(seal.certificate).public_key()
    (out / "org-key.pub.pem").write_bytes(
        org_public.public_bytes(
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
    (out / "record.bin").write_bytes(signed.receipt.record)
    (out / "record.sig").write_bytes(signed.receipt.user_signature)
    (out / "receipt.json").write_text(client.receipt_to_json(signed.receipt, log_key.origin))
    (out / "log.pub.pem").write_bytes(
        serialization.load_der_public_key(log_key.public_key_spki).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    user_public = x509.load_pem_x509_certificate((out / "user.pem").read_bytes()).public_key()
    (out / "user.pub.pem").write_bytes(
        user_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _step("S5: anyone can verify offline: the user's signature, the receipt, the log")
    _openssl(
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(out / "user.pub.pem"),
        "-rawin",
        "-in",
        str(out / "record.bin"),
        "-sigfile",
        str(out / "record.sig"),
    )
    _run_client(
        "verify-receipt",
        "--receipt",
        str(out / "receipt.json"),
        "--ca",
        str(out / "ca.pem"),
        "--log-key",
        str(out / "log.pub.pem"),
    )
    (out / "checkpoint-old.txt").write_bytes(first)
    (out / "checkpoint-new.txt").write_bytes(last)
    (out / "consistency.txt").write_text(
        "".join(base64.b64encode(h).decode() + "\n" for h in proof)
    )
    _run_client(
        "verify-consistency",
        "--old",
        str(out / "checkpoint-old.txt"),
        "--new",
        str(out / "checkpoint-new.txt"),
        "--proof",
        str(out / "consistency.txt"),
        "--log-key",
        str(out / "log.pub.pem"),
        "--origin",
        log_key.origin,
    )
    return grants, trust


def _run_client(*args: str) -> None:
    """Run the project's own verifier as a user would, and fail the demo if it fails."""
    print("$ python -m client " + " ".join(args), flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "client", *args], capture_output=True, text=True, check=False
    )
    print((result.stdout + result.stderr).strip(), flush=True)
    if result.returncode != 0:
        raise SystemExit(f"client {args[0]} failed")


async def _flow(deployment: Deployment, out: Path) -> None:
    seal, encryption = await organisation_certificate(deployment, out)
    keystore, certificates = await joint_signature(deployment, out)
    grants, trust = await escrowed_use(deployment, out, keystore, certificates, seal, encryption)
    await seal_contract(deployment, out, keystore, trust, grants["acme-seal"], DEMO_PIN, _step)
    _step("The receipt of the seal verifies offline like any other")
    _run_client(
        "verify-receipt",
        "--receipt",
        str(out / "contract-receipt.json"),
        "--ca",
        str(out / "ca.pem"),
        "--log-key",
        str(out / "log.pub.pem"),
    )


def main() -> None:
    """Run the demo; exit non-zero if any step or verification fails."""
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__)
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="keep every service's state in a PostgreSQL server started for the demo",
    )
    args = parser.parse_args()
    out = Path(os.environ.get("DEMO_OUT", "demo-out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = _fresh_state(Path(os.environ.get("MOBILESIGN_STATE_DIR", "var/demo")).resolve())
    with contextlib.ExitStack() as stack:
        postgres = None
        if args.postgres:
            postgres = PostgresServer()
            _step(f"Starting PostgreSQL {postgres.version()} (socket in {postgres.socket_dir})")
            postgres.start()
            stack.callback(postgres.stop)
        deployment = Deployment(state, postgres=postgres)
        where = "a database each on PostgreSQL" if postgres else f"state in {state}"
        _step(f"Starting hsm-proxy, ra, gateway and cosigner ({where})")
        deployment.start_all()
        try:
            asyncio.run(_flow(deployment, out))
        finally:
            deployment.stop_all()
    _step(f"Done: artefacts in {out}")


if __name__ == "__main__":
    main()
