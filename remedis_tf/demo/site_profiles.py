"""How each SYNTHETIC hospital acquires, processes and stores a radiograph.

A `SiteProfile` is a frozen description of one site: its (fictional) vendor and
model, geometry, detector blur and noise, image processing (edge enhancement,
contrast curve), how pixel values are stored (bit depth, MONOCHROME1/2, rescale,
VOI windows, compression) and its patient mix. `acquire` turns a projected
density map (see `anatomy.render_density`) into stored pixel values plus the
window that displays them.

The two sites differ the way hospitals do:

  | | siteA | siteB |
  |---|---|---|
  | vendor / model | SyntheticVendorA / SYNTH-DR 1000 (DX) | SyntheticVendorB / SYNTH-CR 20 (CR) |
  | matrix, pixel size | square, 43 cm field | portrait 40 x 35 cm, coarser pixels |
  | detector | sharp, low noise, edge enhanced | blurred, noisier, no enhancement |
  | contrast curve | linear | gamma 0.7 (flatter lungs) |
  | storage | 12 bit, MONOCHROME2, slope 1 | 10 bit, MONOCHROME1, slope 2 / -1024 |
  | windows | one, LINEAR | two (multi-valued), SIGMOID |
  | transfer syntax | Explicit VR Little Endian | RLE Lossless, JPEG 2000 Lossless |
  | burned-in marker | none | bright laterality marker block |
  | patients | mostly PA, fewer findings | mostly AP bedside, more findings, larger hearts |
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydicom import uid

# Projected density -> transmitted intensity exp(-ATTENUATION * density).
ATTENUATION = 2.2

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


@dataclasses.dataclass(frozen=True)
class SiteProfile:
  """One SYNTHETIC site's equipment, processing, storage and patient mix.

  Attributes:
    name: site key used in paths and the labels CSV ('siteA').
    institution: fictional institution name written to InstitutionName.
    manufacturer: Manufacturer tag.
    model: ManufacturerModelName tag.
    stations: StationName values (one per room; chosen per image).
    modality: 'DX' or 'CR'.
    sop_class_uid: matching storage SOP class.
    field_of_view_mm: (height, width) of the detector.
    rows: image rows at scale 'default'; columns follow from the field of view.
    blur_mm: Gaussian s.d. of the detector blur (MTF).
    noise: quantum noise level (s.d. of transmitted intensity at full exposure).
    unsharp_amount: edge enhancement strength (0 = none).
    gamma: contrast curve exponent applied to normalised density.
    bits_stored: BitsStored (BitsAllocated is always 16).
    photometric: 'MONOCHROME1' (stored inverted) or 'MONOCHROME2'.
    rescale_slope: RescaleSlope.
    rescale_intercept: RescaleIntercept.
    stored_low: stored value of normalised density 0 (air) before inversion.
    stored_high: stored value of normalised density 1 before inversion.
    voi_function: VOILUTFunction.
    window_count: number of values of WindowCenter/WindowWidth.
    transfer_syntaxes: one per station.
    marker: whether a bright laterality marker is burned into the image.
    ap_fraction: fraction of AP (bedside) rather than PA views.
    disease_probability: per-patient probability of a lung disease focus.
    incidental_opacity: probability of an opacity in a patient without focus.
    focus_visible: probability that a diseased patient's image shows it.
    cardiothoracic_mean: mean cardiothoracic ratio of the site's patients.
    age_range: (min, max) patient age in years.
  """

  name: str
  institution: str
  manufacturer: str
  model: str
  stations: tuple[str, ...]
  modality: str
  sop_class_uid: str
  field_of_view_mm: tuple[float, float]
  rows: int
  blur_mm: float
  noise: float
  unsharp_amount: float
  gamma: float
  bits_stored: int
  photometric: str
  rescale_slope: float
  rescale_intercept: float
  stored_low: int
  stored_high: int
  voi_function: str
  window_count: int
  transfer_syntaxes: tuple[str, ...]
  marker: bool
  ap_fraction: float
  disease_probability: float
  incidental_opacity: float
  focus_visible: float
  cardiothoracic_mean: float
  age_range: tuple[int, int]

  def matrix(self, row_scale: float = 1.0) -> tuple[int, int, float]:
    """Returns (rows, columns, pixel spacing in mm) for a size multiplier."""
    rows = int(round(self.rows * row_scale))
    spacing = self.field_of_view_mm[0] / rows
    columns = int(round(self.field_of_view_mm[1] / spacing))
    return rows, columns, spacing


SITE_A = SiteProfile(
  name="siteA",
  institution="SYNTHETIC General Hospital A",
  manufacturer="SyntheticVendorA",
  model="SYNTH-DR 1000",
  stations=("SYNTH-A-DR1", "SYNTH-A-DR2"),
  modality="DX",
  sop_class_uid=DX_FOR_PRESENTATION,
  field_of_view_mm=(430.0, 430.0),
  rows=256,
  blur_mm=0.5,
  noise=0.006,
  unsharp_amount=0.6,
  gamma=1.0,
  bits_stored=12,
  photometric="MONOCHROME2",
  rescale_slope=1.0,
  rescale_intercept=0.0,
  stored_low=200,
  stored_high=3700,
  voi_function="LINEAR",
  window_count=1,
  transfer_syntaxes=(uid.ExplicitVRLittleEndian, uid.ExplicitVRLittleEndian),
  marker=False,
  ap_fraction=0.1,
  disease_probability=0.36,
  incidental_opacity=0.05,
  focus_visible=0.85,
  cardiothoracic_mean=0.45,
  age_range=(18, 85),
)

SITE_B = SiteProfile(
  name="siteB",
  institution="SYNTHETIC Community Hospital B",
  manufacturer="SyntheticVendorB",
  model="SYNTH-CR 20",
  stations=("SYNTH-B-CR1", "SYNTH-B-CR2"),
  modality="CR",
  sop_class_uid=CR_IMAGE_STORAGE,
  field_of_view_mm=(400.0, 350.0),
  rows=224,
  blur_mm=1.7,
  noise=0.016,
  unsharp_amount=0.0,
  gamma=0.7,
  bits_stored=10,
  photometric="MONOCHROME1",
  rescale_slope=2.0,
  rescale_intercept=-1024.0,
  stored_low=60,
  stored_high=980,
  voi_function="SIGMOID",
  window_count=2,
  transfer_syntaxes=(uid.RLELossless, uid.JPEG2000Lossless),
  marker=True,
  ap_fraction=0.65,
  disease_probability=0.45,
  incidental_opacity=0.05,
  focus_visible=0.85,
  cardiothoracic_mean=0.47,
  age_range=(40, 95),
)

SITES = (SITE_A, SITE_B)


def _blur_axis(image: np.ndarray, sigma_px: float, axis: int) -> np.ndarray:
  """1-D Gaussian blur along `axis` (kernel truncated at 3 s.d., reflecting edges)."""
  radius = int(np.ceil(3.0 * sigma_px))
  if radius == 0:
    return image
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (offsets / sigma_px) ** 2)
  kernel = (kernel / kernel.sum()).astype(image.dtype)
  pad = [(0, 0), (0, 0)]
  pad[axis] = (radius, radius)
  padded = np.pad(image, pad, mode="symmetric")
  n = image.shape[axis]
  out = np.zeros_like(image)
  for weight, offset in zip(kernel, offsets, strict=True):
    start = radius + offset
    out += weight * (padded[start : start + n] if axis == 0 else padded[:, start : start + n])
  return out


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
  """Separable Gaussian blur of a 2-D image (s.d. in pixels, symmetric edges)."""
  if sigma_px <= 0:
    return image
  return _blur_axis(_blur_axis(image, sigma_px, 0), sigma_px, 1)


@dataclasses.dataclass(frozen=True)
class StoredImage:
  """Stored pixel values and display metadata of one acquisition.

  Attributes:
    pixels: (rows, columns) uint16 stored values.
    window_centers: WindowCenter values (modality units).
    window_widths: WindowWidth values.
    window_explanations: WindowCenterWidthExplanation values.
  """

  pixels: np.ndarray
  window_centers: tuple[float, ...]
  window_widths: tuple[float, ...]
  window_explanations: tuple[str, ...]


def acquire(
  density: np.ndarray,
  site: SiteProfile,
  spacing_mm: float,
  rng: np.random.Generator,
  exposure: float = 1.0,
) -> StoredImage:
  """Simulates a site's detector, processing and storage.

  Args:
    density: (rows, columns) projected density from `anatomy.render_density`.
    site: the site.
    spacing_mm: pixel spacing of `density`.
    rng: the image's random generator (noise).
    exposure: relative dose; noise grows as exposure falls.

  Returns:
    Stored values (inverted for MONOCHROME1) and a window in modality units
    that displays the body with air dark and bone bright.
  """
  transmitted = np.exp(-ATTENUATION * density)
  transmitted = gaussian_blur(transmitted, site.blur_mm / spacing_mm)
  sigma = site.noise / np.sqrt(exposure) * np.sqrt(transmitted)
  transmitted = np.clip(
    transmitted + sigma * rng.standard_normal(density.shape, dtype=density.dtype), 1e-4, None
  )
  signal = -np.log(transmitted) / ATTENUATION
  if site.unsharp_amount:
    signal = signal + site.unsharp_amount * (signal - gaussian_blur(signal, 6.0 / spacing_mm))
  # Auto-ranging as a modality's processing does, then the site's contrast curve.
  reference = np.percentile(signal, 99.5)
  normalised = np.clip(signal / reference, 0.0, 1.05) ** site.gamma
  if site.marker:
    rows, cols = normalised.shape
    r0, c0 = int(0.05 * rows), int(0.06 * cols)
    normalised[r0 : r0 + max(3, rows // 20), c0 : c0 + max(2, cols // 28)] = 1.05
  stored = site.stored_low + normalised * (site.stored_high - site.stored_low)
  max_stored = 2**site.bits_stored - 1
  if site.photometric == "MONOCHROME1":
    stored = max_stored - stored
  pixels = np.clip(np.rint(stored), 0, max_stored).astype(np.uint16)

  modality = pixels * site.rescale_slope + site.rescale_intercept
  lo, hi = np.percentile(modality, [1.0, 99.5])
  centers = [round(float((lo + hi) / 2), 1)]
  widths = [round(float((hi - lo) * 1.05), 1)]
  explanations = ["STANDARD"]
  if site.window_count > 1:
    centers.append(centers[0])
    widths.append(round(widths[0] * 0.6, 1))
    explanations.append("CONTRAST")
  return StoredImage(pixels, tuple(centers), tuple(widths), tuple(explanations))
