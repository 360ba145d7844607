"""Ed25519 signatures over model bundles: who made a bundle, and that nothing in it changed since.

`bundle.json`'s sha256 catches a corrupted model file, but anyone who can swap `model.onnx` can
also rewrite that hash. A signature cannot be rewritten without the private key, which stays
with training; stations hold only public keys (their `trusted_keys`) and refuse any bundle that
is unsigned, signed by a key they do not trust, or changed after signing.

`signature.json`, beside `bundle.json`, lists the sha256 of every other file in the bundle and
signs that list (canonical JSON) with Ed25519. Keys: the private key is a PKCS#8 PEM file; a
public key is 32 raw bytes written as one base64 line (a `.pub` file, or inline in a station
config). A key's id is the first 16 hex digits of its sha256. This module never imports torch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zerodefect.inference.bundle import BundleError, sha256_file

log = logging.getLogger(__name__)

SIGNATURE_JSON = "signature.json"
ALGORITHM = "ed25519"
SIGNATURE_FORMAT = 1
DEFAULT_KEY_NAME = "bundle-signing"


class SignatureError(BundleError):
    """A bundle that is unsigned, signed by an untrusted key, or changed after it was signed."""


class SigningKeyError(BundleError):
    """A signing or public key that cannot be read; names the file or the config entry."""


# ---------------------------------------------------------------------------------------------
# Keys


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The one-line form of a public key, as `.pub` files and station configs hold it."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return base64.b64encode(public_bytes(key)).decode()


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short, stable name for a key pair (what signature.json and the registry record)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def write_key_pair(folder: Path, name: str = DEFAULT_KEY_NAME) -> tuple[Path, Path]:
    """Make a new key pair: FOLDER/NAME.key (private, mode 0600) and FOLDER/NAME.pub.

    Refuses to overwrite an existing private key: bundles signed with it would lose their signer.
    """
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:  # O_EXCL: two processes creating the default key at once never clobber each other
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{private_path}: a signing key already exists; not overwriting it") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_text(public_key_b64(key) + "\n")
    return private_path, public_path


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the signing key ({exc.strerror})") from exc
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def _decode_b64_key(text: str) -> Ed25519PublicKey | None:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else None


def load_public_key(entry: str | Path) -> Ed25519PublicKey:
    """A trusted key from a station config: inline base64 (32 bytes), or a file holding that
    line (a `.pub` file) or a PEM public key."""
    if isinstance(entry, str):
        inline = _decode_b64_key(entry)
        if inline is not None:
            return inline
    path = Path(entry)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"trusted key {str(entry)!r}: neither inline base64 nor a readable file ({exc.strerror})"
        ) from exc
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise SigningKeyError(f"{path}: not a PEM public key ({exc})") from exc
    else:
        key = _decode_b64_key(data.decode(errors="replace"))
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key (one base64 line of 32 bytes, or PEM)")
    return key


def signing_key(settings=None) -> Ed25519PrivateKey:
    """The private key training signs bundles with.

    `ZD_SIGNING_KEY` names a PEM file (never created here). Without it, the embedded
    single-machine set-up uses DATA_DIR/keys/bundle-signing.key, made on first use.
    """
    from zerodefect.settings import get_settings

    settings = settings or get_settings()
    if settings.signing_key is not None:
        if not settings.signing_key.is_file():
            raise SigningKeyError(
                f"ZD_SIGNING_KEY={settings.signing_key}: no such key file; "
                "make a key pair with `zerodefect keys new --out DIR`"
            )
        return read_private_key(settings.signing_key)
    path = settings.default_signing_key
    if not path.is_file():
        try:
            _, public_path = write_key_pair(path.parent, path.stem)
            key = read_private_key(path)
            log.warning(
                "no signing key configured (ZD_SIGNING_KEY): created %s, key id %s; stations must "
                "trust %s (trusted_keys) to serve the bundles it signs",
                path,
                key_id(key),
                public_path,
            )
            return key
        except SigningKeyError:
            pass  # another process made it first
    return read_private_key(path)


# ---------------------------------------------------------------------------------------------
# Signing and verifying


def bundle_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of the bundle except the signature, by POSIX relative path."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != SIGNATURE_JSON
    }


def _payload(key_id_: str, files: dict[str, str]) -> bytes:
    """The exact bytes signed: canonical JSON (sorted keys, no spaces) of the signed fields."""
    body = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key_id": key_id_, "files": files}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_bundle(folder: str | Path, key: Ed25519PrivateKey | None = None) -> dict:
    """Sign every file of the bundle in `folder` (the one place bundles are signed); returns
    the signature record, also written to `signature.json`. `key` defaults to `signing_key()`."""
    folder = Path(folder)
    key = key or signing_key()
    kid = key_id(key)
    files = bundle_files(folder)
    record = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key_id": kid,
        "files": files,
        "signature": base64.b64encode(key.sign(_payload(kid, files))).decode(),
    }
    (folder / SIGNATURE_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_signature(folder: str | Path) -> dict:
    """The bundle's signature record, checked for shape (not yet verified)."""
    path = Path(folder) / SIGNATURE_JSON
    if not path.is_file():
        raise SignatureError(
            f"{folder}: unsigned bundle ({SIGNATURE_JSON} missing); a station serves only bundles "
            "signed by a key in its trusted_keys"
        )
    try:
        record = json.loads(path.read_text())
        ok = (
            record["algorithm"] == ALGORITHM
            and isinstance(record["key_id"], str)
            and isinstance(record["files"], dict)
            and isinstance(record["signature"], str)
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise SignatureError(f"{path}: not a valid {ALGORITHM} signature record")
    return record


def verify_bundle(folder: str | Path, trusted: Sequence[Ed25519PublicKey]) -> str:
    """Check that a trusted key signed exactly the files the bundle has now; returns its key id.

    Raises SignatureError naming the reason: unsigned, untrusted signer, bad signature, or the
    files changed, added or removed since signing.
    """
    folder = Path(folder)
    record = read_signature(folder)
    by_id = {key_id(k): k for k in trusted}
    signer = by_id.get(record["key_id"])
    if signer is None:
        raise SignatureError(
            f"{folder}: signed by key {record['key_id']}, which this station does not trust "
            f"(trusted_keys: {', '.join(sorted(by_id)) or 'none'})"
        )
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        signer.verify(signature, _payload(record["key_id"], record["files"]))
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureError(
            f"{folder / SIGNATURE_JSON}: the signature does not verify with key {record['key_id']}; "
            "refusing a tampered bundle"
        ) from None
    actual = bundle_files(folder)
    changed = sorted(
        name for name in set(actual) | set(record["files"]) if actual.get(name) != record["files"].get(name)
    )
    if changed:
        raise SignatureError(
            f"{folder}: {', '.join(changed)} changed, added or removed since key {record['key_id']} "
            "signed the bundle; refusing a tampered bundle"
        )
    return record["key_id"]
