"""`digit_scenes`: the built-in detection data, several digits on a re-lit, noisy canvas.

Each scene is a square canvas cut into a grid of cells; each cell holds a
digit with probability 0.7 (every scene at least one), rotated, scaled to
12-24 pixels and placed at a random spot inside its cell, so objects vary in
size and position but never overlap. The whole scene is then re-lit (random
contrast, brightness and a linear illumination ramp) and noised, following
the `noisy_digits` recipe at the scale of a scene: lighting differs from
image to image, so the base network's per-image statistics do too, which is
what makes small normalization batches matter.

Boxes are the tight boxes of each digit's rendered ink (x1, y1, x2, y2 in
pixels); classes are digit + 1 (0 marks an empty slot, and is the RCN's
background class). Training scenes are drawn fresh every step from
(config.seed, step) out of the 1350 training digits; the evaluation set is a
fixed set of scenes built from the 447 held-out digits.
"""

import functools
import itertools
import math
from typing import Iterator

import jax
import numpy as np

from evalnorm.data.batching import Batch, step_rng
from evalnorm.data.digits import bilinear_sample, digits_split
from evalnorm.detection import evaluation as detection_evaluation

_CELLS_PER_SIDE = 2
_OCCUPANCY = 0.7
_MAX_ROTATION_DEGREES = 15.0
_SCALE_RANGE = (1.5, 3.0)     # times the 8-pixel glyph
_INK_RANGE = (0.6, 1.0)       # per digit
_CONTRAST_RANGE = (0.3, 1.7)  # per scene, as noisy_digits' per digit
_BRIGHTNESS_RANGE = (-1.0, 1.0)
_RAMP_RANGE = (-0.5, 0.5)     # illumination change across the canvas, x and y
_NOISE_STD = 0.2
_INK_THRESHOLD = 0.25         # rendered glyph value that counts as ink for the box
_EVAL_SEED = 3
_NORMALIZATION_SEED = 4
_NORMALIZATION_SCENES = 512
_GLYPH_SIZE = 8


def _cell_centres(canvas_size: int) -> np.ndarray:
  """(cells, 2) centres (x, y) of the grid cells, row by row."""
  cell = canvas_size / _CELLS_PER_SIDE
  centres = (np.arange(_CELLS_PER_SIDE) + 0.5) * cell
  y, x = np.meshgrid(centres, centres, indexing='ij')
  return np.stack([x.ravel(), y.ravel()], -1).astype(np.float32)


