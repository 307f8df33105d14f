"""EvalNorm used the way flax's own BatchNorm is used, compared with nn.BatchNorm.

Each test takes one BatchNorm usage pattern (complex inputs, a per-example
model lifted with nn.vmap, tabulate, auto-named layers, dtype settings,
non-finite inputs, a loop that merges returned collections back) and checks
that EvalNorm behaves as nn.BatchNorm does there.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm import (batchnorm_to_evalnorm, EvalNorm, set_alpha_beta,
                      total_aux_loss)
from layer_reference import apply, make_x

KEY = jax.random.key(0)


def _bn_and_en(**kwargs):
  return nn.BatchNorm(**kwargs), EvalNorm(**kwargs)


def _init_both(x, **kwargs):
  bn, en = _bn_and_en(**kwargs)
  mode = ({} if 'use_running_average' in kwargs
          else {'use_running_average': True})
  return bn, en, bn.init(KEY, x, **mode), en.init(KEY, x, **mode)


# 1. Complex inputs.


def test_complex_inputs_like_batchnorm():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 3, 2)) + 1j * rng.normal(size=(4, 3, 2)),
                  jnp.complex64)
  bn, en, bn_vars, en_vars = _init_both(x, use_running_average=False)
  y_bn, upd_bn = bn.apply(bn_vars, x, mutable=['batch_stats'])
  y, upd = en.apply(en_vars, x, mutable=['batch_stats'])
  # One group of the whole batch: BatchNorm's arithmetic, bit for bit.
  np.testing.assert_array_equal(y, y_bn)
  for name in ('mean', 'var'):
    np.testing.assert_array_equal(upd['batch_stats'][name],
                                  upd_bn['batch_stats'][name])
  assert upd['batch_stats']['var'].dtype == jnp.float32
  # Unit variance per channel: the mean squared magnitude is 1.
  np.testing.assert_allclose(np.mean(np.abs(y) ** 2, axis=(0, 1)), 1.0,
                             rtol=1e-4)
  # Evaluation with the statistics just computed.
  variables = {**en_vars, **upd}
  y_bn = nn.BatchNorm().apply({**bn_vars, **upd_bn}, x,
                              use_running_average=True)
  for eval_stats in ('ema', 'evalnorm'):
    y = EvalNorm(eval_stats=eval_stats).apply(variables, x,
                                              use_running_average=True)
    np.testing.assert_allclose(y, y_bn, rtol=1e-5, atol=1e-5)


# 2. An input with no batch axis: the per-example nn.vmap pattern.


class PerExample(nn.Module):
  """A model written for one example (C,), lifted over the batch by nn.vmap."""
  norm: type

  @nn.compact
  def __call__(self, x, train: bool):
    return self.norm(use_running_average=not train, axis_name='batch')(x)


def _vmapped(norm):
  return nn.vmap(PerExample, in_axes=(0, None), out_axes=0,
                 variable_axes={'params': None, 'batch_stats': None,
                                'evalnorm': None, 'aux_loss': 0},
                 split_rngs={'params': False}, axis_name='batch')(norm)


def test_unbatched_input_inits_like_batchnorm():
  x = jnp.arange(4.0)
  bn, en, bn_vars, en_vars = _init_both(x, use_running_average=False)
  assert jax.tree.map(jnp.shape, en_vars['params']) == jax.tree.map(
      jnp.shape, bn_vars['params'])
  y_bn, _ = bn.apply(bn_vars, x, mutable=['batch_stats'])
  y, _ = en.apply(en_vars, x, mutable=['batch_stats'])
  np.testing.assert_array_equal(y, y_bn)


def test_per_example_vmap_equals_batchnorm_over_the_batch():
  x = jnp.asarray(make_x((6, 4), seed=1))
  outputs = {}
  for name, norm in (('bn', nn.BatchNorm), ('en', EvalNorm)):
    model = _vmapped(norm)
    variables = model.init(KEY, x, False)
    outputs[name] = model.apply(variables, x, True, mutable=['batch_stats'])
  (y_bn, upd_bn), (y_en, upd_en) = outputs['bn'], outputs['en']
  np.testing.assert_array_equal(y_en, y_bn)
  jax.tree.map(np.testing.assert_array_equal,
               upd_en['batch_stats']['EvalNorm_0'],
               upd_bn['batch_stats']['BatchNorm_0'])
  # ... which is plain batch norm over the 6 examples.
  plain = EvalNorm(use_running_average=False)
  y_plain, _ = plain.apply(plain.init(KEY, x), x, mutable=['batch_stats'])
  np.testing.assert_allclose(y_en, y_plain, rtol=1e-5, atol=1e-5)


def test_per_example_vmap_evaluation_and_aux_loss_equal_batched():
  """Evaluation and the auxiliary loss under vmap equal the batched layer's."""
  x = jnp.asarray(make_x((6, 4), seed=2))
  batched = EvalNorm()
  variables = set_alpha_beta(batched.init(KEY, x, use_running_average=True),
                             0.3, 0.6)
  variables['batch_stats'] = {'mean': jnp.full((4,), 0.5),
                              'var': jnp.full((4,), 2.0)}
  model = _vmapped(EvalNorm)
  per_example = {col: {'EvalNorm_0': v} for col, v in variables.items()}
  np.testing.assert_allclose(
      model.apply(per_example, x, False),
      batched.apply(variables, x, use_running_average=True),
      rtol=1e-6, atol=1e-6)
  _, upd = model.apply(per_example, x, True,
                       mutable=['batch_stats', 'aux_loss'])
  _, upd_batched = batched.apply(variables, x, use_running_average=False,
                                 mutable=['batch_stats', 'aux_loss'])
  # Each vmapped example reports its share; their mean is the batch's loss.
  np.testing.assert_allclose(
      jnp.mean(upd['aux_loss']['EvalNorm_0']['loss']),
      total_aux_loss(upd_batched['aux_loss']), rtol=1e-5)


