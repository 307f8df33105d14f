"""The built-in datasets, from scikit-learn's 8x8 digits with NumPy only.

`digits`: the digits themselves, standardized. `noisy_digits` (the default):
each digit warped onto a 24x24 canvas, re-lit and noised, fresh every step.
The warp (`warp_digits`, `bilinear_sample`) and the split (`digits_split`)
also render the detection data (`evalnorm.detection.digit_scenes`).
"""

import functools
import itertools
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


class NoisyDigitsDataset(InMemoryDigits):
  """Digits warped onto a 24x24 canvas, re-lit and noised (the default dataset).

  A hard task with natural-image-like variation in pose, contrast, brightness
  and noise, so per-example statistics differ a lot between examples.

  Training draws fresh examples every step from the 1350 training digits; the
  eval set is 2048 fixed renderings of the 447 held-out digits (each used 4 or
  5 times), the same for every config.seed.
  """
  name = 'noisy_digits'
  num_classes = 10
  image_shape = (_CANVAS_SIZE, _CANVAS_SIZE, 1)
  num_eval_examples = _NUM_NOISY_EVAL_EXAMPLES

  def __init__(self, config):
    super().__init__(config)
    self._train_digits, self._train_labels, held_out_digits, held_out_labels = (
        digits_split())
    self.num_train_examples = len(self._train_labels)
    self._mean, self._std = _noisy_digits_mean_std()
    indices = np.arange(self.num_eval_examples) % len(held_out_labels)
    rng = np.random.default_rng(_NOISY_EVAL_SEED)
    self._eval_images = standardize_digits(
        _render_noisy_digits(held_out_digits[indices], rng), self._mean,
        self._std)
    self._eval_labels = held_out_labels[indices]

  def train_batch(self, step: int) -> Batch:
    """This process's training batch of global step `step`."""
    rng = batching.step_rng(self._seed, step)
    indices = rng.integers(0, self.num_train_examples, self._batch_size)
    # The whole global batch is rendered (its random draws are sequential),
    # then sliced: each process renders num_processes times its share.
    images = _render_noisy_digits(self._train_digits[indices], rng)
    return batching.process_slice({
        'image': standardize_digits(images, self._mean, self._std),
        'label': self._train_labels[indices]})
