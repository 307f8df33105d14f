"""EvalNorm in a model this project did not define: conversion and calibration.

A small convnet written here is trained with flax's own BatchNorm (linen and
NNX) at 2 examples per normalization batch on digits under random per-image
contrast and brightness, where moving averages describe single examples
badly. The README's "EvalNorm in your own model" examples then convert and
calibrate it from a Python generator of NumPy arrays, and EvalNorm's
evaluation must beat the moving averages'.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

import evalnorm
import evalnorm.nnx as ennx
from readme import readme_calibration_gains
from readme import readme_code

B = 2          # examples per normalization batch in training
GROUPS = 8     # normalization groups per SGD batch
STEPS = 800    # README quotes the gain after this many (checked below)
# How far outside the README's measured range of the gain a run may land.
MARGIN = 1.0


def _digits():
  digits = load_digits()
  return (digits.images / 16.0).astype(np.float32)[..., None], digits.target


IMAGES, LABELS = _digits()
TRAIN, TEST = np.arange(1400), np.arange(1400, len(LABELS))


def relit(rng, indices):
  """Digits under random per-image contrast (log-uniform) and brightness."""
  contrast = np.exp(rng.uniform(np.log(0.1), np.log(10.0),
                                (len(indices), 1, 1, 1)))
  brightness = rng.normal(0.0, 2.0, (len(indices), 1, 1, 1))
  return (IMAGES[indices] * contrast + brightness).astype(np.float32)


def train_batches(seed, size):
  rng = np.random.default_rng(seed)
  while True:
    indices = rng.choice(TRAIN, size)
    yield relit(rng, indices), LABELS[indices]


# Each held-out digit under several lightings: top-1 counts more examples
# than the 397 held-out digits, so one example moves it by less.
TEST_LIGHTINGS = 4
X_TEST = relit(np.random.default_rng(2), np.tile(TEST, TEST_LIGHTINGS))
Y_TEST = LABELS[np.tile(TEST, TEST_LIGHTINGS)]


def top1(logits):
  return 100 * float(np.mean(np.argmax(logits, -1) == Y_TEST))


class LinenNet(nn.Module):
  """Three convolutions with unnamed norm layers (auto-named by flax)."""
  norm: type = nn.BatchNorm

  @nn.compact
  def __call__(self, x, train: bool):
    for features, strides in ((16, 1), (32, 2), (32, 1)):
      x = nn.Conv(features, (3, 3), strides)(x)
      x = nn.relu(self.norm(use_running_average=not train)(x))
    return nn.Dense(10)(x.mean((1, 2)))


class NnxNet(nnx.Module):
  """The same network in NNX, with nnx.BatchNorm layers."""

  def __init__(self, rngs):
    self.convs = nnx.List([nnx.Conv(1, 16, (3, 3), rngs=rngs),
                           nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs),
                           nnx.Conv(32, 32, (3, 3), rngs=rngs)])
    self.norms = nnx.List([nnx.BatchNorm(c, rngs=rngs) for c in (16, 32, 32)])
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.relu(norm(conv(x)))
    return self.head(x.mean((1, 2)))


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _groups(x):
  return x.reshape((GROUPS, B) + x.shape[1:])


def train_linen_bn_model(seed: int = 0):
  """LinenNet trained with nn.BatchNorm, each SGD batch in 8 groups of 2."""
  model = LinenNet()
  variables = model.init(jax.random.key(seed), X_TEST[:B], train=False)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(params):
      def group(x, y):
        logits, updates = model.apply({**variables, 'params': params}, x,
                                      train=True, mutable=['batch_stats'])
        return _cross_entropy(logits, y), updates['batch_stats']
      losses, stats = jax.vmap(group)(_groups(x), _groups(y))
      return losses.mean(), jax.tree.map(lambda s: s.mean(0), stats)
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables['params'])
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(variables['params'], updates)
    return {'params': params, 'batch_stats': stats}, opt_state

  opt_state = tx.init(variables['params'])
  for _, (x, y) in zip(range(STEPS), train_batches(seed, B * GROUPS)):
    variables, opt_state = step(variables, opt_state, x, y)
  return variables


@pytest.fixture(scope='module')
def linen_bn_model():
  return train_linen_bn_model()


def run_readme_linen_example(bn_variables):
  """The README's linen calibration example on ``bn_variables``: its namespace."""
  namespace = {'MyNet': LinenNet, 'bn_variables': bn_variables,
               'images': _images(), 'x_test': X_TEST}
  exec(readme_code('EvalNorm in your own model', 'linen'), namespace)  # pylint: disable=exec-used
  return namespace


