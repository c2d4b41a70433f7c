"""Signing sessions (``Sign`` stream): device and PIN proof on a fresh challenge, then one round
trip per signature.

Before the cosigner releases a signature share it records the signing durably (key, message
digest, both parties' commitments); the phone's report later attaches the final signature. So
every share that ever left the cosigner is accounted for, even if the phone never reports.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time

from cosigner.context import Cosigner, key_package_aad, pin_verifier_aad
from cosigner.errors import CosignerError
from cosigner.repository import CommitmentReplayed, StoredKey
from cosigner.stream import StepStream
from mobilesign import deviceauth, ids, twoparty
from mobilesign.errors import Kind
from mobilesign.hosting import metrics
from mobilesign.rpc import wire
from mobilesign.v1 import cosigner_pb2 as pb

_log = logging.getLogger("mobilesign.cosigner.sign")
MAX_MESSAGE_BYTES = 65_536


def _replayed() -> CosignerError:
    return CosignerError(
        Kind.INVALID,
        "REPLAYED_MESSAGE",
        "this nonce commitment was used in an earlier signing",
    )


def _locked() -> CosignerError:
    # The same answer for every attempt on a locked key, whatever the PIN: no oracle.
    return CosignerError(
        Kind.DENIED,
        "KEY_LOCKED",
        "the key is locked after repeated wrong PINs",
        {"attempts_left": "0"},
    )


async def _key(cosigner: Cosigner, key_id: str, scheme: twoparty.Scheme) -> StoredKey:
    ids.USER_KEY_ID.check(key_id)
    key = await cosigner.store.get(key_id)
    if key is None:
        raise CosignerError(Kind.NOT_FOUND, "KEY_NOT_FOUND", "no such key")
    if key.scheme != scheme.value:
        raise CosignerError(Kind.INVALID, "SCHEME_MISMATCH", "the key has another scheme")
    if key.locked:
        raise _locked()
    if await cosigner.registry.key_revoked(key.key_id):
        raise CosignerError(
            Kind.DENIED, "CERTIFICATE_REVOKED", "the key's certificate has been revoked"
        )
    return key


async def _authenticate(
    cosigner: Cosigner, key: StoredKey, stream: StepStream[pb.SignRequest, pb.SignResponse]
) -> None:
    challenge = secrets.token_bytes(deviceauth.CHALLENGE_BYTES)
    await stream.write(pb.SignResponse(challenge=pb.SignChallenge(challenge=challenge)))
    _, request = await stream.read("proof")
    transcript = deviceauth.session_transcript(bytes.fromhex(key.key_id), challenge)
    device_key = deviceauth.load_device_key(key.device_public_key)
    # The device proof comes first: only the enrolled device may even try a PIN.
    if not deviceauth.verify(device_key, request.proof.device_signature, transcript):
        raise CosignerError(
            Kind.DENIED, "DEVICE_PROOF_INVALID", "the device key did not sign the challenge"
        )
    verifier = await cosigner.sealer.unseal(key.sealed_pin_verifier, pin_verifier_aad(key.key_id))
    limit = cosigner.max_pin_attempts
    # One proof per key at a time, each attempt counted before its proof is checked: however
    # many sessions a thief opens, at most ``limit`` PIN proofs are ever checked.
    async with cosigner.pin_locks(key.key_id):
        attempt = await cosigner.store.reserve_pin_attempt(key.key_id, limit)
        if attempt is None:
            raise _locked()
        if not deviceauth.check_pin_proof(verifier, transcript, request.proof.pin_proof):
            _log.warning("wrong PIN", extra={"fields": {"key_id": key.key_id, "failures": attempt}})
            metrics.PIN_FAILURES.inc()
            if attempt >= limit:
                await cosigner.store.lock(key.key_id)
                metrics.KEY_LOCKOUTS.inc()
                raise _locked()
            left = limit - attempt
            raise CosignerError(
                Kind.DENIED,
                "WRONG_PIN",
                f"wrong PIN; attempts left before the key locks: {left}",
                {"attempts_left": str(left)},
            )
        await cosigner.store.reset_pin_failures(key.key_id)


async def sign(cosigner: Cosigner, stream: StepStream[pb.SignRequest, pb.SignResponse]) -> None:
    """Run one signing session until the phone closes it."""
    with metrics.SIGNING_SESSIONS.track_inprogress():
        await _session(cosigner, stream)


async def _session(cosigner: Cosigner, stream: StepStream[pb.SignRequest, pb.SignResponse]) -> None:
    _, request = await stream.read("open")
    scheme = wire.scheme_from_proto(request.open.scheme)
    key = await _key(cosigner, request.open.key_id, scheme)
    await _authenticate(cosigner, key, stream)
    package = twoparty.KeyPackage.from_bytes(
        await cosigner.sealer.unseal(key.sealed_key_package, key_package_aad(key.key_id))
    )
    signer = twoparty.CosignerSigner(package)
    await stream.write(pb.SignResponse(ready=pb.SignReady(user_id=key.user_id)))
    recorded = 0
    signing_id: int | None = None
    # A report is written in the background, off the path of the next signature; at most one
    # is ever pending (the next report waits for the one before it), so a long session keeps
    # no task per signature, and the last is on disk before the session closes (or ends in
    # error).
    completion: asyncio.Future[None] | None = None
    try:
        while True:
            step, request = await stream.read("commit", "report", "close")
            if step == "close":
                if signer.pending:
                    raise CosignerError(
                        Kind.PRECONDITION,
                        "REPORT_MISSING",
                        "the last signature was not reported",
                    )
                if completion is not None:
                    await completion
                await stream.write(
                    pb.SignResponse(closed=pb.SignClosed(signatures_recorded=recorded))
                )
                return
            if step == "commit":
                commit = request.commit
                if len(commit.message) > MAX_MESSAGE_BYTES:
                    raise CosignerError(
                        Kind.INVALID,
                        "MESSAGE_TOO_LARGE",
                        f"a message is at most {MAX_MESSAGE_BYTES} bytes",
                    )
                # A replayed commitment is caught by the unique index when the signing is
                # recorded, before the share (made with fresh nonces) is released.
                response = signer.receive_request(wire.sign_commit_from_proto(commit))
                try:
                    signing_id = await cosigner.store.begin_signing(
                        key.key_id,
                        hashlib.sha256(commit.message).digest(),
                        commit.hiding_commitment
                        + commit.binding_commitment
                        + response.hiding_commitment
                        + response.binding_commitment,
                        int(time.time()),
                    )
                except CommitmentReplayed:
                    raise _replayed() from None
                await stream.write(pb.SignResponse(share=wire.sign_share_to_proto(response)))
            else:
                cosigned = signer.receive_report(
                    twoparty.SignatureReport(signature=request.report.signature)
                )
                assert signing_id is not None
                if completion is not None:
                    # Done by now almost always: a whole round trip went by since it started.
                    previous, completion = completion, None
                    await previous
                completion = cosigner.store.complete_signing(
                    signing_id, cosigned.signature, int(time.time())
                )
                recorded += 1
    finally:
        signer.abort()
        if completion is not None:
            await asyncio.gather(completion, return_exceptions=True)
        _log.info("session ended", extra={"fields": {"key_id": key.key_id, "recorded": recorded}})
