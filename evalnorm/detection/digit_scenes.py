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
fixed set of scenes built from the 447 held-out digits. The rendering is
``evalnorm.data.digits``' (``draw_scenes``), which also cuts the scenes'
cells into the classification dataset `digit_crops`.
"""

import itertools
import math
from typing import Iterator

import jax
import numpy as np

from evalnorm.data import digits
from evalnorm.data.batching import Batch, process_slice, step_rng
from evalnorm.detection import evaluation as detection_evaluation

_EVAL_SEED = 3


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
    self.max_objects = digits.SCENE_CELLS_PER_SIDE**2
    self._digits, self._labels, held_out, held_out_labels = (
        digits.digits_split())
    self.num_train_examples = len(self._labels)
    self.num_eval_examples = config.num_eval_images
    self._mean, self._std = digits.scene_mean_std(size)
    self.eval_set = self._standardize(digits.draw_scenes(
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
    """This process's slice of the global batch of step ``step``: every
    process draws the whole batch, so the batches do not depend on the
    number of processes (as the classification digits')."""
    return process_slice(self._standardize(digits.draw_scenes(
        self._digits, self._labels, self._batch_size, self._canvas_size,
        step_rng(self._seed, step))))

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
