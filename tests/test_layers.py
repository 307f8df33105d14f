"""Tests of the linen `evalnorm.EvalNorm` and its variable helpers.

Every equation is checked against the independent NumPy (float64) reference
in `layer_reference.py`, on NHWC, NCHW and dense inputs. tests/conftest.py
fakes 8 CPU devices so that the pmap equivalence really runs.
"""

import functools
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm import (alpha_beta_by_layer, batchnorm_to_evalnorm, EvalNorm,
                      one_over_b, rule_of_thumb, set_alpha_beta, total_aux_loss)
from layer_reference import (CONV, DENSE, EPS, NCHW, TOL, Toy, TwoLayer,
                             _from_last, _to_last, apply, assert_tree_allclose,
                             init, init_shapes, make_variables, make_x, np_aux,
                             np_blend, np_ema, np_eval, np_example_stats,
                             np_train,
                             random_variables, sown_losses)


# --------------------------------------------------------------------------
# 1-2. Train mode: output and EMA update.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('shape,axis', [(CONV, -1), (DENSE, -1), (NCHW, 1)],
                         ids=['conv', 'dense', 'nchw'])
def test_train_matches_batchnorm(shape, axis):
  x = make_x(shape, axis=axis)
  v, ref = make_variables(shape, axis=axis)
  bn_vars = {'params': v['params'], 'batch_stats': v['batch_stats']}
  y, upd = apply(EvalNorm(axis=axis, momentum=0.9),
                 v, x, use_running_average=False, mutable=['batch_stats'])
  y_bn, upd_bn = apply(nn.BatchNorm(axis=axis, momentum=0.9),
                       bn_vars, x, use_running_average=False,
                       mutable=['batch_stats'])
  np.testing.assert_allclose(y, y_bn, **TOL)
  assert_tree_allclose(upd['batch_stats'], upd_bn['batch_stats'], **TOL)
  # And against the NumPy reference.
  y_ref, _, mu, var = np_train(_to_last(x, axis), ref['scale'], ref['bias'],
                               None)
  np.testing.assert_allclose(y, _from_last(y_ref, axis), **TOL)
  np.testing.assert_allclose(upd['batch_stats']['mean'],
                             np_ema(ref['mean'], mu, 0.9), **TOL)
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             np_ema(ref['var'], var, 0.9), **TOL)


@pytest.mark.parametrize('group_size', [2, 4])
@pytest.mark.parametrize('shape,axis', [(CONV, -1), (DENSE, -1), (NCHW, 1)],
                         ids=['conv', 'dense', 'nchw'])
def test_train_groups(shape, axis, group_size):
  x = make_x(shape, axis=axis, seed=3)
  v, ref = make_variables(shape, axis=axis)
  layer = EvalNorm(axis=axis, momentum=0.8, group_size=group_size)
  y, upd = apply(layer, v, x, use_running_average=False,
                 mutable=['batch_stats'])
  y_ref, _, mu, var = np_train(_to_last(x, axis), ref['scale'], ref['bias'],
                               group_size)
  np.testing.assert_allclose(y, _from_last(y_ref, axis), **TOL)
  np.testing.assert_allclose(upd['batch_stats']['mean'],
                             np_ema(ref['mean'], mu, 0.8), **TOL)
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             np_ema(ref['var'], var, 0.8), **TOL)


@pytest.mark.parametrize('shape,axis', [(CONV, -1), (NCHW, 1)],
                         ids=['conv', 'nchw'])
def test_train_gradients_match_batchnorm(shape, axis):
  """Reverse and forward mode through the one-pass moments (a custom_jvp)."""
  x = make_x(shape, axis=axis, seed=4)
  weights = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)
  v, _ = make_variables(shape, axis=axis)

  def loss(layer, variables):
    def f(params, x):
      y, _ = layer.apply({**variables, 'params': params}, x,
                         use_running_average=False, mutable=['batch_stats'])
      return jnp.sum(jnp.tanh(y) * weights)
    return f

  bn_vars = {'batch_stats': v['batch_stats']}
  en = loss(EvalNorm(axis=axis), v)
  bn = loss(nn.BatchNorm(axis=axis), bn_vars)
  grads = jax.jit(jax.grad(en, argnums=(0, 1)))(v['params'], x)
  grads_bn = jax.jit(jax.grad(bn, argnums=(0, 1)))(v['params'], x)
  assert_tree_allclose(grads, grads_bn, rtol=1e-4, atol=1e-5)
  direction = jnp.asarray(make_x(shape, axis=axis, seed=6))

  @functools.partial(jax.jit, static_argnums=0)
  def tangent_of(loss_fn, params, x, direction):
    return jax.jvp(functools.partial(loss_fn, params), (x,), (direction,))[1]
  tangent = tangent_of(en, v['params'], x, direction)
  tangent_bn = tangent_of(bn, v['params'], x, direction)
  np.testing.assert_allclose(tangent, tangent_bn, rtol=1e-4, atol=1e-4)