def _warp(glyphs: np.ndarray, angles, scales, centres,
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


def _ink_boxes(canvases: np.ndarray) -> np.ndarray:
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


def render_scenes(glyphs: np.ndarray, labels: np.ndarray, canvas_size: int,
                  rng: np.random.Generator) -> Batch:
  """Raw scenes from glyphs (n, cells, 8, 8) and labels (n, cells).

  Returns {'image': (n, S, S) unstandardized, 'boxes': (n, cells, 4),
  'classes': (n, cells), 0 for an empty cell}.
  """
  n, cells = labels.shape
  uniform = lambda bounds, shape: rng.uniform(*bounds, size=shape).astype(
      np.float32)
  occupied = rng.random((n, cells)) < _OCCUPANCY
  occupied[np.arange(n), rng.integers(0, cells, n)] = True
  scales = uniform(_SCALE_RANGE, (n, cells))
  max_angle = np.deg2rad(_MAX_ROTATION_DEGREES)
  angles = uniform((-max_angle, max_angle), (n, cells))
  # Jitter up to where the glyph's square still fits inside its cell.
  room = np.maximum(0.0, canvas_size / _CELLS_PER_SIDE
                    - math.sqrt(2) * _GLYPH_SIZE * scales * 0.8) / 2
  centres = (_cell_centres(canvas_size)[None]
             + uniform((-1, 1), (n, cells, 2)) * room[..., None])
  warped = _warp(glyphs.reshape(-1, _GLYPH_SIZE, _GLYPH_SIZE),
                 angles.ravel(), scales.ravel(), centres.reshape(-1, 2),
                 canvas_size).reshape(n, cells, canvas_size, canvas_size)
  ink = uniform(_INK_RANGE, (n, cells, 1, 1)) * occupied[..., None, None]
  canvas = np.max(ink * warped, axis=1)
  boxes = _ink_boxes(warped.reshape(-1, canvas_size, canvas_size)).reshape(
      n, cells, 4)
  return {'image': _relight(canvas, rng),
          'boxes': np.where(occupied[..., None], boxes, 0.0),
          'classes': np.where(occupied, labels + 1, 0).astype(np.int32)}


def _relight(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per-scene contrast, brightness and illumination ramp, then pixel noise."""
  n, size = canvas.shape[:2]
  uniform = lambda bounds, shape: rng.uniform(*bounds, size=shape).astype(
      np.float32)
  position = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
  ramp = uniform(_RAMP_RANGE, (n, 2, 1, 1))
  light = (ramp[:, 0] * position[None, None, :]
           + ramp[:, 1] * position[None, :, None])
  contrast = uniform(_CONTRAST_RANGE, (n, 1, 1))
  brightness = uniform(_BRIGHTNESS_RANGE, (n, 1, 1))
  noise = rng.standard_normal(canvas.shape, dtype=np.float32)
  return contrast * canvas + brightness + light + _NOISE_STD * noise


def _draw(digits, digit_labels, num_scenes: int, canvas_size: int,
          rng: np.random.Generator) -> Batch:
  cells = _CELLS_PER_SIDE**2
  index = rng.integers(0, len(digit_labels), (num_scenes, cells))
  return render_scenes(digits[index], digit_labels[index], canvas_size, rng)


@functools.cache
def _mean_std(canvas_size: int) -> tuple[float, float]:
  """Standardization constants from a fixed sample of training scenes."""
  digits, labels = digits_split()[:2]
  scenes = _draw(digits, labels, _NORMALIZATION_SCENES, canvas_size,
                 np.random.default_rng(_NORMALIZATION_SEED))
  return float(scenes['image'].mean()), float(scenes['image'].std())


class DigitScenesDataset:
  """The `digit_scenes` dataset (see the module docstring).

  Batches: {'image': float32 (n, S, S, 1), 'boxes': float32 (n, G, 4),
  'classes': int32 (n, G)}, G = cells per scene; eval batches also carry
  'image_id' (int32, from 1) and 'mask' (0.0 on padding repeats).
  """
  name = 'digit_scenes'
  num_classes = 10
  category_ids = tuple(range(1, 11))  # the classes themselves: digit + 1
  category_names = tuple(str(d) for d in range(10))

  def __init__(self, config):
    self._seed = config.seed
    self._batch_size = config.batch_size  # global
    self._eval_batch_size = config.eval_batch_size
    size = self._canvas_size = config.canvas_size
    self.image_shape = (size, size, 1)
    self.max_objects = _CELLS_PER_SIDE**2
    self._digits, self._labels, held_out, held_out_labels = digits_split()
    self.num_train_examples = len(self._labels)
    self.num_eval_examples = config.num_eval_images
    self._mean, self._std = _mean_std(size)
    self.eval_set = self._standardize(_draw(
        held_out, held_out_labels, config.num_eval_images, size,
        np.random.default_rng(_EVAL_SEED)))
    self.eval_set['image_id'] = np.arange(
        1, config.num_eval_images + 1, dtype=np.int32)
    # Scenes are drawn at the detector's size: nothing to undo.
    self.eval_set['original_size'] = self.eval_set['resized_size'] = np.full(
        (config.num_eval_images, 2), size, np.int32)

  def _standardize(self, scenes: Batch) -> Batch:
    image = (scenes['image'] - self._mean) / self._std
    return {**scenes, 'image': image[..., None].astype(np.float32)}

  def ground_truth(self) -> dict:
    """The COCO-format ground truth of the evaluation set."""
    return detection_evaluation.ground_truth_json(
        self.eval_set['image_id'], self.eval_set['original_size'],
        self.eval_set['boxes'],
        detection_evaluation.category_ids_of(self.eval_set['classes'],
                                             self.category_ids),
        dict(zip(self.category_ids, self.category_names)))

  def train_batch(self, step: int) -> Batch:
    """This process's training batch of global step ``step``."""
    batch_size = self._batch_size // jax.process_count()
    return self._standardize(_draw(
        self._digits, self._labels, batch_size, self._canvas_size,
        step_rng(self._seed, step)))

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    for step in itertools.count(start_step):
      yield self.train_batch(step)

  def eval_batches(self) -> Iterator[Batch]:
    return padded_batches(self.eval_set, self._eval_batch_size)


def padded_batches(examples: Batch, global_batch_size: int) -> Iterator[Batch]:
  """This process's share of ``examples`` in full batches, with 'mask'.

  The last batch is filled up with repeats of the share's first images
  (mask 0): repeats rather than blank images, because EvalNorm's modes and
  the train_stats reference normalize with statistics of groups of images.
  """
  processes = jax.process_count()
  batch_size = global_batch_size // processes
  share = {k: v[jax.process_index()::processes] for k, v in examples.items()}
  count = len(share['image'])
  # Every process runs as many eval steps (they are collectives).
  num_batches = math.ceil(math.ceil(len(examples['image']) / processes)
                          / batch_size)
  for start in range(0, num_batches * batch_size, batch_size):
    index = np.arange(start, start + batch_size)
    real = index < count
    index = np.where(real, index, index % count)
    batch = {k: v[index] for k, v in share.items()}
    batch['mask'] = real.astype(np.float32)
    yield batch
