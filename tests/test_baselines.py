"""Batch Renorm against a NumPy reference, and the GroupNorm slot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm import baselines


def renorm_reference(x, mean_e, var_e, group_size, rmax, dmax, eps):
  """Ioffe (2017), Algorithm 1, per group of ``group_size`` examples (float64)."""
  x = np.asarray(x, np.float64)
  groups = x.reshape((-1, group_size) + x.shape[1:])
  axes = tuple(range(1, groups.ndim - 1))
  mu = groups.mean(axis=axes, keepdims=True)
  sigma = np.sqrt(groups.var(axis=axes, keepdims=True) + eps)
  sigma_e = np.sqrt(var_e + eps)
  r = np.clip(sigma / sigma_e, 1 / rmax, rmax)
  d = np.clip((mu - mean_e) / sigma_e, -dmax, dmax)
  y = (groups - mu) / sigma * r + d
  return y.reshape(x.shape), mu.reshape(-1, x.shape[-1]), (sigma**2 - eps).reshape(-1, x.shape[-1])


def renorm_variables(features, mean, var, num_updates):
  return {'params': {'scale': jnp.ones(features), 'bias': jnp.zeros(features)},
          'batch_stats': {'mean': jnp.asarray(mean, jnp.float32),
                          'var': jnp.asarray(var, jnp.float32),
                          'num_updates': jnp.asarray(num_updates, jnp.float32)}}


@pytest.mark.parametrize('group_size', [2, 4])
def test_renorm_forward_and_ema_match_reference(group_size):
  rng = np.random.default_rng(0)
  x = rng.normal(1.5, 2.0, (8, 5, 5, 3)).astype(np.float32)
  mean_e, var_e = np.array([0.0, 1.0, 3.0]), np.array([1.0, 0.5, 9.0])
  layer = baselines.BatchRenorm(use_running_average=False, group_size=group_size,
                                rmax=2.0, dmax=1.0, warmup_steps=10)
  # Halfway through the ramp: rmax = 1.5, dmax = 0.5.
  variables = renorm_variables(3, mean_e, var_e, num_updates=5)
  y, updates = layer.apply(variables, x, mutable=['batch_stats'])
  expected, mu, var = renorm_reference(x, mean_e, var_e, group_size, 1.5, 0.5,
                                       layer.epsilon)
  np.testing.assert_allclose(y, expected, atol=1e-5)
  stats = updates['batch_stats']
  np.testing.assert_allclose(stats['mean'], 0.99 * mean_e + 0.01 * mu.mean(0),
                             atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.99 * var_e + 0.01 * var.mean(0),
                             atol=1e-5)
  assert float(stats['num_updates']) == 6


def test_renorm_starts_as_batchnorm_and_r_d_carry_no_gradient():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(0.5, 3.0, (4, 3, 3, 2)), jnp.float32)
  mean_e, var_e = np.array([2.0, -1.0]), np.array([0.3, 4.0])
  layer = baselines.BatchRenorm(use_running_average=False, group_size=2,
                                warmup_steps=10)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def renorm_loss(x, num_updates):
    y = layer.apply(renorm_variables(2, mean_e, var_e, num_updates), x)
    return jnp.sum(y * weights)

  # Ramp at 0: r clipped to 1 and d to 0, i.e. plain per-group BatchNorm.
  plain, _, _ = renorm_reference(x, mean_e, var_e, 2, 1.0, 0.0, layer.epsilon)
  np.testing.assert_allclose(
      jax.jit(layer.apply)(renorm_variables(2, mean_e, var_e, 0), x), plain,
      atol=1e-5)

  # With r, d active, the gradient equals that of the same expression with
  # r and d frozen as constants (computed outside autodiff).
  _, mu, var = renorm_reference(x, mean_e, var_e, 2, 2.0, 1.0, layer.epsilon)
  sigma_e = np.sqrt(var_e + layer.epsilon)
  r = np.clip(np.sqrt(var + layer.epsilon) / sigma_e, 0.5, 2.0)
  d = np.clip((mu - mean_e) / sigma_e, -1.0, 1.0)

  def frozen_loss(x):
    groups = x.reshape(2, 2, 3, 3, 2)
    m = groups.mean(axis=(1, 2, 3), keepdims=True)
    v = groups.var(axis=(1, 2, 3), keepdims=True)
    y = ((groups - m) / jnp.sqrt(v + layer.epsilon) * r[:, None, None, None]
         + d[:, None, None, None])
    return jnp.sum(y.reshape(x.shape) * weights)

  # Compiled: eager dispatch of these gradients takes seconds.
  np.testing.assert_allclose(jax.jit(jax.grad(renorm_loss))(x, 1000.0),
                             jax.jit(jax.grad(frozen_loss))(x), atol=1e-4)


def test_renorm_eval_uses_moving_averages():
  x = np.random.default_rng(2).normal(size=(3, 2, 2, 2)).astype(np.float32)
  mean_e, var_e = np.array([0.5, -0.5]), np.array([2.0, 0.25])
  layer = baselines.BatchRenorm(use_running_average=True)
  y = layer.apply(renorm_variables(2, mean_e, var_e, 7), x)
  np.testing.assert_allclose(y, (x - mean_e) / np.sqrt(var_e + layer.epsilon),
                             atol=1e-6)


@pytest.mark.parametrize('channels, expected', [(64, 32), (16, 16), (48, 24), (7, 7)])
def test_groupnorm_groups(channels, expected):
  assert baselines.groupnorm_groups(channels, 32) == expected


def test_groupnorm_slot_ignores_batch_arguments():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 4, 16)), jnp.float32)
  slot = baselines.GroupNormSlot(num_groups=32, use_running_average=True)
  variables = slot.init(jax.random.PRNGKey(0), x)
  assert 'batch_stats' not in variables
  y = slot.apply(variables, x)
  # 16 channels -> 16 groups of one channel: each (example, channel) is
  # standardized over H, W.
  expected = (x - x.mean(axis=(1, 2), keepdims=True)) / jnp.sqrt(
      x.var(axis=(1, 2), keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, expected, atol=1e-5)
