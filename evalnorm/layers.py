"""EvalNorm: BatchNorm whose evaluation blends per-example and moving statistics.

Singh & Shrivastava, "EvalNorm: Estimating Batch Normalization Statistics for
Evaluation" (ICCV 2019). This file holds the equations, as plain functions
that the flax.linen layer below and the NNX layer (``evalnorm.nnx``) share:

* training normalizes each *normalization group* of ``group_size`` consecutive
  examples with its own statistics and updates the moving averages (EMA) with
  the mean of the groups' statistics;
* evaluation normalizes example i with

      mu_hat  = a * mu_i + (1 - a) * mu_E
      var_hat = b * var_i + (1 - b) * var_E + b * (1 - b) * (mu_i - mu_E)^2

  where mu_i, var_i are the example's own statistics and a, b (alpha, beta)
  are per layer;
* the auxiliary loss (paper eqs. 7-9) measures how well that estimate
  reproduces the training normalization; its gradient reaches a and b only.

All statistics are computed once per example and combined per group, so the
training, per-device and evaluation paths share one reduction over the input.
The two kernels that exist only for speed live in ``evalnorm.kernels``.
"""

import warnings
import weakref
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax.linen import Module, compact, dtypes, initializers, module
from jax import lax

from evalnorm import kernels
from evalnorm.kernels import abs_square

Array = jax.Array
Axes = int | Sequence[int]

EVAL_STATS = ('ema', 'evalnorm')


# ---------------------------------------------------------------------------
# The equations. Statistics keep a dimension of size 1 for every reduced axis
# (per example: (N, 1, ..., C); per group: (G, 1, ..., C)), so they broadcast
# against x.


def example_moments(x: Array, feature_axes: tuple[int, ...],
                    use_fast_variance: bool = True) -> tuple[Array, Array]:
  """Per-example mean and biased variance, reducing all but batch and features.

  For an input with no axis besides batch and features (a dense (N, C) input)
  nothing is reduced: mu_i = x_i and var_i = 0. The variance is real for
  complex inputs (E|x - mu|^2), as in flax's BatchNorm.
  """
  spatial_axes = tuple(ax for ax in range(1, x.ndim) if ax not in feature_axes)
  if not spatial_axes:
    return x, jnp.zeros(x.shape, abs_square(x).dtype)
  if use_fast_variance:
    # One pass for both moments; round-off can make E|x|^2 - |E x|^2 slightly
    # negative.
    mean, mean_abs_sq = kernels.mean_and_mean_abs_square(x, spatial_axes)
    return mean, jnp.maximum(0.0, mean_abs_sq - abs_square(mean))
  mean = jnp.mean(x, axis=spatial_axes, keepdims=True)
  var = jnp.mean(abs_square(x - mean), axis=spatial_axes, keepdims=True)
  return mean, var


def group_moments(example_mean: Array, example_var: Array,
                  group_size: int) -> tuple[Array, Array]:
  """Moments of groups of ``group_size`` consecutive examples.

  By the law of total variance the group variance is the mean of the example
  variances plus the variance of the example means, so the input is read once.
  """
  shape = (-1, group_size) + example_mean.shape[1:]
  means = example_mean.reshape(shape)
  variances = example_var.reshape(shape)
  group_mean = jnp.mean(means, axis=1)
  spread = jnp.mean(abs_square(means - group_mean[:, None]), axis=1)
  return group_mean, jnp.mean(variances, axis=1) + spread


def synchronize(group_mean: Array, group_var: Array, axis_name: str,
                axis_index_groups: Any = None) -> tuple[Array, Array]:
  """Moments of matching groups averaged across ``axis_name`` (synchronized BN).

  E[x] and E|x|^2 travel in one collective, as flax's BatchNorm does.
  """
  mean_abs_sq = group_var + abs_square(group_mean)
  if jnp.iscomplexobj(group_mean):
    mean_abs_sq = mean_abs_sq.astype(group_mean.dtype)
  group_mean, mean_abs_sq = lax.pmean(
      jnp.stack([group_mean, mean_abs_sq]), axis_name,
      axis_index_groups=axis_index_groups)
  return group_mean, jnp.maximum(0.0, jnp.real(mean_abs_sq)
                                 - abs_square(group_mean))


