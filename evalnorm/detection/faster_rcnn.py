"""Faster R-CNN (Ren et al. 2015) on a ResNet v2, with the norm layer injected.

As in the paper's detection experiments (Huang et al.'s Faster R-CNN): every
residual stage but the last forms the base network, whose features feed the
region proposal network (RPN); the last stage is the region classification
network (RCN), run on ROI-aligned crops of the base features, followed by
the final norm, global average pooling and the class and box layers.

The norm slot is the classifiers' (``evalnorm.models``): the base network's
norm layers normalize groups of B images, and the RCN's normalize over ROIs.
Its ROIs are laid out image by image, so a group of B images is a run of
B * R consecutive ROIs: the RCN's normalization batch is the ROIs of the
base network's normalization group (``rcn_norm``).

Everything has static shapes: fixed anchor, proposal, ROI and detection
counts, with validity masks where fewer are real.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evalnorm.detection import boxes as box_lib, training_targets
from evalnorm.models import (conv_kernel_init, ModuleDef, PreActBlock,
                             PreActBottleneck)


def rcn_norm(norm: ModuleDef, rois_per_image: int) -> ModuleDef:
  """The RCN's norm: groups of B images become groups of their B * R ROIs.

  Norms without groups (flax's BatchNorm: the whole device batch; GroupNorm:
  no batch statistics) need no change.
  """
  group_size = getattr(norm, 'keywords', {}).get('group_size')
  if group_size is None:
    return norm
  return functools.partial(norm, group_size=group_size * rois_per_image)


class Backbone(nn.Module):
  """The base network: stem and all residual stages but the last."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  norm: ModuleDef
  num_filters: int = 16
  stem: str = 'cifar'   # 'cifar' (one 3x3 conv) or 'imagenet' (7x7/2 + pool)
  stem_strides: int = 1
  dtype: Any = jnp.float32

  @property
  def stride(self) -> int:
    stem_stride = 4 if self.stem == 'imagenet' else self.stem_strides
    return stem_stride * 2 ** (len(self.stage_sizes) - 1)

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(self.norm, use_running_average=not train,
                             dtype=self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.num_filters, (7, 7), 2, name='stem')(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    else:
      x = conv(self.num_filters, (3, 3), self.stem_strides, name='stem')(x)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(self.num_filters * 2**stage, strides, norm, conv,
                           name=f'stage{stage + 1}_block{block}')(x)
    # Pre-activation output: the RCN's first block applies norm and ReLU.
    return x


class RPNHead(nn.Module):
  """3x3 convolution, then objectness logits and box deltas per anchor."""
  num_anchors: int
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    small = nn.initializers.normal(0.01)
    x = nn.relu(nn.Conv(self.channels, (3, 3), dtype=self.dtype,
                        kernel_init=small, name='conv')(features))
    logits = nn.Conv(self.num_anchors, (1, 1), dtype=self.dtype,
                     kernel_init=small, name='objectness')(x)
    deltas = nn.Conv(4 * self.num_anchors, (1, 1), dtype=self.dtype,
                     kernel_init=small, name='deltas')(x)
    n = features.shape[0]
    return (jnp.asarray(logits, jnp.float32).reshape(n, -1),
            jnp.asarray(deltas, jnp.float32).reshape(n, -1, 4))


class RCNHead(nn.Module):
  """The last residual stage on ROI crops, then class logits and box deltas."""
  num_blocks: int
  block_cls: ModuleDef
  filters: int
  num_classes: int  # object classes; logits have one more (0 = background)
  norm: ModuleDef
  stage_name: str = 'stage3'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, crops, train: bool, rois_per_image: int):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(rcn_norm(self.norm, rois_per_image),
                             use_running_average=not train, dtype=self.dtype)
    x = crops
    for block in range(self.num_blocks):
      x = self.block_cls(self.filters, 2 if block == 0 else 1, norm, conv,
                         name=f'{self.stage_name}_block{block}')(x)
    x = nn.relu(norm(name='final_norm')(x))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes + 1, dtype=self.dtype,
                      kernel_init=nn.initializers.normal(0.01),
                      name='classifier')(x)
    deltas = nn.Dense(4 * self.num_classes, dtype=self.dtype,
                      kernel_init=nn.initializers.normal(0.001), name='box')(x)
    return (jnp.asarray(logits, jnp.float32),
            jnp.asarray(deltas, jnp.float32).reshape(-1, self.num_classes, 4))