def test_train_output_ignores_alpha_beta():
  x = make_x(CONV)
  v, _ = make_variables(CONV, alpha=0.1, beta=0.2)
  w, _ = make_variables(CONV, alpha=0.9, beta=0.7)
  layer = EvalNorm(group_size=2)
  run = jax.jit(functools.partial(layer.apply, use_running_average=False,
                                  mutable=['batch_stats']))
  assert_tree_allclose(run(v, x), run(w, x), rtol=0, atol=0)


def test_group_size_must_divide_batch():
  x = make_x((10, 3, 3, 2))
  v, _ = make_variables((10, 3, 3, 2))
  with pytest.raises(ValueError) as err:
    apply(EvalNorm(group_size=4), v, x, use_running_average=False,
          mutable=['batch_stats'])
  msg = str(err.value)
  assert re.search(r'\b10\b', msg) and re.search(r'\b4\b', msg), msg


# --------------------------------------------------------------------------
# 3-5. Eval mode.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('per_channel', [False, True])
@pytest.mark.parametrize('shape,axis', [(CONV, -1), (DENSE, -1), (NCHW, 1)],
                         ids=['conv', 'dense', 'nchw'])
def test_eval_evalnorm_formula(shape, axis, per_channel):
  x = make_x(shape, axis=axis, seed=5)
  v, ref = make_variables(shape, axis=axis, per_channel=per_channel)
  y = apply(EvalNorm(axis=axis, per_channel=per_channel),
            v, x, use_running_average=True)
  xl = _to_last(x, axis)
  y_ref = np_eval(xl, ref['scale'], ref['bias'], ref['mean'], ref['var'],
                  ref['alpha'], ref['beta'])
  np.testing.assert_allclose(y, _from_last(y_ref, axis), **TOL)
  # The reference is not degenerate: EMA-only evaluation differs.
  y_ema = np_eval(xl, ref['scale'], ref['bias'], ref['mean'], ref['var'],
                  0.0, 0.0)
  assert np.abs(y_ref - y_ema).max() > 1e-2


def test_eval_per_example_stats_definition():
  """Hand-checked case: alpha=beta=1 uses the example's own statistics."""
  x = make_x((2, 4, 4, 3), seed=7)
  v, ref = make_variables(x.shape, alpha=1.0, beta=1.0)
  y = apply(EvalNorm(), v, x, use_running_average=True)
  x64 = x.astype(np.float64)
  mu = x64.mean((1, 2), keepdims=True)
  var = x64.var((1, 2), keepdims=True)
  y_ref = ref['scale'] * (x64 - mu) / np.sqrt(var + EPS) + ref['bias']
  np.testing.assert_allclose(y, y_ref, **TOL)


def test_eval_clips_alpha_beta():
  """alpha/beta outside [0, 1] are clipped before use."""
  x = make_x(CONV, seed=8)
  alpha = np.array([1.7, -0.3, 0.4])
  beta = np.array([-0.5, 1.2, 0.6])
  v, ref = make_variables(CONV, per_channel=True, alpha=alpha, beta=beta)
  y = apply(EvalNorm(per_channel=True), v, x, use_running_average=True)
  y_ref = np_eval(x.astype(np.float64), ref['scale'], ref['bias'],
                  ref['mean'], ref['var'], np.clip(alpha, 0, 1),
                  np.clip(beta, 0, 1))
  np.testing.assert_allclose(y, y_ref, **TOL)


@pytest.mark.parametrize('shape,axis', [(CONV, -1), (DENSE, -1), (NCHW, 1)],
                         ids=['conv', 'dense', 'nchw'])
def test_eval_ema_equals_batchnorm(shape, axis):
  x = make_x(shape, axis=axis, seed=9)
  v, _ = make_variables(shape, axis=axis, alpha=0.4, beta=0.6)
  bn_vars = {'params': v['params'], 'batch_stats': v['batch_stats']}
  y_bn = apply(nn.BatchNorm(axis=axis, use_running_average=True), bn_vars, x)
  y_ema = apply(EvalNorm(axis=axis, eval_stats='ema'),
                v, x, use_running_average=True)
  np.testing.assert_allclose(y_ema, y_bn, rtol=1e-6, atol=1e-6)
  # 'evalnorm' with alpha = beta = 0 is plain EMA evaluation too.
  v0, _ = make_variables(shape, axis=axis, alpha=0.0, beta=0.0)
  y0 = apply(EvalNorm(axis=axis, eval_stats='evalnorm'),
             v0, x, use_running_average=True)
  np.testing.assert_allclose(y0, y_bn, rtol=1e-6, atol=1e-6)
  # ... while non-zero alpha/beta do change the 'evalnorm' output.
  y1 = apply(EvalNorm(axis=axis), v, x, use_running_average=True)
  assert np.abs(np.asarray(y1) - np.asarray(y_bn)).max() > 1e-2


