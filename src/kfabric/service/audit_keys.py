"""The audit log's keys: HMAC-SHA256 secrets kept outside the store, so that someone who can write the database
cannot recompute the chain after changing it.

A key file holds one key per line, ``KEY_ID HEX_SECRET``; the last line is the current key (new entries use
it), earlier lines stay to verify older entries. ``kfabric audit rotate-key`` appends a line. The file is
created 0600 on first use; the server refuses to start when the store holds entries made with a key the file
lacks (a lost or wrong key file), instead of silently starting a chain that no longer verifies.

Where the file is: ``kfabric serve --audit-key-file PATH``, else ``KFABRIC_AUDIT_KEY_FILE``, else
``STATE_DIR/audit.key`` (docs/security.md says why a separate disk or secret store is better).
"""

from __future__ import annotations

import hmac
import os
import secrets
import weakref
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from kfabric.model.errors import ValidationError

ENV_KEY_FILE = "KFABRIC_AUDIT_KEY_FILE"
_KEY_BYTES = 32


@dataclass(frozen=True)
class Keyring:
    """Audit keys by id, and the id new entries are made with."""

    keys: dict[str, bytes]
    current: str
    path: Path | None = None

    def key(self, key_id: str) -> bytes | None:
        return self.keys.get(key_id)

    def mac(self, key_id: str, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` with the key ``key_id`` (hex); raises when the key is unknown."""
        key = self.keys.get(key_id)
        if key is None:
            raise ValidationError(
                "audit key", f"key {key_id!r} is not in the key file", "restore the audit key file that made it"
            )
        return hmac.new(key, message, "sha256").hexdigest()


def _parse(path: Path, text: str) -> Keyring:
    keys: dict[str, bytes] = {}
    current = ""
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) != 2 or not parts[0].isalnum() or len(parts[0]) > 32:
                raise ValueError
            secret = bytes.fromhex(parts[1])
        except ValueError:
            raise ValidationError(
                f"{path}:{n}", "not a 'KEY_ID HEX_SECRET' line", "restore the file from its backup"
            ) from None
        if len(secret) < 16:
            raise ValidationError(f"{path}:{n}", "the secret is shorter than 16 bytes", "use kfabric audit rotate-key")
        keys[parts[0]] = secret
        current = parts[0]
    if not keys:
        raise ValidationError(str(path), "holds no audit key", "remove the empty file to create a new key")
    return Keyring(keys, current, path)


def _new_line(existing: Keyring | None) -> tuple[str, str]:
    """A key with a random id (two key files never share an id, so a wrong file is told apart by id)."""
    key_id = "k" + secrets.token_hex(6)
    while existing is not None and key_id in existing.keys:
        key_id = "k" + secrets.token_hex(6)
    return key_id, f"{key_id} {secrets.token_hex(_KEY_BYTES)}\n"


def load_or_create(path: Path) -> Keyring:
    """The key file at ``path``; a new one with one fresh key (0600) if there is none."""
    path = Path(path)
    try:
        return _parse(path, path.read_text())
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ValidationError(
            str(path), f"cannot read the audit key file: {exc.strerror}", "fix its permissions"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    _key_id, line = _new_line(None)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _parse(path, path.read_text())
    with os.fdopen(fd, "w") as f:
        f.write("# kfabric audit keys: KEY_ID HEX_SECRET; the last line signs new entries. Keep it secret.\n")
        f.write(line)
    return _parse(path, path.read_text())


def rotate(path: Path) -> str:
    """Append a new key to the file (it signs entries from now on); returns its id."""
    ring = load_or_create(path)
    key_id, line = _new_line(ring)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    with os.fdopen(fd, "a") as f:
        f.write(line)
    return key_id


def from_env() -> Keyring:
    path = os.environ.get(ENV_KEY_FILE)
    if not path:
        raise ValidationError(
            "audit key",
            "no audit key file is configured",
            f"start the service with --audit-key-file PATH or set {ENV_KEY_FILE}",
        )
    return load_or_create(Path(path))


_rings: weakref.WeakKeyDictionary[Engine, Keyring] = weakref.WeakKeyDictionary()


def use(engine: Engine, ring: Keyring) -> None:
    """Sign this store's new audit entries with ``ring`` (set by the runtime when it opens the store)."""
    _rings[engine] = ring


def for_engine(engine: Engine) -> Keyring:
    """The keyring of a store: the one :func:`use` set, else the file named by :data:`ENV_KEY_FILE`."""
    ring = _rings.get(engine)
    if ring is None:
        ring = _rings[engine] = from_env()
    return ring