def train_nnx_bn_model(seed: int = 0):
  """NnxNet trained with nnx.BatchNorm, each SGD batch in 8 groups of 2."""
  model = NnxNet(nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, rest, opt_state, x, y):
    def loss_fn(params):
      def group(x, y):
        # A copy per group: each normalizes its 2 examples; statistics out.
        group_model = nnx.merge(graphdef, params, rest, copy=True)
        loss = _cross_entropy(group_model(x), y)
        return loss, nnx.state(group_model, nnx.BatchStat)
      losses, stats = jax.vmap(group)(_groups(x), _groups(y))
      return losses.mean(), jax.tree.map(lambda s: s.mean(0), stats)
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), stats, opt_state

  opt_state = tx.init(params)
  stats = nnx.state(model, nnx.BatchStat)
  for _, (x, y) in zip(range(STEPS), train_batches(seed, B * GROUPS)):
    params, stats, opt_state = step(params, nnx.merge_state(rest, stats),
                                    opt_state, x, y)
  nnx.update(model, params, stats)
  return model


@pytest.fixture(scope='module')
def nnx_bn_model():
  return train_nnx_bn_model()


def run_readme_nnx_example(model):
  """(EMA top-1, calibrated EvalNorm top-1) of the README's NNX example."""
  model.eval()
  ema = top1(model(X_TEST))
  namespace = {'model': model, 'images': _images(), 'x_test': X_TEST}
  exec(readme_code('EvalNorm in your own model', 'NNX'), namespace)  # pylint: disable=exec-used
  return ema, top1(namespace['logits'])


def _images(seed=1):
  """A Python generator of NumPy batches: what calibration reads."""
  return (x for x, _ in train_batches(seed, 16))


def assert_gain_in_readme_range(api: str, ema: float, evalnorm_top1: float):
  low, high = readme_calibration_gains()[api]
  gain = evalnorm_top1 - ema
  assert low - MARGIN <= gain <= high + MARGIN, (
      f'{api}: EvalNorm {evalnorm_top1:.2f} - EMA {ema:.2f} = {gain:.2f}, '
      f'README range {low}-{high}')


def test_readme_linen_own_model(linen_bn_model):
  frozen = evalnorm.batchnorm_to_evalnorm(jax.tree.map(np.array,
                                                      linen_bn_model))
  namespace = run_readme_linen_example(linen_bn_model)
  assert_gain_in_readme_range('linen', top1(namespace['ema_logits']),
                              top1(namespace['logits']))
  # The BatchNorm model's own evaluation is the EMA one.
  np.testing.assert_array_equal(
      namespace['ema_logits'],
      LinenNet().apply(linen_bn_model, X_TEST, train=False))
  # Weights and statistics stayed as they were.
  for collection in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(frozen[collection]),
                    jax.tree.leaves(namespace['variables'][collection])):
      np.testing.assert_array_equal(a, b)


def test_readme_nnx_own_model(nnx_bn_model):
  assert_gain_in_readme_range('NNX', *run_readme_nnx_example(nnx_bn_model))


def test_calibrate_errors():
  # The errors come before any computation: untrained models of the right
  # structure will do. Shapes from eval_shape, every value 1 (each random
  # initializer compiled for a new shape costs about 2 s on a CPU core).
  ones = lambda tree: jax.tree.map(lambda s: np.ones(s.shape, s.dtype), tree)
  bn_variables = ones(jax.eval_shape(
      functools.partial(LinenNet().init, train=False), jax.random.key(0),
      X_TEST[:B]))
  apply_fn = functools.partial(LinenNet(evalnorm.EvalNorm).apply, train=True)
  variables = evalnorm.batchnorm_to_evalnorm(bn_variables)
  with pytest.raises(ValueError, match=r'batch of 5 examples .*group_size=2'):
    evalnorm.calibrate(apply_fn, variables, [X_TEST[:5]], group_size=2)
  with pytest.raises(ValueError, match='no batches'):
    evalnorm.calibrate(apply_fn, variables, [], group_size=2)
  with pytest.raises(ValueError, match='batchnorm_to_evalnorm'):
    evalnorm.calibrate(apply_fn, bn_variables, [X_TEST[:4]], group_size=2)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: NnxNet(nnx.Rngs(0))))
  nnx_model = ennx.from_batchnorm(nnx.merge(graphdef, ones(state)))
  with pytest.raises(ValueError, match=r'batch of 3 examples .*group_size=2'):
    ennx.calibrate(nnx_model, [X_TEST[:3]], group_size=2)