@pytest.mark.parametrize('eval_stats', ['evalnorm', 'ema'])
@pytest.mark.parametrize('shape', [CONV, DENSE], ids=['conv', 'dense'])
def test_eval_each_example_alone(shape, eval_stats):
  x = make_x(shape, seed=10)
  v, _ = make_variables(shape, per_channel=True)
  layer = EvalNorm(eval_stats=eval_stats, group_size=2, per_channel=True)
  run = jax.jit(lambda v, x: layer.apply(v, x, use_running_average=True))
  y = run(v, x)
  for i in range(x.shape[0]):
    np.testing.assert_allclose(run(v, x[i:i + 1])[0], y[i],
                               rtol=1e-6, atol=1e-6)


def test_use_running_average_attribute_and_call_arg():
  x = make_x(CONV)
  v, _ = make_variables(CONV)
  y_attr = apply(EvalNorm(use_running_average=True), v, x)
  y_arg = apply(EvalNorm(), v, x, use_running_average=True)
  np.testing.assert_array_equal(y_attr, y_arg)


# --------------------------------------------------------------------------
# 6. Auxiliary loss (eqs. 7-9).
# --------------------------------------------------------------------------


@pytest.mark.parametrize('per_channel', [False, True])
@pytest.mark.parametrize('group_size', [2, None])
@pytest.mark.parametrize('shape', [CONV, DENSE], ids=['conv', 'dense'])
def test_aux_loss_value(shape, group_size, per_channel):
  x = make_x(shape, seed=11)
  v, ref = make_variables(shape, per_channel=per_channel)
  layer = EvalNorm(group_size=group_size, per_channel=per_channel,
                   momentum=0.5)
  _, upd = apply(layer, v, x, use_running_average=False,
                 mutable=['batch_stats', 'aux_loss'])
  losses = sown_losses(upd)
  assert len(losses) == 1 and np.shape(losses[0]) == ()
  # mu_E, var_E are the EMA statistics *before* this step's update.
  want = np_aux(x.astype(np.float64), ref['mean'], ref['var'], ref['alpha'],
                ref['beta'], group_size)
  np.testing.assert_allclose(total_aux_loss(upd['aux_loss']), want,
                             rtol=1e-5, atol=1e-6)
  # With the post-update EMA the value would differ noticeably (momentum 0.5).
  after = np_aux(x.astype(np.float64),
                 np.asarray(upd['batch_stats']['mean'], np.float64),
                 np.asarray(upd['batch_stats']['var'], np.float64),
                 ref['alpha'], ref['beta'], group_size)
  assert abs(after - want) > 1e-3


@pytest.mark.parametrize('shape,axis,group_size,per_channel', [
    (CONV, -1, 2, False), (CONV, -1, None, True), (DENSE, -1, 2, True),
    (DENSE, -1, None, False), (NCHW, 1, 2, True), (NCHW, 1, None, False)],
    ids=['conv-B2', 'conv-perchannel', 'dense-B2-perchannel', 'dense',
         'nchw-B2-perchannel', 'nchw'])
def test_aux_loss_gradient(shape, axis, group_size, per_channel):
  """d aux / d(alpha, beta) against central differences of the NumPy loss.

  The layer computes this gradient with a hand-written VJP (two per-example
  sums), so it is checked against float64 finite differences, not autodiff.
  """
  x = make_x(shape, seed=12, axis=axis)
  v, ref = make_variables(shape, axis=axis, per_channel=per_channel)
  layer = EvalNorm(axis=axis, group_size=group_size, per_channel=per_channel)

  def aux(ev):
    _, upd = layer.apply({**v, 'evalnorm': ev}, x, use_running_average=False,
                         mutable=['batch_stats', 'aux_loss'])
    return total_aux_loss(upd['aux_loss'])

  grads = jax.jit(jax.grad(aux))(v['evalnorm'])
  x64 = np.moveaxis(x.astype(np.float64), axis, -1)

  def np_loss(alpha, beta):
    return np_aux(x64, ref['mean'], ref['var'], alpha, beta, group_size)

  step = 1e-6
  for name in ('alpha', 'beta'):
    want = np.zeros(np.shape(ref[name]))
    for idx in np.ndindex(want.shape):
      plus = {k: np.array(ref[k], np.float64) for k in ('alpha', 'beta')}
      minus = {k: np.array(ref[k], np.float64) for k in ('alpha', 'beta')}
      plus[name][idx] += step
      minus[name][idx] -= step
      want[idx] = (np_loss(**plus) - np_loss(**minus)) / (2 * step)
    np.testing.assert_allclose(grads[name], want, rtol=1e-3, atol=1e-6)


