"""The phone's keystore file: its key share, its device key, and what identifies the key.

A JSON document written atomically (temporary file, fsync, rename) with mode 0600. On a real
phone the device key would live in the hardware keystore; the file format keeps it beside the
share so that the CLI and the tests behave like a phone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mobilesign import twoparty

_FORMAT = "mobilesign-keystore-v1"


@dataclass(frozen=True)
class Keystore:
    """Everything the phone keeps for one enrolled key."""

    key_id: str
    user_id: str
    key_package: twoparty.KeyPackage
    device_key: ec.EllipticCurvePrivateKey

    @property
    def group_public_key(self) -> bytes:
        """The joint Ed25519 public key (32 bytes)."""
        return self.key_package.group_public_key

    def save(self, path: Path) -> None:
        """Write the keystore to ``path`` atomically, readable by the owner only."""
        document = {
            "format": _FORMAT,
            "key_id": self.key_id,
            "user_id": self.user_id,
            "key_package": self.key_package.to_bytes().hex(),
            "device_key": self.device_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: Path) -> Keystore:
        """Read a keystore written by :meth:`save`."""
        document = json.loads(path.read_text())
        if document.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a mobilesign keystore")
        device_key = serialization.load_pem_private_key(
            document["device_key"].encode(), password=None
        )
        if not isinstance(device_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: the device key is not an EC key")
        return cls(
            key_id=document["key_id"],
            user_id=document["user_id"],
            key_package=twoparty.KeyPackage.from_bytes(bytes.fromhex(document["key_package"])),
            device_key=device_key,
        )
