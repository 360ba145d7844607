"""API keys: how they are made and how they are stored.

A key is shown once and only its sha256 is kept (the record's stations, a station's camera and
admin keys, the review app's session tokens), so a copy of a table or a config logs nobody in.
One module makes and hashes them for the record, the station, the CLI, the demo and the bench,
so every side agrees on the format and the digest.
"""

from __future__ import annotations

import hashlib
import secrets


def mint_key(nbytes: int = 32) -> str:
    """A new random API key, `zd_` + URL-safe base64 of `nbytes` random bytes."""
    return "zd_" + secrets.token_urlsafe(nbytes)


def hash_key(key: str) -> str:
    """The hex sha256 stored in place of a key (or a session token)."""
    return hashlib.sha256(key.encode()).hexdigest()