def per_example(group_value: Array, group_size: int) -> Array:
  """(G, 1, ..., C) group values repeated for each example: (G * B, 1, ..., C)."""
  repeated = jnp.broadcast_to(group_value[:, None], (
      group_value.shape[0], group_size) + group_value.shape[1:])
  return repeated.reshape((-1,) + group_value.shape[1:])


def ema_update(ema: Array, group_values: Array, momentum: float) -> Array:
  """ema <- m * ema + (1 - m) * avg_g(group value), in ``ema``'s shape."""
  return momentum * ema + (1 - momentum) * jnp.mean(
      group_values, axis=0).reshape(jnp.shape(ema))


def update_ema(ema_mean, ema_var, group_mean, group_var, momentum: float):
  """``ema_update`` of a layer's two moving averages, in place (``.value``)."""
  ema_mean.value = ema_update(ema_mean.value, group_mean, momentum)
  ema_var.value = ema_update(ema_var.value, group_var, momentum)


def _finite(value: Array) -> Array:
  """``value`` clipped to its dtype's range: +-inf become +-max, NaN stays.

  Written with ``maximum`` alone: on XLA:CPU a ``minimum``, a comparison or a
  select between a layer's reductions and its normalization keeps YNNPACK
  from fusing them into the convolutions around them, and evaluation then
  reads every activation twice more.
  """
  if jnp.iscomplexobj(value):
    return lax.complex(_finite(lax.real(value)), _finite(lax.imag(value)))
  big = jnp.asarray(jnp.finfo(value.dtype).max, value.dtype)
  return -jnp.maximum(-jnp.maximum(value, -big), -big)


def _weighted(weight: Array, value: Array) -> Array:
  """weight * value, where a zero weight takes nothing from an infinite value.

  0 * inf is NaN: without this, one overflowing input entry would spread NaN
  over its whole example-channel even with alpha = beta = 0 (plain EMA).
  Finite values are multiplied unchanged.
  """
  return weight * _finite(value)


def blend_statistics(alpha: Array, beta: Array, example_mean: Array,
                     example_var: Array, ema_mean: Array,
                     ema_var: Array) -> tuple[Array, Array]:
  """The EvalNorm estimate (mu_hat, var_hat) of the module docstring."""
  mean = _weighted(alpha, example_mean) + (1 - alpha) * ema_mean
  var = (_weighted(beta, example_var) + (1 - beta) * ema_var
         + _weighted(beta * (1 - beta), abs_square(example_mean - ema_mean)))
  return mean, var


def normalize(x: Array, mean: Array, var: Array, scale: Array | None,
              bias: Array | None, epsilon: float) -> Array:
  """(x - mean) * (rsqrt(var + eps) * scale) + bias, in flax's operation order.

  The same order (scale folded into the multiplier) keeps ``'ema'``
  evaluation bit-identical to ``nn.BatchNorm``'s.
  """
  y = x - mean
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * scale
  y = y * mul
  if bias is not None:
    y = y + bias
  return y


def normalize_groups(x: Array, group_mean: Array, group_var: Array,
                     scale: Array | None, bias: Array | None,
                     epsilon: float) -> Array:
  """Each group normalized by its own statistics (the training output).

  Group values are repeated per example rather than x reshaped to
  (groups, B, ...), so XLA keeps x's own shape and layout through the
  backward pass.
  """
  group_size = x.shape[0] // group_mean.shape[0]
  mul = lax.rsqrt(group_var + epsilon)
  if scale is not None:
    mul = mul * scale
  y = (x - per_example(group_mean, group_size)) * per_example(mul, group_size)
  if bias is not None:
    y = y + bias
  return y


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


