"""Fast forms of two of EvalNorm's equations, kept apart from the readable ones.

Each function here computes exactly what a plain equation of
``evalnorm.layers`` computes (tests check them against each other and against
NumPy); they exist because XLA runs these forms faster or with less memory:

* ``mean_and_mean_abs_square``: E[x] and E[|x|^2] per example from one read
  of ``x``, reducing CPU rows of contiguous elements (``spatial_sums``);
* ``grouped_auxiliary_loss``: the auxiliary loss of the training pass with a
  hand-written gradient that needs two per-example sums instead of a
  full-size sign array per layer.

``benchmarks/cost.py --ablate`` measures what each one saves.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def abs_square(x: Array) -> Array:
  """|x|^2 elementwise, real for complex x (as flax's statistics use it)."""
  if jnp.iscomplexobj(x):
    return lax.square(lax.real(x)) + lax.square(lax.imag(x))
  return lax.square(x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def mean_and_mean_abs_square(x: Array, spatial_axes: tuple[int, ...]):
  """E[x] and E[|x|^2] over ``spatial_axes`` (kept), from one read of ``x``."""
  count = math.prod(x.shape[ax] for ax in spatial_axes)
  return spatial_sums((x, abs_square(x)), spatial_axes, scale=1 / count)


@mean_and_mean_abs_square.defjvp
def _mean_and_mean_abs_square_jvp(spatial_axes, primals, tangents):
  # The fast primal is a variadic reduction, which JAX cannot differentiate;
  # the tangents are plain means, linear in dx, so reverse mode transposes
  # them into broadcasts as it would for jnp.mean.
  (x,), (dx,) = primals, tangents
  mean = lambda v: jnp.mean(v, axis=spatial_axes, keepdims=True)
  primal_out = mean_and_mean_abs_square(x, spatial_axes)
  d_abs_square = 2 * jnp.real(jnp.conj(x) * dx) if jnp.iscomplexobj(x) else (
      2 * x * dx)
  return primal_out, (mean(dx), mean(d_abs_square))


# Rows of about this many elements for the CPU reduction (see spatial_sums).
_CPU_ROW_ELEMENTS = 1024


def spatial_sums(operands: tuple[Array, ...], spatial_axes: tuple[int, ...],
                 scale: float = 1.0) -> tuple[Array, ...]:
  """``scale`` times the sums of same-shaped arrays over ``spatial_axes`` (kept).

  On CPU the sums are one variadic reduction, and when the reduced axes come
  right after the batch axis (NHWC) it runs over rows of about
  ``_CPU_ROW_ELEMENTS`` contiguous elements (several positions' channels side
  by side), then adds the few partial rows: XLA:CPU otherwise reduces
  (N, H, W, C) over H, W with C-wide vectors, one reduction per sum, which is
  several times slower for C = 16-64. The ``scale`` is applied before the sums
  are reshaped to kept dimensions: in that order XLA:CPU's YNNPACK fusion also
  takes the normalization into the next convolution. Other platforms get
  separate reductions in the array's own layout, which their compilers fuse
  (a reshape could cost a relayout).
  """
  def separate(*arrays):
    return tuple(scale * jnp.sum(a, axis=spatial_axes, keepdims=True)
                 for a in arrays)

  def one_pass(*arrays):
    shape = arrays[0].shape
    kept = tuple(1 if ax in spatial_axes else n for ax, n in enumerate(shape))
    if spatial_axes != tuple(range(1, len(spatial_axes) + 1)):
      return tuple((scale * s).reshape(kept)
                   for s in _variadic_sum(arrays, spatial_axes))
    n = shape[0]
    positions = math.prod(shape[ax] for ax in spatial_axes)
    features = math.prod(shape[len(spatial_axes) + 1:])
    per_row = _largest_divisor_at_most(
        positions, max(1, _CPU_ROW_ELEMENTS // features))
    rows = tuple(a.reshape(n, positions // per_row, per_row * features)
                 for a in arrays)
    partial = _variadic_sum(rows, (1,))
    return tuple(
        (scale * p.reshape(n, per_row, features).sum(axis=1)).reshape(kept)
        for p in partial)

  return lax.platform_dependent(*operands, cpu=one_pass, default=separate)


def _variadic_sum(arrays, axes):
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  return lax.reduce(tuple(arrays), zeros,
                    lambda a, b: tuple(p + q for p, q in zip(a, b)), axes)


def _largest_divisor_at_most(n: int, bound: int) -> int:
  return max(d for d in range(1, min(n, bound) + 1) if n % d == 0)


def grouped_auxiliary_loss(x, example_mean, target_mean, target_inv_std,
                           mean_hat, inv_std):
  """mean |(x - target_mean) * target_inv_std - (x - mean_hat) * inv_std|.

  The plain loss of ``evalnorm.layers.auxiliary_loss`` for the layer's
  training normalization, where every argument but ``mean_hat`` and
  ``inv_std`` is already stop-gradiented by the caller and all but ``x`` are
  per-example (shape (N, 1, ..., C)). The error of example i is affine in
  x - mu_i with a per-example slope and offset, so the loss and its gradient
  need only two per-example sums over x, where autodiff of the plain formula
  would keep a full-size sign array per layer for the backward pass. Real
  inputs only.
  """
  return _affine_abs_error(x, example_mean, target_mean, target_inv_std,
                           mean_hat, inv_std)


def _affine_abs_error_parts(x, center, target_mean, target_inv_std, mean_hat,
                            inv_std):
  """Per-example slope, offset, sum sign(e) and sum sign(e) * (x - center)."""
  xc = x - center
  slope = target_inv_std - inv_std
  offset = (center - target_mean) * target_inv_std - (center - mean_hat) * inv_std
  sign = jnp.sign(xc * slope + offset)
  stat_shape = jnp.shape(center)  # (N, 1, ..., C): kept dims are reduced
  axes = tuple(ax for ax, (n, m) in enumerate(zip(x.shape, stat_shape))
               if m == 1 and n != 1)
  # One variadic reduction in x's own layout. Not spatial_sums' CPU row
  # layout: the per-example slope and offset broadcast inside it make
  # XLA:CPU's loop slower than this one (while plain moments gain from it).
  sign_sum, sign_xc_sum = _variadic_sum((sign, sign * xc), axes)
  return (slope, offset, sign_sum.reshape(stat_shape),
          sign_xc_sum.reshape(stat_shape))


@jax.custom_vjp
def _affine_abs_error(x, center, target_mean, target_inv_std, mean_hat, inv_std):
  # |e| = sign(e) * e and e = (x - center) * slope + offset, so the mean is
  # sum(slope * S_x + offset * S_1) / size.
  return _affine_abs_error_fwd(x, center, target_mean, target_inv_std,
                               mean_hat, inv_std)[0]


def _affine_abs_error_fwd(x, center, target_mean, target_inv_std, mean_hat,
                          inv_std):
  slope, offset, s1, sx = _affine_abs_error_parts(
      x, center, target_mean, target_inv_std, mean_hat, inv_std)
  value = jnp.sum(slope * sx + offset * s1) / x.size
  return value, (center, mean_hat, inv_std, s1, sx, x.size)


def _affine_abs_error_bwd(residuals, g):
  center, mean_hat, inv_std, s1, sx, size = residuals
  # de/d mean_hat = inv_std and de/d inv_std = -(x - mean_hat), where
  # sum sign(e) * (x - mean_hat) = S_x + (center - mean_hat) * S_1.
  d_mean_hat = (g / size) * s1 * inv_std
  d_inv_std = -(g / size) * (sx + (center - mean_hat) * s1)
  return None, None, None, None, d_mean_hat, d_inv_std


_affine_abs_error.defvjp(_affine_abs_error_fwd, _affine_abs_error_bwd)
