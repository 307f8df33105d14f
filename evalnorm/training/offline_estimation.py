"""Offline estimation: alpha/beta for a trained model whose weights stay frozen.

``python -m evalnorm.estimate`` runs ``estimate_and_evaluate``. It loads the latest checkpoint in DIR (an EvalNorm run, or a plain ``nn.BatchNorm``
run whose variables are converted), runs training-mode forward passes in groups
of B over training data with ``params`` and ``batch_stats`` immutable, minimizes
the summed auxiliary loss over alpha/beta only, then evaluates every mode and
writes OUT/eval.json (``evalnorm`` = the offline estimate). Nothing in DIR is
written. Also evaluates fixed alpha = beta constants (``fixed_alpha_beta``) and
PreciseBN statistics (``precise_ema_batches``) when the config asks.
"""

import functools
import itertools
import sys
from collections.abc import Iterable

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from evalnorm import calibration, data
from evalnorm.training import (builders, checkpoint, config_lib, evaluation,
                               parallel, summary)
from evalnorm.variables import (batchnorm_to_evalnorm, mean_alpha_beta,
                                set_alpha_beta)


def estimate_offline(model, variables, batches: Iterable, tx,
                     group_size: int, log_every_steps: int,
                     devices=None) -> dict:
  """The ``evalnorm`` collection estimated from ``variables['evalnorm']``.

  The library's calibration step on every device (``devices``: a
  ``parallel.Pmap`` or ``parallel.ShardMap``, default pmap), one step a batch
  of ``batches``: each device cuts its share of the batch into groups of B
  (``group_size``), and the alpha/beta gradients are averaged.
  """
  devices = devices or parallel.Pmap()
  step = devices.program(functools.partial(
      calibration.calibration_step,
      apply_fn=functools.partial(model.apply, train=True), tx=tx,
      group_size=group_size, axis_name=parallel.DEVICE_AXIS),
                         kinds=(parallel.REPLICATED,) * 3 + (parallel.SHARDED,))
  frozen = devices.replicate({'params': variables['params'],
                              'batch_stats': variables['batch_stats']})
  evalnorm = variables['evalnorm']
  evalnorm, opt_state = devices.replicate((evalnorm, tx.init(evalnorm)))
  for i, batch in enumerate(batches, start=1):
    evalnorm, opt_state, loss = step(evalnorm, opt_state, frozen,
                                     devices.shard(batch['image']))
    if i % log_every_steps == 0:
      calibration.log_progress(i, float(devices.to_host(loss)),
                               devices.to_host(evalnorm))
  return devices.to_host(evalnorm)


def precise_batch_stats(model, variables, batches: Iterable,
                        num_batches: int, devices=None) -> dict:
  """PreciseBN: batch_stats recomputed as the true mean of per-batch statistics.

  Each of the ``num_batches`` training batches of ``batches`` runs ``model``
  (with EvalNorm layers) in training mode with momentum 0, so the returned
  ``batch_stats`` are that batch's average group statistics; averaging them
  over batches (and devices) gives the population estimate without EMA's bias
  towards recent, older weights.
  """
  model = model.clone(norm=functools.partial(model.norm, momentum=0.0))
  devices = devices or parallel.Pmap()

  def batch_statistics(batch):
    _, new_vars = model.apply(variables, batch['image'], train=True,
                              mutable=['batch_stats'])
    return lax.pmean(new_vars['batch_stats'], parallel.DEVICE_AXIS)
  total = parallel.sum_over_batches(
      devices, devices.program(batch_statistics, kinds=(parallel.SHARDED,)),
      itertools.islice(batches, num_batches))
  return jax.tree_util.tree_map(lambda t: t / num_batches, total)


def check_checkpoint_matches(directory: str, meta: dict, expected: dict) -> None:
  """One clear error when the checkpoint's ``meta`` differs from ``expected``
  (config values: the checkpoint was trained for another setup)."""
  wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
  if wrong:
    details = ', '.join(f'{k}={found!r} (config: {want!r})'
                        for k, (found, want) in wrong.items())
    raise checkpoint.CheckpointError(
        f'checkpoint in {directory} was trained with {details}: set those '
        'config values to match it')