def test_aux_loss_only_when_mutable_in_train():
  x = make_x(CONV)
  v, _ = make_variables(CONV)
  layer = EvalNorm(group_size=2)
  _, upd = apply(layer, v, x, use_running_average=False,
                 mutable=['batch_stats'])
  assert 'aux_loss' not in upd
  _, upd = apply(layer, v, x, use_running_average=True, mutable=['aux_loss'])
  assert not sown_losses(upd)


@pytest.mark.parametrize('group_size,per_channel', [(2, True), (None, False)])
def test_total_aux_loss_two_layers(group_size, per_channel):
  x = make_x(CONV, seed=12)
  model = TwoLayer(group_size=group_size, per_channel=per_channel)
  (v1, r1), (v2, r2) = (make_variables(CONV, per_channel=per_channel, seed=s)
                        for s in (21, 22))
  variables = {col: {'n1': v1[col], 'n2': v2[col]} for col in v1}
  assert (jax.tree.map(jnp.shape, variables)
          == jax.tree.map(jnp.shape, init_shapes(model, x, train=False)))
  _, upd = apply(model, variables, x, train=True,
                 mutable=['batch_stats', 'aux_loss'])
  assert set(upd['aux_loss']) == {'n1', 'n2'}
  assert len(sown_losses(upd)) == 2
  x64 = x.astype(np.float64)
  y1, _, _, _ = np_train(x64, r1['scale'], r1['bias'], group_size)
  h = np.tanh(y1)
  want = (np_aux(x64, r1['mean'], r1['var'], r1['alpha'], r1['beta'],
                 group_size)
          + np_aux(h, r2['mean'], r2['var'], r2['alpha'], r2['beta'],
                   group_size))
  np.testing.assert_allclose(total_aux_loss(upd['aux_loss']), want,
                             rtol=1e-5, atol=1e-6)


def test_total_aux_loss_sums_leaves():
  coll = {'a': {'loss': (jnp.float32(1.5), jnp.float32(2.0))},
          'b': {'c': {'loss': (jnp.float32(0.25),)}}}
  np.testing.assert_allclose(total_aux_loss(coll), 3.75)


# --------------------------------------------------------------------------
# 7. Stop-gradient isolation: the aux loss never changes training.
# --------------------------------------------------------------------------


def test_aux_loss_gradient_isolation():
  model = Toy(functools.partial(EvalNorm, group_size=2, per_channel=True))
  x = jnp.asarray(make_x((4, 6, 6, 2), seed=13))
  target = jnp.asarray(np.random.default_rng(14).normal(size=(4, 3)),
                       jnp.float32)
  # Random weights, EMA statistics and alpha/beta (all non-trivial).
  variables = random_variables(model, x, train=False, seed=1)
  params, stats, ev = (variables[c] for c in
                       ('params', 'batch_stats', 'evalnorm'))

  def losses(params, ev, x):
    out, upd = model.apply(
        {'params': params, 'batch_stats': stats, 'evalnorm': ev}, x,
        train=True, mutable=['batch_stats', 'aux_loss'])
    return jnp.mean((out - target) ** 2), total_aux_loss(upd['aux_loss'])

  # Two separately compiled programs, as in training with and without the
  # auxiliary loss; the second also differentiates w.r.t. alpha/beta.
  task = jax.jit(jax.grad(lambda p, x: losses(p, ev, x)[0], argnums=(0, 1)))

  @jax.jit
  def both(params, ev, x):
    total = lambda p, e, x: sum(losses(p, e, x))
    aux = lambda e: losses(params, e, x)[1]
    task_only = lambda e: losses(params, e, x)[0]
    return (jax.grad(total, argnums=(0, 2))(params, ev, x),
            jax.grad(aux)(ev), jax.grad(task_only)(ev))

  g_task = task(params, x)
  g_both, g_ev, g_ev_task = both(params, ev, x)
  assert jax.tree.structure(g_task) == jax.tree.structure(g_both)
  for a, b in zip(jax.tree.leaves(g_task), jax.tree.leaves(g_both)):
    np.testing.assert_array_equal(a, b)
  assert all(np.abs(a).max() > 0 for a in jax.tree.leaves(g_task))
  # The aux loss does reach alpha and beta of every layer ...
  for leaf in jax.tree.leaves(g_ev):
    assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0
  # ... and the task loss does not depend on them in train mode.
  for leaf in jax.tree.leaves(g_ev_task):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def test_aux_loss_gradient_at_default_init():
  """Online estimation starts at alpha=beta=0: it must not be stuck there."""
  x = make_x(CONV, seed=15)
  layer = EvalNorm(group_size=2)
  variables = jax.jit(functools.partial(layer.init, use_running_average=False))(
      jax.random.key(0), x)
  np.testing.assert_array_equal(variables['evalnorm']['alpha'], 0.0)
  np.testing.assert_array_equal(variables['evalnorm']['beta'], 0.0)
  stats = {'mean': jnp.full((3,), 0.2), 'var': jnp.full((3,), 1.5)}

  def aux(ev):
    _, upd = layer.apply({'params': variables['params'], 'batch_stats': stats,
                          'evalnorm': ev}, x, use_running_average=False,
                         mutable=['batch_stats', 'aux_loss'])
    return total_aux_loss(upd['aux_loss'])

  g = jax.jit(jax.grad(aux))(variables['evalnorm'])
  assert float(g['alpha']) != 0.0 and float(g['beta']) != 0.0, g


