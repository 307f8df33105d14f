"""The built-in datasets, from scikit-learn's 8x8 digits with NumPy only.

`digits`: the digits themselves, standardized. `noisy_digits` (the default):
each digit warped onto a 24x24 canvas, re-lit and noised, fresh every step.
The scenes of the detection data (`evalnorm.detection.digit_scenes`) are
rendered here too (`render_scenes`, `draw_scenes`, `scene_mean_std`), and
`digit_crops` is their cells as a classification dataset: the detector's
pre-training data, from its own image distribution.
"""

import functools
import itertools
import math
from typing import Iterator

import numpy as np

from evalnorm.data import batching
from evalnorm.data.batching import Batch


_DIGITS_SPLIT_SEED = 0
_NUM_HELD_OUT_DIGITS = 447  # of 1797; the other 1350 are for training


def read_only(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)  # cached and shared between dataset objects
  return array


@functools.cache
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Stratified 1350/447 split of the digits: (train_images, train_labels,
  held_out_images, held_out_labels), images (N, 8, 8) in [0, 1]."""
  from sklearn import datasets, model_selection  # slow import: only when used
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  split = model_selection.train_test_split(
      images, labels, test_size=_NUM_HELD_OUT_DIGITS, stratify=labels,
      random_state=_DIGITS_SPLIT_SEED)
  train_images, held_out_images, train_labels, held_out_labels = split
  return tuple(read_only(a) for a in (
      train_images, train_labels, held_out_images, held_out_labels))


def standardize_digits(images: np.ndarray, mean: float,
                       std: float) -> np.ndarray:
  """(N, H, W) -> standardized float32 (N, H, W, 1)."""
  return ((images - mean) / std)[..., None].astype(np.float32, copy=False)


class InMemoryDigits:
  """Iteration shared by the two digit datasets (they differ in train_batch)."""

  def __init__(self, config):
    self._seed = config.seed
    self._batch_size = config.batch_size  # global, as every process draws it
    self._eval_batch_size = config.eval_batch_size

  def train_batch(self, step: int) -> Batch:
    raise NotImplementedError

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    for step in itertools.count(start_step):
      yield self.train_batch(step)

  def eval_batches(self) -> Iterator[Batch]:
    return batching.array_eval_batches(self._eval_images, self._eval_labels,
                                       self._eval_batch_size)


class DigitsDataset(InMemoryDigits):
  """Plain 8x8 digits, standardized; 1350 training and 447 eval digits."""
  name = 'digits'
  num_classes = 10
  image_shape = (8, 8, 1)

  def __init__(self, config):
    super().__init__(config)
    self._train_images, self._train_labels, eval_images, self._eval_labels = (
        digits_split())
    # Fixed constants from the training split (eval never uses its own).
    self._mean = float(self._train_images.mean())
    self._std = float(self._train_images.std())
    self._eval_images = standardize_digits(eval_images, self._mean, self._std)
    self.num_train_examples = len(self._train_labels)
    self.num_eval_examples = len(self._eval_labels)

  def train_batch(self, step: int) -> Batch:
    """This process's training batch of global step `step`."""
    rng = batching.step_rng(self._seed, step)
    indices = rng.integers(0, self.num_train_examples, self._batch_size)
    indices = batching.process_slice({'label': indices})['label']
    images = self._train_images[indices]
    return {'image': standardize_digits(images, self._mean, self._std),
            'label': self._train_labels[indices]}



# noisy_digits: each digit is warped onto a larger canvas, re-lit and noised.
_CANVAS_SIZE = 24
_MAX_ROTATION_DEGREES = 20.0
_SCALE_RANGE = (1.6, 2.4)
_MAX_SHIFT_FRACTION = 0.15  # of the canvas size, in x and in y
_CONTRAST_RANGE = (0.3, 1.7)
_BRIGHTNESS_RANGE = (-1.0, 1.0)
_NOISE_STD = 0.2
_NUM_NOISY_EVAL_EXAMPLES = 2048
_NOISY_EVAL_SEED = 1  # fixed: every run evaluates on the same examples
_NORMALIZATION_SAMPLES = 4096
_NORMALIZATION_SEED = 2


