"""Evaluation of every statistics mode in one pass over the eval set.

Modes (keys of ``eval.json``'s ``eval``):
  ema            moving averages only (EvalNorm with alpha = beta = 0, which is
                 exactly BatchNorm's evaluation);
  evalnorm       the estimated alpha/beta (online, or offline by estimate.py);
  rule_of_thumb  alpha = beta = 1/B^2;
  one_over_b     alpha = beta = 1/B;
  fixed_<c>      alpha = beta = c, for each c in ``config.fixed_alpha_beta``;
  train_stats    batch statistics of groups of B eval examples (a reference:
                 what the network saw in training, not a usable test-time mode).

Models trained with flax's ``nn.BatchNorm`` are evaluated through EvalNorm
(same variable names, an ``evalnorm`` collection added), so they get every mode
but ``evalnorm`` without retraining. Batch Renorm and GroupNorm models have
one mode: their own evaluation (``ema`` for renorm, ``groupnorm``).
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from evalnorm.training import builders, parallel
from evalnorm.variables import (batchnorm_to_evalnorm, one_over_b,
                                rule_of_thumb, set_alpha_beta)

# The modes of a norm with batch statistics (evaluated through EvalNorm), in
# report order, with their meaning; a norm without has its own one mode
# (``builders.Norm.eval_mode``).
BATCH_STATISTICS_MODES = {
    'ema': 'moving averages (plain BatchNorm evaluation)',
    'evalnorm': 'EvalNorm, estimated alpha/beta',
    'rule_of_thumb': 'EvalNorm, alpha = beta = 1/B^2',
    'one_over_b': 'EvalNorm, alpha = beta = 1/B',
    'precise_ema': 'recomputed averages (PreciseBN)',
    'train_stats': 'batch statistics of groups of B (reference)',
}


def mode_descriptions() -> dict[str, str]:
  """{mode: meaning} of every mode of every norm, in report order."""
  own = {n.eval_mode: n.description for n in builders.NORMS.values()
         if n.eval_mode not in BATCH_STATISTICS_MODES and n.eval_mode}
  return {**BATCH_STATISTICS_MODES, **own}


def describe(mode: str) -> str:
  """The meaning of ``mode`` in reports ('' when unknown)."""
  if mode.startswith('fixed_'):
    return f"EvalNorm, alpha = beta = {mode.removeprefix('fixed_')}"
  return mode_descriptions().get(mode, '')


def fixed_modes(evalnorm: Any, group_size: int,
                constants: Sequence[float] = ()) -> dict[str, Any]:
  """The modes whose alpha/beta need no estimation, for normalization batch B.

  Each of ``constants`` (``config.fixed_alpha_beta``) adds a mode
  ``fixed_<c>`` with alpha = beta = c.
  """
  modes = {
      'ema': set_alpha_beta(evalnorm, 0.0),
      'rule_of_thumb': set_alpha_beta(evalnorm, rule_of_thumb(group_size)),
      'one_over_b': set_alpha_beta(evalnorm, one_over_b(group_size)),
  }
  for value in constants:
    modes[f'fixed_{value:g}'] = set_alpha_beta(evalnorm, value)
  return modes


def _in_top_k(logits, labels, k: int):
  """Whether each label is among its row's k largest logits (ties count)."""
  label_logits = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  return jnp.sum(logits > label_logits, axis=-1) < k


def _sums(logits, batch):
  """Masked sums of top-1/top-5 hits, loss and examples, over all devices."""
  mask, labels = batch['mask'], batch['label']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  sums = {'correct': jnp.sum(mask * (jnp.argmax(logits, -1) == labels)),
          'correct_top5': jnp.sum(mask * _in_top_k(logits, labels, 5)),
          'loss': jnp.sum(mask * loss), 'count': jnp.sum(mask)}
  return lax.psum(sums, parallel.DEVICE_AXIS)


def over_modes(fn, stacked_modes, modes_at_once: int = 0):
  """``fn`` of every mode's variables, results stacked as the modes are.

  ``stacked_modes`` holds every mode's ``batch_stats`` and ``evalnorm``
  stacked on a leading axis. XLA compiles one network for all of them:
  with ``modes_at_once`` 0 it is batched over every mode (vmap: each
  convolution sees every mode's batch at once), otherwise it runs that many
  modes at a time (``lax.map``), so a large network holds the activations
  of that many modes, not of all.
  """
  if not jax.tree_util.tree_leaves(stacked_modes):
    # GroupNorm's single mode: no variables to count the modes from.
    return jax.vmap(fn, axis_size=1)(stacked_modes)
  if modes_at_once == 0:
    return jax.vmap(fn)(stacked_modes)
  return lax.map(fn, stacked_modes, batch_size=modes_at_once)


