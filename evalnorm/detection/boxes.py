"""Box geometry for the detector: anchors, box coding, IoU, NMS and ROI Align.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the (padded) input image, with
continuous coordinates: pixel column j covers x in [j, j + 1). Every function
works on one image and has static output shapes (fixed anchor, proposal and
ROI counts), so the whole detector jit-compiles once; batches are ``vmap``-ed.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Faster R-CNN's cap on the predicted log scale change (a box may grow at most
# 1000/16 times), which keeps exp() finite early in training.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def anchor_grid(feature_shape: tuple[int, int], stride: int,
                sizes: Sequence[float],
                aspect_ratios: Sequence[float] = (1.0,)) -> jax.Array:
  """Anchors (H * W * A, 4) centred on every feature cell, location-major.

  A = len(sizes) * len(aspect_ratios); an anchor of size s and ratio r
  (height / width) has area s^2. The order matches an RPN output of shape
  (H, W, A) flattened, so anchor k goes with the k-th flattened prediction.
  """
  height, width = feature_shape
  shapes = [(size / math.sqrt(ratio), size * math.sqrt(ratio))
            for size in sizes for ratio in aspect_ratios]
  half = 0.5 * jnp.asarray(shapes, jnp.float32)  # (A, 2): half width, height
  ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) * stride
  xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) * stride
  cy, cx = jnp.meshgrid(ys, xs, indexing='ij')
  centres = jnp.stack([cx, cy], -1).reshape(-1, 1, 2)  # (H * W, 1, 2)
  return jnp.concatenate([centres - half, centres + half], -1).reshape(-1, 4)


def _centre_size(boxes):
  size = boxes[..., 2:] - boxes[..., :2]
  return boxes[..., :2] + 0.5 * size, size


def encode(boxes: jax.Array, anchors: jax.Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Regression targets (dx, dy, dw, dh) that take ``anchors`` to ``boxes``.

  ``weights`` scale the four targets (the RCN uses (10, 10, 5, 5), so that
  its smaller offsets weigh as much in the loss as the RPN's).
  """
  centre, size = _centre_size(boxes)
  anchor_centre, anchor_size = _centre_size(anchors)
  anchor_size = jnp.maximum(anchor_size, 1e-6)
  deltas = jnp.concatenate([
      (centre - anchor_centre) / anchor_size,
      jnp.log(jnp.maximum(size, 1e-6) / anchor_size)], -1)
  return deltas * jnp.asarray(weights, deltas.dtype)


def decode(deltas: jax.Array, anchors: jax.Array,
           weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """The boxes that ``deltas`` (as made by ``encode``) describe."""
  deltas = deltas / jnp.asarray(weights, deltas.dtype)
  anchor_centre, anchor_size = _centre_size(anchors)
  centre = anchor_centre + deltas[..., :2] * anchor_size
  size = anchor_size * jnp.exp(jnp.minimum(deltas[..., 2:], MAX_LOG_SCALE))
  return jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], -1)


def clip(boxes: jax.Array, height: float, width: float) -> jax.Array:
  limits = jnp.asarray([width, height, width, height], boxes.dtype)
  return jnp.clip(boxes, 0.0, limits)