# --------------------------------------------------------------------------
# 8. Immutable and frozen statistics.
# --------------------------------------------------------------------------


def test_training_with_immutable_batch_stats_is_flax_error():
  """A forgotten mutable=['batch_stats'] fails loudly, as with nn.BatchNorm."""
  x = make_x(CONV, seed=16)
  v, _ = make_variables(CONV)
  bn_vars = {'params': v['params'], 'batch_stats': v['batch_stats']}
  for layer, variables in ((nn.BatchNorm(), bn_vars), (EvalNorm(), v),
                           (EvalNorm(group_size=2), v)):
    for mutable in (False, ['aux_loss']):
      with pytest.raises(flax.errors.ModifyScopeVariableError, match='mean'):
        layer.apply(variables, x, use_running_average=False, mutable=mutable)


def test_freeze_batch_stats():
  """The explicit opt-in: groups normalize, the moving averages stay put."""
  x = make_x(CONV, seed=16)
  v, ref = make_variables(CONV)
  layer = EvalNorm(group_size=2, momentum=0.9)
  frozen = EvalNorm(group_size=2, momentum=0.9, freeze_batch_stats=True)
  y_upd, upd = apply(layer, v, x, use_running_average=False,
                     mutable=['batch_stats', 'aux_loss'])
  # Immutable batch_stats: runs, with the same output and auxiliary loss.
  y, upd_frozen = apply(frozen, v, x, use_running_average=False,
                        mutable=['aux_loss'])
  assert set(upd_frozen) == {'aux_loss'}
  np.testing.assert_array_equal(y, y_upd)
  np.testing.assert_array_equal(total_aux_loss(upd_frozen['aux_loss']),
                                total_aux_loss(upd['aux_loss']))
  # Mutable but frozen: returned unchanged.
  _, same = apply(frozen, v, x, use_running_average=False,
                  mutable=['batch_stats'])
  assert_tree_allclose(same['batch_stats'], v['batch_stats'], rtol=0, atol=0)
  # Not frozen: the EMA moves as the reference says.
  _, _, mu, var = np_train(x.astype(np.float64), 1.0, 0.0, 2)
  np.testing.assert_allclose(upd['batch_stats']['mean'],
                             np_ema(ref['mean'], mu, 0.9), **TOL)
  np.testing.assert_allclose(upd['batch_stats']['var'],
                             np_ema(ref['var'], var, 0.9), **TOL)
  assert np.abs(upd['batch_stats']['mean'] - ref['mean']).max() > 1e-3


def test_train_with_moving_averages_is_frozen_bn():
  """Training normalizes as 'ema' evaluation does, the moving averages stay
  put, and the auxiliary loss measures the estimate against that: 0 at
  alpha = beta = 0, as the reference computes it elsewhere."""
  x = make_x(CONV, seed=17)
  frozen = EvalNorm(group_size=2, train_with_moving_averages=True)
  v, ref = make_variables(CONV)
  y_train, upd = apply(frozen, v, x, use_running_average=False,
                       mutable=['batch_stats', 'aux_loss'])
  y_ema = apply(frozen.clone(eval_stats='ema'), v, x, use_running_average=True)
  np.testing.assert_array_equal(y_train, y_ema)
  assert_tree_allclose(upd['batch_stats'], v['batch_stats'], rtol=0, atol=0)
  x64, mean, var = x.astype(np.float64), ref['mean'], ref['var']
  mu_hat, var_hat = np_blend(*np_example_stats(x64), mean, var, ref['alpha'],
                             ref['beta'])
  want = np.abs((x64 - mean) / np.sqrt(var + EPS)
                - (x64 - mu_hat) / np.sqrt(var_hat + EPS)).mean()
  np.testing.assert_allclose(total_aux_loss(upd['aux_loss']), want, **TOL)
  at_zero = set_alpha_beta(v, 0.0, 0.0)
  _, upd = apply(frozen, at_zero, x, use_running_average=False,
                 mutable=['aux_loss'])
  assert float(total_aux_loss(upd['aux_loss'])) < 1e-6 < want


# --------------------------------------------------------------------------
# 10. Converting a plain nn.BatchNorm model.
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def trained_bn_model():
  """A Toy model with nn.BatchNorm and a few train steps of batch_stats."""
  model = Toy(functools.partial(nn.BatchNorm, momentum=0.5))
  x = jnp.asarray(make_x((4, 6, 6, 2), seed=17))
  variables = random_variables(model, x, train=False, seed=2)
  step = jax.jit(functools.partial(model.apply, train=True,
                                   mutable=['batch_stats']))
  for k in range(3):
    _, upd = step(variables, x * (1 + k) + k)
    variables = {**variables, **upd}
  return model, variables, x