def select_proposals(logits, deltas, anchors, image_size: tuple[int, int],
                     pre_nms_top_k: int, nms_threshold: float,
                     num_proposals: int, min_size: float):
  """One image's proposals (num_proposals, 4) and their validity mask."""
  pre_nms_top_k = min(pre_nms_top_k, logits.shape[0])
  scores, top = jax.lax.top_k(logits, pre_nms_top_k)
  boxes = box_lib.clip(box_lib.decode(deltas[top], anchors[top]), *image_size)
  sizes = boxes[:, 2:] - boxes[:, :2]
  scores = jnp.where(jnp.all(sizes >= min_size, axis=1), scores, -jnp.inf)
  index, valid = box_lib.nms(boxes, scores, nms_threshold, num_proposals)
  return boxes[index], valid


class FasterRCNN(nn.Module):
  """Images (N, H, W, C) -> RPN outputs, ROIs and the RCN's outputs on them.

  With ground truth (``gt_boxes``, ``gt_classes``: training), the RCN runs
  on ``rois_per_image`` ROIs sampled from proposals and objects (rng stream
  'sampling') and the outputs carry their targets; without, on all
  ``num_proposals`` proposals. ``postprocess`` turns outputs into detections.
  """
  backbone: Backbone
  rcn: RCNHead
  num_classes: int
  anchor_sizes: Sequence[float]
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
  rpn_channels: int = 64
  pre_nms_top_k: int = 300
  rpn_nms_threshold: float = 0.7
  num_proposals: int = 64
  rois_per_image: int = 32
  roi_size: int = 8
  min_size: float = 1.0

  def anchors(self, feature_shape) -> jax.Array:
    return box_lib.anchor_grid(feature_shape, self.backbone.stride,
                               self.anchor_sizes, self.aspect_ratios)

  @nn.compact
  def __call__(self, images, train: bool = True, gt_boxes=None,
               gt_classes=None) -> dict[str, jax.Array]:
    features = self.backbone(images, train)
    num_anchors = len(self.anchor_sizes) * len(self.aspect_ratios)
    rpn_logits, rpn_deltas = RPNHead(num_anchors, self.rpn_channels,
                                     name='rpn')(features)
    anchors = self.anchors(features.shape[1:3])
    select = functools.partial(
        select_proposals, anchors=anchors, image_size=images.shape[1:3],
        pre_nms_top_k=self.pre_nms_top_k, nms_threshold=self.rpn_nms_threshold,
        num_proposals=self.num_proposals, min_size=self.min_size)
    # Proposals are constants to the losses, as in approximate joint training.
    rois, roi_valid = jax.vmap(select)(jax.lax.stop_gradient(rpn_logits),
                                       jax.lax.stop_gradient(rpn_deltas))
    outputs = {'rpn_logits': rpn_logits, 'rpn_deltas': rpn_deltas,
               'anchors': anchors}
    if gt_boxes is not None:
      keys = jax.random.split(self.make_rng('sampling'), images.shape[0])
      sample = functools.partial(training_targets.sample_rois,
                                 num_rois=self.rois_per_image)
      rois, outputs['roi_targets'] = jax.vmap(sample)(
          keys, rois, roi_valid, gt_boxes, gt_classes)
      roi_valid = outputs['roi_targets']['weights'] > 0
    align = functools.partial(box_lib.roi_align, output_size=self.roi_size,
                              stride=self.backbone.stride)
    crops = jax.vmap(align)(features, rois)
    n, r = rois.shape[:2]
    logits, deltas = self.rcn(crops.reshape((n * r,) + crops.shape[2:]),
                              train, rois_per_image=r)
    outputs.update(rois=rois, roi_valid=roi_valid,
                   rcn_logits=logits.reshape(n, r, -1),
                   rcn_deltas=deltas.reshape(n, r, self.num_classes, 4))
    return outputs


