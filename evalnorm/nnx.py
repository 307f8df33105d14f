"""EvalNorm for flax NNX: a drop-in for ``flax.nnx.BatchNorm``.

The same equations as the linen layer (``evalnorm.layers``), in an NNX module:

    norm = evalnorm.nnx.EvalNorm(64, group_size=2, estimate=True, rngs=rngs)

Variables: ``scale``, ``bias`` (``nnx.Param``), ``mean``, ``var``
(``nnx.BatchStat``) as in ``nnx.BatchNorm``, and ``alpha``, ``beta``
(``AlphaBeta``, their own variable type, so an optimizer over ``nnx.Param``
leaves them alone). ``model.train()``/``model.eval()`` switch modes as for
BatchNorm. With ``estimate=True`` a training call records the layer's
auxiliary loss; ``total_aux_loss(model)`` returns their sum and clears them.
"""

import functools
import itertools
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.nnx.nn import dtypes, initializers

from evalnorm import calibration, layers, variables
from evalnorm.variables import one_over_b, rule_of_thumb

__all__ = [
    'AlphaBeta', 'AlphaBetaOptimizer', 'AuxLoss', 'EvalNorm',
    'alpha_beta_by_layer', 'calibrate', 'clip_alpha_beta', 'from_batchnorm',
    'one_over_b', 'rule_of_thumb', 'set_alpha_beta', 'total_aux_loss',
]


class AlphaBeta(nnx.Variable):
  """EvalNorm's blend weights alpha and beta (in [0, 1])."""


class AuxLoss(nnx.Variable):
  """A layer's auxiliary loss from its latest estimating training call."""


class EvalNorm(nnx.Module):
  """``nnx.BatchNorm`` with normalization groups and EvalNorm evaluation.

  Arguments are ``nnx.BatchNorm``'s (same meaning and defaults) plus
  ``group_size`` (B; None: the whole batch), ``eval_stats`` ('evalnorm' or
  'ema', exactly BatchNorm), ``per_channel`` (alpha/beta of shape (C,)),
  ``alpha_init``/``beta_init`` (0: evaluates like BatchNorm until
  estimated), ``estimate`` (training calls record the auxiliary loss) and
  ``freeze_batch_stats`` (training calls leave ``mean``/``var`` alone).
  """

  def __init__(
      self,
      num_features: int,
      *,
      use_running_average: bool | None = False,
      axis: int = -1,
      momentum: float = 0.99,
      epsilon: float = 1e-5,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      use_bias: bool = True,
      use_scale: bool = True,
      bias_init: Callable = initializers.zeros_init(),
      scale_init: Callable = initializers.ones_init(),
      axis_name: str | None = None,
      axis_index_groups: Any = None,
      use_fast_variance: bool = True,
      promote_dtype: Callable = dtypes.promote_dtype,
      group_size: int | None = None,
      eval_stats: str = 'evalnorm',
      per_channel: bool = False,
      alpha_init: float = 0.0,
      beta_init: float = 0.0,
      estimate: bool = False,
      freeze_batch_stats: bool = False,
      rngs: nnx.Rngs,
      bias_metadata: Mapping[str, Any] = MappingProxyType({}),
      scale_metadata: Mapping[str, Any] = MappingProxyType({}),
  ):
    layers.check_call(None, eval_stats)
    feature_shape = (num_features,)
    self.mean = nnx.BatchStat(jnp.zeros(feature_shape, jnp.float32))
    self.var = nnx.BatchStat(jnp.ones(feature_shape, jnp.float32))
    # The same key order as nnx.BatchNorm, so equal rngs give equal params.
    self.scale = (nnx.Param(scale_init(rngs.params(), feature_shape,
                                       param_dtype), **scale_metadata)
                  if use_scale else nnx.data(None))
    self.bias = (nnx.Param(bias_init(rngs.params(), feature_shape,
                                     param_dtype), **bias_metadata)
                 if use_bias else nnx.data(None))
    ab_shape = feature_shape if per_channel else ()
    self.alpha = AlphaBeta(jnp.full(ab_shape, alpha_init, jnp.float32))
    self.beta = AlphaBeta(jnp.full(ab_shape, beta_init, jnp.float32))
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.axis = axis
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.use_bias = use_bias
    self.use_scale = use_scale
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype
    self.group_size = group_size
    self.eval_stats = eval_stats
    self.per_channel = per_channel
    self.estimate = estimate
    self.freeze_batch_stats = freeze_batch_stats

  def __call__(self, x, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None):
    """Normalizes ``x`` (batch axis first), as ``nnx.BatchNorm`` does."""
    layers.check_call(mask, self.eval_stats)
    if use_running_average is None:
      use_running_average = self.use_running_average
    if use_running_average is None:
      raise ValueError('EvalNorm needs use_running_average: pass it to the '
                       'constructor or the call, or use model.train()/eval()')
    batched, feature_axes = layers.batched_feature_axes(x.ndim, self.axis)
    if not batched:
      layers.check_unbatched_group_size(x.shape, self.group_size)
    xb = x if batched else x[None]
    shape = layers.broadcast_shape(xb.shape, feature_axes)
    scale = None if self.scale is None else self.scale[...]
    bias = None if self.bias is None else self.bias[...]
    xb, mean_e, var_e, scale, bias = self.promote_dtype(
        (xb, self.mean[...], self.var[...], scale, bias), dtype=self.dtype)
    affine = [None if p is None else p.reshape(shape) for p in (scale, bias)]
    mean_e, var_e = mean_e.reshape(shape), var_e.reshape(shape)
    ab_shape = shape if self.per_channel else ()
    alpha = jnp.clip(self.alpha[...].reshape(ab_shape), 0, 1)
    beta = jnp.clip(self.beta[...].reshape(ab_shape), 0, 1)
    x_stats = layers.statistics_input(xb, self.dtype, True)
    if use_running_average:
      if self.eval_stats == 'evalnorm':
        y = layers.evalnorm_normalize(xb, x_stats, feature_axes, alpha, beta,
                                      mean_e, var_e, *affine, self.epsilon,
                                      self.use_fast_variance)
      else:
        y = layers.normalize(xb, mean_e, var_e, *affine, self.epsilon)
    else:
      y = self._train(xb, x_stats, feature_axes, affine, mean_e, var_e, alpha,
                      beta)
    y = jnp.asarray(y, dtypes.canonicalize_dtype(
        *[xb] + [p for p in (scale, bias) if p is not None], dtype=self.dtype))
    return y if batched else y[0]

  def _train(self, xb, x_stats, feature_axes, affine, mean_e, var_e, alpha,
             beta):
    estimating = self.estimate and self.eval_stats == 'evalnorm'
    stats = layers.train_statistics(
        x_stats, feature_axes, self.group_size, self.use_fast_variance,
        self.axis_name, self.axis_index_groups, per_example=estimating)
    if estimating:
      self._record(layers.layer_auxiliary_loss(
          x_stats, stats, mean_e, var_e, alpha, beta, self.epsilon))
    if not self.freeze_batch_stats:
      # As nnx.BatchNorm: no gradient flows into the moving averages.
      self.mean[...] = jax.lax.stop_gradient(layers.ema_update(
          self.mean[...], stats.group_mean, self.momentum))
      self.var[...] = jax.lax.stop_gradient(layers.ema_update(
          self.var[...], stats.group_var, self.momentum))
    return layers.normalize_groups(xb, stats.group_mean, stats.group_var,
                                   *affine, self.epsilon)

  def _record(self, loss):
    # Replaced, not accumulated: each call reports its own loss.
    if isinstance(getattr(self, 'aux_loss', None), AuxLoss):
      self.aux_loss[...] = loss
    else:
      self.aux_loss = AuxLoss(loss)


