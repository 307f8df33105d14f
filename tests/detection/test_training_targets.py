"""RPN and RCN target assignment on hand-made boxes."""

import functools

import jax
import numpy as np

from evalnorm.detection import boxes as box_lib, training_targets

KEY = jax.random.PRNGKey(0)
# Jitted: one compilation each instead of one per eager operation.
rpn_targets = jax.jit(training_targets.rpn_targets,
                      static_argnames=('num_samples',))
sample_rois = jax.jit(training_targets.sample_rois,
                      static_argnames=('num_rois', 'foreground_fraction'))
sample_balanced = jax.jit(training_targets.sample_balanced,
                          static_argnums=(3, 4))
iou = jax.jit(box_lib.iou)
decode = jax.jit(functools.partial(box_lib.decode,
                                   weights=training_targets.RCN_BOX_WEIGHTS))
# Two real objects and one padding slot (class 0).
GT_BOXES = np.asarray([[0, 0, 10, 10], [21, 21, 31, 31], [0, 0, 10, 10]],
                      np.float32)
GT_CLASSES = np.asarray([3, 7, 0], np.int32)


def test_rpn_labels_follow_the_iou_rules():
  anchors = np.asarray([
      [0, 0, 10, 10],     # IoU 1 with object 0: positive
      [0, 0, 10, 5],      # IoU 0.5: between the thresholds, ignored
      [50, 50, 60, 60],   # overlaps nothing: negative
      [20, 20, 30, 30],   # IoU 0.68 < 0.7, but object 1's best anchor: positive
      [22, 22, 30, 30],   # IoU 0.53 with object 1: ignored
  ], np.float32)
  targets = rpn_targets(KEY, anchors, GT_BOXES, GT_CLASSES,
                        num_samples=64)
  np.testing.assert_array_equal(targets['labels'], [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(targets['weights'], [1, 0, 1, 1, 0])
  np.testing.assert_array_equal(targets['box_weights'], [1, 0, 0, 1, 0])
  np.testing.assert_allclose(targets['box_targets'][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(targets['box_targets'][3],
                             box_lib.encode(GT_BOXES[1], anchors[3]), atol=1e-6)


def test_padding_objects_make_no_positives():
  anchors = np.asarray([[0, 0, 10, 10], [40, 40, 50, 50]], np.float32)
  targets = rpn_targets(
      KEY, anchors, GT_BOXES, np.zeros(3, np.int32), num_samples=64)
  np.testing.assert_array_equal(targets['labels'], [0, 0])
  np.testing.assert_array_equal(targets['weights'], [1, 1])


def test_balanced_sampling_caps_positives_and_fills_with_negatives():
  positive = np.arange(100) < 60
  for key in jax.random.split(KEY, 3):
    take_pos, take_neg = map(np.asarray, sample_balanced(
        key, positive, ~positive, 32, 0.25))
    assert take_pos.sum() == 8 and take_neg.sum() == 24
    assert not np.any(take_pos & ~positive) and not np.any(take_neg & positive)
  # Few positives: negatives make up the rest.
  few = np.arange(100) < 3
  take_pos, take_neg = map(np.asarray, sample_balanced(KEY, few, ~few, 32, 0.25))
  assert take_pos.sum() == 3 and take_neg.sum() == 29


def test_rois_get_classes_box_targets_and_include_the_objects():
  proposals = np.asarray([
      [1, 1, 10, 10],     # IoU 0.81 with object 0: foreground, class 3
      [20, 22, 31, 31],   # IoU 0.82 with object 1: foreground, class 7
      [40, 40, 60, 60],   # background
      [0, 0, 100, 100],   # invalid (NMS filler): never sampled
  ], np.float32)
  valid = np.asarray([True, True, True, False])
  rois, targets = sample_rois(
      KEY, proposals, valid, GT_BOXES, GT_CLASSES, num_rois=8,
      foreground_fraction=0.5)
  rois, targets = np.asarray(rois), jax.tree_util.tree_map(np.asarray, targets)
  chosen = targets['weights'] > 0
  # 3 valid proposals + 2 real objects (the padding slot is not a candidate).
  assert chosen.sum() == 5
  assert not any(np.array_equal(r, proposals[3]) for r in rois[chosen])
  for roi, cls, box_target, box_weight in zip(
      rois[chosen], targets['classes'][chosen], targets['box_targets'][chosen],
      targets['box_weights'][chosen]):
    overlaps = np.asarray(iou(roi[None], GT_BOXES[:2]))[0]
    if overlaps.max() >= 0.5:
      assert cls == GT_CLASSES[overlaps.argmax()] and box_weight == 1
      np.testing.assert_allclose(np.asarray(decode(box_target, roi)),
                                 GT_BOXES[overlaps.argmax()], atol=1e-4)
    else:
      assert cls == 0 and box_weight == 0
  assert sorted(targets['classes'][chosen]) == [0, 3, 3, 7, 7]
