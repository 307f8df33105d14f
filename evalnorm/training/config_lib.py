"""Shared config defaults, `:key=value` config arguments, and the checks of
config values that need no table.

Every config in `configs/` starts from `base_config()` and ends with
`override(config, arg)`, so `--config=configs/cifar.py:depth=56,width=2` works
the same everywhere. Every bad value becomes one `ConfigError` line naming
the key, the value and what is allowed (`require`): `validate_values` checks
the numbers here, and the tables that names choose from check those names
(`builders.validate`, `detection.train.validate`).
"""

import difflib
import math
import re

import ml_collections
from ml_collections import config_dict

# How online estimation runs (trainer.TrainPrograms): in the SGD step's own
# forward pass, or in a pass of its own.
ESTIMATION_PROGRAMS = ('fused', 'separate')


class ConfigError(ValueError):
  """A config value that cannot work; the message is one line for the user."""


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every setup; each config overrides what it needs."""
  c = ml_collections.ConfigDict()
  c.dataset = 'noisy_digits'         # one of data.DATASETS
  # None-valued keys are typed placeholders, so --config.KEY=VALUE can set them.
  c.data_dir = config_dict.placeholder(str)  # tensorflow-datasets data_dir (None: tfds default)
  c.image_size = 224                 # ImageNet crop size (other datasets ignore it)
  c.model = 'resnet_v2_cifar'        # one of builders.MODELS
  c.depth = 20                       # CIFAR ResNet depth, 6n+2
  c.width = 1                        # CIFAR ResNet width multiplier
  c.stem_strides = 1                 # stride of the CIFAR stem convolution
  c.half_precision = False           # bfloat16 activations (statistics stay float32)
  c.norm = 'evalnorm'                # one of builders.NORMS
  c.norm_batch_size = 2              # B: the per-device batch is cut into groups of B
  c.bn_momentum = 0.99               # EMA momentum of the moving statistics
  c.bn_epsilon = 1e-5                # variance epsilon of every norm layer
  c.groupnorm_groups = 32            # GroupNorm groups (fewer when channels are few)
  c.renorm_rmax = 2.0                # Batch Renorm's final r clip
  c.renorm_dmax = 1.0                # Batch Renorm's final d clip
  c.renorm_warmup_steps = 5000       # steps over which r/d clips ramp from (1, 0)
  c.estimate_alpha_beta = True       # online estimation of alpha/beta (EvalNorm only)
  c.estimate_every_steps = 4         # k: alpha/beta step on steps 1, 1+k, ...; see experiments/results/estimate_every.md
  c.estimation = 'separate'          # 'fused': the auxiliary loss in the SGD step's pass; 'separate': a pass of its own
  c.per_channel = False              # alpha/beta per channel instead of per layer
  c.alpha_init = 0.0                 # initial alpha (0 = plain EMA evaluation)
  c.beta_init = 0.0                  # initial beta
  c.alpha_beta_optimizer = 'adam'    # one of calibration.ALPHA_BETA_OPTIMIZERS, separate from the model's
  c.alpha_beta_learning_rate = 3e-3  # its learning rate (constant)
  c.offline_estimation_steps = 300   # batches for offline estimation (evalnorm.estimate)
  c.fixed_alpha_beta = (0.05, 0.1, 0.5)  # also evaluated: modes fixed_<c> with alpha = beta = c
  c.precise_ema_batches = 0          # >0: evalnorm.estimate adds the PreciseBN mode
  c.batch_size = 128                 # global SGD batch, split evenly over devices
  c.eval_batch_size = 256            # global evaluation batch
  c.eval_modes_at_once = 0           # evaluation modes in one pass: 0 = all (one batched network); k: k at a time (memory of k)
  c.num_train_steps = 1000           # training length in steps ...
  c.num_epochs = config_dict.placeholder(float)  # ... or in epochs (overrides steps when set)
  c.learning_rate = 0.1              # peak learning rate (cosine decay to 0)
  c.warmup_steps = 0                 # linear warm-up steps before the cosine
  c.momentum = 0.9                   # SGD momentum
  c.weight_decay = 1e-4              # L2 weight decay (ResNet v2 paper's value)
  c.init_from = config_dict.placeholder(str)  # fine-tuning: workdir of a trained run to start from
  c.init_norm = 'pretrained'         # with init_from: norm layers 'pretrained' or 'reset'
  c.freeze_batch_stats = False       # keep the moving averages as initialized (groups still normalize)
  c.frozen_bn = False                # detection's frozen BN: normalize with the moving averages in training too, scale and bias fixed
  c.seed = 0                         # parameters, data order and augmentation
  c.checkpoint_every_steps = 1000    # a checkpoint also is written at the end
  c.checkpoints_to_keep = 3          # older checkpoints are deleted
  c.async_checkpointing = True       # write checkpoints in a background thread
  c.eval_every_steps = 1000          # periodic evaluation (logged, not in eval.json)
  c.log_every_steps = 100            # loss, learning rate, mean alpha/beta, steps/s
  c.parallelism = 'pmap'             # 'pmap' or 'shard_map' (jax.jit over a device mesh): the same computation
  c.distributed = False              # call jax.distributed.initialize() (multi-host)
  # With distributed: None leaves each to jax's cluster auto-detection (TPU, Slurm, MPI).
  c.coordinator_address = config_dict.placeholder(str)  # 'host:port' of process 0
  c.num_processes = config_dict.placeholder(int)  # processes in the job
  c.process_id = config_dict.placeholder(int)     # this process, 0..num_processes-1
  c.distributed_timeout_s = 120      # joining, and noticing that a process died
  return c


def override(config: ml_collections.ConfigDict,
             arg: str | None) -> ml_collections.ConfigDict:
  """Applies `key=value,key=value` from `--config=file.py:ARG` to `config`.

  Values are parsed as the key's type (int, float, bool or str; a None
  placeholder has a type too), so a typo fails here with one line.
  """
  if not arg:
    return config
  for item in arg.split(','):
    key, sep, text = item.partition('=')
    key = key.strip()
    if not sep:
      raise ConfigError(f'config argument {item!r} is not key=value')
    if key not in config:
      raise ConfigError(f'config argument {item!r}: {unknown_key(key, config)}')
    config[key] = parse_value(config, key, text.strip(),
                              f'config argument {key}')
  return config


def unknown_key(key: str, config: ml_collections.ConfigDict) -> str:
  """'no config key ...' with the closest known keys, for one-line errors."""
  close = difflib.get_close_matches(key, list(config), n=3, cutoff=0.6)
  if close:
    return f'no config key {key!r}; closest known keys: {", ".join(close)}'
  return f'no config key {key!r}; known keys: {", ".join(sorted(config))}'


# What a value of each type looks like, for the error messages.
_EXPECTED = {bool: 'true or false', int: 'an integer', float: 'a number',
             str: 'a string'}


def parse_value(config: ml_collections.ConfigDict, key: str, text: str,
                name: str):
  """``text`` as a value of ``config[key]``'s type; ConfigError names ``name``."""
  kind = config.get_type(key)
  if text.lower() == 'none' and config[key] is None:
    return None
  try:
    if kind is bool:
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return text.lower() in ('true', '1')
    if kind in (int, float, str):
      return kind(text)
  except ValueError:
    pass
  expected = _EXPECTED.get(kind, f'a {kind.__name__}')
  if kind is tuple:  # The ',' of a tuple would split the config argument.
    expected = f'a tuple, which only --config.{key}=... can set'
  raise ConfigError(f'{name}={text!r} is invalid: expected {expected}')


