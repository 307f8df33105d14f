"""Tests of `evalnorm.nnx.EvalNorm`: against nnx.BatchNorm, the NumPy reference
and the linen layer, plus its helpers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import evalnorm
import evalnorm.nnx as ennx
from layer_reference import (CONV, DENSE, TOL, make_variables, make_x, np_aux,
                             np_ema, np_eval, np_train)


def _layer(c, **kwargs):
  return ennx.EvalNorm(c, rngs=nnx.Rngs(0), **kwargs)


def _with_values(layer, variables):
  """Sets an NNX layer's variables from a linen-layout variables dict."""
  layer.scale[...] = variables['params']['scale']
  layer.bias[...] = variables['params']['bias']
  layer.mean[...] = variables['batch_stats']['mean']
  layer.var[...] = variables['batch_stats']['var']
  layer.alpha[...] = variables['evalnorm']['alpha']
  layer.beta[...] = variables['evalnorm']['beta']
  return layer


def test_variables_and_types_like_batchnorm():
  bn = nnx.BatchNorm(6, rngs=nnx.Rngs(0))
  en = _layer(6, per_channel=True)
  bn_state, en_state = nnx.state(bn), nnx.state(en)
  for name in ('scale', 'bias', 'mean', 'var'):
    assert type(en_state[name]) is type(bn_state[name])
    np.testing.assert_array_equal(en_state[name][...], bn_state[name][...])
  assert issubclass(ennx.AlphaBeta, nnx.Variable)
  assert not issubclass(ennx.AlphaBeta, (nnx.Param, nnx.BatchStat))
  assert set(nnx.state(en, ennx.AlphaBeta)) == {'alpha', 'beta'}
  assert en.alpha[...].shape == (6,) and _layer(6).alpha[...].shape == ()
  assert set(nnx.state(en, nnx.Param)) == {'scale', 'bias'}


@pytest.mark.parametrize('shape', [CONV, DENSE], ids=['conv', 'dense'])
def test_train_and_ema_evaluation_equal_batchnorm(shape):
  x = jnp.asarray(make_x(shape, seed=1))
  c = shape[-1]
  bn = nnx.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
  en = _layer(c, momentum=0.9)
  np.testing.assert_allclose(en(x), bn(x), **TOL)
  for name in ('mean', 'var'):
    np.testing.assert_allclose(getattr(en, name)[...], getattr(bn, name)[...],
                               **TOL)
  bn.eval(), en.eval()
  ema = _layer(c, eval_stats='ema')
  for layer in (en, ema):
    layer.mean[...], layer.var[...] = bn.mean[...], bn.var[...]
  np.testing.assert_array_equal(ema(x, use_running_average=True), bn(x))
  np.testing.assert_array_equal(en(x), bn(x))  # alpha = beta = 0


@pytest.mark.parametrize('group_size', [2, None])
def test_against_numpy_reference(group_size):
  x = make_x(CONV, seed=2)
  variables, ref = make_variables(CONV, per_channel=True)
  layer = _with_values(_layer(3, momentum=0.8, group_size=group_size,
                              per_channel=True, estimate=True), variables)
  x64 = x.astype(np.float64)
  y = layer(jnp.asarray(x))
  y_ref, _, mu, var = np_train(x64, ref['scale'], ref['bias'], group_size)
  np.testing.assert_allclose(y, y_ref, **TOL)
  np.testing.assert_allclose(layer.mean[...], np_ema(ref['mean'], mu, 0.8),
                             **TOL)
  np.testing.assert_allclose(layer.var[...], np_ema(ref['var'], var, 0.8),
                             **TOL)
  np.testing.assert_allclose(
      ennx.total_aux_loss(layer),
      np_aux(x64, ref['mean'], ref['var'], ref['alpha'], ref['beta'],
             group_size), rtol=1e-5)
  layer.eval()
  y = layer(jnp.asarray(x))
  np.testing.assert_allclose(
      y, np_eval(x64, ref['scale'], ref['bias'], np.asarray(layer.mean[...]),
                 np.asarray(layer.var[...]), ref['alpha'], ref['beta']),
      **TOL)


