"""Keyed hashing of identifiers (HMAC-SHA256 with a user-supplied salt).

Raw patient, study and SOP instance ids never leave the converter: records,
manifests and reports only ever hold `keyed_hash(salt, value)`. Without the
salt the hash cannot be reversed by enumerating likely ids.
"""

from __future__ import annotations

import hashlib
import hmac


def keyed_hash(salt: bytes, value: str) -> str:
  """Returns the hex HMAC-SHA256 of `value` (stripped, UTF-8) keyed by `salt`.

  Args:
    salt: the secret key; must not be empty.
    value: the identifier to hash.

  Returns:
    64 lowercase hex characters.
  """
  if not salt:
    raise ValueError("The salt must not be empty.")
  return hmac.new(salt, value.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def salt_fingerprint(salt: bytes) -> str:
  """Returns a short public fingerprint of the salt (to detect a changed salt).

  Args:
    salt: the secret key.

  Returns:
    16 hex characters; reveals nothing useful about the salt.
  """
  return hmac.new(salt, b"remedis-convert salt fingerprint", hashlib.sha256).hexdigest()[:16]
