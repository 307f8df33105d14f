"""Helpers over EvalNorm's variable collections, for training code and notebooks.

    variables = model.init(rng, x, train=False)
    variables = set_alpha_beta(variables, rule_of_thumb(group_size=2))
    alpha_beta_by_layer(variables['evalnorm'])   # {'block1/norm1': {...}, ...}

Each function takes and returns plain nested dicts, so it works on the output
of ``init``/``apply``, on a ``TrainState`` field and on a restored checkpoint.
"""

import re
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
    layers.setdefault('/'.join(map(str, path[:-1])), {})[path[-1]] = (
        float(value) if value.ndim == 0 else value.tolist())
  return layers


def mean_alpha_beta(evalnorm: Tree) -> tuple[float, float]:
  """Mean alpha and mean beta over every layer (and channel), for progress logs."""
  flat = traverse_util.flatten_dict(dict(evalnorm))
  means = {name: float(np.mean([np.mean(v) for p, v in flat.items()
                                if p[-1] == name])) for name in ('alpha', 'beta')}
  return means['alpha'], means['beta']


# flax names an unnamed layer after its class and a per-class counter, so a
# model that swaps every nn.BatchNorm for EvalNorm has EvalNorm_k where the
# BatchNorm model had BatchNorm_k.
_AUTO_NAMED_BATCHNORM = re.compile(r'BatchNorm_(\d+)')


def _evalnorm_name(name: str) -> str:
  return _AUTO_NAMED_BATCHNORM.sub(r'EvalNorm_\1', name) if (
      _AUTO_NAMED_BATCHNORM.fullmatch(name)) else name


def _rename_auto_named(collection: Tree) -> dict:
  flat = traverse_util.flatten_dict(dict(collection))
  return traverse_util.unflatten_dict(
      {tuple(map(_evalnorm_name, path)): leaf for path, leaf in flat.items()})


def _check_against(converted: Tree, template: Tree) -> None:
  """Every params/batch_stats variable of the EvalNorm model, with its shape."""
  for collection in ('params', 'batch_stats'):
    have = traverse_util.flatten_dict(dict(converted.get(collection, {})))
    for path, leaf in traverse_util.flatten_dict(
        dict(template.get(collection, {}))).items():
      name = f'{collection}/{"/".join(path)}'
      if path not in have:
        layers = sorted({'/'.join(p[:-1]) for p in have})
        raise ValueError(f'{name} of the EvalNorm model has no counterpart in '
                         f'the BatchNorm variables (their layers: {layers})')
      if jnp.shape(have[path]) != jnp.shape(leaf):
        raise ValueError(f'{name}: shape {jnp.shape(have[path])} in the '
                         f'BatchNorm variables, {jnp.shape(leaf)} in the '
                         'EvalNorm model')


def batchnorm_to_evalnorm(variables: Tree, alpha: float = 0.0,
                          beta: float | None = None,
                          per_channel: bool = False,
                          template: Tree | None = None) -> dict:
  """Converts a plain ``nn.BatchNorm`` model's variables into EvalNorm's.

  ``params`` and ``batch_stats`` keep their values (EvalNorm uses the same
  variable names); auto-named layers (``BatchNorm_0``, ...) are renamed to
  the names flax gives the same layers in the EvalNorm model
  (``EvalNorm_0``, ...). An ``evalnorm`` collection is added with alpha/beta
  for every layer that has batch statistics; with the default alpha = beta = 0
  the converted model evaluates exactly like the BatchNorm one.

  ``template``: the EvalNorm model's variables (or their shapes, e.g. from
  ``jax.eval_shape(model.init, ...)``). When given, every ``params`` and
  ``batch_stats`` variable of the template must be found with its shape (a
  ``ValueError`` names the first that is not), and alpha/beta take the
  template's shapes (scalar or per channel).
  """
  if 'batch_stats' not in variables:
    raise ValueError('variables have no batch_stats collection: '
                     f'found {sorted(variables)}')
  beta = alpha if beta is None else beta
  converted = {k: (_rename_auto_named(v) if k in ('params', 'batch_stats')
                   else v) for k, v in variables.items()}
  if template is not None:
    _check_against(converted, template)
  if template is not None and 'evalnorm' in template:
    return {**converted, 'evalnorm': set_alpha_beta(template['evalnorm'],
                                                    alpha, beta)}
  evalnorm = {}
  for path, mean in traverse_util.flatten_dict(
      dict(converted['batch_stats'])).items():
    if path[-1] != 'mean':
      continue
    shape = jnp.shape(mean) if per_channel else ()
    evalnorm[path[:-1] + ('alpha',)] = jnp.full(shape, alpha, jnp.float32)
    evalnorm[path[:-1] + ('beta',)] = jnp.full(shape, beta, jnp.float32)
  return {**converted, 'evalnorm': traverse_util.unflatten_dict(evalnorm)}