def eval_step(params, stacked_modes, batch, apply_fn, train_stats: bool,
              modes_at_once: int = 0):
  """Sums for every mode on one device's batch (modes as ``over_modes``)."""
  def mode_sums(variables):
    logits = apply_fn({'params': params, **variables}, batch['image'],
                      train=False)
    return _sums(logits, batch)
  results = {'modes': over_modes(mode_sums, stacked_modes, modes_at_once)}
  if train_stats:
    # Training-mode pass: groups of B use their own statistics; the EMA
    # update it computes is dropped.
    first_mode = jax.tree_util.tree_map(lambda v: v[0], stacked_modes)
    logits, _ = apply_fn({'params': params, **first_mode}, batch['image'],
                         train=True, mutable=['batch_stats'])
    results['train_stats'] = _sums(logits, batch)
  return results


def evalnorm_collection(state, norm: str, per_channel: bool) -> Any:
  """The state's alpha/beta, or zeros for a model trained with nn.BatchNorm."""
  if not builders.NORMS[norm].alpha_beta:
    return batchnorm_to_evalnorm({'batch_stats': state.batch_stats},
                                 per_channel=per_channel)['evalnorm']
  return state.evalnorm


@dataclasses.dataclass(frozen=True)
class ModeSettings:
  """What decides the evaluation modes of a trained state.

  norm: the trained norm (``config.norm``); group_size: B of the rules 1/B^2
  and 1/B (``config.norm_batch_size``); fixed_alpha_beta: the constants of
  the ``fixed_<c>`` modes; estimated: alpha/beta were estimated (the
  ``evalnorm`` mode); per_channel: alpha/beta per channel, for a converted
  nn.BatchNorm model; modes_at_once: how many modes one pass evaluates
  (0: all, see ``over_modes``).
  """
  norm: str
  group_size: int
  fixed_alpha_beta: Sequence[float] = ()
  estimated: bool = False
  per_channel: bool = False
  modes_at_once: int = 0

  @classmethod
  def from_config(cls, config, estimated: bool) -> 'ModeSettings':
    return cls(config.norm, config.norm_batch_size,
               tuple(config.fixed_alpha_beta), estimated, config.per_channel,
               config.eval_modes_at_once)


class Evaluator:
  """Builds the eval model and its per-device step once; call it on any state.

  ``model`` is the trained model and ``evalnorm_model`` the same architecture
  with EvalNorm layers (groups of B), used for BatchNorm-family models.
  ``step``: the per-device program (``eval_step`` or the detector's);
  ``devices``: the ``parallel.Pmap`` or ``parallel.ShardMap`` it runs on.
  """

  def __init__(self, model, evalnorm_model, settings: ModeSettings,
               step: Callable = eval_step, devices=None):
    self.settings = settings
    self.devices = devices or parallel.Pmap()
    self.uses_batch_statistics = builders.NORMS[settings.norm].batch_statistics
    eval_model = evalnorm_model if self.uses_batch_statistics else model
    self._step = self.devices.program(
        functools.partial(step, apply_fn=eval_model.apply,
                          train_stats=self.uses_batch_statistics,
                          modes_at_once=settings.modes_at_once),
        kinds=(parallel.REPLICATED, parallel.REPLICATED, parallel.SHARDED))

  def alpha_beta(self, state) -> Any:
    """The state's ``evalnorm`` collection (zeros for a converted model)."""
    return evalnorm_collection(state, self.settings.norm,
                               self.settings.per_channel)

  def modes(self, state) -> dict[str, Any]:
    """{mode: {'batch_stats', 'evalnorm'}} for the modes a trained state has."""
    s = self.settings
    if not self.uses_batch_statistics:
      mode = builders.NORMS[s.norm].eval_mode
      return {mode: {'batch_stats': state.batch_stats, 'evalnorm': {}}}
    evalnorm = self.alpha_beta(state)
    modes = fixed_modes(evalnorm, s.group_size, s.fixed_alpha_beta)
    if s.estimated:
      modes['evalnorm'] = evalnorm
    return {mode: {'batch_stats': state.batch_stats, 'evalnorm': alpha_beta}
            for mode, alpha_beta in modes.items()}

  def __call__(self, params, mode_variables: dict[str, Any], dataset
               ) -> dict[str, dict[str, float]]:
    """{mode: {'top1', 'top5': percent, 'loss': mean loss}} over the eval set.

    ``mode_variables`` (e.g. ``self.modes(state)``) maps each mode to the
    ``batch_stats`` and ``evalnorm`` collections it evaluates with.
    """
    names = list(mode_variables)
    stacked = jax.tree_util.tree_map(lambda *v: np.stack(v),
                                     *mode_variables.values())
    stacked, params = self.devices.replicate((stacked, params))
    totals = parallel.sum_over_batches(
        self.devices, lambda batch: self._step(params, stacked, batch),
        dataset.eval_batches())
    for i, name in enumerate(names):
      totals[name] = {k: v[i] for k, v in totals['modes'].items()}
    del totals['modes']
    return {mode: {'top1': float(100.0 * t['correct'] / t['count']),
                   'top5': float(100.0 * t['correct_top5'] / t['count']),
                   'loss': float(t['loss'] / t['count'])}
            for mode, t in sorted(totals.items())}