def num_train_steps(config: ml_collections.ConfigDict,
                    num_train_examples: int) -> int:
  """Training length in steps, from `num_epochs` when set, else `num_train_steps`."""
  if config.num_epochs is not None:
    return math.ceil(config.num_epochs * num_train_examples / config.batch_size)
  return config.num_train_steps


def require(ok: bool, key: str, value, allowed: str) -> None:
  """ConfigError naming ``config.key=value`` and what is allowed, unless ``ok``."""
  if not ok:
    raise ConfigError(f'config.{key}={value!r} is invalid: {allowed}')


def validate_values(config: ml_collections.ConfigDict, num_devices: int,
                    num_processes: int = 1, whole_batch: bool = False) -> None:
  """Raises ConfigError for the first number or flag that cannot work.

  ``whole_batch``: the norm layer trains on whole per-device batches (flax's
  BatchNorm), so ``norm_batch_size`` must be the per-device batch.
  """
  c = config
  for key in ('num_train_steps', 'batch_size', 'eval_batch_size',
              'norm_batch_size', 'checkpoint_every_steps', 'eval_every_steps',
              'log_every_steps', 'checkpoints_to_keep', 'estimate_every_steps'):
    require(isinstance(c[key], int) and c[key] > 0, key, c[key],
            'must be a positive integer')
  if c.num_epochs is not None:
    require(c.num_epochs > 0, 'num_epochs', c.num_epochs, 'must be positive or None')
  for key in ('learning_rate', 'alpha_beta_learning_rate'):
    require(c[key] > 0, key, c[key], 'must be positive')
  validate_distributed(c)
  require(c.offline_estimation_steps > 0, 'offline_estimation_steps',
          c.offline_estimation_steps, 'must be a positive integer')
  require(isinstance(c.eval_modes_at_once, int) and c.eval_modes_at_once >= 0,
          'eval_modes_at_once', c.eval_modes_at_once,
          'must be an integer >= 0 (0 evaluates every mode at once)')
  require(c.precise_ema_batches >= 0, 'precise_ema_batches',
          c.precise_ema_batches, 'must be >= 0 (0 turns PreciseBN off)')
  require(all(isinstance(v, (int, float)) and 0 <= v <= 1
              for v in c.fixed_alpha_beta), 'fixed_alpha_beta',
          c.fixed_alpha_beta, 'every value must be a number in [0, 1]')
  require(c.weight_decay >= 0, 'weight_decay', c.weight_decay, 'must be >= 0')
  require(0 <= c.warmup_steps, 'warmup_steps', c.warmup_steps, 'must be >= 0')
  require(0 <= c.bn_momentum < 1, 'bn_momentum', c.bn_momentum, 'must be in [0, 1)')
  require(c.bn_epsilon > 0, 'bn_epsilon', c.bn_epsilon, 'must be positive')
  for key in ('alpha_init', 'beta_init'):
    require(0 <= c[key] <= 1, key, c[key], 'must be in [0, 1]')
  require(c.estimation in ESTIMATION_PROGRAMS, 'estimation', c.estimation,
          f'allowed: {ESTIMATION_PROGRAMS}')
  _validate_batches(c, num_devices, num_processes, whole_batch)


