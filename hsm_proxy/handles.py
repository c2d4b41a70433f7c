"""Token objects found once per PKCS#11 session, kept by the worker thread that holds it.

Finding an object costs a ``C_FindObjects`` and, in python-pkcs11, a read of each of its
capability attributes (about 0.14 ms on SoftHSM2, more on a token with many objects). Using a
kept one costs one attribute read, of its ``CKA_ID``, which confirms the handle still names the
object it named: a handle stays valid while its object exists, and PKCS#11 lets a token give a
destroyed object's handle to a new object. This proxy destroys no key; a kept object is found
again when that check fails (a key removed or replaced behind the proxy's back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

import pkcs11
from pkcs11 import Attribute
from pkcs11 import exceptions as p11e

#: Kept objects per session at most (a worker's session signs with a few keys; the bound only
#: stops a token with very many keys from growing the cache without end).
LIMIT = 1024

_local = threading.local()


def _kept_by(session: pkcs11.Session) -> dict[Hashable, tuple[pkcs11.Object, bytes]]:
    # One session per worker thread (the pool's); a thread given another session starts afresh.
    held = getattr(_local, "held", None)
    if held is None or held[0] is not session:
        held = (session, {})
        _local.held = held
    kept: dict[Hashable, tuple[pkcs11.Object, bytes]] = held[1]
    return kept


def object_id(obj: pkcs11.Object) -> bytes:
    """The object's ``CKA_ID``."""
    return bytes(obj[Attribute.ID])


def kept(
    session: pkcs11.Session, what: Hashable, find: Callable[[], pkcs11.Object | None]
) -> tuple[pkcs11.Object, bytes] | None:
    """The object ``what`` names and its ``CKA_ID``: the one kept for this session if its
    handle still carries that id, else ``find()`` (kept when it finds one)."""
    cache = _kept_by(session)
    held = cache.get(what)
    if held is not None:
        obj, obj_id = held
        try:
            if object_id(obj) == obj_id:
                return obj, obj_id
        except p11e.PKCS11Error:
            pass  # the handle names nothing any more
        del cache[what]
    found = find()
    if found is None:
        return None
    if len(cache) >= LIMIT:
        cache.clear()
    entry = (found, object_id(found))
    cache[what] = entry
    return entry
