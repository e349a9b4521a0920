"""Finding the slides in an input folder (or one slide file).

Rules, applied to a sorted walk of the folder:
  * a file with an OpenSlide extension (SLIDE_EXTENSIONS) is one slide; the
    folder next to an .mrxs file that holds its data (same stem) is not
    searched further;
  * DICOM files (`DICM` preamble) of the VL Whole Slide Microscopy class that
    sit in the same folder form one DICOM slide; only their VOLUME instances
    (the pyramid levels) are passed on, so LABEL, OVERVIEW and THUMBNAIL
    instances are never opened for pixels. A folder whose WSI files hold no
    VOLUME instance becomes a slide without files, which the reader rejects;
  * every other file is counted as ignored.
Slides come back sorted by their relative name, so the same folder always
gives the same numbered list.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath

from tfrecords_tools.slide_reader import SOURCE_DICOM, SOURCE_OPENSLIDE, SlideSource

SLIDE_EXTENSIONS = (
  ".svs",
  ".tif",
  ".tiff",
  ".ndpi",
  ".vms",
  ".vmu",
  ".scn",
  ".mrxs",
  ".svslide",
  ".bif",
)
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


@dataclasses.dataclass(frozen=True)
class Listing:
  """The slides found in an input.

  Attributes:
    slides: sorted by name.
    ignored_files: files that are neither slides nor WSI DICOM instances.
    non_volume_instances: WSI DICOM LABEL / OVERVIEW / THUMBNAIL instances
      that were set aside.
  """

  slides: tuple[SlideSource, ...]
  ignored_files: int
  non_volume_instances: int


def _is_dicom(path: str) -> bool:
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:] == b"DICM"


def _wsi_image_type(path: str) -> str | None:
  """Returns the WSI image type (VOLUME, LABEL, ...) of a DICOM file, else None."""
  import pydicom

  try:
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "ImageType"])
  except (pydicom.errors.InvalidDicomError, OSError, ValueError):
    return None
  if str(getattr(ds, "SOPClassUID", "")) != WSI_SOP_CLASS:
    return None
  image_type = list(getattr(ds, "ImageType", []) or [])
  return str(image_type[2]).upper() if len(image_type) > 2 else ""


def list_slides(input_path: str) -> Listing:
  """Lists the slides of a folder, or the one slide a file path names.

  Args:
    input_path: a folder, a slide file, or a DICOM slide's folder.

  Returns:
    The Listing.

  Raises:
    FileNotFoundError: `input_path` does not exist.
  """
  if not os.path.exists(input_path):
    raise FileNotFoundError(f"input not found: {input_path}")
  root = os.path.abspath(input_path)
  if os.path.isfile(root):
    name = os.path.basename(root)
    if _is_dicom(root):
      kind = _wsi_image_type(root)
      paths = (root,) if kind == "VOLUME" else ()
      return Listing(
        (SlideSource(SOURCE_DICOM, paths, name),), 0, int(kind not in (None, "VOLUME"))
      )
    return Listing((SlideSource(SOURCE_OPENSLIDE, (root,), name),), 0, 0)

  slides: list[SlideSource] = []
  ignored = set_aside = 0
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    rel_folder = posixpath.normpath(os.path.relpath(folder, root).replace(os.sep, "/"))
    mrxs_stems = {os.path.splitext(f)[0] for f in files if f.lower().endswith(".mrxs")}
    dirs[:] = [d for d in dirs if d not in mrxs_stems]
    volumes, saw_wsi = [], False
    for name in sorted(files):
      path = os.path.join(folder, name)
      rel = posixpath.join(rel_folder, name) if rel_folder != "." else name
      if name.lower().endswith(SLIDE_EXTENSIONS):
        slides.append(SlideSource(SOURCE_OPENSLIDE, (path,), rel))
      elif _is_dicom(path):
        kind = _wsi_image_type(path)
        if kind is None:
          ignored += 1
        elif kind == "VOLUME":
          volumes.append(path)
          saw_wsi = True
        else:
          set_aside += 1
          saw_wsi = True
      else:
        ignored += 1
    if saw_wsi:
      name = rel_folder if rel_folder != "." else os.path.basename(root)
      slides.append(SlideSource(SOURCE_DICOM, tuple(volumes), name))
  slides.sort(key=lambda s: s.name)
  return Listing(tuple(slides), ignored, set_aside)