def bilinear_sample(images: np.ndarray, x: np.ndarray,
                    y: np.ndarray) -> np.ndarray:
  """Samples images (N, H, W) at float pixel coordinates x, y (N, P), 0 outside.

  Vectorized over the whole batch (this runs every training step). The images
  get a zero border (one pixel before, two after) and coordinates are clipped
  into it, so out-of-range neighbours read zeros without per-neighbour masks.
  The four neighbours are gathered from shifted views of the flat padded batch.
  """
  n, height, width = images.shape
  row = width + 3
  flat = np.pad(images, ((0, 0), (1, 2), (1, 2))).reshape(-1)
  x = np.clip(x, -1, width)
  y = np.clip(y, -1, height)
  x0, y0 = np.floor(x), np.floor(y)
  fx, fy = x - x0, y - y0
  # Flat index of the top-left neighbour, computed in float32 and converted
  # once (cheaper than integer arithmetic; exact below 2**24 elements).
  if flat.size >= 2**24:
    raise ValueError(f'batch of {n} images is too large to sample at once')
  image_offsets = ((np.arange(n, dtype=np.float32) * (height + 3) + 1) * row
                   + 1)[:, None]
  top_left = (y0 * row + x0 + image_offsets).astype(np.int32)
  top = _lerp(np.take(flat, top_left), np.take(flat[1:], top_left), fx)
  bottom = _lerp(np.take(flat[row:], top_left),
                 np.take(flat[row + 1:], top_left), fx)
  return _lerp(top, bottom, fy)


def _lerp(a: np.ndarray, b: np.ndarray, fraction: np.ndarray) -> np.ndarray:
  return a + fraction * (b - a)


@functools.cache
def _canvas_grid() -> tuple[np.ndarray, np.ndarray]:
  """Canvas pixel coordinates (x, y), each (1, S*S), relative to its centre."""
  coords = np.arange(_CANVAS_SIZE, dtype=np.float32) - (_CANVAS_SIZE - 1) / 2
  grid_y, grid_x = np.meshgrid(coords, coords, indexing='ij')
  return read_only(grid_x.reshape(1, -1)), read_only(grid_y.reshape(1, -1))


def _warp_digits(digits: np.ndarray, angles: np.ndarray, scales: np.ndarray,
                 shifts: np.ndarray) -> np.ndarray:
  """Rotates, scales and shifts digits (N, 8, 8) onto zero canvases (N, S, S).

  Inverse mapping: canvas pixel p reads the digit at
  R(-angle) (p - canvas_centre - shift) / scale + digit_centre.
  Angles in radians (N,), scales (N,), shifts (N, 2) in canvas pixels (x, y).
  """
  grid_x, grid_y = _canvas_grid()
  cos = np.cos(angles) / scales
  sin = np.sin(angles) / scales
  shift_x, shift_y = shifts[:, 0], shifts[:, 1]
  digit_centre = (digits.shape[-1] - 1) / 2
  # Per-example constant parts of the map first: the (N, P) work is 4 ops each.
  offset_x = digit_centre - cos * shift_x - sin * shift_y
  offset_y = digit_centre + sin * shift_x - cos * shift_y
  source_x = cos[:, None] * grid_x + sin[:, None] * grid_y + offset_x[:, None]
  source_y = cos[:, None] * grid_y - sin[:, None] * grid_x + offset_y[:, None]
  canvas = bilinear_sample(digits, source_x, source_y)
  return canvas.reshape(-1, _CANVAS_SIZE, _CANVAS_SIZE)