def test_unbatched_input_rejects_group_size():
  with pytest.raises(ValueError, match=r'group_size=2 .*\(4,\).*no batch axis'):
    EvalNorm(use_running_average=False, group_size=2).init(KEY, jnp.ones(4))


# 3. Module.tabulate.


def test_tabulate_shows_one_module_with_flops():
  x = jnp.ones((4, 5, 5, 3))
  table = EvalNorm(use_running_average=False).tabulate(
      KEY, x, compute_flops=True, show_repeated=True,
      console_kwargs={'width': 240, 'force_terminal': False})
  rows = [line for line in table.splitlines()
          if re.match(r'│ +\S* +│ +\w', line)]
  assert len(rows) == 1 and 'EvalNorm' in rows[0], table
  assert 'flops' in table


# 4. Checkpoints of auto-named layers.


class AutoNamed(nn.Module):
  """Compact model with unnamed norm layers: BatchNorm_0, BatchNorm_1, ..."""
  norm: type

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(5)(x)
    x = self.norm(use_running_average=not train)(x)
    x = nn.Dense(3)(nn.relu(x))
    return self.norm(use_running_average=not train)(x)


def _trained_autonamed_bn(x):
  model = AutoNamed(nn.BatchNorm)
  variables = model.init(KEY, x, False)
  for k in range(3):
    _, upd = model.apply(variables, x * (1 + k) + k, True,
                         mutable=['batch_stats'])
    variables = {**variables, **upd}
  return model, variables


def test_auto_named_batchnorm_checkpoint_converts():
  x = jnp.asarray(make_x((8, 4), seed=3))
  bn_model, bn_vars = _trained_autonamed_bn(x)
  assert 'BatchNorm_1' in bn_vars['batch_stats']
  en_model = AutoNamed(EvalNorm)
  template = jax.eval_shape(functools.partial(en_model.init, train=False),
                            KEY, x)
  converted = batchnorm_to_evalnorm(bn_vars, template=template)
  assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape,
                                                            template)
  np.testing.assert_array_equal(
      apply(en_model, converted, x, train=False),
      apply(bn_model, bn_vars, x, train=False))
  # Without a template the same renaming applies.
  assert jax.tree.structure(batchnorm_to_evalnorm(bn_vars)) == (
      jax.tree.structure(converted))


def test_conversion_names_the_layer_it_cannot_match():
  x = jnp.asarray(make_x((8, 4), seed=3))
  _, bn_vars = _trained_autonamed_bn(x)
  del bn_vars['batch_stats']['BatchNorm_1']
  template = jax.eval_shape(functools.partial(
      AutoNamed(EvalNorm).init, train=False), KEY, x)
  with pytest.raises(ValueError, match='batch_stats/EvalNorm_1/mean'):
    batchnorm_to_evalnorm(bn_vars, template=template)


# 6. dtypes: 'ema' evaluation is nn.BatchNorm's arithmetic in every setting.


# Input x dtype x force_float32_reductions with float32 parameters, and
# bfloat16 parameters where they change the arithmetic (no float32 forcing).
DTYPE_SETTINGS = [
    (input_dtype, dtype, jnp.float32, force)
    for input_dtype in (jnp.float32, jnp.bfloat16)
    for dtype in (None, jnp.bfloat16)
    for force in (True, False)] + [
        (jnp.float32, None, jnp.bfloat16, False),
        (jnp.float32, jnp.float32, jnp.bfloat16, False),
        (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16, False)]


