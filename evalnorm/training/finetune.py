"""The fine-tuning start (``config.init_from``): a new run's weights from a
trained one, found by the type of the norm slot's layers."""

import functools
from collections.abc import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from evalnorm.training import checkpoint, parallel

# How the norm layers of the new run start: the trained run's, or fresh.
INIT_NORMS = ('pretrained', 'reset')


def norm_layer_paths(model: nn.Module, group_size: int,
                     image_shape) -> frozenset[tuple[str, ...]]:
  """The module paths of ``model``'s norm layers, e.g. ``('stage1_block0',
  'norm1')``: the modules of the type its ``norm`` slot builds, whatever
  their names (found by tracing ``model.init``; no computation)."""
  norm_type = getattr(model.norm, 'func', model.norm)  # a partial or a class
  found = set()

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(context.module,
                                                        norm_type):
      found.add(tuple(context.module.path))
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0),
        jax.ShapeDtypeStruct((group_size, *image_shape), jnp.float32))
  return frozenset(found)


def restore_pretrained(directory: str, model: Callable[[int], nn.Module],
                       group_size: int, image_shape
                       ) -> tuple[dict, frozenset[tuple[str, ...]]]:
  """The variables of the run in ``directory``, restored by the template of
  ``model(num_classes)`` for the number of classes that run recorded
  (initialized on a batch of ``group_size`` images of ``image_shape``), and
  the paths of that model's norm layers (``norm_layer_paths``)."""
  manager = checkpoint.open_existing(directory)
  source = model(checkpoint.read_meta(manager)['num_classes'])
  template = parallel.init_variables(source, jax.random.PRNGKey(0), group_size,
                                     image_shape)
  return (checkpoint.restore_variables(manager, template),
          norm_layer_paths(source, group_size, image_shape))


def initialize_from(state, init_from: str, init_norm: str,
                    model: Callable[[int], nn.Module], group_size: int,
                    image_shape):
  """Fine-tuning start: ``state`` with the weights (and statistics) of the
  run in ``init_from``, whose architecture ``model(num_classes)`` builds (see
  ``restore_pretrained``).

  The classifier ``head`` stays freshly initialized, as a new task's would
  be. ``init_norm='reset'`` also keeps the fresh scale, bias and moving
  averages of every norm layer; alpha/beta always start from
  alpha_init/beta_init.
  """
  pretrained, norm_paths = restore_pretrained(init_from, model, group_size,
                                              image_shape)
  reset_norm = init_norm == 'reset'

  def merge(fresh, loaded, collection):
    fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh))
    loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded))
    for path in fresh:
      keep_fresh = path[0] == 'head' or (reset_norm and (
          collection == 'batch_stats' or path[:-1] in norm_paths))
      if keep_fresh:
        continue
      if path not in loaded:
        raise checkpoint.CheckpointError(
            f'init_from={init_from!r} has no {collection} '
            f'{"/".join(path)}: it was trained with another model or norm')
      fresh[path] = loaded[path]
    return flax.traverse_util.unflatten_dict(fresh)
  logging.info('Initialized from %s (norm layers: %s).', init_from, init_norm)
  return state.replace(
      params=merge(state.params, pretrained['params'], 'params'),
      batch_stats=merge(state.batch_stats, pretrained['batch_stats'],
                        'batch_stats'))