class TrainStatistics(NamedTuple):
  """Per-example (None when not asked for) and per-group moments of one
  training call."""
  example_mean: Array | None
  example_var: Array | None
  group_mean: Array
  group_var: Array


def check_group_size(batch: int, group_size: int | None) -> int:
  """B for a batch of ``batch`` examples (None: the whole batch)."""
  group_size = batch if group_size is None else group_size
  if group_size <= 0 or batch % group_size:
    raise ValueError(f'group_size={group_size} does not divide the batch of '
                     f'{batch} examples on this device')
  return group_size


def batch_moments(x: Array, feature_axes: tuple[int, ...],
                  use_fast_variance: bool = True, axis_name: str | None = None,
                  axis_index_groups: Any = None) -> tuple[Array, Array]:
  """Moments of the whole batch as one group, in flax BatchNorm's arithmetic.

  The same reductions in the same order as ``nn.BatchNorm`` (E[x] and E|x|^2
  over every non-feature axis, one ``pmean`` of both), so that a layer whose
  group is the whole batch trains bit for bit as BatchNorm does. Shapes keep
  a dimension of 1 for each reduced axis: (1, 1, ..., C).
  """
  axes = tuple(ax for ax in range(x.ndim) if ax not in feature_axes)

  def mean(*values):
    means = [jnp.mean(v, axis=axes, keepdims=True) for v in values]
    if axis_name is None:
      return means
    return list(lax.pmean(jnp.stack(means), axis_name,
                          axis_index_groups=axis_index_groups))
  if use_fast_variance:
    mu, mu2 = mean(x, abs_square(x))
    return mu, jnp.maximum(0.0, mu2 - abs_square(mu))
  [mu] = mean(x)
  [var] = mean(abs_square(x - mu))
  return mu, var


def train_statistics(x: Array, feature_axes: tuple[int, ...],
                     group_size: int | None, use_fast_variance: bool = True,
                     axis_name: str | None = None,
                     axis_index_groups: Any = None,
                     per_example: bool = True) -> TrainStatistics:
  """Moments of every group of B (synced over axis_name) and, when
  ``per_example`` (the auxiliary loss needs them), of every example.

  Groups of B < batch reuse the per-example moments (one read of x); one
  group of the whole batch takes BatchNorm's own arithmetic (see
  ``batch_moments``).
  """
  group_size = check_group_size(x.shape[0], group_size)
  if group_size == x.shape[0]:
    group_mean, group_var = batch_moments(x, feature_axes, use_fast_variance,
                                          axis_name, axis_index_groups)
    if not per_example:
      return TrainStatistics(None, None, group_mean, group_var)
    return TrainStatistics(*example_moments(x, feature_axes, use_fast_variance),
                           group_mean, group_var)
  mu_i, var_i = example_moments(x, feature_axes, use_fast_variance)
  group_mean, group_var = group_moments(mu_i, var_i, group_size)
  if axis_name is not None:
    group_mean, group_var = synchronize(group_mean, group_var, axis_name,
                                        axis_index_groups)
  return TrainStatistics(mu_i, var_i, group_mean, group_var)


def layer_auxiliary_loss(x: Array, stats: TrainStatistics, ema_mean: Array,
                         ema_var: Array, alpha: Array, beta: Array,
                         epsilon: float) -> Array:
  """``auxiliary_loss`` of one training call, from its statistics.

  Real inputs take the fused kernel (same value, cheaper gradient); complex
  ones the plain formula.
  """
  sg = lax.stop_gradient
  if jnp.iscomplexobj(x):
    normalized = normalize_groups(x, stats.group_mean, stats.group_var, None,
                                  None, epsilon)
    return auxiliary_loss(x, normalized, stats.example_mean, stats.example_var,
                          ema_mean, ema_var, alpha, beta, epsilon)
  group_size = x.shape[0] // stats.group_mean.shape[0]
  each = lambda v: sg(per_example(v, group_size))
  mean_hat, var_hat = blend_statistics(
      alpha, beta, sg(stats.example_mean), sg(stats.example_var), sg(ema_mean),
      sg(ema_var))
  return kernels.grouped_auxiliary_loss(
      sg(x), sg(stats.example_mean), each(stats.group_mean),
      each(lax.rsqrt(stats.group_var + epsilon)), mean_hat,
      lax.rsqrt(var_hat + epsilon))


