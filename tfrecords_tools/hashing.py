"""Keyed hashing of identifiers (HMAC-SHA256 with a user-supplied salt).

Raw patient, study and SOP instance ids never leave the converter: records,
manifests and reports only ever hold `keyed_hash(salt, value)`. Without the
salt the hash cannot be reversed by enumerating likely ids.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets

# The salt's environment variable, read by remedis-convert and remedis-tile alike
# (the same salt gives the same patient hashes in both).
SALT_ENV = "REMEDIS_CONVERT_SALT"


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


def resolve_salt(salt: str | None, work_dir: str) -> tuple[bytes, str]:
  """The salt of a run and its origin: 'user' (argument or SALT_ENV) or 'random'.

  A random salt is written to `<work_dir>/salt` (mode 0600) so that a resumed
  run uses the same one; the run deletes its work dir, and the salt, when done.
  """
  if salt:
    return salt.encode("utf-8"), "user"
  if os.environ.get(SALT_ENV):
    return os.environ[SALT_ENV].encode("utf-8"), "user"
  path = os.path.join(work_dir, "salt")
  if os.path.exists(path):
    with open(path, "rb") as f:
      return f.read(), "random"
  logging.warning(
    "No --salt given: using a random salt that is discarded when the run "
    "completes; hashed ids will not match any other run."
  )
  os.makedirs(work_dir, exist_ok=True)
  value = secrets.token_hex(32).encode("ascii")
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, "wb") as f:
    f.write(value)
  return value, "random"
