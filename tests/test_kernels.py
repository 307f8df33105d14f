"""The fast kernels of `evalnorm.kernels` against the plain equations and NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evalnorm import kernels, layers
from layer_reference import CONV, DENSE, NCHW, make_x, np_aux


@pytest.mark.parametrize('shape,spatial_axes', [
    ((3, 7, 7, 64), (1, 2)),     # CPU rows of 7 positions x 64 channels
    ((2, 32, 32, 16), (1, 2)),   # rows of 64 positions x 16 channels
    ((3, 5, 4, 2, 3), (1, 2)),   # two trailing feature axes
    ((4, 3, 5, 5), (2, 3)),      # NCHW: features lead the reduced axes
    ((5, 11, 6), (1,)),          # prime number of positions
    ((6, 4), ()),                # dense: nothing to reduce
])
def test_spatial_sums(shape, spatial_axes):
  x = make_x(shape, seed=7)
  sums = jax.jit(functools.partial(kernels.spatial_sums,
                                   spatial_axes=spatial_axes))(
      (jnp.asarray(x), jnp.square(jnp.asarray(x))))
  x64 = x.astype(np.float64)
  for got, want in zip(sums, (x64, x64**2)):
    assert got.shape == want.sum(spatial_axes, keepdims=True).shape
    np.testing.assert_allclose(got, want.sum(spatial_axes, keepdims=True),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('dtype', [np.float32, np.complex64])
def test_fast_moments_equal_plain_moments(dtype):
  """The one-pass moments (and their jvp) equal the two-pass equations."""
  x = make_x(CONV, seed=3).astype(dtype)
  if dtype == np.complex64:
    x = x + 1j * make_x(CONV, seed=4)
  fast = functools.partial(layers.example_moments, feature_axes=(3,),
                           use_fast_variance=True)
  plain = functools.partial(layers.example_moments, feature_axes=(3,),
                            use_fast_variance=False)
  for got, want in zip(jax.jit(fast)(x), jax.jit(plain)(x)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if dtype == np.float32:
    direction = make_x(CONV, seed=5)
    _, t_fast = jax.jvp(fast, (x,), (direction,))
    _, t_plain = jax.jvp(plain, (x,), (direction,))
    for got, want in zip(t_fast, t_plain):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _aux_inputs(shape, group_size, seed):
  x = jnp.asarray(make_x(shape, seed=seed))
  feature_axes = (x.ndim - 1,)
  stats = layers.train_statistics(x, feature_axes, group_size)
  rng = np.random.default_rng(seed)
  c = shape[-1]
  bshape = (1,) * (len(shape) - 1) + (c,)
  ema_mean = jnp.asarray(rng.normal(size=bshape), jnp.float32)
  ema_var = jnp.asarray(rng.uniform(0.5, 2.0, bshape), jnp.float32)
  return x, stats, ema_mean, ema_var


@pytest.mark.parametrize('shape,group_size', [(CONV, 2), (CONV, None),
                                              (DENSE, 4)])
def test_fused_auxiliary_loss_equals_plain(shape, group_size):
  """Value and alpha/beta gradient of the fused kernel = the plain formula."""
  x, stats, ema_mean, ema_var = _aux_inputs(shape, group_size, seed=8)
  normalized = layers.normalize_groups(x, stats.group_mean, stats.group_var,
                                       None, None, 1e-5)

  def fused(ab):
    return layers.layer_auxiliary_loss(x, stats, ema_mean, ema_var, ab[0],
                                       ab[1], 1e-5)

  def plain(ab):
    return layers.auxiliary_loss(x, normalized, stats.example_mean,
                                 stats.example_var, ema_mean, ema_var, ab[0],
                                 ab[1], 1e-5)
  ab = jnp.asarray([0.3, 0.6])
  np.testing.assert_allclose(jax.jit(fused)(ab), jax.jit(plain)(ab),
                             rtol=1e-5)
  np.testing.assert_allclose(jax.jit(jax.grad(fused))(ab),
                             jax.jit(jax.grad(plain))(ab), rtol=1e-4,
                             atol=1e-6)


def test_plain_auxiliary_loss_against_numpy():
  """The exported reference formula itself, against the float64 reference."""
  x, stats, ema_mean, ema_var = _aux_inputs(NCHW[:1] + (5, 5, 3), 2, seed=9)
  normalized = layers.normalize_groups(x, stats.group_mean, stats.group_var,
                                       None, None, 1e-5)
  got = layers.auxiliary_loss(x, normalized, stats.example_mean,
                              stats.example_var, ema_mean, ema_var, 0.3, 0.6,
                              1e-5)
  want = np_aux(np.asarray(x, np.float64), np.asarray(ema_mean, np.float64),
                np.asarray(ema_var, np.float64), 0.3, 0.6, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
