"""Box geometry of the detector against float64 NumPy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm.detection import boxes as box_lib

# Jitted: one compilation each instead of one per eager operation.
iou = jax.jit(box_lib.iou)
nms = jax.jit(box_lib.nms, static_argnums=(2, 3))
roi_align = jax.jit(box_lib.roi_align, static_argnums=(2, 3, 4))


def random_boxes(rng, n, size=64.0, min_side=2.0, max_side=30.0):
  corner = rng.uniform(0, size - max_side, (n, 2))
  sides = rng.uniform(min_side, max_side, (n, 2))
  return np.concatenate([corner, corner + sides], 1).astype(np.float32)


def numpy_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, j in itertools.product(range(len(a)), range(len(b))):
    w = min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0])
    h = min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1])
    inter = max(w, 0) * max(h, 0)
    union = ((a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
             + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter)
    out[i, j] = inter / union
  return out


def test_anchors_are_centred_on_cells_with_the_asked_shapes():
  anchors = np.asarray(box_lib.anchor_grid((2, 3), stride=8, sizes=(8.0, 16.0),
                                           aspect_ratios=(1.0, 4.0)))
  assert anchors.shape == (2 * 3 * 4, 4)
  # Location-major: anchors 4k..4k+3 share the centre of cell k (row-major).
  centres = (anchors[:, :2] + anchors[:, 2:]) / 2
  expected = [((x + 0.5) * 8, (y + 0.5) * 8) for y in range(2) for x in range(3)]
  np.testing.assert_allclose(centres, np.repeat(expected, 4, axis=0))
  sides = anchors[:4, 2:] - anchors[:4, :2]  # (width, height)
  np.testing.assert_allclose(sides, [[8, 8], [4, 16], [16, 16], [8, 32]])


def test_box_coding_round_trips():
  rng = np.random.default_rng(0)
  anchors, boxes = random_boxes(rng, 50), random_boxes(rng, 50)
  for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
    round_trip = jax.jit(lambda b, a: box_lib.decode(  # noqa: B023
        box_lib.encode(b, a, weights), a, weights))
    np.testing.assert_allclose(round_trip(boxes, anchors), boxes,
                               rtol=1e-5, atol=1e-4)
  # Zero deltas are the anchors themselves; a huge scale is capped.
  np.testing.assert_allclose(box_lib.decode(jnp.zeros((50, 4)), anchors),
                             anchors, atol=1e-5)
  huge = box_lib.decode(jnp.asarray([[0, 0, 100.0, 100.0]]), anchors[:1])
  assert np.all(np.isfinite(huge))


def test_iou_matches_numpy_and_empty_boxes_overlap_nothing():
  rng = np.random.default_rng(1)
  a, b = random_boxes(rng, 7), random_boxes(rng, 9)
  np.testing.assert_allclose(iou(a, b), numpy_iou(a, b), rtol=1e-5,
                             atol=1e-6)
  empty = np.zeros((1, 4), np.float32)
  assert float(iou(empty, empty)[0, 0]) == 0.0


def numpy_nms(boxes, scores, threshold):
  order = list(np.argsort(-scores, kind='stable'))
  keep = []
  while order:
    best = order.pop(0)
    keep.append(best)
    order = [i for i in order
             if numpy_iou(boxes[best:best + 1], boxes[i:i + 1])[0, 0] <= threshold]
  return keep


@pytest.mark.parametrize('threshold', [0.3, 0.5, 0.7])
def test_nms_matches_greedy_numpy(threshold):
  rng = np.random.default_rng(2)
  # Clustered boxes, so that suppression really happens.
  centres = random_boxes(rng, 5)
  boxes = (np.repeat(centres, 8, 0) + rng.normal(0, 2, (40, 4))).astype(np.float32)
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
  scores = rng.permutation(40).astype(np.float32)
  expected = numpy_nms(boxes, scores, threshold)
  index, valid = nms(boxes, scores, threshold, 40)
  index, valid = np.asarray(index), np.asarray(valid)
  assert list(index[valid]) == expected
  assert not valid[len(expected):].any()


def test_nms_pads_to_a_static_count_and_drops_minus_infinity():
  boxes = np.asarray([[0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30]],
                     np.float32)
  scores = np.asarray([0.9, 0.8, -np.inf], np.float32)
  index, valid = nms(boxes, scores, 0.5, 5)
  assert index.shape == valid.shape == (5,)
  assert list(np.asarray(index)[np.asarray(valid)]) == [0]


def numpy_bilinear(features, y, x):
  height, width = features.shape[:2]
  if y < -1 or y > height or x < -1 or x > width:
    return np.zeros(features.shape[-1])
  y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
  y0, x0 = int(np.floor(y)), int(np.floor(x))
  y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * features[y0, x0] + (1 - ly) * lx * features[y0, x1]
          + ly * (1 - lx) * features[y1, x0] + ly * lx * features[y1, x1])


def numpy_roi_align(features, rois, size, stride, ratio):
  """Detectron's ROIAlign (aligned=True), one sample at a time."""
  out = np.zeros((len(rois), size, size, features.shape[-1]))
  for r, (x1, y1, x2, y2) in enumerate(np.asarray(rois, np.float64) / stride - 0.5):
    bin_w, bin_h = (x2 - x1) / size, (y2 - y1) / size
    for i, j, si, sj in itertools.product(range(size), range(size),
                                          range(ratio), range(ratio)):
      y = y1 + (i + (si + 0.5) / ratio) * bin_h
      x = x1 + (j + (sj + 0.5) / ratio) * bin_w
      out[r, i, j] += numpy_bilinear(features, y, x) / ratio**2
  return out


