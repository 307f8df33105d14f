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

import functools
import math
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
  if use_fast_variance and spatial_axes:
    # One pass for both moments; round-off can make E[x^2] - E[x]^2 slightly
    # negative.
    mean, mean_sq = _mean_and_mean_square(x, spatial_axes)
    return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))
  mean = jnp.mean(x, axis=spatial_axes, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=spatial_axes, keepdims=True)
  return mean, var


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _mean_and_mean_square(x: Array, spatial_axes: tuple[int, ...]):
  """E[x] and E[x^2] over ``spatial_axes`` (kept), from one read of ``x``."""
  count = math.prod(x.shape[ax] for ax in spatial_axes)
  return spatial_sums((x, jnp.square(x)), spatial_axes, scale=1 / count)


@_mean_and_mean_square.defjvp
def _mean_and_mean_square_jvp(spatial_axes, primals, tangents):
  # The fast primal is a variadic reduction, which JAX cannot differentiate;
  # the tangents are plain means, linear in dx, so reverse mode transposes
  # them into broadcasts as it would for jnp.mean.
  (x,), (dx,) = primals, tangents
  mean = lambda v: jnp.mean(v, axis=spatial_axes, keepdims=True)
  return (_mean_and_mean_square(x, spatial_axes),
          (mean(dx), mean(2 * x * dx)))


# Rows of about this many elements for the CPU reduction (see spatial_sums).
_CPU_ROW_ELEMENTS = 1024