def warn_if_rules_assume_other_b(meta: dict, group_size: int,
                                 whole_batch: bool) -> None:
  """A warning when the checkpoint was trained with another B than
  ``group_size`` (``whole_batch``: its norm normalized per-device batches)."""
  trained_b = meta.get('norm_batch_size')
  if whole_batch:
    trained_b = meta.get('batch_size', 0) // max(meta.get('num_devices', 1), 1)
  if trained_b and trained_b != group_size:
    message = (f'warning: the model was trained with B={trained_b}, but the '
               f'rules 1/B^2 and 1/B and the estimation use norm_batch_size='
               f'{group_size}')
    logging.warning(message)
    print(message, file=sys.stderr)


def check_norm(config) -> None:
  """ConfigError unless ``config.norm`` normalizes by batch statistics (the
  norms offline estimation applies to)."""
  allowed = builders.names(builders.NORMS, batch_statistics=True)
  if config.norm not in allowed:
    raise config_lib.ConfigError(
        f'config.norm={config.norm!r} is invalid for offline estimation: '
        f'allowed: {allowed}')


def restore_as_evalnorm(config, manager, checkpoint_dir: str, trained_model,
                        image_shape, expected: dict) -> tuple[dict, dict]:
  """(variables, meta) of the checkpoint in ``manager``, checked against the
  config values ``expected`` and converted to EvalNorm's collections when
  ``config.norm`` has no alpha/beta of its own."""
  # Shapes and dtypes only: the checkpoint's values fill them.
  template = jax.eval_shape(
      functools.partial(trained_model.init, train=False), jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((config.norm_batch_size, *image_shape), jnp.float32))
  meta = checkpoint.read_meta(manager)
  check_checkpoint_matches(checkpoint_dir, meta, expected)
  variables = checkpoint.restore_variables(manager, template)
  norm = builders.NORMS[config.norm]
  if not norm.alpha_beta:
    variables = batchnorm_to_evalnorm(variables, per_channel=config.per_channel)
  warn_if_rules_assume_other_b(meta, config.norm_batch_size, norm.whole_batch)
  return variables, meta


def estimate_and_evaluate(config, checkpoint_dir: str, workdir: str) -> dict:
  """The whole offline run; returns what it writes to workdir/eval.json."""
  builders.validate(config, jax.device_count(), jax.process_count(),
                    training=False)
  check_norm(config)
  # A wrong directory fails at once, before the data and the models are built.
  manager = checkpoint.open_existing(checkpoint_dir)
  dataset = data.make_dataset(config)
  trained_model = builders.build_model(config, dataset.num_classes)
  model = builders.build_model(config, dataset.num_classes, 'evalnorm')
  variables, meta = restore_as_evalnorm(
      config, manager, checkpoint_dir, trained_model, dataset.image_shape,
      {key: config[key] for key in ('model', 'norm', 'dataset',
                                    *builders.MODELS[config.model].keys)})
  start = {**variables, 'evalnorm': set_alpha_beta(
      variables['evalnorm'], config.alpha_init, config.beta_init)}
  devices = parallel.PARALLELISMS[config.parallelism]()
  tx = calibration.alpha_beta_optimizer(config.alpha_beta_optimizer,
                                        config.alpha_beta_learning_rate)
  evalnorm = estimate_offline(
      model, start, itertools.islice(dataset.train_batches(0),
                                     config.offline_estimation_steps),
      tx, config.norm_batch_size, config.log_every_steps, devices)
  num_examples = config.offline_estimation_steps * config.batch_size
  logging.info('offline estimate from %d examples: mean alpha %.4f, mean '
               'beta %.4f (every layer\'s in eval.json)', num_examples,
               *mean_alpha_beta(evalnorm))
  modes = evaluation.fixed_modes(evalnorm, config.norm_batch_size,
                                 config.fixed_alpha_beta)
  modes['evalnorm'] = evalnorm
  mode_variables = {m: {'batch_stats': variables['batch_stats'], 'evalnorm': e}
                    for m, e in modes.items()}
  if config.precise_ema_batches:
    mode_variables['precise_ema'] = {
        'batch_stats': precise_batch_stats(model, variables,
                                           dataset.train_batches(0),
                                           config.precise_ema_batches, devices),
        'evalnorm': modes['ema']}
  evaluator = evaluation.Evaluator(
      trained_model, model,
      evaluation.ModeSettings(config.norm, config.norm_batch_size,
                              modes_at_once=config.eval_modes_at_once),
      devices=devices)
  results = evaluator(variables['params'], mode_variables, dataset)
  return summary.write_eval_json(
      workdir, config, meta.get('step'), dataset.num_eval_examples, results,
      evalnorm, offline_examples=num_examples, checkpoint=checkpoint_dir)
