"""A SYNTHETIC chest radiograph phantom: anatomy, findings and their projection.

Everything here is drawn analytically in millimetres on the detector plane, so
one patient can be rendered at any matrix size and pixel spacing. The phantom
is a map of projected attenuation ("density", arbitrary units, 0 = air):

  soft tissue of a cylinder-like thorax, two lung fields (air, dark), the heart
  and mediastinum (dense, bright), spine, posterior and anterior ribs and
  clavicles (bone, bright bands), lung markings (smooth random texture) and
  hilar shadows. Findings add density:

  * opacity: one to three soft-edged, irregular blobs inside a lung field of
    variable size and contrast (some are subtle on purpose);
  * cardiomegaly: a heart shadow wider than half the thorax (cardiothoracic
    ratio > 0.5); the label follows the patient's true ratio.

Nothing here is a real patient or a validated physical model; it only has to
look enough like a chest radiograph for self-supervision and a few-label
classifier to have something to learn.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FINDINGS = ("opacity", "cardiomegaly")
CARDIOMEGALY_RATIO = 0.5  # cardiothoracic ratio above which the label is 1


@dataclasses.dataclass(frozen=True)
class PatientAnatomy:
  """Per-patient anatomy, fixed across that patient's images (lengths in mm).

  Attributes:
    thorax_half_width: half the outer width of the chest.
    lung_top: y of the lung apices (negative = towards the head).
    lung_bottom: y of the costophrenic angles.
    dome_height: how far the diaphragm domes rise above the angles.
    cardiothoracic_ratio: heart width / inner thoracic width.
    heart_y: y of the heart centre.
    mediastinum_half_width: half width of the upper mediastinum.
    rib_spacing: vertical distance between neighbouring ribs.
    rib_curvature: quadratic coefficient of the posterior rib arcs.
    body_density: soft-tissue density of the thickest part of the chest.
    lung_air: how much darker than soft tissue an aerated lung is.
    texture_seed: seed of the lung-marking texture.
    opacity_site: (side, u, v) of a patient's disease focus in normalised lung
      coordinates (side -1 = image left), or None for a healthy patient.
  """

  thorax_half_width: float
  lung_top: float
  lung_bottom: float
  dome_height: float
  cardiothoracic_ratio: float
  heart_y: float
  mediastinum_half_width: float
  rib_spacing: float
  rib_curvature: float
  body_density: float
  lung_air: float
  texture_seed: int
  opacity_site: tuple[int, float, float] | None

  @property
  def cardiomegaly(self) -> bool:
    return self.cardiothoracic_ratio > CARDIOMEGALY_RATIO


@dataclasses.dataclass(frozen=True)
class Opacity:
  """One blob of an opacity finding, in normalised lung coordinates.

  Attributes:
    side: -1 for the lung on the image left, +1 for the image right.
    u: horizontal position inside the lung, -1 (lateral/medial edge) .. 1.
    v: vertical position, 0 at the apex .. 1 at the costophrenic angle.
    radius: blob radius in mm.
    amplitude: added density at the blob centre (lung air is ~0.7).
    lobulation: seed of the irregular outline.
  """

  side: int
  u: float
  v: float
  radius: float
  amplitude: float
  lobulation: int


@dataclasses.dataclass(frozen=True)
class ImagePose:
  """Per-image positioning and projection.

  Attributes:
    shift_x: patient offset on the detector (mm, + = image right).
    shift_y: patient offset on the detector (mm, + = towards the feet).
    rotation_deg: in-plane rotation.
    magnification: overall geometric magnification (> 1 for AP bedside views).
    heart_magnification: extra magnification of the heart (anterior organ) in
      AP views, 1 for PA.
    inspiration: > 1 = deeper breath (taller lungs, lower diaphragm).
  """

  shift_x: float = 0.0
  shift_y: float = 0.0
  rotation_deg: float = 0.0
  magnification: float = 1.0
  heart_magnification: float = 1.0
  inspiration: float = 1.0


def sample_anatomy(
  rng: np.random.Generator, cardiothoracic_mean: float, disease_probability: float
) -> PatientAnatomy:
  """Draws one patient's anatomy.

  Args:
    rng: the patient's random generator.
    cardiothoracic_mean: mean cardiothoracic ratio of the population (s.d. 0.05).
    disease_probability: probability that the patient has a focus of lung
      disease, which then shows as an opacity on most of their images.

  Returns:
    The patient's anatomy.
  """
  half_width = float(rng.normal(150.0, 11.0))
  lung_top = float(rng.normal(-150.0, 8.0))
  opacity_site = None
  if rng.random() < disease_probability:
    opacity_site = (
      int(rng.choice([-1, 1])),
      float(rng.uniform(-0.55, 0.55)),
      float(rng.uniform(0.3, 0.85)),
    )
  return PatientAnatomy(
    thorax_half_width=half_width,
    lung_top=lung_top,
    lung_bottom=float(lung_top + rng.normal(245.0, 14.0)),
    dome_height=float(rng.uniform(25.0, 45.0)),
    cardiothoracic_ratio=float(np.clip(rng.normal(cardiothoracic_mean, 0.05), 0.33, 0.68)),
    heart_y=float(rng.normal(45.0, 8.0)),
    mediastinum_half_width=float(rng.normal(26.0, 3.0)),
    rib_spacing=float(rng.normal(23.0, 1.5)),
    rib_curvature=float(rng.normal(0.0045, 0.0005)),
    body_density=float(rng.normal(1.0, 0.06)),
    lung_air=float(rng.normal(0.72, 0.04)),
    texture_seed=int(rng.integers(2**31)),
    opacity_site=opacity_site,
  )


def sample_opacities(
  rng: np.random.Generator, anatomy: PatientAnatomy, present: bool
) -> tuple[Opacity, ...]:
  """Draws an image's opacity blobs (empty when the finding is absent).

  A diseased patient's blobs sit near their focus; an incidental opacity of a
  healthy patient sits anywhere in either lung. Size and contrast vary widely
  so that some findings are subtle.

  Args:
    rng: the image's random generator.
    anatomy: the patient's anatomy.
    present: whether the image shows the finding.

  Returns:
    Zero to three blobs.
  """
  if not present:
    return ()
  if anatomy.opacity_site is not None:
    side, u0, v0 = anatomy.opacity_site
  else:
    side, u0, v0 = int(rng.choice([-1, 1])), rng.uniform(-0.55, 0.55), rng.uniform(0.3, 0.85)
  count = int(rng.choice([1, 1, 1, 2, 3]))
  radius = float(rng.uniform(15.0, 45.0))
  # Log-uniform contrast: many faint blobs, some obvious ones.
  amplitude = float(np.exp(rng.uniform(np.log(0.15), np.log(0.7))))
  blobs = []
  for i in range(count):
    jitter = (0.0, 0.0) if i == 0 else (rng.normal(0, 0.25), rng.normal(0, 0.12))
    blobs.append(
      Opacity(
        side=side,
        u=float(np.clip(u0 + jitter[0], -0.7, 0.7)),
        v=float(np.clip(v0 + jitter[1], 0.2, 0.9)),
        radius=radius * (1.0 if i == 0 else float(rng.uniform(0.5, 0.9))),
        amplitude=amplitude * (1.0 if i == 0 else float(rng.uniform(0.6, 1.0))),
        lobulation=int(rng.integers(2**31)),
      )
    )
  return tuple(blobs)


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def _band(distance: np.ndarray, half_width: float, softness: float) -> np.ndarray:
  """1 inside |distance| < half_width, falling off smoothly over `softness` mm."""
  return _sigmoid((half_width - np.abs(distance)) / softness)


def _smooth_field(seed: int, x: np.ndarray, y: np.ndarray, cell_mm: float) -> np.ndarray:
  """A smooth random field (zero mean, ~unit s.d.) sampled at (x, y) mm.

  Bilinear interpolation of Gaussian values on a lattice with `cell_mm` spacing,
  fixed in patient coordinates so that it moves with the patient.
  """
  rng = np.random.default_rng(seed)
  n = int(np.ceil(700.0 / cell_mm)) + 2
  lattice = rng.standard_normal((n, n), dtype=np.float32)
  gx = (x + 350.0) / cell_mm
  gy = (y + 350.0) / cell_mm
  ix = np.clip(np.floor(gx).astype(np.int32), 0, n - 2)
  iy = np.clip(np.floor(gy).astype(np.int32), 0, n - 2)
  fx = np.clip(gx - ix, 0.0, 1.0)
  fy = np.clip(gy - iy, 0.0, 1.0)
  # Smoothstep weights hide the lattice.
  fx = fx * fx * (3 - 2 * fx)
  fy = fy * fy * (3 - 2 * fy)
  top = lattice[iy, ix] * (1 - fx) + lattice[iy, ix + 1] * fx
  bottom = lattice[iy + 1, ix] * (1 - fx) + lattice[iy + 1, ix + 1] * fx
  return top * (1 - fy) + bottom * fy


def _lung_coordinates(
  anatomy: PatientAnatomy, pose: ImagePose, side: int, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
  """Normalised lung coordinates (u across, v down) and the lung's extent."""
  a = anatomy.thorax_half_width
  centre = side * 0.47 * a
  half = 0.40 * a
  top = anatomy.lung_top
  bottom = top + (anatomy.lung_bottom - top) * pose.inspiration
  # u runs from -1 at the medial edge to +1 at the lateral edge on both sides.
  u = side * (x - centre) / half
  v = (y - top) / (bottom - top)
  return u, v, half, top, bottom


