"""What a config builds: its norm layer and its classifier, and the checks
of the names that choose them.

One table per concept that varies: ``NORMS`` (norm layers) and ``MODELS``
(classifiers); datasets are ``data.DATASETS``. Config validation, the
evaluation modes and the reports derive their lists from these tables, so a
new norm layer is its module plus one ``NORMS`` entry, a new classifier one
``MODELS`` entry, and an entry carries its own rules (a model's
``check``).

Kept apart from the trainer: offline estimation, the benchmarks and the
experiments build models without the training loop.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from evalnorm import baselines, calibration, data, models
from evalnorm.layers import EvalNorm
from evalnorm.training import config_lib, finetune, parallel


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


def _moving_average_settings(config) -> dict:
  """What every batch-statistics layer takes from the config."""
  return dict(momentum=config.bn_momentum, epsilon=config.bn_epsilon)


NORMS = {
    'evalnorm': Norm(
        lambda c: functools.partial(
            EvalNorm, group_size=c.norm_batch_size, per_channel=c.per_channel,
            alpha_init=c.alpha_init, beta_init=c.beta_init,
            train_with_moving_averages=c.frozen_bn,
            **_moving_average_settings(c)),
        alpha_beta=True),
    'batchnorm': Norm(
        lambda c: functools.partial(nn.BatchNorm,
                                    **_moving_average_settings(c)),
        whole_batch=True),
    'renorm': Norm(
        lambda c: functools.partial(
            baselines.BatchRenorm, group_size=c.norm_batch_size,
            rmax=c.renorm_rmax, dmax=c.renorm_dmax,
            warmup_steps=c.renorm_warmup_steps,
            **_moving_average_settings(c)),
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
  check: config -> None, raising ConfigError for a value of those keys that
    the model cannot take.
  """
  make: Callable[..., nn.Module]
  keys: tuple[str, ...] = ()
  check: Callable[[ml_collections.ConfigDict], None] = lambda config: None


def _check_cifar_resnet(c) -> None:
  config_lib.require(
      isinstance(c.depth, int) and c.depth >= 8 and (c.depth - 2) % 6 == 0,
      'depth', c.depth, 'must be 6n+2 with n >= 1 (e.g. 20, 56, 110, 254)')
  config_lib.require(isinstance(c.width, int) and c.width >= 1, 'width',
                     c.width, 'must be a positive integer (the paper uses 1, '
                     '2, 4, 8)')


MODELS = {
    'resnet_v2_cifar': Model(
        lambda c, num_classes, norm, dtype: models.cifar_resnet_v2(
            c.depth, c.width, num_classes, norm, stem_strides=c.stem_strides,
            dtype=dtype),
        keys=('depth', 'width'), check=_check_cifar_resnet),
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
  config_lib.require(name in table, key, name, f'allowed: {tuple(table)}')
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


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int = 1, training: bool = True) -> None:
  """Raises ConfigError for the first value of a classification config that
  cannot work: its dataset and model, then ``validate_shared``."""
  lookup(data.DATASETS, 'dataset', config.dataset)
  lookup(MODELS, 'model', config.model).check(config)
  validate_shared(config, num_devices, num_processes, training)


def validate_shared(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int = 1, training: bool = True) -> None:
  """The rules every task (classification, detection) shares: the norm
  slot, alpha/beta's optimizer, the parallelism, the fine-tuning start, what
  training freezes of the norm layers, and
  ``config_lib.validate_values``.

  ``training=False`` (offline estimation and evaluation) lifts the rule that
  flax's BatchNorm trains on whole per-device batches.
  """
  norm = lookup(NORMS, 'norm', config.norm)
  lookup(calibration.ALPHA_BETA_OPTIMIZERS, 'alpha_beta_optimizer',
         config.alpha_beta_optimizer)
  lookup(parallel.PARALLELISMS, 'parallelism', config.parallelism)
  config_lib.require(config.init_norm in finetune.INIT_NORMS, 'init_norm',
                     config.init_norm, f'allowed: {finetune.INIT_NORMS}')
  config_lib.require(
      not config.frozen_bn or config.norm == 'evalnorm', 'frozen_bn',
      config.frozen_bn,
      f"frozen BN is built into norm='evalnorm' (config.norm={config.norm!r})")
  config_lib.validate_values(config, num_devices, num_processes,
                             whole_batch=training and norm.whole_batch)