def test_batchnorm_to_evalnorm(trained_bn_model):
  bn_model, bn_vars, x = trained_bn_model
  snapshot = jax.tree.map(np.array, bn_vars)
  conv = batchnorm_to_evalnorm(bn_vars)
  assert set(conv) == {'params', 'batch_stats', 'evalnorm'}
  assert_tree_allclose(conv['params'], bn_vars['params'], rtol=0, atol=0)
  assert_tree_allclose(conv['batch_stats'], bn_vars['batch_stats'],
                       rtol=0, atol=0)
  assert_tree_allclose(bn_vars, snapshot, rtol=0, atol=0)  # input untouched
  # Same structure as an EvalNorm model's own init.
  en_model = Toy(functools.partial(EvalNorm, momentum=0.5))
  assert (jax.tree.map(jnp.shape, conv)
          == jax.tree.map(jnp.shape, init_shapes(en_model, x, train=False)))
  for leaf in jax.tree.leaves(conv['evalnorm']):
    np.testing.assert_array_equal(leaf, 0.0)

  y_bn = apply(bn_model, bn_vars, x, train=False)
  y_ema = apply(Toy(functools.partial(EvalNorm, eval_stats='ema')),
                conv, x, train=False)
  np.testing.assert_allclose(y_ema, y_bn, rtol=1e-6, atol=1e-6)
  y_en0 = apply(en_model, conv, x, train=False)
  np.testing.assert_allclose(y_en0, y_bn, rtol=1e-5, atol=1e-6)
  conv_ab = batchnorm_to_evalnorm(bn_vars, alpha=0.25)
  y_en = apply(en_model, conv_ab, x, train=False)
  assert np.abs(np.asarray(y_en) - np.asarray(y_bn)).max() > 1e-3


def test_batchnorm_to_evalnorm_per_channel(trained_bn_model):
  _, bn_vars, x = trained_bn_model
  conv = batchnorm_to_evalnorm(bn_vars, alpha=0.3, per_channel=True)
  assert set(conv['evalnorm']) == {'bn1', 'block'}
  for layer in (conv['evalnorm']['bn1'], conv['evalnorm']['block']['bn2']):
    assert set(layer) == {'alpha', 'beta'}
    for name in ('alpha', 'beta'):  # beta defaults to alpha
      assert np.shape(layer[name]) == (4,)
      np.testing.assert_allclose(layer[name], 0.3)
  conv = batchnorm_to_evalnorm(bn_vars, alpha=0.3, beta=0.6)
  np.testing.assert_allclose(conv['evalnorm']['bn1']['beta'], 0.6)
  assert np.shape(conv['evalnorm']['bn1']['alpha']) == ()
  # Works with a per-channel EvalNorm model.
  model = Toy(functools.partial(EvalNorm, per_channel=True))
  conv = batchnorm_to_evalnorm(bn_vars, alpha=0.3, per_channel=True)
  assert np.all(np.isfinite(apply(model, conv, x, train=False)))


# --------------------------------------------------------------------------
# 11. Variable structure.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('eval_stats', ['evalnorm', 'ema'])
@pytest.mark.parametrize('per_channel', [False, True])
def test_init_structure(per_channel, eval_stats):
  x = make_x(CONV)
  layer = EvalNorm(per_channel=per_channel, eval_stats=eval_stats,
                   alpha_init=0.25, beta_init=0.5)
  v_eval = init(layer, x, use_running_average=True)
  v_train = init(layer, x, use_running_average=False)
  cols = ('params', 'batch_stats', 'evalnorm')
  assert set(v_eval) == set(cols)
  shapes = lambda v: jax.tree.map(jnp.shape, {c: v[c] for c in cols})
  assert shapes(v_eval) == shapes(v_train)
  ab = (3,) if per_channel else ()
  assert shapes(v_eval) == {
      'params': {'scale': (3,), 'bias': (3,)},
      'batch_stats': {'mean': (3,), 'var': (3,)},
      'evalnorm': {'alpha': ab, 'beta': ab},
  }
  for v in (v_eval, v_train):
    np.testing.assert_array_equal(v['evalnorm']['alpha'], 0.25)
    np.testing.assert_array_equal(v['evalnorm']['beta'], 0.5)
    np.testing.assert_array_equal(v['params']['scale'], 1.0)
    np.testing.assert_array_equal(v['params']['bias'], 0.0)
    np.testing.assert_array_equal(v['batch_stats']['mean'], 0.0)
    np.testing.assert_array_equal(v['batch_stats']['var'], 1.0)
    assert v['params']['scale'].dtype == jnp.float32
    assert v['batch_stats']['mean'].dtype == jnp.float32