def postprocess(outputs, image_size: tuple[int, int], score_threshold: float,
                nms_threshold: float, max_detections: int,
                pre_nms_top_k: int = 400) -> dict[str, jax.Array]:
  """Detections per image: boxes (N, D, 4), scores, classes (1..K), valid."""
  def one_image(rois, roi_valid, logits, deltas):
    num_rois, num_classes = deltas.shape[:2]
    probs = jax.nn.softmax(logits)[:, 1:]
    boxes = box_lib.decode(deltas, rois[:, None],
                           training_targets.RCN_BOX_WEIGHTS)
    boxes = box_lib.clip(boxes, *image_size).reshape(-1, 4)
    keep = roi_valid[:, None] & (probs > score_threshold)
    scores = jnp.where(keep, probs, -jnp.inf).reshape(-1)
    classes = jnp.tile(jnp.arange(1, num_classes + 1), num_rois)
    scores, top = jax.lax.top_k(scores, min(pre_nms_top_k, scores.shape[0]))
    boxes, classes = boxes[top], classes[top]
    # Class-aware NMS in one pass: each class's boxes are moved to their own
    # region of the plane, so boxes of different classes never overlap.
    offset = (classes * (max(image_size) + 1.0))[:, None]
    index, valid = box_lib.nms(boxes + offset, scores, nms_threshold,
                               max_detections)
    return {'boxes': boxes[index], 'scores': jnp.where(valid, scores[index], 0),
            'classes': classes[index], 'valid': valid}
  return jax.vmap(one_image)(outputs['rois'], outputs['roi_valid'],
                             outputs['rcn_logits'], outputs['rcn_deltas'])


def small_detector(num_classes: int, norm: ModuleDef, *, width: int = 1,
                   anchor_sizes=(12.0, 18.0, 26.0), aspect_ratios=(1.0,),
                   dtype: Any = jnp.float32, **settings) -> FasterRCNN:
  """The built-in data's detector: a ResNet-8 v2 split as in the paper.

  Base network: 3x3/2 stem and two stages of one basic block (16, 32
  filters; features at stride 4); RCN: the third stage (64 filters,
  stride 2) on 8x8 crops.
  """
  filters = 16 * width
  backbone = Backbone((1, 1), PreActBlock, norm, num_filters=filters,
                      stem='cifar', stem_strides=2, dtype=dtype)
  rcn = RCNHead(1, PreActBlock, 4 * filters, num_classes, norm,
                stage_name='stage3', dtype=dtype)
  return FasterRCNN(backbone, rcn, num_classes, anchor_sizes, aspect_ratios,
                    rpn_channels=2 * filters, **settings)


def resnet50_detector(num_classes: int, norm: ModuleDef, *,
                      anchor_sizes=(32.0, 64.0, 128.0, 256.0, 512.0),
                      aspect_ratios=(0.5, 1.0, 2.0), dtype: Any = jnp.float32,
                      **settings) -> FasterRCNN:
  """The paper's: ResNet-50 v2 stages 1-3 as base (stride 16), stage 4 as RCN.

  14x14 crops; the RCN's first block has stride 2, so it pools to 7x7.
  """
  backbone = Backbone((3, 4, 6), PreActBottleneck, norm, num_filters=64,
                      stem='imagenet', dtype=dtype)
  rcn = RCNHead(3, PreActBottleneck, 512, num_classes, norm,
                stage_name='stage4', dtype=dtype)
  settings = {'rpn_channels': 512, 'num_proposals': 300, 'rois_per_image': 64,
              'roi_size': 14, **settings}
  return FasterRCNN(backbone, rcn, num_classes, anchor_sizes, aspect_ratios,
                    **settings)
