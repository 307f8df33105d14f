"""Helpers over EvalNorm's variable collections, for training code and notebooks.

    variables = model.init(rng, x, train=False)
    variables = set_alpha_beta(variables, rule_of_thumb(group_size=2))
    alpha_beta_by_layer(variables['evalnorm'])   # {'block1/norm1': {...}, ...}

Each function takes and returns plain nested dicts, so it works on the output
of ``init``/``apply``, on a ``TrainState`` field and on a restored checkpoint.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Tree = Mapping[str, Any]


def rule_of_thumb(group_size: int) -> float:
  """alpha = beta = 1/B^2, the paper's estimation-free choice."""
  return 1.0 / group_size**2


def one_over_b(group_size: int) -> float:
  """alpha = beta = 1/B, each example's share of its group (worse than 1/B^2)."""
  return 1.0 / group_size


def total_aux_loss(aux_loss: Tree) -> jax.Array:
  """Sum of the auxiliary losses sown by every EvalNorm layer (0 if none)."""
  return sum((jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(aux_loss)),
             jnp.zeros((), jnp.float32))


def set_alpha_beta(tree: Tree, alpha: float, beta: float | None = None) -> dict:
  """Returns ``tree`` with every alpha (and beta) set to the given value.

  ``tree`` is either an ``evalnorm`` collection or a full variables dict
  holding one; shapes (scalar or per-channel) are kept. ``beta`` defaults to
  ``alpha``.
  """
  beta = alpha if beta is None else beta
  for value, name in ((alpha, 'alpha'), (beta, 'beta')):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f'{name}={value} must lie in [0, 1]')
  if 'evalnorm' in tree:
    return {**tree, 'evalnorm': set_alpha_beta(tree['evalnorm'], alpha, beta)}
  flat = traverse_util.flatten_dict(dict(tree))
  values = {'alpha': alpha, 'beta': beta}
  return traverse_util.unflatten_dict({
      path: jnp.full(jnp.shape(leaf), values[path[-1]], jnp.float32)
      for path, leaf in flat.items()})


def alpha_beta_by_layer(evalnorm: Tree) -> dict[str, dict[str, Any]]:
  """{'layer/path': {'alpha': float or list, 'beta': ...}} for logs and JSON."""
  layers: dict[str, dict[str, Any]] = {}
  for path, leaf in traverse_util.flatten_dict(dict(evalnorm)).items():
    value = np.asarray(leaf, np.float64)
    layers.setdefault('/'.join(path[:-1]), {})[path[-1]] = (
        float(value) if value.ndim == 0 else value.tolist())
  return layers


def mean_alpha_beta(evalnorm: Tree) -> tuple[float, float]:
  """Mean alpha and mean beta over every layer (and channel), for progress logs."""
  flat = traverse_util.flatten_dict(dict(evalnorm))
  means = {name: float(np.mean([np.mean(v) for p, v in flat.items()
                                if p[-1] == name])) for name in ('alpha', 'beta')}
  return means['alpha'], means['beta']


def batchnorm_to_evalnorm(variables: Tree, alpha: float = 0.0,
                          beta: float | None = None,
                          per_channel: bool = False) -> dict:
  """Converts a plain ``nn.BatchNorm`` model's variables into EvalNorm's.

  ``params`` and ``batch_stats`` are returned unchanged (EvalNorm uses the same
  names); an ``evalnorm`` collection is added with alpha/beta for every layer
  that has batch statistics. With the default alpha = beta = 0 the converted
  model evaluates exactly like the BatchNorm one.
  """
  if 'batch_stats' not in variables:
    raise ValueError('variables have no batch_stats collection: '
                     f'found {sorted(variables)}')
  beta = alpha if beta is None else beta
  flat_stats = traverse_util.flatten_dict(dict(variables['batch_stats']))
  evalnorm = {}
  for path, mean in flat_stats.items():
    if path[-1] != 'mean':
      continue
    shape = jnp.shape(mean) if per_channel else ()
    evalnorm[path[:-1] + ('alpha',)] = jnp.full(shape, alpha, jnp.float32)
    evalnorm[path[:-1] + ('beta',)] = jnp.full(shape, beta, jnp.float32)
  return {**variables, 'evalnorm': traverse_util.unflatten_dict(evalnorm)}