def test_defaults_match_batchnorm():
  en, bn = EvalNorm(), nn.BatchNorm()
  for name in ('use_running_average', 'axis', 'momentum', 'epsilon', 'dtype',
               'param_dtype', 'use_bias', 'use_scale', 'axis_name',
               'axis_index_groups', 'use_fast_variance'):
    assert getattr(en, name) == getattr(bn, name), name
  assert en.group_size is None and en.eval_stats == 'evalnorm'
  assert en.per_channel is False
  assert en.alpha_init == 0.0 and en.beta_init == 0.0


@pytest.mark.parametrize('use_scale,use_bias',
                         [(False, True), (True, False), (False, False)])
def test_affine_flags_like_batchnorm(use_scale, use_bias):
  x = make_x(CONV)
  kw = dict(use_scale=use_scale, use_bias=use_bias,
            scale_init=nn.initializers.constant(2.0),
            bias_init=nn.initializers.constant(-1.0))

  @jax.jit
  def init_and_train(x):
    out = []
    for module in (EvalNorm(**kw), nn.BatchNorm(**kw)):
      v = module.init(jax.random.key(0), x, use_running_average=True)
      y, _ = module.apply(v, x, use_running_average=False,
                          mutable=['batch_stats'])
      out.append((v.get('params', {}), y))
    return out

  (p_en, y_en), (p_bn, y_bn) = init_and_train(x)
  assert_tree_allclose(p_en, p_bn, rtol=0, atol=0)
  np.testing.assert_allclose(y_en, y_bn, **TOL)


# --------------------------------------------------------------------------
# 12. pmap equivalence (the ImageNet setup) and synchronized BN.
# --------------------------------------------------------------------------

D, B = 8, 2


def _replicate(tree):
  return jax.tree.map(lambda a: np.broadcast_to(a, (D,) + np.shape(a)), tree)


@pytest.fixture(scope='module')
def need_8_devices():
  if jax.local_device_count() < D:
    pytest.skip(f'needs {D} devices (tests/conftest.py sets XLA_FLAGS)')


@pytest.mark.usefixtures('need_8_devices')
def test_pmap_equals_group_size():
  x = make_x((D * B, 4, 4, 3), seed=18)
  v, _ = make_variables(x.shape)
  per_device = EvalNorm(momentum=0.9)                  # axis_name=None
  one_call = EvalNorm(momentum=0.9, group_size=B)
  mutable = ['batch_stats', 'aux_loss']

  def step(v, x):
    return per_device.apply(v, x, use_running_average=False, mutable=mutable)

  y_p, upd_p = jax.pmap(step)(_replicate(v), x.reshape((D, B) + x.shape[1:]))
  y_1, upd_1 = apply(one_call, v, x, use_running_average=False,
                     mutable=mutable)
  np.testing.assert_allclose(np.asarray(y_p).reshape(x.shape), y_1,
                             atol=1e-5, rtol=1e-5)
  # The pmean over devices of per-device batch_stats is the single-call EMA.
  mean_over_devices = jax.tree.map(lambda a: np.asarray(a).mean(0),
                                   upd_p['batch_stats'])
  assert_tree_allclose(mean_over_devices, upd_1['batch_stats'],
                       atol=1e-5, rtol=1e-5)
  # Per-device stats really differ (each device sees its own group).
  assert np.ptp(np.asarray(upd_p['batch_stats']['mean']), 0).max() > 1e-2
  # Equal-sized groups: the aux loss is the mean of the per-device ones.
  np.testing.assert_allclose(
      np.mean(jax.vmap(total_aux_loss)(upd_p['aux_loss'])),
      total_aux_loss(upd_1['aux_loss']), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures('need_8_devices')
def test_pmap_synchronized_batchnorm():
  x = make_x((D * B, 4, 4, 3), seed=19)
  v, _ = make_variables(x.shape)
  layer = EvalNorm(momentum=0.9, axis_name='batch')

  def step(v, x):
    return layer.apply(v, x, use_running_average=False,
                       mutable=['batch_stats'])

  y_p, upd_p = jax.pmap(step, axis_name='batch')(
      _replicate(v), x.reshape((D, B) + x.shape[1:]))
  bn_vars = {'params': v['params'], 'batch_stats': v['batch_stats']}
  y_bn, upd_bn = apply(nn.BatchNorm(momentum=0.9),
                       bn_vars, x, use_running_average=False,
                       mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(y_p).reshape(x.shape), y_bn,
                             atol=1e-5, rtol=1e-5)
  for d in range(D):
    assert_tree_allclose(jax.tree.map(lambda a: a[d], upd_p['batch_stats']),
                         upd_bn['batch_stats'], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------
# 13. bfloat16.
# --------------------------------------------------------------------------


def test_bfloat16():
  x32 = make_x(CONV, seed=20)
  x = jnp.asarray(x32, jnp.bfloat16)
  xr = np.asarray(x, np.float32)  # the bf16-rounded values in float32
  layer16 = EvalNorm(dtype=jnp.bfloat16, group_size=2)
  layer32 = EvalNorm(group_size=2)
  v16 = init_shapes(layer16, x, use_running_average=True)
  for leaf in jax.tree.leaves(v16):
    assert leaf.dtype == jnp.float32
  v, _ = make_variables(CONV, per_channel=False)
  y16, upd16 = apply(layer16, v, x, use_running_average=False,
                     mutable=['batch_stats', 'aux_loss'])
  y32, upd32 = apply(layer32, v, xr, use_running_average=False,
                     mutable=['batch_stats', 'aux_loss'])
  assert y16.dtype == jnp.bfloat16
  assert upd16['batch_stats']['mean'].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32,
                             rtol=2e-2, atol=5e-2)
  # Statistics are computed in float32 from the same (bf16-rounded) values,
  # so they are exactly float32's: any bfloat16 step would show here.
  jax.tree.map(np.testing.assert_array_equal, upd16['batch_stats'],
               upd32['batch_stats'])
  np.testing.assert_allclose(float(total_aux_loss(upd16['aux_loss'])),
                             float(total_aux_loss(upd32['aux_loss'])),
                             rtol=5e-2, atol=5e-3)
  e16 = apply(layer16, v, x, use_running_average=True)
  e32 = apply(layer32, v, xr, use_running_average=True)
  assert e16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(e16, np.float32), e32,
                             rtol=2e-2, atol=5e-2)