def validate_distributed(c) -> None:
  """The multi-process keys; main checks them before joining the job."""
  require(isinstance(c.distributed_timeout_s, int) and c.distributed_timeout_s > 0,
          'distributed_timeout_s', c.distributed_timeout_s,
          'must be a positive integer (seconds)')
  if c.num_processes is not None:
    require(c.num_processes > 0, 'num_processes', c.num_processes,
            'must be a positive integer, or None to auto-detect')
  if c.process_id is not None:
    limit = c.num_processes if c.num_processes is not None else float('inf')
    require(0 <= c.process_id < limit, 'process_id', c.process_id,
            f'must be in [0, num_processes={c.num_processes}), or None to '
            'auto-detect')
  if c.coordinator_address is not None:
    require(re.fullmatch(r'.+:\d+', c.coordinator_address) is not None,
            'coordinator_address', c.coordinator_address,
            "must be 'host:port', or None to auto-detect")


def _validate_batches(c, num_devices: int, num_processes: int,
                      whole_batch: bool) -> None:
  """``whole_batch``: the norm trains on whole per-device batches."""
  for key in ('batch_size', 'eval_batch_size'):
    require(c[key] % num_devices == 0, key, c[key],
            f'must divide evenly over the {num_devices} devices '
            f'({num_processes} processes)')
  per_device = c.batch_size // num_devices
  require(per_device % c.norm_batch_size == 0, 'norm_batch_size',
          c.norm_batch_size,
          f'must divide the per-device batch of {per_device} '
          f'(batch_size={c.batch_size} over {num_devices} devices)')
  per_device_eval = c.eval_batch_size // num_devices
  require(per_device_eval % c.norm_batch_size == 0, 'eval_batch_size',
          c.eval_batch_size,
          f'its per-device share {per_device_eval} must be a multiple of '
          f'norm_batch_size={c.norm_batch_size}')
  if whole_batch:
    require(c.norm_batch_size == per_device, 'norm_batch_size',
            c.norm_batch_size,
            f"norm={c.norm!r} (flax's nn.BatchNorm) normalizes the whole "
            f'per-device batch of {per_device}: set norm_batch_size='
            f"{per_device}, or use norm='evalnorm' for groups of B")
