"""Training targets of Faster R-CNN: anchor labels for the RPN, sampled ROIs for the RCN.

One image at a time with static shapes; callers ``vmap`` over the batch.
Ground truth is padded to a fixed number of objects: ``gt_classes`` holds
1..K for real objects and 0 for padding (0 is also the background class of
the RCN's classifier). Sampling draws from ``jax.random`` with keys the train
step derives from (seed, step), so a resumed run samples what an
uninterrupted one would.
"""

import jax
import jax.numpy as jnp

from evalnorm.detection import boxes as box_lib

# Scales of the RCN's regression targets (Faster R-CNN's): its ROIs are close
# to their objects, and the scaling brings the offsets to the RPN's magnitude.
RCN_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _random_subset(key, members: jax.Array, count) -> jax.Array:
  """A uniformly random subset of at most ``count`` of the True ``members``."""
  priority = jnp.where(members, jax.random.uniform(key, members.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(priority))
  return members & (rank < count)


def sample_balanced(key, positive: jax.Array, negative: jax.Array,
                    num_samples: int, positive_fraction: float
                    ) -> tuple[jax.Array, jax.Array]:
  """Masks of sampled positives (at most the fraction) and negatives (the rest).

  As in Faster R-CNN: when positives are scarce, negatives fill the batch.
  """
  positive_key, negative_key = jax.random.split(key)
  take_positive = _random_subset(positive_key, positive,
                                 int(num_samples * positive_fraction))
  num_negative = num_samples - jnp.sum(take_positive)
  return take_positive, _random_subset(negative_key, negative, num_negative)


def _matches(candidates, gt_boxes, gt_classes):
  """IoU with the best-overlapping real object, its index, and all IoUs."""
  overlaps = box_lib.iou(candidates, gt_boxes)
  overlaps = jnp.where(gt_classes[None, :] > 0, overlaps, -1.0)
  return overlaps.max(axis=1), overlaps.argmax(axis=1), overlaps


def rpn_targets(key, anchors: jax.Array, gt_boxes: jax.Array,
                gt_classes: jax.Array, num_samples: int = 256,
                positive_fraction: float = 0.5, positive_iou: float = 0.7,
                negative_iou: float = 0.3) -> dict[str, jax.Array]:
  """Objectness labels and box targets of every anchor, with loss weights.

  Positive: IoU >= positive_iou with some object, or the best anchor of an
  object (so every object has one); negative: IoU < negative_iou with all;
  the rest is ignored. ``num_samples`` anchors are sampled for the loss.
  """
  best, matched, overlaps = _matches(anchors, gt_boxes, gt_classes)
  best_of_object = overlaps.max(axis=0)
  is_best = jnp.any((overlaps == best_of_object[None, :])
                    & (best_of_object[None, :] > 0), axis=1)
  positive = (best >= positive_iou) | is_best
  negative = (best < negative_iou) & ~positive
  take_positive, take_negative = sample_balanced(
      key, positive, negative, num_samples, positive_fraction)
  return {'labels': take_positive.astype(jnp.float32),
          'weights': (take_positive | take_negative).astype(jnp.float32),
          'box_targets': box_lib.encode(gt_boxes[matched], anchors),
          'box_weights': take_positive.astype(jnp.float32)}


def sample_rois(key, proposals: jax.Array, proposal_valid: jax.Array,
                gt_boxes: jax.Array, gt_classes: jax.Array, num_rois: int,
                foreground_fraction: float = 0.25,
                foreground_iou: float = 0.5
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``num_rois`` ROIs for the RCN and their class and box targets.

  Candidates are the proposals plus the ground-truth boxes (so early in
  training, when proposals are poor, the RCN still sees every object).
  Foreground: IoU >= foreground_iou, labelled with the object's class;
  background: the other valid candidates, class 0. When fewer than
  ``num_rois`` are sampled, other candidates fill the slots with weight 0:
  the count must be static, and fillers still take part in the RCN's
  normalization groups, as extra ROIs would.
  """
  candidates = jnp.concatenate([proposals, gt_boxes])
  valid = jnp.concatenate([proposal_valid, gt_classes > 0])
  best, matched, _ = _matches(candidates, gt_boxes, gt_classes)
  foreground = valid & (best >= foreground_iou)
  background = valid & ~foreground
  sample_key, fill_key = jax.random.split(key)
  take_foreground, take_background = sample_balanced(
      sample_key, foreground, background, num_rois, foreground_fraction)
  chosen = take_foreground | take_background
  # Sampled ROIs first, then valid fillers, then the rest, each at random.
  priority = (jnp.where(chosen, 0.0, jnp.where(valid, 1.0, 2.0))
              + 0.5 * jax.random.uniform(fill_key, chosen.shape))
  index = jnp.argsort(priority)[:num_rois]
  rois = candidates[index]
  is_foreground = take_foreground[index]
  target_boxes = gt_boxes[matched[index]]
  return rois, {
      'classes': jnp.where(is_foreground, gt_classes[matched[index]], 0),
      'weights': chosen[index].astype(jnp.float32),
      'box_targets': box_lib.encode(target_boxes, rois, RCN_BOX_WEIGHTS),
      'box_weights': is_foreground.astype(jnp.float32)}