def lung_masks(
  anatomy: PatientAnatomy, pose: ImagePose, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Soft masks (values in [0, 1]) of the image-left and image-right lung fields.

  Args:
    anatomy: the patient.
    pose: the image's pose (inspiration changes the lung height).
    x: (H, W) patient-frame x coordinates in mm.
    y: (H, W) patient-frame y coordinates in mm.

  Returns:
    (left, right) masks, each (H, W).
  """
  masks = []
  for side in (-1, 1):
    u, v, half, top, bottom = _lung_coordinates(anatomy, pose, side, x, y)
    height = bottom - top
    # A rounded triangle: narrow apex, wide base; lateral edge follows the ribs.
    width = np.clip(1.15 * np.sqrt(np.clip(v + 0.03, 0.0, None)), 0.0, 1.0)
    across = _sigmoid((width - np.abs(u)) * half / 4.0)
    dome = 1.0 - anatomy.dome_height / height * (1.0 - np.clip((u + 1.0) / 2.0, 0, 1) ** 2)
    below_apex = _sigmoid(v * height / 4.0)
    above_diaphragm = _sigmoid((dome - v) * height / 3.0)
    masks.append(across * below_apex * above_diaphragm)
  return masks[0], masks[1]


def render_density(
  anatomy: PatientAnatomy,
  pose: ImagePose,
  opacities: tuple[Opacity, ...],
  x_mm: np.ndarray,
  y_mm: np.ndarray,
) -> np.ndarray:
  """Projects the phantom onto a detector grid.

  Args:
    anatomy: the patient.
    pose: positioning of this image.
    opacities: finding blobs of this image.
    x_mm: (H, W) detector x coordinates of the pixel centres, mm from the
      detector centre, increasing to the image right.
    y_mm: (H, W) detector y coordinates, increasing towards the feet.

  Returns:
    (H, W) float64 projected density, 0 outside the body, about 0.3 in the
    lungs, 1-1.5 in mediastinum, heart and bone.
  """
  # Computed in float32 (about 6x faster transcendental functions than float64
  # on AVX2-only CPUs); scalars stay Python floats so that nothing promotes the
  # grids to float64. Detector -> patient frame: undo shift, rotation and
  # magnification.
  x_mm, y_mm = np.asarray(x_mm, np.float32), np.asarray(y_mm, np.float32)
  cos, sin = math.cos(math.radians(pose.rotation_deg)), math.sin(math.radians(pose.rotation_deg))
  dx = (x_mm - pose.shift_x) / pose.magnification
  dy = (y_mm - pose.shift_y) / pose.magnification
  x = cos * dx + sin * dy
  y = -sin * dx + cos * dy
  a = anatomy.thorax_half_width

  # Soft tissue: a cylinder-like chest, narrowing above the shoulders (neck).
  body_half = a * (1.0 - 0.4 * _sigmoid((anatomy.lung_top - 45.0 - y) / 20.0))
  body_half = body_half * (1.0 + 0.04 * _sigmoid((y - 60.0) / 30.0))
  thickness = np.sqrt(np.clip(1.0 - (x / body_half) ** 2, 0.0, None))
  density = (
    anatomy.body_density * (0.35 + 0.65 * thickness) * _sigmoid((body_half - np.abs(x)) / 3.0)
  )

  # Heart (magnified in AP views) and mediastinum.
  inner_half = 0.93 * a
  heart_half_w = anatomy.cardiothoracic_ratio * inner_half * pose.heart_magnification
  heart_cx = 0.22 * heart_half_w
  heart_half_h = 0.72 * heart_half_w
  heart_y = anatomy.heart_y * pose.inspiration
  r2 = ((x - heart_cx) / heart_half_w) ** 2 + ((y - heart_y) / heart_half_h) ** 2
  heart = _sigmoid((1.0 - np.sqrt(r2)) * heart_half_w / 4.0) * _sigmoid(
    (y - heart_y + 0.7 * heart_half_h) / 14.0
  )
  widening = 1.0 + 0.6 * _sigmoid((y - heart_y + 0.8 * heart_half_h) / 15.0)
  mediastinum = _band(
    x - 0.06 * (y - anatomy.lung_top), anatomy.mediastinum_half_width * widening, 4.0
  ) * _sigmoid((heart_y - y) / 10.0)
  knob = _sigmoid((1.0 - np.hypot(x - 30.0, y - (anatomy.lung_top + 70.0)) / 18.0) * 6.0)
  central = np.maximum(np.maximum(heart, mediastinum), knob)

  # Lungs: air reduces density; the heart and mediastinum displace them.
  left, right = lung_masks(anatomy, pose, x, y)
  lungs = np.maximum(left, right) * (1.0 - 0.9 * central)
  markings = _smooth_field(anatomy.texture_seed, x, y, 14.0)
  fine = _smooth_field(anatomy.texture_seed + 1, x, y, 10.0)
  hilum = np.exp(-(((np.abs(x) - 0.28 * a) / 30.0) ** 2 + ((y - (heart_y - 55.0)) / 40.0) ** 2))
  vessel = np.clip(0.6 * markings + 0.3 * fine + 0.2, 0.0, None) * (0.03 + 0.07 * hilum)
  density = density - anatomy.lung_air * lungs * (0.75 + 0.25 * thickness)
  density = density + lungs * (vessel + 0.18 * hilum)
  density = density + 0.12 * central

  # Findings: blobs with a lobulated, soft edge, confined to their lung.
  for blob in opacities:
    lung = left if blob.side < 0 else right
    u, v, half, top, bottom = _lung_coordinates(anatomy, pose, blob.side, x, y)
    bx = blob.side * half * blob.u + blob.side * 0.47 * a
    by = top + (bottom - top) * blob.v
    angle = np.arctan2(y - by, x - bx)
    lob = [float(v) for v in np.random.default_rng(blob.lobulation).uniform(0, 2 * np.pi, 3)]
    radius = blob.radius * (
      1.0 + 0.10 * np.sin(2 * angle + lob[0]) + 0.06 * np.sin(3 * angle + lob[1])
    )
    dist = np.hypot(x - bx, y - by) / radius
    texture = 1.0 + 0.15 * _smooth_field(blob.lobulation, x, y, 12.0)
    profile = _sigmoid((1.0 - dist) * 4.0) / _sigmoid(np.float32(4.0))
    density = density + blob.amplitude * lung * (1.0 - 0.9 * central) * texture * profile

  # Bones: spine, posterior ribs, fainter anterior ribs, clavicles.
  spine = _band(x, 22.0, 3.0) * (0.85 + 0.15 * np.cos(2 * np.pi * y / 27.0))
  bone = 0.12 * spine * _sigmoid((y - anatomy.lung_top + 60.0) / 10.0)
  lateral = np.abs(x) - 18.0
  in_chest = _sigmoid((0.96 * a - np.abs(x)) / 5.0) * _sigmoid(lateral / 3.0)
  below_neck = _sigmoid((y - anatomy.lung_top + 30.0) / 8.0)
  above_belly = _sigmoid((anatomy.lung_bottom + 15.0 - y) / 12.0)
  for k in range(11):
    y0 = anatomy.lung_top - 8.0 + k * anatomy.rib_spacing * pose.inspiration
    curve = y0 - 0.25 * lateral + anatomy.rib_curvature * lateral**2
    rib = _band(y - curve, 5.0 + 0.3 * k, 2.0)
    cortex = 1.0 + 0.5 * _band(np.abs(y - curve) - (4.5 + 0.3 * k), 1.2, 0.8)
    bone = bone + 0.08 * rib * cortex * in_chest * below_neck * above_belly
    anterior = y0 + 55.0 + 0.35 * lateral - 0.0012 * lateral**2
    bone = bone + 0.035 * _band(y - anterior, 6.0, 3.0) * in_chest * above_belly * _sigmoid(
      (0.8 * a - np.abs(x)) / 10.0
    )
  clav_y = anatomy.lung_top - 5.0 - 0.22 * lateral + 9.0 * np.sin(np.pi * lateral / 130.0)
  clavicle = (
    _band(y - clav_y, 7.0, 2.0) * _sigmoid(lateral / 4.0) * _sigmoid((0.88 * a - np.abs(x)) / 6.0)
  )
  bone = bone + 0.16 * clavicle
  density = density + bone * _sigmoid((body_half - np.abs(x)) / 3.0)
  return density.astype(np.float64)
