"""An independent float64 NumPy reference of EvalNorm's equations, and helpers.

Shared by the layer tests (linen, NNX, kernels, drop-in):

  train:   y = scale * (x - mu_g) / sqrt(var_g + eps) + bias      (per group g)
  EMA:     mean <- m * mean + (1 - m) * avg_g(mu_g)   (same for var, biased)
  eval:    mu_hat  = a * mu_i + (1 - a) * mu_E
           var_hat = b * var_i + (1 - b) * var_E + b * (1 - b) * (mu_i - mu_E)^2
           y       = scale * (x - mu_hat) / sqrt(var_hat + eps) + bias
  aux:     L = mean | (x - mu_B) / sqrt(var_B + eps)
                      - (x - mu_hat) / sqrt(var_hat + eps) |     (eqs. 7-9)
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from evalnorm import EvalNorm

EPS = 1e-5
CONV = (8, 5, 5, 3)      # (N, H, W, C)
DENSE = (8, 4)           # (N, C)
NCHW = (4, 3, 5, 5)      # (N, C, H, W), used with axis=1
TOL = dict(rtol=1e-5, atol=2e-5)


# --------------------------------------------------------------------------
# Independent NumPy (float64) reference of the equations above.
# All functions take channel-last arrays; `_to_last`/`_from_last` handle axis.
# --------------------------------------------------------------------------


def _to_last(x, axis):
  return np.moveaxis(np.asarray(x, np.float64), axis, -1)


def _from_last(x, axis):
  return np.moveaxis(x, -1, axis)


def np_train(x, scale, bias, group_size, eps=EPS):
  """Train-mode output, normalized input and per-group-averaged statistics."""
  n, c = x.shape[0], x.shape[-1]
  g = n if group_size is None else group_size
  xg = x.reshape((n // g, g) + x.shape[1:])
  axes = tuple(range(1, xg.ndim - 1))  # examples of the group and spatial axes
  mu = xg.mean(axes, keepdims=True)
  var = ((xg - mu) ** 2).mean(axes, keepdims=True)  # biased
  xhat = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
  y = scale * xhat + bias
  return y, xhat, mu.reshape(-1, c).mean(0), var.reshape(-1, c).mean(0)


def np_ema(old, new, momentum):
  return momentum * old + (1 - momentum) * new


def np_example_stats(x):
  """Per-example statistics over every axis but batch and channel."""
  axes = tuple(range(1, x.ndim - 1))  # () for a dense (N, C) input
  if not axes:
    return x.copy(), np.zeros_like(x)
  mu = x.mean(axes, keepdims=True)
  return mu, ((x - mu) ** 2).mean(axes, keepdims=True)


def np_blend(mu_i, var_i, mu_e, var_e, a, b):
  a, b = np.clip(a, 0, 1), np.clip(b, 0, 1)
  mu_hat = a * mu_i + (1 - a) * mu_e
  var_hat = b * var_i + (1 - b) * var_e + b * (1 - b) * (mu_i - mu_e) ** 2
  return mu_hat, var_hat


def np_eval(x, scale, bias, mu_e, var_e, a, b, eps=EPS):
  mu_hat, var_hat = np_blend(*np_example_stats(x), mu_e, var_e, a, b)
  return scale * (x - mu_hat) / np.sqrt(var_hat + eps) + bias


def np_aux(x, mu_e, var_e, a, b, group_size, eps=EPS):
  _, xhat_b, _, _ = np_train(x, 1.0, 0.0, group_size, eps)
  mu_hat, var_hat = np_blend(*np_example_stats(x), mu_e, var_e, a, b)
  xhat_e = (x - mu_hat) / np.sqrt(var_hat + eps)
  return np.abs(xhat_b - xhat_e).mean()


# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------


def make_x(shape, seed=0, axis=-1, dtype=np.float32):
  """Input with a distinct mean and spread per channel."""
  rng = np.random.default_rng(seed)
  c = shape[axis]
  bshape = [1] * len(shape)
  bshape[axis] = c
  loc = rng.normal(0.0, 1.0, c).reshape(bshape)
  spread = rng.uniform(0.5, 2.0, c).reshape(bshape)
  return (rng.normal(size=shape) * spread + loc).astype(dtype)


def apply(module, variables, *args, mutable=False, **kwargs):
  """`module.apply` under jax.jit: one compile instead of op-by-op dispatch."""
  fn = functools.partial(module.apply, mutable=mutable, **kwargs)
  return jax.jit(fn)(variables, *args)


def init(module, *args, **kwargs):
  """`module.init` under jax.jit."""
  return jax.jit(functools.partial(module.init, **kwargs))(
      jax.random.key(0), *args)


def init_shapes(module, *args, **kwargs):
  """The variable structure of `module.init` (traced only, nothing runs)."""
  fn = functools.partial(module.init, **kwargs)
  return jax.eval_shape(fn, jax.random.key(0), *args)


def random_variables(module, *args, seed=0, **kwargs):
  """Variables of `module` filled with non-trivial random values."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('alpha', 'beta'):
      value = rng.uniform(0.05, 0.95, leaf.shape)
    elif name == 'scale':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == 'var':
      value = rng.uniform(0.5, 2.0, leaf.shape)
    else:  # kernels, biases, running means
      value = rng.normal(0.0, 0.5, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(
      fill, init_shapes(module, *args, **kwargs))


def make_variables(shape, axis=-1, per_channel=False, seed=1, alpha=None,
                   beta=None, **layer_kwargs):
  """Variables of a single EvalNorm layer with non-trivial values.

  Returns (variables for the layer, float64 copies of the same values).
  """
  rng = np.random.default_rng(seed)
  c = shape[axis]
  layer = EvalNorm(axis=axis, per_channel=per_channel, **layer_kwargs)
  shapes = init_shapes(layer, jnp.zeros(shape, jnp.float32),
                       use_running_average=True)
  ab_shape = (c,) if per_channel else ()
  if alpha is None:
    alpha = rng.uniform(0.05, 0.95, ab_shape)
  if beta is None:
    beta = rng.uniform(0.05, 0.95, ab_shape)
  vals = {
      'scale': rng.uniform(0.5, 1.5, c),
      'bias': rng.normal(0.0, 0.5, c),
      'mean': rng.normal(0.0, 1.0, c),
      'var': rng.uniform(0.5, 2.0, c),
      'alpha': np.broadcast_to(np.asarray(alpha, np.float64), ab_shape),
      'beta': np.broadcast_to(np.asarray(beta, np.float64), ab_shape),
  }
  # The reference uses the float32-rounded values the layer actually sees.
  vals = {k: np.asarray(v, np.float32).astype(np.float64)
          for k, v in vals.items()}
  variables = {
      'params': {'scale': vals['scale'], 'bias': vals['bias']},
      'batch_stats': {'mean': vals['mean'], 'var': vals['var']},
      'evalnorm': {'alpha': vals['alpha'], 'beta': vals['beta']},
  }
  variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), variables)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape,
                                                            dict(shapes))
  return variables, vals


def assert_tree_allclose(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u, np.float64),
                               np.asarray(v, np.float64), **tol)


def sown_losses(updates):
  return jax.tree.leaves(updates.get('aux_loss', {}))


class TwoLayer(nn.Module):
  """x -> EvalNorm -> tanh -> EvalNorm: the smallest model with two layers."""
  group_size: int | None = None
  per_channel: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(EvalNorm, group_size=self.group_size,
                             per_channel=self.per_channel,
                             use_running_average=not train)
    return norm(name='n2')(jnp.tanh(norm(name='n1')(x)))


class Block(nn.Module):
  norm: Callable[..., Any]

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), name='conv2')(x)
    return self.norm(name='bn2')(x, use_running_average=not train)


class Toy(nn.Module):
  """Conv -> norm -> relu -> Block(conv -> norm) -> pool -> dense.

  The norm layers are named explicitly so that a plain-BatchNorm model and an
  EvalNorm model share one variable structure; `block/bn2` tests nesting.
  """
  norm: Callable[..., Any]

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), name='conv1')(x)
    x = self.norm(name='bn1')(x, use_running_average=not train)
    x = Block(self.norm, name='block')(nn.relu(x), train)
    return nn.Dense(3, name='head')(x.mean((1, 2)))