def _render_noisy_digits(digits: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
  """Raw noisy images (N, S, S): random warp, contrast, brightness and noise."""
  n = len(digits)

  def uniform(bounds, shape):
    return rng.uniform(*bounds, size=shape).astype(np.float32)

  max_angle = np.deg2rad(_MAX_ROTATION_DEGREES)
  max_shift = _MAX_SHIFT_FRACTION * _CANVAS_SIZE
  canvas = _warp_digits(digits,
                        angles=uniform((-max_angle, max_angle), n),
                        scales=uniform(_SCALE_RANGE, n),
                        shifts=uniform((-max_shift, max_shift), (n, 2)))
  contrast = uniform(_CONTRAST_RANGE, (n, 1, 1))
  brightness = uniform(_BRIGHTNESS_RANGE, (n, 1, 1))
  noise = rng.standard_normal(canvas.shape, dtype=np.float32)
  return contrast * canvas + brightness + _NOISE_STD * noise


@functools.cache
def _noisy_digits_mean_std() -> tuple[float, float]:
  """Standardization constants from a fixed sample of rendered train digits."""
  train_images = digits_split()[0]
  rng = np.random.default_rng(_NORMALIZATION_SEED)
  indices = rng.integers(0, len(train_images), _NORMALIZATION_SAMPLES)
  images = _render_noisy_digits(train_images[indices], rng)
  return float(images.mean()), float(images.std())


class RenderedDigits(InMemoryDigits):
  """Digits rendered fresh every step (``render``), standardized by fixed
  constants (``mean_std``); what `noisy_digits` and `digit_crops` share.

  Training draws from the 1350 training digits by (seed, step); the eval set
  is 2048 fixed renderings (rng ``eval_seed``) of the 447 held-out digits
  (each used 4 or 5 times), the same for every config.seed.
  """
  num_classes = 10
  num_eval_examples = 2048
  eval_seed: int

  @staticmethod
  def render(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Raw images (N, H, W) of digits (N, 8, 8)."""
    raise NotImplementedError

  @staticmethod
  def mean_std() -> tuple[float, float]:
    raise NotImplementedError

  def __init__(self, config):
    super().__init__(config)
    self._train_digits, self._train_labels, held_out_digits, held_out_labels = (
        digits_split())
    self.num_train_examples = len(self._train_labels)
    self._mean, self._std = self.mean_std()
    indices = np.arange(self.num_eval_examples) % len(held_out_labels)
    rng = np.random.default_rng(self.eval_seed)
    self._eval_images = standardize_digits(
        self.render(held_out_digits[indices], rng), self._mean, self._std)
    self._eval_labels = held_out_labels[indices]

  def train_batch(self, step: int) -> Batch:
    """This process's training batch of global step `step`."""
    rng = batching.step_rng(self._seed, step)
    indices = rng.integers(0, self.num_train_examples, self._batch_size)
    # The whole global batch is rendered (its random draws are sequential),
    # then sliced: each process renders num_processes times its share.
    images = self.render(self._train_digits[indices], rng)
    return batching.process_slice({
        'image': standardize_digits(images, self._mean, self._std),
        'label': self._train_labels[indices]})


class NoisyDigitsDataset(RenderedDigits):
  """Digits warped onto a 24x24 canvas, re-lit and noised (the default dataset).

  A hard task with natural-image-like variation in pose, contrast, brightness
  and noise, so per-example statistics differ a lot between examples.
  """
  name = 'noisy_digits'
  image_shape = (_CANVAS_SIZE, _CANVAS_SIZE, 1)
  eval_seed = _NOISY_EVAL_SEED
  render = staticmethod(_render_noisy_digits)
  mean_std = staticmethod(_noisy_digits_mean_std)


# Scenes: a square canvas cut into a grid of cells, each holding a digit with
# probability 0.7 (every scene at least one), rotated, scaled to 12-24 pixels
# and placed at a random spot inside its cell; the whole canvas re-lit and
# noised. `evalnorm.detection.digit_scenes` (the detection data) draws them;
# `digit_crops` is a scene of one cell.
SCENE_CELLS_PER_SIDE = 2
_OCCUPANCY = 0.7
_SCENE_ROTATION_DEGREES = 15.0
_GLYPH_SCALE_RANGE = (1.5, 3.0)  # times the 8-pixel glyph
_INK_RANGE = (0.6, 1.0)       # per digit
_RAMP_RANGE = (-0.5, 0.5)     # illumination change across the canvas, x and y
_INK_THRESHOLD = 0.25         # rendered glyph value that counts as ink for the box
_SCENE_NORMALIZATION_SEED = 4
_NORMALIZATION_SCENES = 512
_GLYPH_SIZE = 8


def _cell_centres(canvas_size: int, cells_per_side: int) -> np.ndarray:
  """(cells, 2) centres (x, y) of the grid cells, row by row."""
  cell = canvas_size / cells_per_side
  centres = (np.arange(cells_per_side) + 0.5) * cell
  y, x = np.meshgrid(centres, centres, indexing='ij')
  return np.stack([x.ravel(), y.ravel()], -1).astype(np.float32)


def _warp_glyphs(glyphs: np.ndarray, angles, scales, centres,
                 canvas_size: int) -> np.ndarray:
  """Glyphs (N, 8, 8) rotated, scaled and centred at ``centres`` (N, 2) on
  zero canvases (N, S, S). Inverse map: canvas point p (pixel centres at
  j + 0.5) reads the glyph at R(-angle) (p - centre) / scale + 3.5."""
  coords = np.arange(canvas_size, dtype=np.float32) + 0.5
  grid_y, grid_x = np.meshgrid(coords, coords, indexing='ij')
  grid_x, grid_y = grid_x.reshape(1, -1), grid_y.reshape(1, -1)
  cos, sin = np.cos(angles) / scales, np.sin(angles) / scales
  dx = grid_x - centres[:, :1]
  dy = grid_y - centres[:, 1:]
  glyph_centre = (_GLYPH_SIZE - 1) / 2
  source_x = cos[:, None] * dx + sin[:, None] * dy + glyph_centre
  source_y = cos[:, None] * dy - sin[:, None] * dx + glyph_centre
  return bilinear_sample(glyphs, source_x, source_y).reshape(
      -1, canvas_size, canvas_size)


def ink_boxes(canvases: np.ndarray) -> np.ndarray:
  """Tight (x1, y1, x2, y2) boxes of the ink pixels of each canvas (N, 4)."""
  ink = canvases > _INK_THRESHOLD
  size = canvases.shape[-1]
  boxes = []
  for axis in (1, 2):  # columns (any over rows), then rows
    present = ink.any(axis=axis)
    first = np.argmax(present, axis=1)
    last = size - np.argmax(present[:, ::-1], axis=1)
    boxes.append((first, last))
  (x1, x2), (y1, y2) = boxes
  return np.stack([x1, y1, x2, y2], -1).astype(np.float32)


def _place_glyphs(glyphs: np.ndarray, canvas_size: int, cells_per_side: int,
                  rng: np.random.Generator):
  """Glyphs (n, cells, 8, 8) placed in the cells of n canvases (S, S).

  Returns the canvases (n, S, S) before lighting, each glyph warped alone
  (n, cells, S, S) and which cells hold one (n, cells); with one cell a
  side, every canvas holds its glyph.
  """
  n, cells = glyphs.shape[:2]
  uniform = lambda bounds, shape: rng.uniform(*bounds, size=shape).astype(
      np.float32)
  occupied = rng.random((n, cells)) < _OCCUPANCY
  occupied[np.arange(n), rng.integers(0, cells, n)] = True
  scales = uniform(_GLYPH_SCALE_RANGE, (n, cells))
  max_angle = np.deg2rad(_SCENE_ROTATION_DEGREES)
  angles = uniform((-max_angle, max_angle), (n, cells))
  # Jitter up to where the glyph's square still fits inside its cell.
  room = np.maximum(0.0, canvas_size / cells_per_side
                    - math.sqrt(2) * _GLYPH_SIZE * scales * 0.8) / 2
  centres = (_cell_centres(canvas_size, cells_per_side)[None]
             + uniform((-1, 1), (n, cells, 2)) * room[..., None])
  warped = _warp_glyphs(glyphs.reshape(-1, _GLYPH_SIZE, _GLYPH_SIZE),
                        angles.ravel(), scales.ravel(), centres.reshape(-1, 2),
                        canvas_size).reshape(n, cells, canvas_size, canvas_size)
  ink = uniform(_INK_RANGE, (n, cells, 1, 1)) * occupied[..., None, None]
  return np.max(ink * warped, axis=1), warped, occupied


def _relight(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per-canvas contrast, brightness and illumination ramp, then pixel noise."""
  n, size = canvas.shape[:2]
  uniform = lambda bounds, shape: rng.uniform(*bounds, size=shape).astype(
      np.float32)
  position = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
  ramp = uniform(_RAMP_RANGE, (n, 2, 1, 1))
  light = (ramp[:, 0] * position[None, None, :]
           + ramp[:, 1] * position[None, :, None])
  contrast = uniform(_CONTRAST_RANGE, (n, 1, 1))  # per canvas: a scene, a crop
  brightness = uniform(_BRIGHTNESS_RANGE, (n, 1, 1))
  noise = rng.standard_normal(canvas.shape, dtype=np.float32)
  return contrast * canvas + brightness + light + _NOISE_STD * noise


def render_scenes(glyphs: np.ndarray, labels: np.ndarray, canvas_size: int,
                  rng: np.random.Generator) -> Batch:
  """Raw scenes from glyphs (n, cells, 8, 8) and labels (n, cells).

  Returns {'image': (n, S, S) unstandardized, 'boxes': (n, cells, 4),
  'classes': (n, cells), 0 for an empty cell}.
  """
  n, cells = labels.shape
  canvas, warped, occupied = _place_glyphs(glyphs, canvas_size,
                                           SCENE_CELLS_PER_SIDE, rng)
  boxes = ink_boxes(warped.reshape(-1, canvas_size, canvas_size)).reshape(
      n, cells, 4)
  return {'image': _relight(canvas, rng),
          'boxes': np.where(occupied[..., None], boxes, 0.0),
          'classes': np.where(occupied, labels + 1, 0).astype(np.int32)}


def draw_scenes(digits: np.ndarray, digit_labels: np.ndarray, num_scenes: int,
                canvas_size: int, rng: np.random.Generator) -> Batch:
  """``render_scenes`` of digits drawn from ``digits`` (N, 8, 8)."""
  cells = SCENE_CELLS_PER_SIDE**2
  index = rng.integers(0, len(digit_labels), (num_scenes, cells))
  return render_scenes(digits[index], digit_labels[index], canvas_size, rng)


@functools.cache
def scene_mean_std(canvas_size: int) -> tuple[float, float]:
  """Standardization constants from a fixed sample of training scenes."""
  digits, labels = digits_split()[:2]
  scenes = draw_scenes(digits, labels, _NORMALIZATION_SCENES, canvas_size,
                       np.random.default_rng(_SCENE_NORMALIZATION_SEED))
  return float(scenes['image'].mean()), float(scenes['image'].std())


# digit_crops: one cell of a digit_scenes scene, as a classification example.
_CROP_SCENE_SIZE = 64  # configs/detection.py's canvas
_CROP_SIZE = _CROP_SCENE_SIZE // SCENE_CELLS_PER_SIDE
_CROP_EVAL_SEED = 5


def _render_crops(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Raw crops (N, C, C): scenes of one cell the size of a scene's cell, so
  each digit is placed, inked, re-lit and noised by the scenes' own code
  (the illumination ramp spans the crop as it spans a whole scene)."""
  canvas, _, _ = _place_glyphs(digits[:, None], _CROP_SIZE, 1, rng)
  return _relight(canvas, rng)


class DigitCropsDataset(RenderedDigits):
  """Digits as `digit_scenes` renders them, one per 32x32 crop (a cell of a
  64x64 scene), standardized by the scenes' own constants: the small-scale
  "ImageNet" of the detector, from the image distribution of its scenes.
  """
  name = 'digit_crops'
  image_shape = (_CROP_SIZE, _CROP_SIZE, 1)
  eval_seed = _CROP_EVAL_SEED
  render = staticmethod(_render_crops)
  mean_std = staticmethod(functools.partial(scene_mean_std, _CROP_SCENE_SIZE))
