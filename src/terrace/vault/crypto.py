"""AES-256-GCM sealing and the master key. No database here: ``service.py`` stores things."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from terrace.errors import VaultError

__all__ = ["KEY_BYTES", "MasterKey", "load_master_key", "open_sealed", "seal"]

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
VERSION = b"\x01"  # the first byte of every sealed blob: room for another format later


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """``VERSION || nonce || ciphertext+tag``. ``aad`` binds the blob to where it is stored."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The plaintext of a blob from :func:`seal`; :class:`VaultError` if it does not open."""
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != VERSION:
        raise VaultError("a sealed value is malformed")
    nonce, body = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise VaultError(
            "a sealed value does not open with its key: the master key is not the one it was "
            "sealed under, or the stored row was altered"
        ) from None


class MasterKey:
    """The key that wraps the data keys. Its bytes never leave this object except to AES."""

    __slots__ = ("_key", "source")

    def __init__(self, key: bytes, *, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise VaultError(f"the master key from {source} must be {KEY_BYTES} bytes")
        self._key = key
        self.source = source

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r})"

    def wrap(self, data_key: bytes, *, key_id: int) -> bytes:
        return seal(self._key, data_key, _wrap_aad(key_id))

    def unwrap(self, wrapped: bytes, *, key_id: int) -> bytes:
        try:
            return open_sealed(self._key, wrapped, _wrap_aad(key_id))
        except VaultError:
            raise VaultError(
                f"vault data key {key_id} does not open with the master key from {self.source}: "
                "is TERRACE_MASTER_KEY (or master.key) the one this store was created with?"
            ) from None


def _wrap_aad(key_id: int) -> bytes:
    return f"terrace/vault-key/{key_id}".encode()


def _decode(text: str, source: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
    if len(raw) != KEY_BYTES:
        raise VaultError(
            f"the master key in {source} must be {KEY_BYTES} random bytes, base64url or hex "
            '(make one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return raw


def load_master_key(home: Path, environ: Mapping[str, str] | None = None) -> MasterKey:
    """``TERRACE_MASTER_KEY`` if set, else ``home/master.key``, created (mode 0600) if missing."""
    env = os.environ if environ is None else environ
    if value := env.get("TERRACE_MASTER_KEY", "").strip():
        return MasterKey(_decode(value, "TERRACE_MASTER_KEY"), source="TERRACE_MASTER_KEY")
    path = home / "master.key"
    source = str(path)
    try:
        return MasterKey(_decode(path.read_text(encoding="ascii"), source), source=source)
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    text = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode().rstrip("=")
    # Write a private temporary file, then link it into place: a second process starting at the
    # same moment either wins the link or reads the complete file of the one that did.
    tmp = home / f".master.key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
        os.link(tmp, path)
    except FileExistsError:
        return MasterKey(_decode(path.read_text(encoding="ascii"), source), source=source)
    finally:
        tmp.unlink(missing_ok=True)
    return MasterKey(_decode(text, source), source=source)
