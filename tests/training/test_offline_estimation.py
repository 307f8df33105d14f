"""Offline estimation on frozen checkpoints (evalnorm.estimate / evalnorm.training.offline_estimation)."""

import functools
import hashlib
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm import data
from evalnorm.layers import EvalNorm
from evalnorm.training import builders, checkpoint, offline_estimation, trainer
from evalnorm.variables import batchnorm_to_evalnorm

from training_helpers import small_digits_config


def tree_digest(directory):
  """Hash of every file's path and bytes under ``directory``."""
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(path.encode())
      with open(path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.fixture(scope='module')
def batchnorm_run(tmp_path_factory):
  """A plain nn.BatchNorm model trained 10 steps, 8 devices x 2 examples."""
  workdir = str(tmp_path_factory.mktemp('batchnorm_run'))
  config = small_digits_config(norm='batchnorm', num_train_steps=10)
  trainer.train_and_evaluate(config, workdir)
  return config, workdir


def restored_variables(config, workdir):
  model = builders.build_model(config, 10)
  template = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)),
                        train=False)
  return checkpoint.restore_variables(checkpoint.open_existing(workdir), template)


@pytest.mark.slow
def test_offline_estimation_leaves_checkpoint_bit_identical(batchnorm_run,
                                                            tmp_path):
  config, workdir = batchnorm_run
  before_files = tree_digest(workdir)
  before = restored_variables(config, workdir)
  config = config.copy_and_resolve_references()
  config.update(dict(offline_estimation_steps=5, precise_ema_batches=2))
  results = offline_estimation.estimate_and_evaluate(config, workdir, str(tmp_path))
  assert tree_digest(workdir) == before_files
  after = restored_variables(config, workdir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
  assert set(results['eval']) == {
      'ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'precise_ema',
      'train_stats', 'fixed_0.05', 'fixed_0.1', 'fixed_0.5'}
  assert results['offline_examples'] == 5 * config.batch_size
  assert os.path.exists(tmp_path / 'eval.json')
  alphas = [v['alpha'] for v in results['alpha_beta'].values()]
  assert len(alphas) == 7 and any(a > 0 for a in alphas)
  # precise_ema really recomputed the statistics.
  assert results['eval']['precise_ema'] != results['eval']['ema']


def norm_inputs(model, variables, images):
  """{layer path: float64 input} of every EvalNorm layer in a training call."""
  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, EvalNorm) and context.method_name == '__call__':
      context.module.sow('intermediates', 'input', args[0])
    return next_fun(*args, **kwargs)

  @jax.jit
  def forward(variables, images):
    with nn.intercept_methods(record):
      return model.apply(variables, images, train=True,
                         mutable=['batch_stats', 'intermediates'])[1]
  flat = flax.traverse_util.flatten_dict(
      forward(variables, images)['intermediates'])
  return {path[:-1]: np.asarray(x[0], np.float64) for path, x in flat.items()}


def random_batchnorm_variables(config, seed=0):
  """Random variables of the config's nn.BatchNorm model: kernels at the
  scale of an init, and scales, biases and moving statistics (which PreciseBN
  must not use) away from 1 and 0.

  PreciseBN recomputes the statistics of whatever weights it is given, so
  no training run is needed to check it. Only the shapes come from the model
  (jax.eval_shape): compiling its init costs more than the whole check.
  """
  model = builders.build_model(config, 10)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = np.prod(leaf.shape[:-1])
      values = rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape)
    elif name in ('scale', 'var'):
      values = rng.uniform(0.5, 2.0, leaf.shape)
    else:  # bias, mean
      values = rng.normal(0.0, 0.5, leaf.shape)
    return jnp.asarray(values, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_precise_ema_is_the_mean_of_per_batch_group_statistics():
  """PreciseBN's statistics against float64 NumPy: for each of 2 training
  batches, each group of B=2's mean and biased variance over (examples, H,
  W) of every norm layer's input, averaged over groups, then over batches."""
  config = small_digits_config(norm='batchnorm', precise_ema_batches=2)
  dataset = data.make_dataset(config)
  variables = batchnorm_to_evalnorm(random_batchnorm_variables(config))
  model = builders.build_model(config, 10, 'evalnorm')
  got = offline_estimation.precise_batch_stats(
      model, variables, dataset.train_batches(0), config.precise_ema_batches)
  sums = {}
  batches = dataset.train_batches(0)
  for _ in range(2):
    for path, x in norm_inputs(model, variables,
                               next(batches)['image']).items():
      groups = x.reshape((-1, config.norm_batch_size) + x.shape[1:])
      axes = (1, 2, 3)  # examples of a group, H, W
      moments = (groups.mean(axes).mean(0), groups.var(axes).mean(0))
      sums[path] = [a + b / 2 for a, b in zip(sums.get(path, (0, 0)), moments)]
  assert len(sums) == 7
  for path, (mean, var) in sums.items():
    layer = got
    for name in path:
      layer = layer[name]
    np.testing.assert_allclose(layer['mean'], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer['var'], var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('make_dir, fragment', [
    (lambda tmp: str(tmp / 'missing'), 'does not exist'),
    (lambda tmp: str(tmp), 'no checkpoints/'),
])
def test_missing_checkpoint_is_one_clear_error(tmp_path, make_dir, fragment):
  directory = make_dir(tmp_path)
  with pytest.raises(checkpoint.CheckpointError) as error:
    offline_estimation.estimate_and_evaluate(small_digits_config(norm='batchnorm'),
                                             directory, str(tmp_path / 'out'))
  assert fragment in str(error.value) and directory in str(error.value)


@pytest.mark.slow
def test_checkpoint_of_other_model_is_refused(batchnorm_run, tmp_path):
  _, workdir = batchnorm_run
  before = tree_digest(workdir)
  with pytest.raises(checkpoint.CheckpointError, match='depth=8.*config: 20'):
    offline_estimation.estimate_and_evaluate(small_digits_config(norm='batchnorm', depth=20),
                                             workdir, str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match="norm='batchnorm'"):
    offline_estimation.estimate_and_evaluate(small_digits_config(), workdir, str(tmp_path))
  assert tree_digest(workdir) == before


@pytest.mark.slow
def test_warns_when_rules_assume_another_b(batchnorm_run, tmp_path, capsys):
  config, workdir = batchnorm_run
  config = config.copy_and_resolve_references()
  config.update(dict(batch_size=32, norm_batch_size=4,
                     offline_estimation_steps=2, fixed_alpha_beta=()))
  offline_estimation.estimate_and_evaluate(config, workdir, str(tmp_path))
  warning = capsys.readouterr().err
  assert 'trained with B=2' in warning and 'norm_batch_size=4' in warning
