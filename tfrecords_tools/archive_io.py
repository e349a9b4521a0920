"""Listing and reading inputs: a directory tree, a .zip, or a .tar[.gz|.bz2|.xz].

Every input is addressed by its relative POSIX path inside the source, in
sorted order, so a run's work list is deterministic. Directories and zips are
read in place (random access). Compressed tars cannot be read at random, so
they are extracted once (safely: no links, no paths outside the folder) into
the converter's work folder and then read as a directory; plain tars are read
in place through the members' offsets.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tarfile
import zipfile

_IGNORED_NAMES = (".DS_Store", "Thumbs.db")


@dataclasses.dataclass(frozen=True)
class Source:
  """Where inputs are read from.

  Attributes:
    kind: "dir", "zip" or "tar".
    path: absolute path of the directory or archive.
    offsets: for "tar": relative path -> (data offset, size).
  """

  kind: str
  path: str
  offsets: tuple[tuple[str, int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Member:
  """One input file: relative POSIX path and size in bytes."""

  path: str
  size: int


def _ignored(rel: str) -> bool:
  parts = rel.split("/")
  return parts[0] == "__MACOSX" or parts[-1] in _IGNORED_NAMES


def is_tar(path: str) -> bool:
  """True when `path` is a (possibly compressed) tar archive."""
  return os.path.isfile(path) and not zipfile.is_zipfile(path) and tarfile.is_tarfile(path)


def is_compressed_tar(path: str) -> bool:
  """True for .tar.gz / .tgz / .tar.bz2 / .tar.xz (by content, not name)."""
  with open(path, "rb") as f:
    head = f.read(6)
  return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


def extract_tar(path: str, dest: str) -> None:
  """Extracts a tar safely (regular files and folders only) into `dest`."""
  os.makedirs(dest, exist_ok=True)
  with tarfile.open(path) as tar:
    members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
    tar.extractall(dest, members=members, filter="data")


def open_source(path: str) -> tuple[Source, list[Member]]:
  """Lists the inputs of a directory, zip or plain tar.

  Args:
    path: the input path (compressed tars must be extracted first).

  Returns:
    The Source and its members sorted by path.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is a file that is neither a zip nor a tar.
  """
  path = os.path.abspath(path)
  if os.path.isdir(path):
    members = []
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in files:
        full = os.path.join(root, name)
        if os.path.islink(full) or not os.path.isfile(full):
          continue
        rel = os.path.relpath(full, path).replace(os.sep, "/")
        if not _ignored(rel):
          members.append(Member(rel, os.path.getsize(full)))
    return Source("dir", path), sorted(members, key=lambda m: m.path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"input not found: {path}")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      members = [
        Member(i.filename, i.file_size)
        for i in zf.infolist()
        if not i.is_dir() and not _ignored(i.filename)
      ]
    return Source("zip", path), sorted(members, key=lambda m: m.path)
  if tarfile.is_tarfile(path):
    if is_compressed_tar(path):
      raise ValueError("compressed tars must be extracted first (see extract_tar)")
    with tarfile.open(path) as tar:
      files = [m for m in tar.getmembers() if m.isfile()]
    offsets = tuple(
      sorted(
        (posixpath.normpath(m.name), m.offset_data, m.size) for m in files if not _ignored(m.name)
      )
    )
    members = [Member(p, s) for p, _, s in offsets]
    return Source("tar", path, offsets), members
  raise ValueError(f"input {path} is neither a directory, a zip nor a tar archive")


class Reader:
  """Reads members' bytes; keeps the archive open between calls."""

  def __init__(self, source: Source):
    self._source = source
    self._zip: zipfile.ZipFile | None = None
    self._offsets = {p: (o, s) for p, o, s in source.offsets}

  def read(self, rel_path: str) -> bytes:
    """Returns the bytes of one member."""
    kind = self._source.kind
    if kind == "dir":
      with open(os.path.join(self._source.path, *rel_path.split("/")), "rb") as f:
        return f.read()
    if kind == "zip":
      if self._zip is None:
        self._zip = zipfile.ZipFile(self._source.path)
      return self._zip.read(rel_path)
    offset, size = self._offsets[rel_path]
    with open(self._source.path, "rb") as f:
      f.seek(offset)
      return f.read(size)

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()
      self._zip = None
