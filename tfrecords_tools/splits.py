"""Deterministic patient-level train/validation/test assignment.

A patient's split is a pure function of its keyed hash and the fractions, so
every image of a patient lands in the same split, in every run, on every
worker, without any global pass over the data. Fractions are met in
expectation (each patient is an independent uniform draw), not exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

SPLIT_NAMES = ("train", "validation", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
  """Parses "0.8,0.1,0.1" into three non-negative fractions summing to 1.

  Args:
    text: comma-separated train, validation and test fractions.

  Returns:
    The three fractions.

  Raises:
    ValueError: when there are not three numbers, one is negative, or they do
      not sum to 1 (within 1e-6).
  """
  parts = [p.strip() for p in text.split(",")]
  if len(parts) != 3:
    raise ValueError(f"split fractions need 3 values (train,validation,test), got {text!r}")
  values = tuple(float(p) for p in parts)
  validate_fractions(values)
  return values  # type: ignore[return-value]


def validate_fractions(fractions: Sequence[float]) -> None:
  """Raises ValueError unless `fractions` are 3 non-negative numbers summing to 1."""
  if len(fractions) != 3 or any(f < 0 for f in fractions):
    raise ValueError(f"split fractions must be 3 non-negative numbers, got {fractions}")
  if abs(sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f"split fractions must sum to 1, got {fractions} (sum {sum(fractions)})")


def hash_to_unit(hex_hash: str) -> float:
  """Maps a hex hash to [0, 1) using its first 64 bits."""
  return int(hex_hash[:16], 16) / float(1 << 64)


def assign_split(patient_hash: str, fractions: Sequence[float]) -> str:
  """Returns "train", "validation" or "test" for one hashed patient id.

  Args:
    patient_hash: hex keyed hash of the patient id.
    fractions: train, validation and test fractions (sum 1).

  Returns:
    The split name.
  """
  u = hash_to_unit(patient_hash)
  if u < fractions[0]:
    return "train"
  if u < fractions[0] + fractions[1]:
    return "validation"
  return "test"