def spatial_sums(operands: tuple[Array, ...], spatial_axes: tuple[int, ...],
                 scale: float = 1.0) -> tuple[Array, ...]:
  """``scale`` times the sums of same-shaped arrays over ``spatial_axes`` (kept).

  On CPU the sums are one variadic reduction, and when the reduced axes come
  right after the batch axis (NHWC) it runs over rows of about
  ``_CPU_ROW_ELEMENTS`` contiguous elements (several positions' channels side
  by side), then adds the few partial rows. XLA:CPU otherwise reduces
  (N, H, W, C) over H, W with C-wide vectors, one reduction per sum: 2-4x
  slower for C = 16-64, which made EvalNorm's evaluation of a CIFAR ResNet-20
  1.15-1.28x flax BatchNorm's (now 1.02-1.07x, benchmarks/cost.py). The
  ``scale`` is applied before the sums are reshaped to kept dimensions: in
  that order XLA:CPU's YNNPACK fusion also took the normalization into the
  next convolution. Other platforms get separate reductions in the array's
  own layout, which their compilers fuse (a reshape could cost a relayout).
  """
  def separate(*arrays):
    return tuple(scale * jnp.sum(a, axis=spatial_axes, keepdims=True)
                 for a in arrays)

  def one_pass(*arrays):
    shape = arrays[0].shape
    kept = tuple(1 if ax in spatial_axes else n for ax, n in enumerate(shape))
    if spatial_axes != tuple(range(1, len(spatial_axes) + 1)):
      return tuple((scale * s).reshape(kept)
                   for s in _variadic_sum(arrays, spatial_axes))
    n = shape[0]
    positions = math.prod(shape[ax] for ax in spatial_axes)
    features = math.prod(shape[len(spatial_axes) + 1:])
    per_row = _largest_divisor_at_most(
        positions, max(1, _CPU_ROW_ELEMENTS // features))
    rows = tuple(a.reshape(n, positions // per_row, per_row * features)
                 for a in arrays)
    partial = _variadic_sum(rows, (1,))
    return tuple(
        (scale * p.reshape(n, per_row, features).sum(axis=1)).reshape(kept)
        for p in partial)

  return lax.platform_dependent(*operands, cpu=one_pass, default=separate)


def _variadic_sum(arrays, axes):
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  return lax.reduce(tuple(arrays), zeros,
                    lambda a, b: tuple(p + q for p, q in zip(a, b)), axes)


def _largest_divisor_at_most(n: int, bound: int) -> int:
  return max(d for d in range(1, min(n, bound) + 1) if n % d == 0)


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


def per_example(group_value: Array, group_size: int) -> Array:
  """(G, 1, ..., C) group values repeated for each example: (G * B, 1, ..., C)."""
  repeated = jnp.broadcast_to(group_value[:, None], (
      group_value.shape[0], group_size) + group_value.shape[1:])
  return repeated.reshape((-1,) + group_value.shape[1:])


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

    y, mu_i, var_i, group_mean, group_var = self._train_normalize(
        x32, feature_axes, scale, bias, broadcast_shape)
    if self.is_mutable_collection('aux_loss') and not self.is_initializing():
      a = jnp.clip(alpha.value, 0, 1).reshape(self._ab_broadcast(broadcast_shape))
      b = jnp.clip(beta.value, 0, 1).reshape(self._ab_broadcast(broadcast_shape))
      self.sow('aux_loss', 'loss', grouped_auxiliary_loss(
          x32, mu_i, var_i, group_mean, group_var, mean_e, var_e, a, b,
          self.epsilon))
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
    # As flax's _normalize, the scale is folded into the per-channel
    # multiplier: then no full-size `normalized` array exists that autodiff
    # would have to keep for the backward pass of `normalized * scale`.
    mul = lax.rsqrt(group_var + self.epsilon)
    if scale is not None:
      mul = mul * scale.reshape(broadcast_shape)
    # Group statistics are repeated per example rather than x reshaped to
    # (groups, B, ...): XLA then keeps x's own shape and layout through the
    # backward pass (measured 3-5% faster train steps on XLA:CPU).
    y = ((x32 - per_example(group_mean, group_size))
         * per_example(mul, group_size))
    if bias is not None:
      y = y + bias.reshape(broadcast_shape)
    return y, mu_i, var_i, group_mean, group_var

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


def grouped_auxiliary_loss(x, example_mean, example_var, group_mean, group_var,
                           ema_mean, ema_var, alpha, beta, epsilon):
  """``auxiliary_loss`` for the layer's training normalization, in one pass.

  ``normalized`` is (x - group_mean) / sqrt(group_var + eps), so the error of
  example i is affine in x - mu_i with per-example slope and offset. The loss
  and its gradient then need only two per-example sums over x
  (``_affine_abs_error``), where autodiff of the plain formula would keep a
  full-size sign array per layer for the backward pass.
  """
  sg = lax.stop_gradient
  group_size = example_mean.shape[0] // group_mean.shape[0]
  target_mean = per_example(group_mean, group_size)
  target_inv_std = per_example(lax.rsqrt(group_var + epsilon), group_size)
  mean_hat, var_hat = blend_statistics(
      alpha, beta, sg(example_mean), sg(example_var), sg(ema_mean), sg(ema_var))
  return _affine_abs_error(sg(x), sg(example_mean), sg(target_mean),
                           sg(target_inv_std), mean_hat,
                           lax.rsqrt(var_hat + epsilon))


def _affine_abs_error_parts(x, center, target_mean, target_inv_std, mean_hat,
                            inv_std):
  """Per-example slope, offset, sum sign(e) and sum sign(e) * (x - center)."""
  xc = x - center
  slope = target_inv_std - inv_std
  offset = (center - target_mean) * target_inv_std - (center - mean_hat) * inv_std
  sign = jnp.sign(xc * slope + offset)
  stat_shape = jnp.shape(center)  # (N, 1, ..., C): kept dims are reduced
  axes = tuple(ax for ax, (n, m) in enumerate(zip(x.shape, stat_shape))
               if m == 1 and n != 1)
  # One variadic reduction in x's own layout. Not spatial_sums' CPU row
  # layout: the per-example slope and offset broadcast inside it made XLA:CPU's
  # loop 1.5x slower than this one (while plain moments gain 3-4x from it).
  sign_sum, sign_xc_sum = _variadic_sum((sign, sign * xc), axes)
  return (slope, offset, sign_sum.reshape(stat_shape),
          sign_xc_sum.reshape(stat_shape))


@jax.custom_vjp
def _affine_abs_error(x, center, target_mean, target_inv_std, mean_hat, inv_std):
  """mean |(x - target_mean) * target_inv_std - (x - mean_hat) * inv_std|.

  Differentiable in mean_hat and inv_std only (the others are stop-gradiented
  by the caller). Since |e| = sign(e) * e and e = (x - center) * slope + offset,
  the mean is sum(slope * S_x + offset * S_1) / size.
  """
  return _affine_abs_error_fwd(x, center, target_mean, target_inv_std,
                               mean_hat, inv_std)[0]


def _affine_abs_error_fwd(x, center, target_mean, target_inv_std, mean_hat,
                          inv_std):
  slope, offset, s1, sx = _affine_abs_error_parts(
      x, center, target_mean, target_inv_std, mean_hat, inv_std)
  value = jnp.sum(slope * sx + offset * s1) / x.size
  return value, (center, mean_hat, inv_std, s1, sx, x.size)


def _affine_abs_error_bwd(residuals, g):
  center, mean_hat, inv_std, s1, sx, size = residuals
  # de/d mean_hat = inv_std and de/d inv_std = -(x - mean_hat), where
  # sum sign(e) * (x - mean_hat) = S_x + (center - mean_hat) * S_1.
  d_mean_hat = (g / size) * s1 * inv_std
  d_inv_std = -(g / size) * (sx + (center - mean_hat) * s1)
  return None, None, None, None, d_mean_hat, d_inv_std


_affine_abs_error.defvjp(_affine_abs_error_fwd, _affine_abs_error_bwd)