def moving_average_auxiliary_loss(x: Array, feature_axes: tuple[int, ...],
                                  ema_mean: Array, ema_var: Array,
                                  alpha: Array, beta: Array, epsilon: float,
                                  use_fast_variance: bool = True) -> Array:
  """``auxiliary_loss`` of a training call that normalizes with the moving
  averages (frozen BN): the estimate against that normalization. alpha =
  beta = 0 reproduces it bit for bit, where the loss and its gradient are 0:
  with no train/evaluation gap there is nothing for alpha/beta to close."""
  example_mean, example_var = example_moments(x, feature_axes,
                                              use_fast_variance)
  normalized = normalize(x, ema_mean, ema_var, None, None, epsilon)
  return auxiliary_loss(x, normalized, example_mean, example_var, ema_mean,
                        ema_var, alpha, beta, epsilon)


def evalnorm_normalize(x: Array, x_stats: Array, feature_axes: tuple[int, ...],
                       alpha: Array, beta: Array, ema_mean: Array,
                       ema_var: Array, scale: Array | None, bias: Array | None,
                       epsilon: float, use_fast_variance: bool = True) -> Array:
  """Each example normalized by its EvalNorm estimate (the evaluation output).

  ``ema_mean``, ``ema_var``, ``scale``, ``bias`` and per-channel alpha/beta
  come in x's broadcast shape; alpha/beta are clipped to [0, 1] here. The
  per-example moments, their blend and the multiplier stay in the reduced
  shape (N, features) and meet x's shape only in the final broadcast: so
  XLA:CPU (YNNPACK) keeps the normalization inside the fusion of the next
  convolution, where statistics carried in x's broadcast shape would cost a
  pass of their own.
  """
  spatial_axes = tuple(ax for ax in range(1, x.ndim) if ax not in feature_axes)
  feature_shape = tuple(x.shape[ax] for ax in feature_axes)
  reduced = lambda v: v.reshape(feature_shape) if jnp.ndim(v) else v
  if spatial_axes:
    # The training pass's one-read moments. Plain means would also fuse into
    # the convolution before (0.93x of BatchNorm's evaluation against about
    # 1.05x under YNNPACK) but cost 1.24x with Eigen kernels, against 0.96x.
    n = x_stats.shape[0]
    mu_i, mean_abs_sq = (m.reshape(n, *feature_shape) for m in
                         kernels.mean_and_mean_abs_square(x_stats, spatial_axes))
    if use_fast_variance:
      # Clipped first, so that an infinite entry gives inf - inf = NaN in
      # neither the variance nor, through it, a weight of 0.
      var_i = jnp.maximum(0.0, _finite(mean_abs_sq) - _finite(abs_square(mu_i)))
    else:
      centered = x_stats - lax.expand_dims(_finite(mu_i), spatial_axes)
      var_i = jnp.mean(abs_square(centered), axis=spatial_axes)
  else:  # a dense (N, C) input: every example is its own statistics
    mu_i, var_i = x_stats, jnp.zeros(x_stats.shape, abs_square(x_stats).dtype)
  mean, var = blend_statistics(
      jnp.clip(reduced(alpha), 0, 1), jnp.clip(reduced(beta), 0, 1), mu_i,
      var_i, reduced(ema_mean), reduced(ema_var))
  mul = lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * reduced(scale)
  full = lambda v: lax.expand_dims(v, spatial_axes)
  y = (x - full(mean)) * full(mul)
  if bias is not None:
    y = y + bias
  return y


