"""Estimating alpha/beta: the optimizer of online and offline estimation, and
offline estimation (calibration) of any flax.linen model with EvalNorm layers.

    model = MyNet(norm=evalnorm.EvalNorm)            # your model, EvalNorm in the slot
    variables = evalnorm.batchnorm_to_evalnorm(bn_variables)  # or its own
    estimated = evalnorm.calibrate(
        functools.partial(model.apply, train=True), variables,
        batches=(x for x, _ in my_pipeline), group_size=2)
    variables = {**variables, 'evalnorm': estimated}
    logits = model.apply(variables, x_test, train=False)   # EvalNorm evaluation

Calibration minimizes the layers' summed auxiliary loss over alpha/beta only:
``params`` and ``batch_stats`` are read, never written. Each batch is cut into
normalization groups of B consecutive examples and the model sees one group at
a time (its norm layers, built with ``group_size=None``, then normalize over
exactly B examples, as in training with B per device).
"""

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from evalnorm.variables import mean_alpha_beta, total_aux_loss

ALPHA_BETA_OPTIMIZERS = {'adam': optax.adam, 'sgd': optax.sgd}


def alpha_beta_optimizer(name: str = 'adam', learning_rate: float = 3e-3
                         ) -> optax.GradientTransformation:
  """alpha/beta's own optimizer (no weight decay), online and offline alike."""
  if name not in ALPHA_BETA_OPTIMIZERS:
    raise ValueError(f'alpha/beta optimizer {name!r} is not one of '
                     f'{tuple(ALPHA_BETA_OPTIMIZERS)}')
  return ALPHA_BETA_OPTIMIZERS[name](learning_rate)


def update_alpha_beta(tx, grads, opt_state, evalnorm):
  """One optimizer step, then clipping: alpha and beta are blend weights in [0, 1]."""
  updates, opt_state = tx.update(grads, opt_state, evalnorm)
  evalnorm = jax.tree_util.tree_map(lambda v: jnp.clip(v, 0.0, 1.0),
                                    optax.apply_updates(evalnorm, updates))
  return evalnorm, opt_state


def check_batch(batch_size: int, group_size: int) -> None:
  if group_size <= 0 or batch_size % group_size:
    raise ValueError(f'a batch of {batch_size} examples does not split into '
                     f'normalization groups of group_size={group_size}')


def calibration_loss(evalnorm, frozen: Mapping[str, Any], batch: jax.Array,
                     apply_fn: Callable, group_size: int,
                     layers_axis_name: str | None = None) -> jax.Array:
  """Mean over the groups of B in ``batch`` of the summed auxiliary loss.

  ``apply_fn(variables, x, mutable=...)`` runs the model in training mode.
  The moving-average update it computes is dropped: the model stays frozen.
  ``layers_axis_name``: the axis the model's norm layers average their
  statistics over, bound here to one group alone.
  """
  groups = batch.reshape((-1, group_size) + batch.shape[1:])

  def one_group(x):
    _, updates = apply_fn({**frozen, 'evalnorm': evalnorm}, x,
                          mutable=['batch_stats', 'aux_loss'])
    return total_aux_loss(updates.get('aux_loss', {}))
  if layers_axis_name is not None:
    one_group = _alone_on_axis(one_group, layers_axis_name)
  return jnp.mean(jax.vmap(one_group)(groups))


def _alone_on_axis(fn: Callable, axis_name: str) -> Callable:
  """``fn`` with ``axis_name`` bound to an axis of size one: collectives over
  it (the layers' statistics ``pmean``) see this call's values only."""
  return lambda x: jax.vmap(fn, axis_name=axis_name)(x[None])[0]


def calibration_step(evalnorm, opt_state, frozen, batch, apply_fn, tx,
                     group_size: int, axis_name: str | None = None,
                     layers_axis_name: str | None = None):
  """One optimizer step on alpha/beta; gradients averaged over ``axis_name``
  (``layers_axis_name``: as ``calibration_loss``'s)."""
  loss, grads = jax.value_and_grad(calibration_loss)(
      evalnorm, frozen, batch, apply_fn, group_size, layers_axis_name)
  if axis_name is not None:
    grads, loss = jax.lax.pmean((grads, loss), axis_name)
  evalnorm, opt_state = update_alpha_beta(tx, grads, opt_state, evalnorm)
  return evalnorm, opt_state, loss


def log_progress(step: int, loss: float, evalnorm) -> None:
  alpha, beta = mean_alpha_beta(evalnorm)
  logging.info('calibration step %d: aux_loss=%.4f mean alpha=%.3f beta=%.3f',
               step, loss, alpha, beta)


def calibrate(apply_fn: Callable, variables: Mapping[str, Any],
              batches: Iterable[Any], group_size: int, *,
              num_steps: int | None = None,
              tx: optax.GradientTransformation | None = None,
              log_every_steps: int = 100,
              axis_name: str | None = None) -> dict:
  """alpha/beta estimated offline for a model whose weights stay frozen.

  Args:
    apply_fn: runs the model in training mode, called as
      ``apply_fn(variables, x, mutable=[...])``; e.g.
      ``functools.partial(model.apply, train=True)``.
    variables: ``params``, ``batch_stats`` and ``evalnorm`` (from the model's
      own training, or ``batchnorm_to_evalnorm`` of a plain BatchNorm model).
    batches: input arrays (NumPy or JAX, batch axis first), from any
      pipeline; each must split into groups of ``group_size``.
    group_size: B, the normalization batch the model was trained with.
    num_steps: stop after this many batches (default: all of ``batches``).
    tx: the optimizer of alpha/beta (default Adam, learning rate 3e-3).
    log_every_steps: progress is logged every this many steps.
    axis_name: the ``axis_name`` the model's norm layers were built with
      (synchronized BatchNorm, e.g. ``'batch'`` in flax's ImageNet example),
      so that their statistics ``pmean`` has an axis to run over; each group
      of ``group_size`` (then the batch over all devices in training) is
      normalized alone.

  Returns:
    The estimated ``evalnorm`` collection; ``variables`` is not changed.
  """
  if 'evalnorm' not in variables:
    raise ValueError('variables have no evalnorm collection: convert a '
                     'BatchNorm model with evalnorm.batchnorm_to_evalnorm')
  tx = tx or alpha_beta_optimizer()
  frozen = {k: v for k, v in variables.items()
            if k not in ('evalnorm', 'aux_loss')}
  evalnorm = variables['evalnorm']
  opt_state = tx.init(evalnorm)
  step_fn = jax.jit(functools.partial(calibration_step, apply_fn=apply_fn,
                                      tx=tx, group_size=group_size,
                                      layers_axis_name=axis_name))
  step = 0
  for step, batch in enumerate(itertools.islice(batches, num_steps), start=1):
    check_batch(np.shape(batch)[0], group_size)
    evalnorm, opt_state, loss = step_fn(evalnorm, opt_state, frozen,
                                        jnp.asarray(batch))
    if step % log_every_steps == 0:
      log_progress(step, float(loss), evalnorm)
  if step == 0:
    raise ValueError('calibrate received no batches')
  if num_steps is not None and step < num_steps:
    logging.warning('calibration ran out of batches after %d of %d steps',
                    step, num_steps)
  return jax.device_get(evalnorm)
