"""Copies between the two-party protocol messages (:mod:`twoparty`) and their protobuf
envelopes (``mobilesign.v1.cosigner``). Field for field, no checks: the state machine that
receives a message validates it."""

from __future__ import annotations

from mobilesign import twoparty
from mobilesign.errors import Error, Kind
from mobilesign.v1 import cosigner_pb2


class WireError(Error):
    """A message that cannot be carried over into the domain (unknown enum value, no parse)."""


_SCHEMES = {cosigner_pb2.SCHEME_FROST_ED25519_SHA512_V1: twoparty.Scheme.FROST_ED25519_SHA512}
_SCHEME_VALUES = {v: k for k, v in _SCHEMES.items()}


def scheme_from_proto(value: int) -> twoparty.Scheme:
    """The scheme named on the wire; INVALID_ARGUMENT UNSUPPORTED_SCHEME when unknown."""
    try:
        return _SCHEMES[cosigner_pb2.Scheme.ValueType(value)]
    except KeyError:
        raise WireError(Kind.INVALID, "UNSUPPORTED_SCHEME", "unsupported scheme") from None


def scheme_from_name(name: str) -> twoparty.Scheme:
    """The scheme of a stored key (its wire identifier string)."""
    return twoparty.Scheme(name)


def scheme_to_proto(scheme: twoparty.Scheme) -> cosigner_pb2.Scheme.ValueType:
    """The wire value of a scheme."""
    return _SCHEME_VALUES[scheme]


def commitment_to_proto(message: twoparty.DkgRound1) -> cosigner_pb2.DkgCommitment:
    """DKG round 1 onto the wire."""
    return cosigner_pb2.DkgCommitment(
        identifier=message.identifier,
        coefficient_commitments=list(message.commitment),
        proof_r=message.proof_r,
        proof_mu=message.proof_mu,
    )


def commitment_from_proto(message: cosigner_pb2.DkgCommitment) -> twoparty.DkgRound1:
    """DKG round 1 off the wire."""
    return twoparty.DkgRound1(
        identifier=message.identifier,
        commitment=tuple(message.coefficient_commitments),
        proof_r=message.proof_r,
        proof_mu=message.proof_mu,
    )


def sign_commit_from_proto(message: cosigner_pb2.SignCommit) -> twoparty.SignRequest:
    """A phone's signing request off the wire."""
    return twoparty.SignRequest(
        message=message.message,
        hiding_commitment=message.hiding_commitment,
        binding_commitment=message.binding_commitment,
    )


def sign_commit_to_proto(request: twoparty.SignRequest) -> cosigner_pb2.SignCommit:
    """A phone's signing request onto the wire."""
    return cosigner_pb2.SignCommit(
        message=request.message,
        hiding_commitment=request.hiding_commitment,
        binding_commitment=request.binding_commitment,
    )


def sign_share_to_proto(response: twoparty.SignResponse) -> cosigner_pb2.SignShare:
    """The cosigner's commitments and share onto the wire."""
    return cosigner_pb2.SignShare(
        hiding_commitment=response.hiding_commitment,
        binding_commitment=response.binding_commitment,
        signature_share=response.signature_share,
    )


def sign_share_from_proto(message: cosigner_pb2.SignShare) -> twoparty.SignResponse:
    """The cosigner's commitments and share off the wire."""
    return twoparty.SignResponse(
        hiding_commitment=message.hiding_commitment,
        binding_commitment=message.binding_commitment,
        signature_share=message.signature_share,
    )


def malformed_request() -> WireError:
    """The error for a request that is not a valid protobuf message of the expected type."""
    return WireError(Kind.INVALID, "MALFORMED_REQUEST", "the request message does not parse")


def message_too_large(limit: int) -> WireError:
    """The error for a request message over the service's size limit."""
    return WireError(
        Kind.INVALID, "MESSAGE_TOO_LARGE", f"a request message is at most {limit} bytes"
    )
