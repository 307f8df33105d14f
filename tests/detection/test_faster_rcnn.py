"""The detector's box post-processing against hand-computed values.

RPN proposals (``select_proposals``) and final detections (``postprocess``,
class-specific decoding with the RCN's weights (10, 10, 5, 5)) follow
Faster R-CNN (Ren et al. 2015) and Detectron's conventions: deltas
(dx, dy, dw, dh) move a box's centre by (dx w, dy h) and scale its size by
(exp dw, exp dh), after dividing by the weights; boxes are continuous
(x1, y1, x2, y2) pixels, sizes x2 - x1. Every expected number is derived
in the comments, not by calling the project's functions.
"""

import functools

import jax
import numpy as np

from evalnorm.detection import faster_rcnn

LOG2 = 0.6931471805599453
LOG1_5 = 0.4054651081081644
LOG1_2 = 0.1823215567939546


def test_select_proposals_decodes_clips_filters_and_suppresses():
  # Image 64 high, 80 wide; RPN deltas are unweighted.
  anchors = np.asarray([
      [0, 0, 16, 16],    # centre (8, 8), size 16 x 16
      [8, 4, 24, 20],
      [60, 40, 76, 56],  # centre (68, 48)
      [30, 30, 46, 46],  # centre (38, 38)
      [30, 0, 46, 16],
  ], np.float32)
  deltas = np.asarray([
      # x = 8 + 0.5 * 16 = 16, y = 8 + 0.25 * 16 = 12 -> (8, 4, 24, 20).
      [0.5, 0.25, 0.0, 0.0],
      # The anchor itself: the same box as the first, lower score: NMS
      # (IoU 1 > 0.7) drops it.
      [0.0, 0.0, 0.0, 0.0],
      # y = 48 + 0.75 * 16 = 60, w = 32 -> (52, 52, 84, 68), clipped to
      # the 80-wide, 64-high image -> (52, 52, 80, 64).
      [0.0, 0.75, LOG2, 0.0],
      # w = 16 / 32 = 0.5 < min_size 1 (h = 16 is fine): dropped.
      [0.0, 0.0, -5 * LOG2, 0.0],
      # A good box, but the lowest score: outside pre_nms_top_k = 4.
      [0.0, 0.0, 0.0, 0.0],
  ], np.float32)
  logits = np.asarray([3.0, 2.0, 1.0, 0.5, 0.0], np.float32)
  select = jax.jit(functools.partial(
      faster_rcnn.select_proposals, image_size=(64, 80), pre_nms_top_k=4,
      nms_threshold=0.7, num_proposals=4, min_size=1.0))
  proposals, valid = select(logits, deltas, anchors)
  np.testing.assert_array_equal(valid, [True, True, False, False])
  np.testing.assert_allclose(np.asarray(proposals)[:2],
                             [[8, 4, 24, 20], [52, 52, 80, 64]], atol=1e-4)


def _outputs():
  """One image's RCN outputs: 4 ROIs, 2 classes (logits = log p)."""
  rois = np.asarray([
      [10, 10, 50, 30],   # centre (30, 20), size 40 x 20
      [60, 50, 100, 90],  # centre (80, 70), size 40 x 40
      [22, 10, 62, 30],
      [0, 0, 10, 10],     # not a valid ROI
  ], np.float32)
  probabilities = np.asarray([
      [0.1, 0.6, 0.3],     # background, class 1, class 2
      [0.5, 0.04, 0.46],   # class 1 below the 0.05 threshold
      [0.43, 0.55, 0.02],  # class 2 below the threshold
      [0.01, 0.98, 0.01],  # ignored: the ROI is not valid
  ], np.float32)
  deltas = np.zeros((4, 2, 4), np.float32)  # (ROI, class, dx..dh), weighted
  # ROI 0, class 1: dx = 2.5 / 10 = 0.25: x = 30 + 0.25 * 40 = 40
  #   -> (20, 10, 60, 30).
  deltas[0, 0] = [2.5, 0.0, 0.0, 0.0]
  # ROI 0, class 2: dx = 0.25, dy = 1 / 10 = 0.1, dh = 5 log 1.2 / 5:
  #   x = 40, y = 20 + 0.1 * 20 = 22, w = 40, h = 24 -> (20, 10, 60, 34).
  deltas[0, 1] = [2.5, 1.0, 0.0, 5 * LOG1_2]
  # ROI 1, class 2: dx = 0.5: x = 80 + 20 = 100, dw = log 2: w = 80
  #   -> (60, 50, 140, 90), clipped to the 120-wide image -> (60, 50, 120, 90).
  deltas[1, 1] = [5.0, 0.0, 5 * LOG2, 0.0]
  # ROI 2, class 1: zero deltas, the ROI itself (22, 10, 62, 30).
  return {'rois': rois[None], 'roi_valid': np.asarray([[True] * 3 + [False]]),
          'rcn_logits': np.log(probabilities)[None],
          'rcn_deltas': deltas[None]}


def test_postprocess_decodes_per_class_and_suppresses_within_a_class():
  # Candidates above 0.05, by score:
  #   0.6  class 1 (20, 10, 60, 30)
  #   0.55 class 1 (22, 10, 62, 30): IoU with the first 760 / 840 = 0.90
  #        > 0.5, same class: suppressed;
  #   0.46 class 2 (60, 50, 120, 90): overlaps nothing;
  #   0.3  class 2 (20, 10, 60, 34): IoU with the first 800 / 960 = 0.83,
  #        but another class: kept.
  postprocess = jax.jit(functools.partial(
      faster_rcnn.postprocess, image_size=(100, 120), score_threshold=0.05,
      nms_threshold=0.5, max_detections=5))
  detections = jax.device_get(postprocess(_outputs()))
  np.testing.assert_array_equal(detections['valid'][0],
                                [True, True, True, False, False])
  np.testing.assert_array_equal(detections['classes'][0, :3], [1, 2, 2])
  np.testing.assert_allclose(detections['scores'][0],
                             [0.6, 0.46, 0.3, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(
      detections['boxes'][0, :3],
      [[20, 10, 60, 30], [60, 50, 120, 90], [20, 10, 60, 34]], atol=1e-4)
