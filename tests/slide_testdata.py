"""Synthetic whole-slide images for the `remedis-tile` tests (real files, no mocks).

A `SyntheticSlide` is an H&E-like picture with known truth: pink (eosin) tissue
with purple (haematoxylin) nuclei on a near-white background, a blue pen
stroke, a tiny tissue-coloured speck (below any sensible minimum tissue area),
and a rectangle guaranteed blank. Its pyramid levels are exact 2x area
averages of level 0, so a test can cut the expected pixels of any patch out of
`levels[k]` with NumPy, independently of any slide reader.

Writers produce the three containers the tiler reads:
  * `write_generic_tiff`: pyramidal tiled TIFF (tifffile), resolution tags
    optional (a slide without microns-per-pixel metadata);
  * `write_aperio_svs`: Aperio layout (level 0 with an Aperio ImageDescription
    carrying fake identifiers, a stripped thumbnail, reduced levels, then label
    and macro images);
  * `write_dicom_wsi`: DICOM VL Whole Slide Microscopy (TILED_FULL, one
    instance per level, uncompressed), written with pydicom, plus LABEL and
    OVERVIEW instances, every object carrying fake identifying attributes.
Label and macro/overview images are filled with `LABEL_COLOR`, a colour the
synthetic tissue never contains, so a test can prove none was tiled.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pydicom
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
LABEL_COLOR = (1, 254, 3)
BACKGROUND = (241, 240, 238)
EOSIN = (232, 158, 198)
HAEMATOXYLIN = (104, 62, 158)
PEN_BLUE = (38, 72, 188)

# Identifying text planted in the Aperio description and the DICOM attributes;
# none of it may appear in any output byte.
FAKE_IDENTIFIERS = {
  "Filename": "FAKEPHI-SLIDEFILE-90210",
  "User": "fakephi-user-7f3a9c",
  "ScanScope ID": "FAKEPHI-SCANNER-4242",
  "Date": "03/14/19",
  "PatientName": "Fakephi^Janet^Secretname",
  "PatientID": "FAKEPHI-PATIENT-31337",
  "AccessionNumber": "FAKEPHI-ACC-9876",
  "ContainerIdentifier": "FAKEPHI-BARCODE-55501",
  "InstitutionName": "Fakephi Memorial Hospital",
  "StudyID": "FAKEPHI-STUDY-77",
}


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
  """A generated slide and its truth.

  Attributes:
    levels: RGB uint8 arrays (H_k, W_k, 3), level k downsampled 2**k from level 0.
    tissue: bool (H_0, W_0), the drawn tissue (speck and pen excluded).
    pen: bool (H_0, W_0), the pen stroke.
    speck: bool (H_0, W_0), the tiny tissue-coloured speck.
    blank: (x, y, w, h) level-0 rectangle holding background only.
    mpp: microns per pixel of level 0.
  """

  levels: tuple[np.ndarray, ...]
  tissue: np.ndarray
  pen: np.ndarray
  speck: np.ndarray
  blank: tuple[int, int, int, int]
  mpp: float


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
  """Noise in [0, 1) that varies over about `cell` pixels (bilinear upsampling)."""
  gh, gw = h // cell + 2, w // cell + 2
  grid = rng.random((gh, gw))
  ys = np.arange(h) / cell
  xs = np.arange(w) / cell
  y0, x0 = ys.astype(int), xs.astype(int)
  fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
  g00 = grid[y0][:, x0]
  g01 = grid[y0][:, x0 + 1]
  g10 = grid[y0 + 1][:, x0]
  g11 = grid[y0 + 1][:, x0 + 1]
  return g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx


def area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
  """Exact area average over factor x factor blocks (float64 mean, rounded half up).

  Args:
    image: (H, W, C) uint8 with H and W divisible by `factor`.
    factor: the block side.

  Returns:
    (H / factor, W / factor, C) uint8.
  """
  h, w, c = image.shape
  blocks = image.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64)
  return np.floor(blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def make_slide(
  width: int = 2048, height: int = 1536, mpp: float = 0.5, num_levels: int = 5, seed: int = 0
) -> SyntheticSlide:
  """Draws an H&E-like slide with tissue, a pen stroke, a speck and a blank area.

  Args:
    width, height: level-0 size; divisible by 2**(num_levels - 1).
    mpp: microns per pixel of level 0.
    num_levels: pyramid levels (downsamples 1, 2, 4, ...).
    seed: drawing seed.

  Returns:
    The SyntheticSlide.
  """
  assert width % 2 ** (num_levels - 1) == 0 and height % 2 ** (num_levels - 1) == 0
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  u, v = xx / width, yy / height

  # Tissue: two wavy-edged ellipses in the left two thirds of the slide.
  tissue = np.zeros((height, width), bool)
  for cx, cy, rx, ry, phase in ((0.24, 0.37, 0.17, 0.26, 0.3), (0.52, 0.68, 0.13, 0.2, 1.7)):
    angle = np.arctan2(v - cy, u - cx)
    wobble = 1.0 + 0.07 * np.sin(5 * angle + phase) + 0.04 * np.sin(9 * angle + 2 * phase)
    tissue |= ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= wobble**2
  # A lumen (hole) inside the first ellipse, too large to be filled.
  tissue &= ((u - 0.21) / 0.045) ** 2 + ((v - 0.31) / 0.06) ** 2 > 1.0

  # The blank rectangle (top right) and the pen stroke (bottom right).
  blank = (int(0.72 * width), int(0.05 * height), int(0.24 * width), int(0.3 * height))
  pen_center = 0.72 + 0.08 * np.sin(2 * np.pi * (u - 0.7) / 0.25)
  pen = (np.abs(v - pen_center) < 0.045) & (u > 0.7) & (u < 0.97)
  speck = ((xx - 0.84 * width) ** 2 + (yy - 0.5 * height) ** 2) <= (0.006 * width) ** 2
  assert (
    not tissue[blank[1] : blank[1] + blank[3], blank[0] : blank[0] + blank[2]].any()
    and not (pen & tissue).any()
  )

  # Colours: textured eosin, nuclei as 4x4 haematoxylin blocks, noisy background.
  image = np.empty((height, width, 3), np.float32)
  image[:] = BACKGROUND
  image += rng.normal(0.0, 1.5, size=(height, width, 1)).astype(np.float32)
  shade = (_smooth_noise(rng, height, width, 48) - 0.5)[..., None].astype(np.float32)
  eosin = np.asarray(EOSIN, np.float32) + shade * np.asarray([20, 40, 24], np.float32)
  nuclei = np.repeat(np.repeat(rng.random((height // 4, width // 4)) < 0.09, 4, 0), 4, 1)
  haem = np.asarray(HAEMATOXYLIN, np.float32) + shade * np.asarray([30, 20, 30], np.float32)
  stained = np.where(nuclei[..., None], haem, eosin)
  stained += rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)
  image = np.where((tissue | speck)[..., None], stained, image)
  image = np.where(pen[..., None], np.asarray(PEN_BLUE, np.float32) + 6 * shade, image)
  level0 = np.clip(np.rint(image), 0, 255).astype(np.uint8)

  levels = [level0]
  for _ in range(1, num_levels):
    levels.append(area_downsample(levels[-1], 2))
  return SyntheticSlide(tuple(levels), tissue, pen, speck, blank, mpp)


def truth_mask(slide: SyntheticSlide, factor: int) -> np.ndarray:
  """The drawn tissue at 1/factor scale: block coverage >= 0.5.

  Args:
    slide: the slide.
    factor: level-0 pixels per mask pixel (divides the level-0 size).

  Returns:
    bool (H_0 / factor, W_0 / factor).
  """
  h, w = slide.tissue.shape
  cover = slide.tissue.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
  return cover >= 0.5


def write_generic_tiff(
  path: str, slide: SyntheticSlide, resolution: bool = True, tile: int = 256
) -> None:
  """Writes a pyramidal tiled TIFF (deflate) that OpenSlide reads as generic-tiff.

  Args:
    path: output file.
    slide: the slide.
    resolution: write XResolution/YResolution in pixels per centimetre
      (OpenSlide's source of microns per pixel); False leaves the slide
      without mpp metadata.
    tile: tile side.
  """
  with tifffile.TiffWriter(path) as tw:
    for k, level in enumerate(slide.levels):
      extra = {}
      if resolution:
        extra = dict(resolution=(1e4 / (slide.mpp * 2**k),) * 2, resolutionunit="CENTIMETER")
      tw.write(
        level,
        tile=(tile, tile),
        compression="zlib",
        photometric="rgb",
        subfiletype=1 if k else 0,
        metadata=None,
        **extra,
      )


def _label_image(h: int = 96, w: int = 160) -> np.ndarray:
  image = np.empty((h, w, 3), np.uint8)
  image[:] = LABEL_COLOR
  return image


def aperio_description(slide: SyntheticSlide) -> str:
  """An Aperio ImageDescription with the fake identifiers."""
  h, w = slide.levels[0].shape[:2]
  fields = "|".join(
    f"{k} = {FAKE_IDENTIFIERS[k]}" for k in ("Filename", "User", "ScanScope ID", "Date")
  )
  return (
    f"Aperio Image Library vFS90 01\r\n{w}x{h} [0,0 {w}x{h}] (256x256) RAW"
    f"|AppMag = 40|MPP = {slide.mpp:.4f}|{fields}|Time = 10:11:12"
  )


def write_aperio_svs(path: str, slide: SyntheticSlide, tile: int = 256) -> None:
  """Writes an Aperio-style SVS: levels, thumbnail, label and macro (deflate).

  Args:
    path: output file (conventionally *.svs).
    slide: the slide.
    tile: tile side.
  """
  desc = aperio_description(slide)
  head = "Aperio Image Library vFS90 01\r\n"
  with tifffile.TiffWriter(path) as tw:
    common = dict(compression="zlib", photometric="rgb", metadata=None)
    tw.write(slide.levels[0], tile=(tile, tile), description=desc, **common)
    thumb = slide.levels[-1]
    tw.write(thumb, description=head + "thumbnail", rowsperstrip=16, **common)
    for level in slide.levels[1:]:
      tw.write(level, tile=(tile, tile), description=desc, **common)
    label = _label_image()
    tw.write(label, description=head + "label 160x96", subfiletype=1, rowsperstrip=16, **common)
    tw.write(label, description=head + "macro 160x96", subfiletype=9, rowsperstrip=16, **common)


def _dicom_base(study: str, series: str, frame_of_reference: str, patient_id: str) -> Dataset:
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
  ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
  ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds.SOPClassUID = WSI_SOP_CLASS
  ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
  ds.StudyInstanceUID = study
  ds.SeriesInstanceUID = series
  ds.FrameOfReferenceUID = frame_of_reference
  ds.PatientID = patient_id
  for keyword in ("PatientName", "AccessionNumber", "ContainerIdentifier", "InstitutionName"):
    setattr(ds, keyword, FAKE_IDENTIFIERS[keyword])
  ds.StudyID = FAKE_IDENTIFIERS["StudyID"]
  ds.PatientBirthDate = "19601231"
  ds.StudyDate = "20190314"
  ds.Modality = "SM"
  ds.SamplesPerPixel = 3
  ds.PhotometricInterpretation = "RGB"
  ds.PlanarConfiguration = 0
  ds.BitsAllocated = ds.BitsStored = 8
  ds.HighBit = 7
  ds.PixelRepresentation = 0
  ds.DimensionOrganizationType = "TILED_FULL"
  ds.TotalPixelMatrixFocalPlanes = 1
  optical_path = Dataset()
  optical_path.OpticalPathIdentifier = "1"
  ds.OpticalPathSequence = Sequence([optical_path])
  ds.NumberOfOpticalPaths = 1
  return ds


def _tiled(ds: Dataset, image: np.ndarray, tile: int, mpp: float, fill: int = 255) -> None:
  """Stores `image` as TILED_FULL frames (row-major tiles, padded with `fill`)."""
  h, w, _ = image.shape
  frames = []
  for ty in range(-(-h // tile)):
    for tx in range(-(-w // tile)):
      frame = np.full((tile, tile, 3), fill, np.uint8)
      part = image[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile]
      frame[: part.shape[0], : part.shape[1]] = part
      frames.append(frame.tobytes())
  ds.Rows = ds.Columns = tile
  ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
  ds.NumberOfFrames = len(frames)
  ds.ImagedVolumeWidth = w * mpp / 1000.0
  ds.ImagedVolumeHeight = h * mpp / 1000.0
  ds.ImagedVolumeDepth = 0.001
  measures = Dataset()
  measures.PixelSpacing = [mpp / 1000.0, mpp / 1000.0]
  measures.SliceThickness = 0.001
  shared = Dataset()
  shared.PixelMeasuresSequence = Sequence([measures])
  ds.SharedFunctionalGroupsSequence = Sequence([shared])
  ds.PixelData = b"".join(frames)


def write_dicom_wsi(
  folder: str, slide: SyntheticSlide, patient_id: str | None = None, tile: int = 256
) -> list[str]:
  """Writes a DICOM WSI: one TILED_FULL instance per level, a LABEL and an OVERVIEW.

  Args:
    folder: output folder (created).
    slide: the slide.
    patient_id: PatientID (default: the fake identifier).
    tile: tile side.

  Returns:
    The written file paths.
  """
  os.makedirs(folder, exist_ok=True)
  patient_id = patient_id or FAKE_IDENTIFIERS["PatientID"]
  study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
  paths = []
  for k, level in enumerate(slide.levels):
    ds = _dicom_base(study, series, frame_of_reference, patient_id)
    ds.ImageType = (
      ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
      if k == 0
      else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    )
    ds.InstanceNumber = k + 1
    _tiled(ds, level, tile, slide.mpp * 2**k)
    paths.append(os.path.join(folder, f"level{k}.dcm"))
    ds.save_as(paths[-1], enforce_file_format=True)
  for n, kind in enumerate(("LABEL", "OVERVIEW")):
    ds = _dicom_base(study, series, frame_of_reference, patient_id)
    ds.ImageType = ["ORIGINAL", "PRIMARY", kind, "NONE"]
    ds.InstanceNumber = len(slide.levels) + n + 1
    label = _label_image()
    _tiled(ds, label, max(label.shape[:2]), 0.03)
    paths.append(os.path.join(folder, f"{kind.lower()}.dcm"))
    ds.save_as(paths[-1], enforce_file_format=True)
  return paths


def read_dicom_attribute(path: str, keyword: str) -> str:
  """One attribute of a written DICOM file (test convenience)."""
  return str(getattr(pydicom.dcmread(path, stop_before_pixels=True), keyword, ""))