def test_same_numbers_as_linen_layer():
  x = jnp.asarray(make_x(CONV, seed=3))
  variables, _ = make_variables(CONV)
  linen = evalnorm.EvalNorm(group_size=2)
  layer = _with_values(_layer(3, group_size=2, estimate=True), variables)
  y, upd = linen.apply(variables, x, use_running_average=False,
                       mutable=['batch_stats', 'aux_loss'])
  np.testing.assert_array_equal(layer(x), y)
  np.testing.assert_array_equal(layer.mean[...], upd['batch_stats']['mean'])
  np.testing.assert_array_equal(layer.var[...], upd['batch_stats']['var'])
  np.testing.assert_array_equal(ennx.total_aux_loss(layer),
                                evalnorm.total_aux_loss(upd['aux_loss']))
  layer.eval()
  np.testing.assert_array_equal(
      layer(x), linen.apply({**variables, **upd}, x, use_running_average=True))


class Net(nnx.Module):
  def __init__(self, rngs, norm=ennx.EvalNorm, **norm_kwargs):
    self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
    self.norm1 = norm(4, rngs=rngs, **norm_kwargs)
    self.blocks = nnx.List([nnx.Conv(4, 4, (3, 3), rngs=rngs),
                            norm(4, rngs=rngs, **norm_kwargs)])
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.norm1(self.conv(x)))
    x = self.blocks[1](self.blocks[0](x))
    return self.head(jnp.mean(x, axis=(1, 2)))


def test_gradient_isolation_exact():
  """The auxiliary loss has exactly zero gradient for every Param.

  Checked with alpha/beta away from 0, where a leak would not vanish.
  (Task gradients with and without the auxiliary loss in one compiled
  program may still differ in the last bit: XLA fuses the shared forward
  differently. The training program's test checks its own steps.)
  """
  x = jnp.asarray(make_x((4, 6, 6, 2), seed=4))
  target = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)),
                       jnp.float32)
  model = Net(nnx.Rngs(0), group_size=2, per_channel=True, estimate=True)
  ennx.set_alpha_beta(model, 0.3, 0.7)
  for layer in (model.norm1, model.blocks[1]):
    layer.mean[...] = jnp.full((4,), 0.2)
    layer.var[...] = jnp.full((4,), 1.7)

  def task(model):
    loss = jnp.mean((model(x) - target) ** 2)
    ennx.total_aux_loss(model)  # computed, cleared, not used
    return loss

  def aux(model):
    model(x)
    return ennx.total_aux_loss(model)

  wrt = nnx.DiffState(0, (nnx.Param, ennx.AlphaBeta))
  g_task = nnx.jit(nnx.grad(task, argnums=wrt))(model)
  g_aux = nnx.jit(nnx.grad(aux, argnums=wrt))(model)
  for leaf in jax.tree.leaves(nnx.state(g_aux, nnx.Param)):
    np.testing.assert_array_equal(leaf, 0.0)
  for leaf in jax.tree.leaves(nnx.state(g_task, ennx.AlphaBeta)):
    np.testing.assert_array_equal(leaf, 0.0)
  for leaf in jax.tree.leaves(nnx.state(g_aux, ennx.AlphaBeta)):
    assert np.abs(leaf).max() > 0
  assert all(np.abs(leaf).max() > 0
             for leaf in jax.tree.leaves(nnx.state(g_task, nnx.Param)))
  assert not jax.tree.leaves(nnx.state(model, ennx.AuxLoss))  # cleared


def test_total_aux_loss_reports_latest_call_and_clears():
  x = jnp.asarray(make_x((4, 6, 6, 2), seed=6))
  model = Net(nnx.Rngs(0), group_size=2, estimate=True,
              freeze_batch_stats=True)  # the same EMA for every call
  ennx.set_alpha_beta(model, 0.2)
  forward = nnx.jit(lambda model, x: model(x))  # eager dispatch takes seconds
  forward(model, x), forward(model, 2 * x)
  latest = ennx.total_aux_loss(model)
  assert float(ennx.total_aux_loss(model)) == 0.0  # cleared
  forward(model, 2 * x)
  np.testing.assert_allclose(ennx.total_aux_loss(model), latest, rtol=1e-6)
  model.eval()
  forward(model, x)
  assert float(ennx.total_aux_loss(model)) == 0.0  # nothing in evaluation