def _evalnorm_layers(model) -> list[EvalNorm]:
  return [node for _, node in nnx.iter_graph(model)
          if isinstance(node, EvalNorm)]


def total_aux_loss(model) -> jax.Array:
  """Sum of every layer's auxiliary loss from the latest call; clears them.

  Only layers with ``estimate=True`` record one, in training calls. The
  gradient of the sum reaches ``AlphaBeta`` variables only.
  """
  losses = nnx.pop(model, AuxLoss)
  return sum((jnp.sum(leaf) for leaf in jax.tree.leaves(losses)),
             jnp.zeros((), jnp.float32))


def clip_alpha_beta(model) -> None:
  """Clips every alpha and beta to [0, 1] (after an optimizer step)."""
  for layer in _evalnorm_layers(model):
    layer.alpha[...] = jnp.clip(layer.alpha[...], 0.0, 1.0)
    layer.beta[...] = jnp.clip(layer.beta[...], 0.0, 1.0)


class AlphaBetaOptimizer(nnx.Optimizer):
  """An optimizer of the model's ``AlphaBeta`` variables that keeps them in [0, 1].

  Default: Adam with learning rate 3e-3, as the training program uses.
  """

  def __init__(self, model, tx: optax.GradientTransformation | None = None):
    super().__init__(model, tx or calibration.alpha_beta_optimizer(),
                     wrt=AlphaBeta)

  def update(self, model, grads, /, **kwargs):
    updates = super().update(model, grads, **kwargs)
    clip_alpha_beta(model)
    return updates


def set_alpha_beta(model, alpha: float, beta: float | None = None) -> None:
  """Sets every layer's alpha (and beta, default alpha) in place; shapes kept."""
  beta = alpha if beta is None else beta
  for value, name in ((alpha, 'alpha'), (beta, 'beta')):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f'{name}={value} must lie in [0, 1]')
  for layer in _evalnorm_layers(model):
    layer.alpha[...] = jnp.full_like(layer.alpha[...], alpha)
    layer.beta[...] = jnp.full_like(layer.beta[...], beta)