# ---------------------------------------------------------------------------
# Shapes and dtypes shared by the two modules.


def canonical_axes(ndim: int, axes: Axes) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(sorted({ax % ndim for ax in axes}))


def batched_feature_axes(ndim: int, axis: Axes) -> tuple[bool, tuple[int, ...]]:
  """(has a batch axis, feature axes of the batched input).

  An input whose every axis is a feature axis (e.g. (C,) inside a per-example
  ``nn.vmap``) is one example: the layers give it a batch axis of 1.
  """
  feature_axes = canonical_axes(ndim, axis)
  if len(feature_axes) == ndim:
    return False, tuple(ax + 1 for ax in feature_axes)
  if 0 in feature_axes:
    raise ValueError(f'axis={axis} includes axis 0, which EvalNorm takes as '
                     'the batch axis (groups of B examples are cut along it)')
  return True, feature_axes


def check_unbatched_group_size(shape: tuple[int, ...],
                               group_size: int | None) -> None:
  if group_size not in (None, 1):
    raise ValueError(
        f'group_size={group_size} cannot apply to an input of shape {shape}: '
        'it has no batch axis (every axis is a feature axis), so each call '
        'sees one example; use group_size=None and group examples with '
        'axis_name (and axis_index_groups)')


def check_call(mask: Array | None, eval_stats: str) -> None:
  if mask is not None:
    raise NotImplementedError(
        'EvalNorm does not support mask: per-group and per-example '
        'statistics would need masked counts. Drop masked examples instead.')
  if eval_stats not in EVAL_STATS:
    raise ValueError(f'eval_stats={eval_stats!r} is not one of {EVAL_STATS}')


def statistics_input(x: Array, dtype: Any, force_float32_reductions: bool):
  """x in the dtype statistics are computed in (at least float32 by default)."""
  dtype = dtype or jnp.result_type(x)
  if force_float32_reductions:
    dtype = jnp.promote_types(dtype, jnp.float32)
  return jnp.asarray(x, dtype)


def broadcast_shape(x_shape, feature_axes) -> tuple[int, ...]:
  """Shape that broadcasts a feature-shaped vector against x."""
  return tuple(n if ax in feature_axes else 1 for ax, n in enumerate(x_shape))


# ---------------------------------------------------------------------------
# flax.linen layer.