def test_optimizers_touch_only_their_variables():
  x = jnp.asarray(make_x((4, 6, 6, 2), seed=7))
  y = jnp.arange(4) % 3
  model = Net(nnx.Rngs(0), group_size=2, estimate=True)
  params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))  # a copy
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  ab_optimizer = ennx.AlphaBetaOptimizer(model, optax.sgd(100.0))

  def loss_fn(model):
    logits = model(x)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            + ennx.total_aux_loss(model))
  # Compiled: eager flax dispatch of a conv net's gradient takes seconds.
  grads = nnx.jit(nnx.grad(loss_fn, argnums=nnx.DiffState(
      0, (nnx.Param, ennx.AlphaBeta))))(model)
  update = nnx.jit(lambda opt, model, grads: opt.update(model, grads))
  update(ab_optimizer, model, grads)
  moved = jax.tree.leaves(nnx.state(model, ennx.AlphaBeta))
  assert all(np.all((v >= 0) & (v <= 1)) for v in moved)  # clipped
  assert any(np.any(v > 0) for v in moved)
  for a, b in zip(jax.tree.leaves(params),
                  jax.tree.leaves(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(a, b)
  before = jax.tree.map(np.asarray, nnx.state(model, ennx.AlphaBeta))
  update(optimizer, model, grads)
  for a, b in zip(jax.tree.leaves(before),
                  jax.tree.leaves(nnx.state(model, ennx.AlphaBeta))):
    np.testing.assert_array_equal(a, b)


def test_helpers():
  model = Net(nnx.Rngs(0), per_channel=True)
  ennx.set_alpha_beta(model, ennx.rule_of_thumb(4), ennx.one_over_b(4))
  by_layer = ennx.alpha_beta_by_layer(model)
  assert set(by_layer) == {'norm1', 'blocks/1'}
  assert by_layer['blocks/1']['alpha'] == [1 / 16] * 4
  assert by_layer['norm1']['beta'] == [0.25] * 4
  with pytest.raises(ValueError, match='alpha=1.5'):
    ennx.set_alpha_beta(model, 1.5)


def test_from_batchnorm_keeps_the_model():
  x = jnp.asarray(make_x((4, 6, 6, 2), seed=8))
  model = Net(nnx.Rngs(0), norm=nnx.BatchNorm)
  model(x), model(x + 1)  # moving statistics away from their init
  model.eval()
  before = model(x)
  ennx.from_batchnorm(model, group_size=2)
  assert isinstance(model.norm1, ennx.EvalNorm)
  assert isinstance(model.blocks[1], ennx.EvalNorm)
  np.testing.assert_array_equal(model(x), before)  # alpha = beta = 0
  ennx.set_alpha_beta(model, 0.25)
  assert np.abs(model(x) - before).max() > 1e-3
  with pytest.raises(ValueError, match='no nnx.BatchNorm'):
    ennx.from_batchnorm(model)


def test_unbatched_input_and_group_size():
  layer = _layer(4)
  np.testing.assert_array_equal(layer(jnp.arange(4.0)),
                                nnx.BatchNorm(4, rngs=nnx.Rngs(0))(
                                    jnp.arange(4.0)))
  with pytest.raises(ValueError, match='does not divide'):
    _layer(4, group_size=3)(jnp.ones((4, 4)))
  with pytest.raises(ValueError, match='no batch axis'):
    _layer(4, group_size=2)(jnp.ones((4,)))
  with pytest.raises(ValueError, match='eval_stats'):
    _layer(4, eval_stats='median')


def test_linen_and_nnx_calibration_agree():
  """One estimation step from the same state gives the same alpha/beta."""
  x = make_x((8, 5, 5, 3), seed=9)
  variables, _ = make_variables(CONV, alpha=0.1, beta=0.2)
  linen = evalnorm.EvalNorm()
  layer = _with_values(_layer(3), variables)
  got_linen = evalnorm.calibrate(
      functools.partial(linen.apply, use_running_average=False), variables,
      [x, x[::-1]], group_size=2)
  got_nnx = ennx.calibrate(layer, [x, x[::-1]], group_size=2)
  np.testing.assert_allclose(got_nnx['']['alpha'], got_linen['alpha'],
                             rtol=1e-6)
  np.testing.assert_allclose(got_nnx['']['beta'], got_linen['beta'],
                             rtol=1e-6)
  assert abs(got_linen['alpha'] - 0.1) > 1e-3