# --------------------------------------------------------------------------
# 14. mask.
# --------------------------------------------------------------------------


@pytest.mark.parametrize('use_running_average', [False, True])
def test_mask_not_implemented(use_running_average):
  x = make_x(CONV)
  v, _ = make_variables(CONV)
  with pytest.raises(NotImplementedError, match='(?i)mask'):
    apply(EvalNorm(), v, x, use_running_average=use_running_average,
          mask=jnp.ones(x.shape, bool), mutable=['batch_stats'])


# --------------------------------------------------------------------------
# 15. Helpers.
# --------------------------------------------------------------------------


def test_rule_of_thumb_and_one_over_b():
  for b in (1, 2, 4, 8, 32):
    assert rule_of_thumb(b) == pytest.approx(1.0 / b ** 2)
    assert one_over_b(b) == pytest.approx(1.0 / b)


def _evalnorm_collection(per_channel):
  model = TwoLayer(per_channel=per_channel)
  shapes = init_shapes(model, make_x(CONV), train=False)['evalnorm']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@pytest.mark.parametrize('per_channel', [False, True])
def test_set_alpha_beta(per_channel):
  coll = _evalnorm_collection(per_channel)
  before = jax.tree.map(np.array, coll)
  new = set_alpha_beta(coll, 0.125)
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, coll)
  for layer in ('n1', 'n2'):
    np.testing.assert_array_equal(new[layer]['alpha'], 0.125)
    np.testing.assert_array_equal(new[layer]['beta'], 0.125)  # beta = alpha
  new = set_alpha_beta(coll, 0.25, 0.75)
  for layer in ('n1', 'n2'):
    np.testing.assert_array_equal(new[layer]['alpha'], 0.25)
    np.testing.assert_array_equal(new[layer]['beta'], 0.75)
  assert_tree_allclose(coll, before, rtol=0, atol=0)  # input untouched
  # A full variables dict holding an 'evalnorm' collection works too.
  full = set_alpha_beta({'params': {'w': jnp.ones(2)}, 'evalnorm': coll}, 0.5)
  np.testing.assert_array_equal(full['params']['w'], 1.0)
  np.testing.assert_array_equal(full['evalnorm']['n2']['beta'], 0.5)


def test_alpha_beta_by_layer(trained_bn_model):
  _, bn_vars, _ = trained_bn_model
  coll = batchnorm_to_evalnorm(bn_vars, alpha=0.25, beta=0.5)['evalnorm']
  table = alpha_beta_by_layer(coll)
  assert set(table) == {'bn1', 'block/bn2'}
  for row in table.values():
    assert isinstance(row['alpha'], float) and isinstance(row['beta'], float)
    assert row['alpha'] == pytest.approx(0.25)
    assert row['beta'] == pytest.approx(0.5)
  coll = batchnorm_to_evalnorm(bn_vars, alpha=0.25, per_channel=True)
  coll = coll['evalnorm']
  coll = {'bn1': coll['bn1'],
          'block': {'bn2': {'alpha': coll['block']['bn2']['alpha'],
                            'beta': jnp.asarray([0.1, 0.2, 0.3, 0.4])}}}
  table = alpha_beta_by_layer(coll)
  assert isinstance(table['block/bn2']['beta'], list)
  assert table['block/bn2']['beta'] == pytest.approx([0.1, 0.2, 0.3, 0.4])
  assert table['bn1']['alpha'] == pytest.approx([0.25] * 4)