def area(boxes: jax.Array) -> jax.Array:
  size = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
  return size[..., 0] * size[..., 1]


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise intersection over union of (N, 4) and (M, 4) boxes: (N, M).

  Empty boxes (zero area) overlap nothing: their IoU is 0, not NaN.
  """
  top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])
  bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  size = jnp.maximum(bottom_right - top_left, 0.0)
  intersection = size[..., 0] * size[..., 1]
  union = area(a)[:, None] + area(b)[None, :] - intersection
  return jnp.where(union > 0, intersection / jnp.maximum(union, 1e-12), 0.0)


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float,
        max_outputs: int) -> tuple[jax.Array, jax.Array]:
  """Greedy non-maximum suppression with a static number of outputs.

  Returns ``(indices, valid)``, each (max_outputs,): indices into ``boxes``
  of the kept boxes by decreasing score, then filler entries with ``valid``
  False. Boxes scored -inf never survive (the way to drop candidates). The
  greedy pass visits every box once in score order and suppresses it if a
  kept, higher-scored box overlaps it by more than ``iou_threshold``.
  """
  boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
  num = boxes.shape[0]
  order = jnp.argsort(-scores)
  boxes, scores = boxes[order], scores[order]
  overlapping = iou(boxes, boxes) > iou_threshold
  candidate = scores > -jnp.inf

  def visit(i, keep):
    # keep holds only boxes before i, all of a higher (or equal) score.
    suppressed = jnp.any(keep & overlapping[i])
    return keep.at[i].set(candidate[i] & ~suppressed)
  keep = lax.fori_loop(0, num, visit, jnp.zeros(num, bool))
  if max_outputs > num:
    keep = jnp.pad(keep, (0, max_outputs - num))
    order = jnp.pad(order, (0, max_outputs - num))
  # Kept boxes first, in score order (a stable sort keeps that order).
  kept_first = jnp.argsort(~keep, stable=True)[:max_outputs]
  return order[kept_first], keep[kept_first]


def _sampling_weights(starts, bin_sizes, output_size: int, sampling_ratio: int,
                      length: int) -> jax.Array:
  """Bin weights (R, output_size, length) along one axis: the mean of the
  bilinear weights of the bin's ``sampling_ratio`` samples.

  Sample k of bin i of a ROI lies at start + (i + (k + 0.5) / ratio) * bin,
  in feature coordinates where cell j's centre is at j. A sample up to one
  cell outside the map reads the border cell (clamped); farther out it
  reads zero, as in Detectron's ROIAlign.
  """
  steps = (jnp.arange(output_size * sampling_ratio, dtype=jnp.float32) + 0.5
           ) / sampling_ratio
  positions = starts[:, None] + steps[None, :] * bin_sizes[:, None]
  inside = (positions >= -1.0) & (positions <= length)
  positions = jnp.clip(positions, 0.0, length - 1.0)
  cells = jnp.arange(length, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(positions[..., None] - cells))
  weights = weights * inside[..., None]
  return weights.reshape(weights.shape[0], output_size, sampling_ratio,
                         length).mean(axis=2)


def roi_align(features: jax.Array, rois: jax.Array, output_size: int,
              stride: float, sampling_ratio: int = 2) -> jax.Array:
  """ROI Align (He et al. 2017) of (R, 4) pixel boxes on (H, W, C) features.

  Returns (R, output_size, output_size, C): each bin is the mean of
  sampling_ratio^2 bilinear samples. Bilinear sampling on a grid is
  separable, and so is the mean over a bin's samples, so it is two small
  contractions with per-bin weights rather than a gather, and no sample is
  ever held (at the paper's 300 ROIs of 14x14 on 1024 channels the samples
  would be 4x the output); gradients reach the features (the ROIs are
  constants to the network).
  """
  height, width, _ = features.shape
  # Pixel coordinates to feature coordinates, cell centres on integers.
  scaled = rois / stride - 0.5
  bins = (rois[:, 2:] - rois[:, :2]) / stride / output_size  # (R, 2): x, y
  weights_y = _sampling_weights(scaled[:, 1], bins[:, 1], output_size,
                                sampling_ratio, height)
  weights_x = _sampling_weights(scaled[:, 0], bins[:, 0], output_size,
                                sampling_ratio, width)
  rows = jnp.einsum('rph,hwc->rpwc', weights_y, features)
  return jnp.einsum('rpwc,rqw->rpqc', rows, weights_x)


def flip_horizontally(boxes: jax.Array, width: float) -> jax.Array:
  """Boxes of an image mirrored left-right (x -> width - x)."""
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([width - x2, y1, width - x1, y2], -1)
