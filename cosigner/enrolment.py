"""Enrolment (``KeyGen`` stream): ticket check, two-party DKG, device binding, durable storage.

Nothing is stored until every check has passed; the ticket is consumed in the same statement
that stores the key, so a ticket enrols at most one key even under concurrent attempts.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cosigner.context import Cosigner, key_package_aad, pin_verifier_aad
from cosigner.errors import CosignerError
from cosigner.repository import KeyExists, StoredKey, TicketAlreadyUsed
from cosigner.stream import StepStream
from mobilesign import deviceauth, tickets, twoparty
from mobilesign.errors import Kind
from mobilesign.rpc import wire
from mobilesign.v1 import cosigner_pb2 as pb

_log = logging.getLogger("mobilesign.cosigner.enrol")


def _ticket_used() -> CosignerError:
    return CosignerError(Kind.DENIED, "TICKET_USED", "the enrolment ticket was already used")


async def enrol(
    cosigner: Cosigner, stream: StepStream[pb.KeyGenRequest, pb.KeyGenResponse]
) -> None:
    """Run one enrolment to completion, or fail it having stored nothing."""
    _, request = await stream.read("start")
    start = request.start
    scheme = wire.scheme_from_proto(start.scheme)
    claims = tickets.verify(start.ticket, await cosigner.registry.ticket_key(), int(time.time()))
    device_key = deviceauth.load_device_key(start.device_public_key)
    if len(start.pin_verifier) != deviceauth.PIN_VERIFIER_BYTES:
        raise CosignerError(Kind.INVALID, "PIN_VERIFIER_INVALID", "a PIN verifier is 32 bytes")

    # Both secrets are sealed in the HSM from round two on (when the key, and with it their
    # associated data, is known), while the phone computes and answers: sealing keeps nothing,
    # and the blobs are stored only once the phone has confirmed and proved its device key.
    sealing: list[asyncio.Task[bytes]] = []
    machine = twoparty.CosignerKeyGen(scheme=scheme)
    # The database answers whether the ticket was used while round one is computed (the
    # yield hands the read to the database's thread first); nothing is sent before the answer.
    used = asyncio.ensure_future(cosigner.store.ticket_used(claims.ticket_id))
    await asyncio.sleep(0)
    try:
        own_round1 = machine.receive_round1(wire.commitment_from_proto(start.commitment))
        if await used:
            raise _ticket_used()
        await stream.write(pb.KeyGenResponse(commitment=wire.commitment_to_proto(own_round1)))
        _, request = await stream.read("secret_share")
        own_round2 = machine.receive_round2(
            twoparty.DkgRound2(secret_share=request.secret_share.secret_share)
        )
        await stream.write(
            pb.KeyGenResponse(
                secret_share=pb.KeyGenCosignerShare(
                    secret_share=own_round2.secret_share,
                    group_public_key=own_round2.group_public_key,
                )
            )
        )
        # After the answer, which they would only delay.
        provisional = machine.provisional_key_package
        assert provisional is not None  # round two is done
        key_id = provisional.group_public_key.hex()
        sealing = [
            asyncio.create_task(cosigner.sealer.seal(start.pin_verifier, pin_verifier_aad(key_id))),
            asyncio.create_task(
                cosigner.sealer.seal(provisional.to_bytes(), key_package_aad(key_id))
            ),
        ]
        _, request = await stream.read("confirm")
        package = machine.receive_confirm(
            twoparty.DkgConfirm(group_public_key=request.confirm.group_public_key)
        )
        transcript = deviceauth.enrol_transcript(
            start.ticket, package.group_public_key, start.device_public_key
        )
        if not deviceauth.verify(device_key, request.confirm.device_signature, transcript):
            raise CosignerError(
                Kind.DENIED,
                "DEVICE_PROOF_INVALID",
                "the device key did not sign the enrolment",
            )
        sealed_pin_verifier, sealed_key_package = await asyncio.gather(*sealing)
    finally:
        machine.abort()
        used.cancel()  # when round one failed before the answer was awaited
        await asyncio.gather(used, return_exceptions=True)
        for task in sealing:
            task.cancel()
        # A failed enrolment waits for its seals to end (their blobs are dropped), so that no
        # call to the HSM proxy outlives it.
        await asyncio.gather(*sealing, return_exceptions=True)
    stored = StoredKey(
        key_id=key_id,
        user_id=claims.user_id,
        scheme=scheme.value,
        sealed_key_package=sealed_key_package,
        sealed_pin_verifier=sealed_pin_verifier,
        device_public_key=start.device_public_key,
        failed_pin_attempts=0,
        locked=False,
        ticket_id=claims.ticket_id,
        created_at=int(time.time()),
    )
    try:
        await cosigner.store.add(stored)
    except TicketAlreadyUsed:
        raise _ticket_used() from None
    except KeyExists:
        raise CosignerError(Kind.CONFLICT, "KEY_EXISTS", "this key is enrolled already") from None
    _log.info("key enrolled", extra={"fields": {"key_id": key_id, "user_id": claims.user_id}})
    await stream.write(pb.KeyGenResponse(done=pb.KeyGenDone(key_id=key_id, user_id=claims.user_id)))
