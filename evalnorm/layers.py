"""EvalNorm: BatchNorm whose evaluation blends per-example and moving statistics.

Singh & Shrivastava, "EvalNorm: Estimating Batch Normalization Statistics for
Evaluation" (ICCV 2019). The module is a drop-in for ``flax.linen.BatchNorm``:

* training normalizes each *normalization group* of ``group_size`` consecutive
  examples with its own statistics (``group_size=None``: the whole batch, exactly
  ``nn.BatchNorm``) and updates the same ``batch_stats`` EMA;
* evaluation with ``eval_stats='evalnorm'`` normalizes example i with

      mu_hat  = a * mu_i + (1 - a) * mu_E
      var_hat = b * var_i + (1 - b) * var_E + b * (1 - b) * (mu_i - mu_E)^2

  where mu_i, var_i are the example's own statistics and a, b live in the
  ``evalnorm`` collection;
* when the caller makes ``aux_loss`` mutable in training, the layer sows the
  paper's auxiliary loss (eqs. 7-9), whose gradient reaches alpha and beta only.

All statistics are computed once per example and combined per group, so the
per-group, per-device and evaluation paths share one reduction over the input.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax.linen import dtypes, initializers, module
from flax.linen import Module, compact
from jax import lax

Array = jax.Array
Axes = int | Sequence[int]

EVAL_STATS = ('ema', 'evalnorm')


def _canonical_axes(ndim: int, axes: Axes) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted({ax % ndim for ax in axes}))


def example_moments(x: Array, feature_axes: tuple[int, ...],
                    use_fast_variance: bool) -> tuple[Array, Array]:
  """Per-example mean and biased variance, reducing all but batch and features.

  Returned with kept dimensions (shape (N, 1, ..., C)) so they broadcast
  against ``x``. For a dense (N, C) input nothing is reduced: mu_i = x_i and
  var_i = 0, as the contract requires.
  """
  spatial_axes = tuple(ax for ax in range(1, x.ndim) if ax not in feature_axes)
  mean = jnp.mean(x, axis=spatial_axes, keepdims=True)
  if use_fast_variance:
    # One fused pass; round-off can make E[x^2] - E[x]^2 slightly negative.
    mean_sq = jnp.mean(jnp.square(x), axis=spatial_axes, keepdims=True)
    var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
  else:
    var = jnp.mean(jnp.square(x - mean), axis=spatial_axes, keepdims=True)
  return mean, var


def group_moments(example_mean: Array, example_var: Array,
                  group_size: int) -> tuple[Array, Array]:
  """Moments of groups of ``group_size`` consecutive examples.

  By the law of total variance the group variance is the mean of the example
  variances plus the variance of the example means, so the input is read once.
  Output shape: (num_groups, 1, ..., C).
  """
  shape = (-1, group_size) + example_mean.shape[1:]
  means = example_mean.reshape(shape)
  variances = example_var.reshape(shape)
  group_mean = jnp.mean(means, axis=1)
  spread = jnp.mean(jnp.square(means - group_mean[:, None]), axis=1)
  return group_mean, jnp.mean(variances, axis=1) + spread


def update_ema(ema_mean, ema_var, group_mean, group_var, momentum: float):
  """mean <- m*mean + (1-m)*avg_g(mu_g), and the same for var (in place)."""
  shape = ema_mean.value.shape
  ema_mean.value = momentum * ema_mean.value + (1 - momentum) * jnp.mean(
      group_mean, axis=0).reshape(shape)
  ema_var.value = momentum * ema_var.value + (1 - momentum) * jnp.mean(
      group_var, axis=0).reshape(shape)


def blend_statistics(alpha: Array, beta: Array, example_mean: Array,
                     example_var: Array, ema_mean: Array,
                     ema_var: Array) -> tuple[Array, Array]:
  """The EvalNorm estimate (mu_hat, var_hat) of DESIGN.md."""
  mean = alpha * example_mean + (1 - alpha) * ema_mean
  var = (beta * example_var + (1 - beta) * ema_var
         + beta * (1 - beta) * jnp.square(example_mean - ema_mean))
  return mean, var


class EvalNorm(Module):
  """BatchNorm with normalization groups and EvalNorm evaluation.

  Attributes are those of ``flax.linen.BatchNorm`` (same meaning and defaults)
  plus:
    group_size: normalization batch B. The leading axis is cut into
      consecutive groups of B examples, each normalized with its own
      statistics. None: the whole batch on this device is one group.
    eval_stats: statistics used when ``use_running_average`` is true: 'ema'
      (exactly ``nn.BatchNorm``) or 'evalnorm' (the blend above).
    per_channel: alpha and beta of shape (C,) instead of scalars.
    alpha_init, beta_init: initial alpha and beta in [0, 1]. The default 0
      makes an unestimated layer evaluate exactly like BatchNorm.
  """
  use_running_average: bool | None = None
  axis: Axes = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable[..., Array] = initializers.zeros
  scale_init: Callable[..., Array] = initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = True
  force_float32_reductions: bool = True
  group_size: int | None = None
  eval_stats: str = 'evalnorm'
  per_channel: bool = False
  alpha_init: float = 0.0
  beta_init: float = 0.0

  @compact
  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    """Normalizes ``x`` (batch axis first); see the class docstring."""
    if mask is not None:
      raise NotImplementedError(
          'EvalNorm does not support mask: per-group and per-example '
          'statistics would need masked counts. Drop masked examples instead.')
    if self.eval_stats not in EVAL_STATS:
      raise ValueError(
          f'eval_stats={self.eval_stats!r} is not one of {EVAL_STATS}')
    use_running_average = module.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    feature_axes = _canonical_axes(x.ndim, self.axis)
    if 0 in feature_axes:
      raise ValueError('EvalNorm normalizes over the batch axis 0; '
                       f'axis={self.axis} may not include it')
    feature_shape = tuple(x.shape[ax] for ax in feature_axes)
    # Shape that broadcasts a feature-shaped vector against x.
    broadcast_shape = tuple(
        x.shape[ax] if ax in feature_axes else 1 for ax in range(x.ndim))

    stats_dtype = (jnp.float32 if self.force_float32_reductions
                   else self.param_dtype)
    ema_mean = self.variable('batch_stats', 'mean',
                             lambda: jnp.zeros(feature_shape, stats_dtype))
    ema_var = self.variable('batch_stats', 'var',
                            lambda: jnp.ones(feature_shape, stats_dtype))
    ab_shape = feature_shape if self.per_channel else ()
    alpha = self.variable('evalnorm', 'alpha',
                          lambda: jnp.full(ab_shape, self.alpha_init, jnp.float32))
    beta = self.variable('evalnorm', 'beta',
                         lambda: jnp.full(ab_shape, self.beta_init, jnp.float32))
    scale, bias = self._affine_params(feature_shape)

    x32 = self._promote(x)
    mean_e = ema_mean.value.reshape(broadcast_shape)
    var_e = ema_var.value.reshape(broadcast_shape)
    if use_running_average:
      if self.eval_stats == 'ema':
        mean, var = mean_e, var_e
      else:
        a = jnp.clip(alpha.value, 0, 1).reshape(self._ab_broadcast(broadcast_shape))
        b = jnp.clip(beta.value, 0, 1).reshape(self._ab_broadcast(broadcast_shape))
        mu_i, var_i = example_moments(x32, feature_axes, self.use_fast_variance)
        mean, var = blend_statistics(a, b, mu_i, var_i, mean_e, var_e)
      y = self._normalize(x32, mean, var, scale, bias, broadcast_shape)
      return self._cast_output(y, x, scale, bias)

    y, normalized, mu_i, var_i, group_mean, group_var = self._train_normalize(
        x32, feature_axes, scale, bias, broadcast_shape)
    if self.is_mutable_collection('aux_loss') and not self.is_initializing():
      a = jnp.clip(alpha.value, 0, 1).reshape(self._ab_broadcast(broadcast_shape))
      b = jnp.clip(beta.value, 0, 1).reshape(self._ab_broadcast(broadcast_shape))
      self.sow('aux_loss', 'loss', auxiliary_loss(
          x32, normalized, mu_i, var_i, mean_e, var_e, a, b, self.epsilon))
    # The EMA is left alone when batch_stats is immutable, so that offline
    # estimation can run training-mode passes over a frozen model.
    if self.is_mutable_collection('batch_stats') and not self.is_initializing():
      update_ema(ema_mean, ema_var, group_mean, group_var, self.momentum)
    return self._cast_output(y, x, scale, bias)

  def _train_normalize(self, x32, feature_axes, scale, bias, broadcast_shape):
    """Normalizes each group by its own statistics (synced over axis_name)."""
    batch = x32.shape[0]
    group_size = batch if self.group_size is None else self.group_size
    if group_size <= 0 or batch % group_size:
      raise ValueError(f'group_size={group_size} does not divide the batch of '
                       f'{batch} examples on this device')
    mu_i, var_i = example_moments(x32, feature_axes, self.use_fast_variance)
    group_mean, group_var = group_moments(mu_i, var_i, group_size)
    if self.axis_name is not None and not self.is_initializing():
      # Synchronized BN: average E[x] and E[x^2] of matching groups across
      # devices in one collective, as flax does.
      group_sq = group_var + jnp.square(group_mean)
      group_mean, group_sq = lax.pmean(
          jnp.stack([group_mean, group_sq]), self.axis_name,
          axis_index_groups=self.axis_index_groups)
      group_var = jnp.maximum(0.0, group_sq - jnp.square(group_mean))
    grouped = x32.reshape((-1, group_size) + x32.shape[1:])
    mul = lax.rsqrt(group_var + self.epsilon)[:, None]
    normalized = ((grouped - group_mean[:, None]) * mul).reshape(x32.shape)
    y = normalized
    if scale is not None:
      y = y * scale.reshape(broadcast_shape)
    if bias is not None:
      y = y + bias.reshape(broadcast_shape)
    return y, normalized, mu_i, var_i, group_mean, group_var

  def _normalize(self, x32, mean, var, scale, bias, broadcast_shape):
    # Same operation order as flax's _normalize, so 'ema' matches it exactly.
    y = x32 - mean
    mul = lax.rsqrt(var + self.epsilon)
    if scale is not None:
      mul = mul * scale.reshape(broadcast_shape)
    y = y * mul
    if bias is not None:
      y = y + bias.reshape(broadcast_shape)
    return y

  def _affine_params(self, feature_shape):
    scale = bias = None
    if self.use_scale:
      scale = self.param('scale', self.scale_init, feature_shape,
                         self.param_dtype)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, feature_shape, self.param_dtype)
    if not self.force_float32_reductions:
      scale = None if scale is None else jnp.asarray(scale, self.param_dtype)
      bias = None if bias is None else jnp.asarray(bias, self.param_dtype)
    return scale, bias

  def _ab_broadcast(self, broadcast_shape):
    return broadcast_shape if self.per_channel else ()

  def _promote(self, x):
    """Statistics are at least float32 unless force_float32_reductions=False."""
    dtype = self.dtype or jnp.result_type(x)
    if self.force_float32_reductions:
      dtype = jnp.promote_types(dtype, jnp.float32)
    return jnp.asarray(x, dtype)

  def _cast_output(self, y, x, scale, bias):
    args = [x] + [p for p in (scale, bias) if p is not None]
    return jnp.asarray(y, dtypes.canonicalize_dtype(*args, dtype=self.dtype))


def auxiliary_loss(x, normalized, example_mean, example_var, ema_mean, ema_var,
                   alpha, beta, epsilon):
  """Paper eqs. 7-9: how well the EvalNorm estimate reproduces training.

  Every input except alpha and beta is behind a stop-gradient, so adding this
  loss to any objective changes no gradient but those of alpha and beta.
  ``normalized`` is the training output before the affine transform and
  ``ema_mean``/``ema_var`` are the moving averages before this step's update.
  """
  sg = lax.stop_gradient
  mean_hat, var_hat = blend_statistics(
      alpha, beta, sg(example_mean), sg(example_var), sg(ema_mean), sg(ema_var))
  estimate = (sg(x) - mean_hat) * lax.rsqrt(var_hat + epsilon)
  return jnp.mean(jnp.abs(sg(normalized) - estimate))