@pytest.mark.parametrize('input_dtype,dtype,param_dtype,force_float32',
                         DTYPE_SETTINGS)
def test_ema_bit_identical_in_every_dtype_setting(input_dtype, dtype,
                                                  param_dtype, force_float32):
  rng = np.random.default_rng(4)
  x = jnp.asarray(100 + 3 * rng.normal(size=(4, 3, 3, 5)), input_dtype)
  kwargs = dict(dtype=dtype, param_dtype=param_dtype,
                force_float32_reductions=force_float32)
  bn, en, bn_vars, en_vars = _init_both(x, **kwargs)
  stats = {'mean': jnp.full((5,), 100.0), 'var': jnp.full((5,), 9.0)}
  bn_vars = {**bn_vars, 'batch_stats': stats}
  en_vars = {**en_vars, 'batch_stats': stats}
  y_bn = bn.apply(bn_vars, x, use_running_average=True)
  y = EvalNorm(eval_stats='ema', **kwargs).apply(en_vars, x,
                                                 use_running_average=True)
  assert y.dtype == y_bn.dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(y_bn, np.float32))
  # Training with one group normalizes the same way where the statistics
  # are float32 (in bfloat16 BatchNorm's one-pass variance around 100 is
  # mostly round-off, and EvalNorm's per-example form differs from it).
  # Elsewhere only the output dtypes are compared: traced, not run.
  def train_output(layer, variables):
    return layer.apply(variables, x, use_running_average=False,
                       mutable=['batch_stats'])[0]

  def run(layer, variables):
    if force_float32:
      return train_output(layer, variables)
    return jax.eval_shape(lambda v: train_output(layer, v), variables)
  y_bn, y = run(bn, bn_vars), run(en, en_vars)
  assert y.dtype == y_bn.dtype
  if force_float32:
    # One-pass variances of values around 100 keep ~4 digits in float32.
    tol = 1e-3 if y.dtype == jnp.float32 else 0.05
    np.testing.assert_allclose(np.asarray(y, np.float32),
                               np.asarray(y_bn, np.float32), atol=tol)


# 7. Non-finite inputs stay where they are.


@pytest.mark.parametrize('value', [1e20, np.inf])
def test_non_finite_input_does_not_spread(value):
  x = np.asarray(make_x((8, 5, 5, 6), seed=5))
  x[3, 2, 1, 4] = value
  x = jnp.asarray(x)
  bn, en, bn_vars, en_vars = _init_both(x)
  y_bn = bn.apply(bn_vars, x, use_running_average=True)
  y = en.apply(en_vars, x, use_running_average=True)  # alpha = beta = 0
  bad_bn, bad = np.sum(~np.isfinite(y_bn)), np.sum(~np.isfinite(y))
  assert bad == bad_bn == (0 if np.isfinite(value) else 1)
  np.testing.assert_array_equal(np.isfinite(y), np.isfinite(y_bn))
  # Per-channel weights: a zero channel takes nothing from the example.
  ab = {'alpha': jnp.asarray([0.5, 0, 0, 0, 0, 0], jnp.float32),
        'beta': jnp.asarray([0.5, 0, 0, 0, 0, 0], jnp.float32)}
  y = EvalNorm(per_channel=True).apply({**en_vars, 'evalnorm': ab}, x,
                                       use_running_average=True)
  assert np.sum(~np.isfinite(y)) == bad_bn


# 8. The auxiliary loss is reported once per call.


def test_aux_loss_does_not_accumulate_when_merged_back():
  x = jnp.asarray(make_x((8, 4, 4, 3), seed=6))
  layer = EvalNorm(group_size=2, use_running_average=False)
  variables = set_alpha_beta(layer.init(KEY, x), 0.2)
  for _ in range(3):
    before = variables
    _, upd = layer.apply(variables, x, mutable=True)
    variables = {**variables, **upd}
  losses = jax.tree.leaves(variables['aux_loss'])
  assert len(losses) == 1 and np.shape(losses[0]) == ()
  # The latest call's own loss, not a sum over calls.
  _, alone = layer.apply({k: v for k, v in before.items() if k != 'aux_loss'},
                         x, mutable=True)
  np.testing.assert_array_equal(losses[0], total_aux_loss(alone['aux_loss']))


def test_no_aux_loss_with_ema_evaluation():
  x = jnp.asarray(make_x((8, 4, 4, 3), seed=6))
  layer = EvalNorm(group_size=2, eval_stats='ema', use_running_average=False)
  _, upd = layer.apply(layer.init(KEY, x), x, mutable=True)
  assert not jax.tree.leaves(upd.get('aux_loss', {}))
