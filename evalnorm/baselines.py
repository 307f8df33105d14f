"""The paper's baselines, shaped to fit the models' norm slot.

* ``BatchRenorm`` (Ioffe, 2017): training normalizes each group of B with its
  own statistics, then corrects towards the moving averages with
  r = sigma_B / sigma_E and d = (mu_B - mu_E) / sigma_E, clipped and behind a
  stop-gradient; evaluation uses the moving averages.
* ``GroupNormSlot``: flax's ``nn.GroupNorm`` accepting (and ignoring) the
  BatchNorm arguments the models pass, since it has no batch statistics.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from evalnorm.layers import (example_moments, group_moments, per_example,
                             update_ema)


def renorm_clips(num_updates, rmax: float, dmax: float, warmup_steps: int):
  """r and d clip limits ramped linearly from (1, 0) to (rmax, dmax).

  Starting at r_max = 1, d_max = 0 makes early training plain BatchNorm, while
  the moving averages are still far from the batch statistics.
  """
  progress = jnp.minimum(1.0, num_updates / max(warmup_steps, 1))
  return 1.0 + (rmax - 1.0) * progress, dmax * progress


class BatchRenorm(nn.Module):
  """Batch Renormalization with normalization groups of ``group_size``."""
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  group_size: int | None = None
  rmax: float = 2.0
  dmax: float = 1.0
  warmup_steps: int = 5000

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = x.shape[-1]
    ema_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,))
    ema_var = self.variable('batch_stats', 'var', jnp.ones, (features,))
    # Counts EMA updates, to ramp the clips; lives with the statistics so it
    # is checkpointed and averaged across replicas with them.
    num_updates = self.variable('batch_stats', 'num_updates',
                                lambda: jnp.zeros((), jnp.float32))
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    x32 = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    if use_running_average:
      y = (x32 - ema_mean.value) * lax.rsqrt(ema_var.value + self.epsilon)
    else:
      y, group_mean, group_var = self._renormalize(
          x32, ema_mean.value, ema_var.value, num_updates.value)
      if self.is_mutable_collection('batch_stats') and not self.is_initializing():
        update_ema(ema_mean, ema_var, group_mean, group_var, self.momentum)
        num_updates.value = num_updates.value + 1
    y = y * scale + bias
    return jnp.asarray(y, self.dtype or jnp.result_type(x, scale))

  def _renormalize(self, x32, mean_e, var_e, num_updates):
    batch = x32.shape[0]
    group_size = batch if self.group_size is None else self.group_size
    if batch % group_size:
      raise ValueError(f'group_size={group_size} does not divide the batch of '
                       f'{batch} examples on this device')
    mu_i, var_i = example_moments(x32, (x32.ndim - 1,), use_fast_variance=True)
    group_mean, group_var = group_moments(mu_i, var_i, group_size)
    rmax, dmax = renorm_clips(num_updates, self.rmax, self.dmax,
                              self.warmup_steps)
    sigma_b = jnp.sqrt(group_var + self.epsilon)
    sigma_e = jnp.sqrt(var_e + self.epsilon)
    # r and d are constants for backprop: gradients flow as in BatchNorm.
    r = lax.stop_gradient(jnp.clip(sigma_b / sigma_e, 1.0 / rmax, rmax))
    d = lax.stop_gradient(jnp.clip((group_mean - mean_e) / sigma_e, -dmax, dmax))
    # Per-example copies of the group values, as EvalNorm's training pass.
    each = lambda g: per_example(g, group_size)
    normalized = (x32 - each(group_mean)) / each(sigma_b)
    y = normalized * each(r) + each(d)
    return y, group_mean, group_var


def groupnorm_groups(channels: int, max_groups: int) -> int:
  """The most groups <= max_groups that divide ``channels`` (32 when possible)."""
  return max(g for g in range(1, min(max_groups, channels) + 1)
             if channels % g == 0)


class GroupNormSlot(nn.Module):
  """``nn.GroupNorm`` in the norm slot: BatchNorm-only arguments are ignored."""
  num_groups: int = 32
  epsilon: float = 1e-5
  dtype: Any = None
  use_running_average: bool | None = None  # Accepted for the slot; unused.

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    groups = groupnorm_groups(x.shape[-1], self.num_groups)
    return nn.GroupNorm(num_groups=groups, epsilon=self.epsilon,
                        dtype=self.dtype, name='group_norm')(x)