def alpha_beta_by_layer(model) -> dict[str, dict[str, Any]]:
  """{'layer/path': {'alpha': float or list, 'beta': ...}} for logs and JSON."""
  return variables.alpha_beta_by_layer(
      nnx.to_pure_dict(nnx.state(model, AlphaBeta)))


def _batchnorm_attributes(bn: nnx.BatchNorm) -> dict:
  names = ('use_running_average', 'axis', 'momentum', 'epsilon', 'dtype',
           'param_dtype', 'use_bias', 'use_scale', 'axis_name',
           'axis_index_groups', 'use_fast_variance', 'promote_dtype')
  return {name: getattr(bn, name) for name in names}


def _converted(bn: nnx.BatchNorm, **evalnorm_kwargs) -> EvalNorm:
  layer = EvalNorm(bn.num_features, **_batchnorm_attributes(bn),
                   **evalnorm_kwargs, rngs=nnx.Rngs(0))
  layer.mean[...], layer.var[...] = bn.mean[...], bn.var[...]
  layer.scale, layer.bias = bn.scale, bn.bias
  return layer


def from_batchnorm(model, *, group_size: int | None = None,
                   per_channel: bool = False, alpha: float = 0.0,
                   beta: float | None = None, **evalnorm_kwargs):
  """Replaces every ``nnx.BatchNorm`` of ``model`` by an EvalNorm, in place.

  Each EvalNorm takes over its BatchNorm's attributes and variables (the
  same ``scale``/``bias`` Params, the statistics' values), so the model
  trains and evaluates as before until alpha/beta move from ``alpha``/``beta``
  (default 0). Returns ``model``.
  """
  beta = alpha if beta is None else beta
  targets = [(path, node) for path, node in nnx.iter_graph(model)
             if isinstance(node, nnx.BatchNorm)]
  if not targets:
    raise ValueError(f'{type(model).__name__} has no nnx.BatchNorm layer')
  for path, bn in targets:
    if not path:
      raise ValueError('from_batchnorm converts the BatchNorm layers of a '
                       'model; build evalnorm.nnx.EvalNorm directly instead')
    parent = functools.reduce(_child, path[:-1], model)
    layer = _converted(bn, group_size=group_size, per_channel=per_channel,
                       alpha_init=alpha, beta_init=beta, **evalnorm_kwargs)
    if _is_attribute(parent, path[-1]):
      setattr(parent, path[-1], layer)
    else:
      parent[path[-1]] = layer
  return model


def _is_attribute(node, key) -> bool:
  """Modules hold children as attributes; lists (nnx.List too) and dicts by key."""
  return isinstance(node, nnx.Module) and isinstance(key, str)


def _child(node, key):
  return getattr(node, key) if _is_attribute(node, key) else node[key]


def calibrate(model, batches: Iterable[Any], group_size: int, *,
              num_steps: int | None = None,
              tx: optax.GradientTransformation | None = None,
              log_every_steps: int = 100) -> dict:
  """Estimates alpha/beta of ``model`` offline, in place; returns them by layer.

  Every batch (an array, batch axis first, from any pipeline) is cut into
  groups of ``group_size`` examples; the model runs ``model(x)`` in training
  mode on one group at a time, its weights and statistics frozen, and the
  summed auxiliary loss is minimized over the ``AlphaBeta`` variables only.
  """
  tx = tx or calibration.alpha_beta_optimizer()
  graphdef, alpha_beta, rest = nnx.split(model, AlphaBeta, ...)
  opt_state = tx.init(alpha_beta)
  step_fn = jax.jit(functools.partial(_calibration_step, graphdef=graphdef,
                                      tx=tx, group_size=group_size))
  step = 0
  for step, batch in enumerate(itertools.islice(batches, num_steps), start=1):
    calibration.check_batch(np.shape(batch)[0], group_size)
    alpha_beta, opt_state, loss = step_fn(alpha_beta, opt_state, rest,
                                          jnp.asarray(batch))
    if step % log_every_steps == 0:
      calibration.log_progress(step, float(loss), nnx.to_pure_dict(alpha_beta))
  if step == 0:
    raise ValueError('calibrate received no batches')
  nnx.update(model, alpha_beta)
  return alpha_beta_by_layer(model)


def _calibration_step(alpha_beta, opt_state, rest, batch, graphdef, tx,
                      group_size):
  groups = batch.reshape((-1, group_size) + batch.shape[1:])

  def loss_fn(alpha_beta):
    def one_group(x):
      # A model of its own per group: the statistics it updates are dropped.
      model = nnx.merge(graphdef, alpha_beta, rest, copy=True)
      model.train(estimate=True)
      model(x)
      return total_aux_loss(model)
    return jnp.mean(jax.vmap(one_group)(groups))

  loss, grads = jax.value_and_grad(loss_fn)(alpha_beta)
  alpha_beta, opt_state = calibration.update_alpha_beta(tx, grads, opt_state,
                                                        alpha_beta)
  return alpha_beta, opt_state, loss
