"""The norm layers and models a config names, and the fine-tuning start.

One table per concept that varies: ``NORMS`` (norm layers) and ``MODELS``
(classifiers); datasets are ``data.DATASETS``. Config validation, the
evaluation modes and the reports derive their lists from these tables, so a
new norm layer is its module plus one ``NORMS`` entry, a new classifier one
``MODELS`` entry.

Kept apart from ``train``: offline estimation, the benchmarks and the
experiments build models and restore them without the training loop.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from evalnorm import baselines, checkpoint, config_lib, models, parallel
from evalnorm.layers import EvalNorm


@dataclasses.dataclass(frozen=True)
class Norm:
  """A layer of the models' ``norm`` slot, as ``config.norm`` names it.

  make: config -> the layer (a ModuleDef, module attributes bound).
  batch_statistics: normalizes by batch statistics in training; evaluated
    through EvalNorm in every mode of ``evaluation.BATCH_STATISTICS_MODES``,
    and offline estimation applies.
  alpha_beta: the layer holds alpha/beta itself (online estimation, the
    ``evalnorm`` mode); a batch-statistics norm without them is converted
    with ``batchnorm_to_evalnorm`` to be evaluated.
  whole_batch: normalizes the whole per-device batch, not groups of B.
  eval_mode: without batch statistics, the one mode it is evaluated in ...
  description: ... and that mode's meaning in reports, when the mode is new.
  """
  make: Callable[[ml_collections.ConfigDict], Any]
  batch_statistics: bool = True
  alpha_beta: bool = False
  whole_batch: bool = False
  eval_mode: str | None = None
  description: str | None = None


def _common(config) -> dict:
  return dict(momentum=config.bn_momentum, epsilon=config.bn_epsilon)


NORMS = {
    'evalnorm': Norm(
        lambda c: functools.partial(
            EvalNorm, group_size=c.norm_batch_size, per_channel=c.per_channel,
            alpha_init=c.alpha_init, beta_init=c.beta_init, **_common(c)),
        alpha_beta=True),
    'batchnorm': Norm(
        lambda c: functools.partial(nn.BatchNorm, **_common(c)),
        whole_batch=True),
    'renorm': Norm(
        lambda c: functools.partial(
            baselines.BatchRenorm, group_size=c.norm_batch_size,
            rmax=c.renorm_rmax, dmax=c.renorm_dmax,
            warmup_steps=c.renorm_warmup_steps, **_common(c)),
        batch_statistics=False, eval_mode='ema'),
    'groupnorm': Norm(
        lambda c: functools.partial(baselines.GroupNormSlot,
                                    num_groups=c.groupnorm_groups,
                                    epsilon=c.bn_epsilon),
        batch_statistics=False, eval_mode='groupnorm',
        description='GroupNorm (no batch statistics)'),
}



@dataclasses.dataclass(frozen=True)
class Model:
  """A classifier that ``config.model`` names.

  make: (config, num_classes, norm, dtype) -> the flax module.
  keys: the config keys besides ``model`` that shape its variables; a
    checkpoint restored for another run must have been trained with the same.
  """
  make: Callable[..., nn.Module]
  keys: tuple[str, ...] = ()


MODELS = {
    'resnet_v2_cifar': Model(
        lambda c, num_classes, norm, dtype: models.cifar_resnet_v2(
            c.depth, c.width, num_classes, norm, stem_strides=c.stem_strides,
            dtype=dtype),
        keys=('depth', 'width')),
    'resnet50_v2': Model(
        lambda c, num_classes, norm, dtype: models.resnet50_v2(
            num_classes, norm, dtype=dtype)),
}


def names(table: dict, **fields) -> tuple[str, ...]:
  """The names in ``table`` whose entries have every one of ``fields``."""
  return tuple(name for name, entry in table.items()
               if all(getattr(entry, k) == v for k, v in fields.items()))


def lookup(table: dict, key: str, name: str):
  """``table[name]``; ConfigError naming ``config.key`` when it is not there."""
  if name not in table:
    raise config_lib.ConfigError(f'config.{key}={name!r} is invalid: '
                                 f'allowed: {tuple(table)}')
  return table[name]


def make_norm(config: ml_collections.ConfigDict, norm_name: str | None = None):
  """The norm layer (a ModuleDef) that ``norm_name`` (default config.norm) means."""
  return lookup(NORMS, 'norm', norm_name or config.norm).make(config)


def estimates_online(config: ml_collections.ConfigDict) -> bool:
  """Whether training estimates alpha/beta: asked for, and the norm has them."""
  return bool(config.estimate_alpha_beta and NORMS[config.norm].alpha_beta)


def dtype(config):
  """The activations' dtype (statistics stay float32)."""
  return jnp.bfloat16 if config.half_precision else jnp.float32


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                norm_name: str | None = None) -> nn.Module:
  """``config.model`` with the norm of ``norm_name`` (default config.norm)."""
  return lookup(MODELS, 'model', config.model).make(
      config, num_classes, make_norm(config, norm_name), dtype(config))


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
    jax.eval_shape(functools.partial(model.init, train=False),
                   jax.random.PRNGKey(0),
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
