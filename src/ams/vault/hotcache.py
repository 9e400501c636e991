"""What every rotation reads and rarely changes, kept per process, checked by a number.

A rotation needs its scope's active certificate (the thumbprint and PEM the check-in sends,
the unsealed private key the report's test decryption uses) and its scope's password
policy. They change only when an administrator changes certificates or policies; so each
process keeps them, and the database holds ``instance.generation``, which every such change
bumps in its own transaction (:func:`bump`). Each hot-path request reads the number in the
statement that reads the device (no extra round trip) and hands it to :meth:`HotCache.sync`:
a different number empties the cache. So a change made by another worker, another node or
the CLI is seen by every process at its next request, never later.

A value is kept only under the number read before it was loaded (a request that read an
older number never stores what it loaded after a newer one emptied the cache). Private
keys are kept unsealed in memory, beside the master key that unseals them all anyway
(docs/security.md); a lost certificate's key is gone from here with the bump that lost it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ams.vault import hotsql
from ams.vault.generation import bump

if TYPE_CHECKING:
    from ams.instance import Instance
    from ams.vault.policy import PasswordPolicy

__all__ = ["ActiveCertificate", "HotCache", "bump", "for_instance"]


@dataclass(frozen=True)
class ActiveCertificate:
    thumbprint: str
    pem: str
    sealed_private_key: bytes | None  # None when lost


class HotCache:
    """One process's cache (thread-safe); :func:`for_instance` gives the instance's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation: int | None = None
        self._active: dict[str, ActiveCertificate | None] = {}
        self._policies: dict[str, PasswordPolicy] = {}
        self._keys: dict[str, bytes] = {}
        self._kept: hotsql.Kept | None = None

    def kept(self, instance: Instance) -> hotsql.Kept:
        """The connection this process keeps for the instance's hot path (ams.vault.hotsql)."""
        kept = self._kept
        if kept is None:
            with self._lock:
                kept = self._kept
                if kept is None:
                    kept = self._kept = hotsql.Kept(instance.engine, instance.home.run_dir / "write.lock")
        return kept

    def sync(self, generation: int) -> int:
        """Note the generation a request read; forget everything when it moved. Returns it,
        to be passed to the ``put_*`` methods."""
        if generation != self.generation:
            with self._lock:
                if generation != self.generation:
                    self._active = {}
                    self._policies = {}
                    self._keys = {}
                    self.generation = generation
        return generation

    def active(self, scope: str) -> ActiveCertificate | None | bool:
        """The scope's active certificate (None: it has none), or False when not known."""
        return self._active.get(scope, False)

    def put_active(self, generation: int, scope: str, value: ActiveCertificate | None) -> None:
        with self._lock:
            if generation == self.generation:
                self._active[scope] = value

    def policy(self, scope: str) -> PasswordPolicy | None:
        return self._policies.get(scope)

    def put_policy(self, generation: int, scope: str, value: PasswordPolicy) -> None:
        with self._lock:
            if generation == self.generation:
                self._policies[scope] = value

    def key(self, thumbprint: str) -> bytes | None:
        """The unsealed PKCS#8 DER of a certificate's private key, when kept."""
        return self._keys.get(thumbprint)

    def put_key(self, generation: int, thumbprint: str, value: bytes) -> None:
        with self._lock:
            if generation == self.generation:
                self._keys[thumbprint] = value


_caches: weakref.WeakKeyDictionary[Instance, HotCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def for_instance(instance: Instance) -> HotCache:
    """The cache of this open instance in this process."""
    cache = _caches.get(instance)
    if cache is None:
        with _caches_lock:
            cache = _caches.get(instance)
            if cache is None:
                cache = _caches[instance] = HotCache()
    return cache