class EvalNorm(Module):
  """BatchNorm with normalization groups and EvalNorm evaluation.

  Attributes are those of ``flax.linen.BatchNorm`` (same meaning and defaults)
  plus:
    group_size: normalization batch B. The leading (batch) axis is cut into
      consecutive groups of B examples, each normalized with its own
      statistics. None: the whole batch on this device is one group. An input
      whose every axis is a feature axis is one example (groups then come
      from ``axis_name``), and takes only None or 1.
    eval_stats: statistics used when ``use_running_average`` is true: 'ema'
      (exactly ``nn.BatchNorm``) or 'evalnorm' (the blend above).
    per_channel: alpha and beta of shape (C,) instead of scalars.
    alpha_init, beta_init: initial alpha and beta in [0, 1]. The default 0
      makes an unestimated layer evaluate exactly like BatchNorm.
    freeze_batch_stats: training calls normalize each group by its own
      statistics but leave the moving averages as they are, so ``batch_stats``
      may be immutable (offline estimation, frozen-statistics fine-tuning).
      Otherwise a training call with immutable ``batch_stats`` is flax's
      error, as with ``nn.BatchNorm``.
    train_with_moving_averages: training calls normalize with the moving
      averages, exactly as ``'ema'`` evaluation does, and leave them as they
      are: the normalization of detection's frozen BN (torchvision's
      ``FrozenBatchNorm2d``, the TF Object Detection API's
      ``batch_norm_trainable: false``). Its auxiliary loss measures the
      estimate against that normalization, which alpha = beta = 0
      reproduces exactly. Scale and bias stay parameters: keeping them fixed
      is the optimizer's part (``config.frozen_bn`` does both).

  The auxiliary loss is sown into ``aux_loss`` (one scalar per layer,
  replaced at each call) when the caller makes that collection mutable in a
  training call and ``eval_stats='evalnorm'``.
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
  freeze_batch_stats: bool = False
  train_with_moving_averages: bool = False

  @compact
  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    """Normalizes ``x`` (batch axis first); see the class docstring."""
    check_call(mask, self.eval_stats)
    use_running_average = module.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    batched, feature_axes = batched_feature_axes(x.ndim, self.axis)
    if not batched:
      check_unbatched_group_size(x.shape, self.group_size)
    xb = x if batched else x[None]
    feature_shape = tuple(xb.shape[ax] for ax in feature_axes)
    shape = broadcast_shape(xb.shape, feature_axes)
    stats_dtype = (jnp.float32 if self.force_float32_reductions
                   else self.param_dtype)
    ema_mean = self.variable('batch_stats', 'mean', jnp.zeros, feature_shape,
                             stats_dtype)
    ema_var = self.variable('batch_stats', 'var', jnp.ones, feature_shape,
                            stats_dtype)
    alpha, beta = _alpha_beta(self, feature_shape)
    scale, bias = _affine_params(self, feature_shape)
    affine = [None if p is None else p.reshape(shape) for p in (scale, bias)]
    ab_shape = shape if self.per_channel else ()
    estimable = alpha is not None
    if not estimable:  # a program that carries no evalnorm collection
      alpha, beta = (jnp.full((), v, jnp.float32)
                     for v in (self.alpha_init, self.beta_init))
    alpha, beta = alpha.reshape(ab_shape), beta.reshape(ab_shape)
    x_stats = statistics_input(xb, self.dtype, self.force_float32_reductions)

    initializing = self.is_initializing()
    sow_loss = (not use_running_average and self.eval_stats == 'evalnorm'
                and estimable and not initializing
                and self.is_mutable_collection('aux_loss'))
    if use_running_average or self.train_with_moving_averages:
      mean_e, var_e = (_stored(v.value, self).reshape(shape)
                       for v in (ema_mean, ema_var))
      if sow_loss:  # training with frozen BN
        _sow_aux_loss(self, moving_average_auxiliary_loss(
            x_stats, feature_axes, mean_e, var_e, jnp.clip(alpha, 0, 1),
            jnp.clip(beta, 0, 1), self.epsilon, self.use_fast_variance))
      if use_running_average and self.eval_stats == 'evalnorm':
        y = evalnorm_normalize(xb, x_stats, feature_axes, alpha, beta, mean_e,
                               var_e, *affine, self.epsilon,
                               self.use_fast_variance)
      else:
        y = normalize(xb, mean_e, var_e, *affine, self.epsilon)
    else:
      stats = train_statistics(
          x_stats, feature_axes, self.group_size, self.use_fast_variance,
          None if initializing else self.axis_name, self.axis_index_groups,
          per_example=sow_loss)
      y = normalize_groups(xb, stats.group_mean, stats.group_var, *affine,
                           self.epsilon)
      if sow_loss:
        _sow_aux_loss(self, layer_auxiliary_loss(
            x_stats, stats, ema_mean.value.reshape(shape),
            ema_var.value.reshape(shape), jnp.clip(alpha, 0, 1),
            jnp.clip(beta, 0, 1), self.epsilon))
      if not (initializing or self.freeze_batch_stats):
        # Raises flax's error when batch_stats is immutable, as BatchNorm does.
        update_ema(ema_mean, ema_var, stats.group_mean, stats.group_var,
                   self.momentum)
    y = jnp.asarray(y, dtypes.canonicalize_dtype(
        *[x] + [p for p in (scale, bias) if p is not None], dtype=self.dtype))
    return y if batched else y[0]


# Module-level helpers rather than methods: flax wraps every method of a
# Module, and tabulate would list these as sub-modules.


def _sow_aux_loss(mdl: EvalNorm, loss: Array) -> None:
  # Replaced, not appended: a loop that merges the returned collection back
  # into its variables must not accumulate one loss per step.
  mdl.sow('aux_loss', 'loss', loss, init_fn=lambda: jnp.zeros(()),
          reduce_fn=lambda _, new: new)


def _stored(value: Array, mdl: EvalNorm) -> Array:
  """A stored statistic as flax's BatchNorm reads it for evaluation."""
  if mdl.force_float32_reductions:
    return value
  return jnp.asarray(value, mdl.param_dtype)