def test_roi_align_matches_numpy_inside_at_borders_and_outside():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(10, 12, 3)).astype(np.float32)
  rois = np.asarray([[4, 4, 30, 20], [0, 0, 48, 40], [-6, -5, 10, 12],
                     [40, 30, 60, 52], [13.3, 7.1, 14.2, 9.9]], np.float32)
  got = roi_align(features, rois, 3, 4.0, 2)
  np.testing.assert_allclose(got, numpy_roi_align(features, rois, 3, 4.0, 2),
                             rtol=1e-5, atol=1e-5)


def test_roi_align_of_a_constant_map_is_that_constant_inside():
  features = np.full((8, 8, 2), 3.0, np.float32)
  got = roi_align(features, np.asarray([[5, 6, 20, 25.0]]), 4, 4.0, 2)
  np.testing.assert_allclose(got, 3.0, rtol=1e-6)


def test_flipped_boxes_cover_the_flipped_pixels():
  image = np.zeros((20, 30))
  box = np.asarray([3.0, 5.0, 11.0, 9.0])  # x1, y1, x2, y2
  image[5:9, 3:11] = 1
  flipped = np.asarray(box_lib.flip_horizontally(box, 30.0))
  rows, cols = np.nonzero(image[:, ::-1])
  np.testing.assert_array_equal(
      flipped, [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


# Box coding against Faster R-CNN's formulas (Ren et al. 2015, eq. 2), not
# against encode: with anchor centre (xa, ya) and size (wa, ha), a box of
# centre (x, y) and size (w, h) has targets
#   tx = (x - xa) / wa, ty = (y - ya) / ha, tw = log(w / wa), th = log(h / ha),
# each multiplied by its weight (wx, wy, ww, wh), Detectron's BoxCoder order
# ((10, 10, 5, 5) for the RCN). Boxes are continuous (x1, y1, x2, y2): sizes
# are x2 - x1, without Detectron1's legacy + 1 (Detectron2's convention).
LOG2 = 0.6931471805599453


def test_encoding_follows_the_faster_rcnn_formulas():
  # Anchor (10, 20, 50, 100): centre (30, 60), size (40, 80).
  # Box (30, 50, 110, 90): centre (70, 70), size (80, 40).
  #   tx = (70 - 30) / 40 = 1, ty = (70 - 60) / 80 = 0.125,
  #   tw = log(80 / 40) = log 2, th = log(40 / 80) = -log 2.
  # Anchor (0, 0, 16, 16): centre (8, 8), size (16, 16).
  # Box (4, -2, 12, 30): centre (8, 14), size (8, 32).
  #   tx = 0, ty = 6 / 16 = 0.375, tw = log(1/2) = -log 2, th = log 2.
  anchors = np.asarray([[10, 20, 50, 100], [0, 0, 16, 16]], np.float32)
  boxes = np.asarray([[30, 50, 110, 90], [4, -2, 12, 30]], np.float32)
  np.testing.assert_allclose(
      box_lib.encode(boxes, anchors),
      [[1.0, 0.125, LOG2, -LOG2], [0.0, 0.375, -LOG2, LOG2]], atol=1e-6)
  # Weights (10, 10, 5, 5) scale (tx, ty, tw, th) in that order.
  np.testing.assert_allclose(
      box_lib.encode(boxes, anchors, (10.0, 10.0, 5.0, 5.0)),
      [[10.0, 1.25, 5 * LOG2, -5 * LOG2], [0.0, 3.75, -5 * LOG2, 5 * LOG2]],
      atol=1e-5)


def test_decoding_with_weights_follows_the_faster_rcnn_formulas():
  # ROI (20, 40, 60, 60): centre (40, 50), size (40, 20).
  # Weighted deltas (2, -3, 5 log 3, 5 log 1/2) / (10, 10, 5, 5)
  #   = (0.2, -0.3, log 3, log 1/2):
  #   x = 40 + 0.2 * 40 = 48, y = 50 - 0.3 * 20 = 44,
  #   w = 40 * 3 = 120, h = 20 / 2 = 10 -> (48 - 60, 44 - 5, 48 + 60, 44 + 5).
  rois = np.asarray([[20, 40, 60, 60], [20, 40, 60, 60]], np.float32)
  deltas = np.asarray([[2.0, -3.0, 5 * 1.0986122886681098, -5 * LOG2],
                       # tw = 500 / 5 = 100 is capped at log(1000 / 16):
                       # w = 40 * 62.5 = 2500 around x = 40; h stays 20.
                       [0.0, 0.0, 500.0, 0.0]], np.float32)
  np.testing.assert_allclose(
      box_lib.decode(deltas, rois, (10.0, 10.0, 5.0, 5.0)),
      [[-12.0, 39.0, 108.0, 49.0], [-1210.0, 40.0, 1290.0, 60.0]],
      rtol=1e-5, atol=1e-4)
