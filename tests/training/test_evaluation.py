"""evalnorm/training/evaluation.py: the modes and the one-pass, all-modes evaluator.

The evaluator runs every mode in one vmapped forward pass over 8 devices,
masks padded examples out and sums over devices; the reference evaluates
each mode on its own, example by example, in NumPy (float64).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm.layers import EvalNorm
from evalnorm.training import evaluation
from evalnorm.variables import one_over_b, rule_of_thumb, set_alpha_beta

B = 2
NUM_CLASSES = 7


class Classifier(nn.Module):
  """Dense -> norm -> ReLU -> Dense, the norm in the models' slot."""
  norm: nn.Module

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Dense(6)(x.reshape(len(x), -1))
    x = nn.relu(self.norm(use_running_average=not train, name='norm')(x))
    return nn.Dense(NUM_CLASSES)(x)


class Batches:
  """``eval_batches`` of a dataset: 3 batches of 16, the last one padded."""

  def __init__(self, rng):
    self.images = rng.normal(size=(45, 3, 3, 1)).astype(np.float32)
    self.labels = rng.integers(0, NUM_CLASSES, 45).astype(np.int32)

  def eval_batches(self):
    for start in range(0, 48, 16):
      index = np.arange(start, start + 16) % 45
      mask = (np.arange(start, start + 16) < 45).astype(np.float32)
      yield {'image': self.images[index], 'label': self.labels[index],
             'mask': mask}


def test_fixed_modes_set_every_layer():
  evalnorm = {'a': {'alpha': jnp.zeros(()), 'beta': jnp.zeros(())},
              'b': {'alpha': jnp.zeros((3,)), 'beta': jnp.zeros((3,))}}
  modes = evaluation.fixed_modes(evalnorm, 4, (0.05, 0.5))
  expected = {'ema': 0.0, 'rule_of_thumb': 1 / 16, 'one_over_b': 1 / 4,
              'fixed_0.05': 0.05, 'fixed_0.5': 0.5}
  assert set(modes) == set(expected)
  for mode, value in expected.items():
    for layer in ('a', 'b'):
      for name in ('alpha', 'beta'):
        got = np.asarray(modes[mode][layer][name])
        assert got.shape == evalnorm[layer][name].shape
        np.testing.assert_array_equal(got, np.float32(value))


def reference_metrics(logits, labels):
  """top-1, top-5 (percent) and mean cross-entropy, float64."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  top5 = np.argsort(-logits, -1)[:, :5]
  return {'top1': 100 * np.mean(logits.argmax(-1) == labels),
          'top5': 100 * np.mean((top5 == labels[:, None]).any(-1)),
          'loss': -np.mean(log_probs[np.arange(len(labels)), labels])}


# 0: every mode in one batched pass; 2: two at a time (lax.map), the fifth
# mode alone.
@pytest.mark.parametrize('modes_at_once', [0, 2])
def test_every_mode_in_one_pass_equals_each_mode_alone(modes_at_once):
  model = Classifier(functools.partial(EvalNorm, group_size=B))
  rng = np.random.default_rng(0)
  data = Batches(rng)
  variables = model.init(jax.random.PRNGKey(0), data.images[:B], train=False)
  # Moving averages away from an init's 0/1, so that the modes differ.
  batch_stats = {'norm': {'mean': jnp.asarray(rng.normal(size=6), jnp.float32),
                          'var': jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32)}}
  modes = evaluation.fixed_modes(variables['evalnorm'], B, (0.3,))
  modes['evalnorm'] = set_alpha_beta(variables['evalnorm'], 0.7, 0.2)
  mode_variables = {m: {'batch_stats': batch_stats, 'evalnorm': e}
                    for m, e in modes.items()}
  evaluator = evaluation.Evaluator(
      model, model, evaluation.ModeSettings('evalnorm', B,
                                            modes_at_once=modes_at_once))
  got = evaluator(variables['params'], mode_variables, data)

  assert set(got) == set(modes) | {'train_stats'}
  for mode, mode_vars in mode_variables.items():
    # Eval mode normalizes each example by itself and the averages: one at a
    # time gives the same logits as any batch.
    logits = np.concatenate([np.asarray(model.apply(
        {'params': variables['params'], **mode_vars}, data.images[i:i + 1],
        train=False)) for i in range(45)])
    expected = reference_metrics(logits, data.labels)
    for key, value in expected.items():
      np.testing.assert_allclose(got[mode][key], value, rtol=1e-5,
                                 err_msg=f'{mode} {key}')
  assert got['ema']['loss'] != got['rule_of_thumb']['loss']

  # train_stats: each device's 2 examples (padding included) form a group
  # normalized by its own statistics; padded rows are not counted.
  logits = []
  for batch in data.eval_batches():
    for device in range(8):
      rows = slice(B * device, B * (device + 1))
      out, _ = model.apply({'params': variables['params'],
                            **mode_variables['ema']}, batch['image'][rows],
                           train=True, mutable=['batch_stats'])
      logits.append(np.asarray(out))
  logits = np.concatenate(logits)[:45]
  for key, value in reference_metrics(logits, data.labels).items():
    np.testing.assert_allclose(got['train_stats'][key], value, rtol=1e-5)


class FakeState:
  def __init__(self, batch_stats, evalnorm):
    self.batch_stats, self.evalnorm = batch_stats, evalnorm


@pytest.mark.parametrize('norm,estimated,expected', [
    ('evalnorm', True, {'ema', 'rule_of_thumb', 'one_over_b', 'fixed_0.1',
                        'evalnorm'}),
    ('evalnorm', False, {'ema', 'rule_of_thumb', 'one_over_b', 'fixed_0.1'}),
    ('batchnorm', False, {'ema', 'rule_of_thumb', 'one_over_b', 'fixed_0.1'}),
    ('groupnorm', False, {'groupnorm'}),
    ('renorm', False, {'ema'}),
])
def test_the_modes_a_trained_state_has(norm, estimated, expected):
  batch_stats = {'norm': {'mean': jnp.zeros(6), 'var': jnp.ones(6)}}
  evalnorm = {'norm': {'alpha': jnp.full((), 0.4), 'beta': jnp.full((), 0.4)}}
  model = Classifier(functools.partial(EvalNorm, group_size=B))
  evaluator = evaluation.Evaluator(  # nothing compiles before a call
      model, model, evaluation.ModeSettings(norm, B, (0.1,), estimated))
  modes = evaluator.modes(FakeState(batch_stats, evalnorm))
  assert set(modes) == expected
  if norm == 'batchnorm':  # converted: alpha/beta from the rules, not the state
    np.testing.assert_array_equal(modes['ema']['evalnorm']['norm']['alpha'], 0)
  if estimated:
    assert float(modes['evalnorm']['evalnorm']['norm']['alpha']) == np.float32(0.4)
  if 'rule_of_thumb' in modes:
    assert float(modes['rule_of_thumb']['evalnorm']['norm']['beta']) == (
        np.float32(rule_of_thumb(B)))
    assert float(modes['one_over_b']['evalnorm']['norm']['beta']) == (
        np.float32(one_over_b(B)))