def _alpha_beta(mdl: EvalNorm, feature_shape):
  """The layer's (alpha, beta) values, or (None, None) when the caller's
  variables hold no ``evalnorm`` collection at all.

  A program written for ``nn.BatchNorm`` carries only ``params`` and
  ``batch_stats``: the layer then evaluates with alpha_init/beta_init (0:
  exactly BatchNorm) and warns once. A collection that holds other layers'
  alpha/beta but not this one's is an error: the variables belong to
  another model.
  """
  names = ('alpha', 'beta')
  if (mdl.is_mutable_collection('evalnorm')
      or all(mdl.has_variable('evalnorm', name) for name in names)):
    shape = feature_shape if mdl.per_channel else ()
    return tuple(
        mdl.variable('evalnorm', name, jnp.full, shape, init, jnp.float32).value
        for name, init in zip(names, (mdl.alpha_init, mdl.beta_init)))
  if not mdl.scope.is_collection_empty('evalnorm'):
    raise ValueError(
        f'EvalNorm layer {mdl.scope.path_text!r} has no alpha/beta in the '
        "'evalnorm' collection, which holds other layers' alpha/beta: these "
        'variables belong to another model (rebuild them with '
        'evalnorm.batchnorm_to_evalnorm(variables, template=...))')
  _warn_no_alpha_beta(mdl)
  return None, None


# The root scopes (one per traced init/apply) already warned about.
_WARNED_SCOPES = weakref.WeakSet()


def _warn_no_alpha_beta(mdl: EvalNorm) -> None:
  """Warns once per traced call of the model, naming its first such layer
  (a compiled step traces once, so this is not once per step)."""
  root = mdl.scope.root
  if root in _WARNED_SCOPES:
    return
  _WARNED_SCOPES.add(root)
  same = ' (as nn.BatchNorm does)' if (mdl.alpha_init, mdl.beta_init) == (
      0.0, 0.0) else ''
  warnings.warn(
      f'EvalNorm layer {mdl.scope.path_text!r} (and every other EvalNorm layer '
      "called without one) has no 'evalnorm' collection, so it evaluates "
      f'with its moving averages and alpha_init={mdl.alpha_init}, '
      f'beta_init={mdl.beta_init}{same}. To evaluate with EvalNorm, carry '
      "the 'evalnorm' collection that init returns along with 'params' and "
      "'batch_stats', or estimate it for trained variables with "
      'evalnorm.calibrate.', stacklevel=2)


def _affine_params(mdl: EvalNorm, feature_shape):
  scale = bias = None
  if mdl.use_scale:
    scale = mdl.param('scale', mdl.scale_init, feature_shape, mdl.param_dtype)
  if mdl.use_bias:
    bias = mdl.param('bias', mdl.bias_init, feature_shape, mdl.param_dtype)
  if not mdl.force_float32_reductions:
    scale = None if scale is None else jnp.asarray(scale, mdl.param_dtype)
    bias = None if bias is None else jnp.asarray(bias, mdl.param_dtype)
  return scale, bias
