"""The demo's last step: an application seals a PDF with the organisation key through the
gateway's CSC endpoint, using pyHanko's own ``CSCSigner``; alice approves it on her phone; the
sealed PDF is validated with the ``pyhanko`` command against the organisation CA, and the
receipt of the use with the offline verifier."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import client
from client import csc_seal
from client.approver import Approver
from mobilesign.hosting import devpki
from mobilesign.testing import Deployment
from mobilesign.v1 import csc_pb2, csc_pb2_grpc, gateway_pb2


async def seal_contract(
    deployment: Deployment,
    out: Path,
    keystore: client.Keystore,
    trust: client.TrustAnchors,
    grant_id: str,
    pin: str,
    step: Callable[[str], None],
) -> None:
    """Register an application for ``grant_id``, seal ``out/contract.pdf`` through the CSC
    endpoint with alice approving on her phone, and check the result two ways."""
    step("CSC: an administrator registers the contract system for alice's seal grant")
    async with deployment.channel("gateway") as channel:
        registered = await csc_pb2_grpc.CscAdminServiceStub(channel).RegisterApplication(
            csc_pb2.RegisterApplicationRequest(name="Contract desk", grant_ids=[grant_id])
        )
    app = registered.application
    print(f"application {app.client_id} ({app.name!r}) may use grant {grant_id} as a credential")
    contract = out / "contract.pdf"
    contract.write_bytes(
        csc_seal.one_page_pdf("Supply contract 2026-12: ACME Ltd and Example GmbH")
    )
    base_url = f"https://{deployment.address('gateway', 'csc')}"
    step(f"Seal {contract.name} with pyHanko's CSCSigner through {base_url}/csc/v2")

    def shown(approval: gateway_pb2.Approval) -> bool:
        print(
            f"alice's phone shows: {approval.application!r} asks to sign "
            f"{approval.label!r} for {approval.purpose!r} ({len(approval.digests)} hash); "
            "she approves, and her phone co-signs the record with the cosigner",
            flush=True,
        )
        return True

    tls_ca = str(devpki.ensure(deployment.state_dir) / "ca.pem")
    async with (
        csc_seal.http_session(tls_ca) as http,
        deployment.public_channel("gateway") as gateway_channel,
        deployment.public_channel("cosigner") as cosigner_channel,
    ):
        token = await csc_seal.access_token(http, base_url, app.client_id, registered.client_secret)
        found = await csc_seal.credential(http, base_url, token, grant_id)
        print(f"credentials/info: {found.info.signing_cert.subject.human_friendly}, SCAL 2")
        phone = client.GatewaySession(gateway_channel, keystore)
        await phone.login()
        async with client.SigningSession(cosigner_channel, keystore, pin) as signing:
            approver = Approver(phone, signing, trust, shown, poll_seconds=0.05)
            async with approver.running():
                sealed = await csc_seal.seal_pdf(
                    http,
                    found,
                    contract.read_bytes(),
                    description="supply contract",
                    label=contract.name,
                )
            (approved,) = approver.approved
            use = await phone.result_of(approved, trust=trust)
    (out / "contract-sealed.pdf").write_bytes(sealed)
    print(
        f"signHash ran record {use.record.record_id}, logged as entry {use.receipt.entry_index}; "
        f"wrote {out / 'contract-sealed.pdf'}"
    )
    (out / "contract-receipt.json").write_text(
        client.receipt_to_json(use.receipt, trust.log_origin)
    )
    step("Validate the sealed PDF with pyHanko against the organisation CA")
    # The certificates name a placeholder CRL URL that nothing serves here: the command's own
    # fetch fails softly, and the API call below checks the RA's current CRL, strictly.
    command = [
        str(Path(sys.executable).parent / "pyhanko"),
        "sign",
        "validate",
        "--trust-replace",
        "--trust",
        str(out / "ca.pem"),
        "--soft-revocation-check",
        str(out / "contract-sealed.pdf"),
    ]
    print("$ pyhanko " + " ".join(command[1:]), flush=True)
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, check=False
    )
    print(result.stdout.strip(), flush=True)
    if result.returncode != 0 or ":INTACT:TRUSTED" not in result.stdout:
        print(result.stderr.strip())
        raise SystemExit("pyhanko does not report the seal intact and trusted")
    status = await csc_seal.validate(
        sealed, (out / "ca.pem").read_bytes(), crl=(out / "crl.pem").read_bytes()
    )
    print(
        "pyhanko.sign.validation.async_validate_pdf_signature(trust: ca.pem, CRL: crl.pem, "
        f"revocation hard-fail): intact={status.intact} valid={status.valid} "
        f"trusted={status.trusted}, signer {status.signing_cert.subject.human_friendly!r}"
    )
    if not (status.intact and status.valid and status.trusted):
        raise SystemExit("pyhanko's validator does not accept the seal")
