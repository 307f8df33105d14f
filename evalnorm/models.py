"""Pre-activation ResNets (ResNet v2, He et al. 2016) with an injected norm layer.

The norm layer is a module attribute (``norm: ModuleDef``), bound once in
``ResNetV2.__call__`` with ``use_running_average=not train``, so EvalNorm,
flax's BatchNorm, Batch Renorm and GroupNorm all plug into the same slot. Every
norm layer gets an explicit name (``norm1``, ``norm2``, ...) so alpha/beta
paths in logs and ``eval.json`` read like ``stage1_block0/norm2``.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


ModuleDef = Any

# He-normal (fan_out) as in the original ResNets.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class PreActBlock(nn.Module):
  """Two 3x3 convolutions, each preceded by norm and ReLU (CIFAR ResNet v2)."""
  filters: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    preact = nn.relu(self.norm(name='norm1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.filters:
      # Projection shares the pre-activation, as in the v2 paper.
      shortcut = self.conv(self.filters, (1, 1), self.strides,
                           name='projection')(preact)
    y = self.conv(self.filters, (3, 3), self.strides, name='conv1')(preact)
    y = nn.relu(self.norm(name='norm2')(y))
    y = self.conv(self.filters, (3, 3), name='conv2')(y)
    return y + shortcut


class PreActBottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (4x filters) with pre-activation (ResNet-50 v2)."""
  filters: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    out_filters = 4 * self.filters
    preact = nn.relu(self.norm(name='norm1')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_filters:
      shortcut = self.conv(out_filters, (1, 1), self.strides,
                           name='projection')(preact)
    y = self.conv(self.filters, (1, 1), name='conv1')(preact)
    y = nn.relu(self.norm(name='norm2')(y))
    y = self.conv(self.filters, (3, 3), self.strides, name='conv2')(y)
    y = nn.relu(self.norm(name='norm3')(y))
    y = self.conv(out_filters, (1, 1), name='conv3')(y)
    return y + shortcut


class ResNetV2(nn.Module):
  """Pre-activation ResNet; stage i has ``num_filters * 2**i`` filters.

  stem: 'cifar' (one 3x3 convolution with ``stem_strides``) or 'imagenet'
  (7x7/2 convolution and 3x3/2 max pooling).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  norm: ModuleDef
  num_filters: int = 16
  stem: str = 'cifar'
  stem_strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(self.norm, use_running_average=not train,
                             dtype=self.dtype)
    x = self._stem(conv, x)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(self.num_filters * 2**stage, strides, norm, conv,
                           name=f'stage{stage + 1}_block{block}')(x)
    # Pre-activation nets end with the norm + ReLU the last block did not do.
    x = nn.relu(norm(name='final_norm')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return jnp.asarray(x, jnp.float32)

  def _stem(self, conv: Callable, x):
    if self.stem == 'cifar':
      return conv(self.num_filters, (3, 3), self.stem_strides, name='stem')(x)
    if self.stem == 'imagenet':
      x = conv(self.num_filters, (7, 7), 2, name='stem')(x)
      return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    raise ValueError(f"stem={self.stem!r} is not one of ('cifar', 'imagenet')")


CIFAR_DEPTHS = (8, 20, 56, 110, 254)
CIFAR_WIDTHS = (1, 2, 4, 8)


def cifar_resnet_v2(depth: int, width: int, num_classes: int, norm: ModuleDef,
                    stem_strides: int = 1, dtype: Any = jnp.float32) -> ResNetV2:
  """ResNet-{depth} v2 for 32x32 inputs: 3 stages of (depth-2)/6 basic blocks.

  ``width`` multiplies the 16/32/64 filters (the paper's x1/x2/x4/x8). Depth
  8 (one block a stage) is the small model of the built-in digits config.
  """
  if (depth - 2) % 6 or depth < 8:
    raise ValueError(f'depth={depth} is not 6n+2 with n >= 1 '
                     f'(the paper uses {CIFAR_DEPTHS[1:]})')
  blocks = (depth - 2) // 6
  return ResNetV2(stage_sizes=(blocks,) * 3, block_cls=PreActBlock,
                  num_classes=num_classes, norm=norm, num_filters=16 * width,
                  stem='cifar', stem_strides=stem_strides, dtype=dtype)


def resnet50_v2(num_classes: int, norm: ModuleDef,
                dtype: Any = jnp.float32) -> ResNetV2:
  """ResNet-50 v2 for ImageNet: bottleneck stages of 3, 4, 6, 3 blocks."""
  return ResNetV2(stage_sizes=(3, 4, 6, 3), block_cls=PreActBottleneck,
                  num_classes=num_classes, norm=norm, num_filters=64,
                  stem='imagenet', dtype=dtype)
