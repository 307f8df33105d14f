"""In-process access to a planned run: its config, listing row and weights."""

import dataclasses
import os
from collections.abc import Sequence

from evalnorm.training import files
from experiments.result_files import markdown_table
from experiments.runner import ROOT, Run
from experiments.scales import Scale


def load_config(run: Run):
  """The ml_collections config ``run`` trained with (its file + overrides)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  # 'configs/detection.py:dataset=coco': the file and get_config's argument,
  # as ml_collections' config_flags reads them.
  filename, _, argument = run.config.partition(':')
  spec = importlib.util.spec_from_file_location(
      'run_config', os.path.join(ROOT, filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(argument or None)
  for key, value in run.overrides:
    config[key] = value
  validate(config, num_devices=1, training=False)
  return config


def validate(config, num_devices: int, training: bool) -> None:
  """The program's own checks: the detector's for a detection config."""
  # pylint: disable=g-import-not-at-top
  from evalnorm.detection import train as detection_train
  from evalnorm.training import builders
  # pylint: enable=g-import-not-at-top
  if detection_train.is_detection(config):
    detection_train.validate(config, num_devices)
  else:
    builders.validate(config, num_devices, training=training)


def training_steps(run: Run) -> int:
  """The steps a training run takes (its config may give epochs)."""
  return steps_of(load_config(run))


def steps_of(config) -> int:
  """The steps a training with ``config`` takes (epochs count in the
  classification datasets' examples; a detection config gives steps)."""
  # pylint: disable=g-import-not-at-top
  from evalnorm import data
  from evalnorm.training import config_lib
  # pylint: enable=g-import-not-at-top
  if config.num_epochs is None:
    return config.num_train_steps
  return config_lib.num_train_steps(
      config, data.DATASETS[config.dataset].train_examples)


def with_renorm_ramp(run: Run, scale: Scale) -> Run:
  """``run`` with Batch Renorm's clip ramp over the scale's share of its steps."""
  ramp = max(1, int(training_steps(run) * scale.renorm_warmup_fraction))
  overrides = dict(run.overrides, renorm_warmup_steps=ramp)
  return dataclasses.replace(run, overrides=tuple(sorted(overrides.items())))


def model_name(config) -> str:
  """The listing's model column."""
  from evalnorm.detection import train as detection_train  # pylint: disable=g-import-not-at-top
  backbone = (f'ResNet-{config.depth} v2 x{config.width}'
              if config.model == 'resnet_v2_cifar' else
              f'ResNet-8 v2 x{config.width}' if config.model == 'resnet_v2_small'
              else 'ResNet-50 v2')
  if detection_train.is_detection(config):
    return f'Faster R-CNN, {backbone}'
  return backbone


LISTING_HEADERS = ('run', 'program', 'dataset', 'model', 'norm', 'B', 'batch',
                   'devices', 'steps', 'lr')


def describe(run: Run) -> list[str]:
  """One listing row: what ``run`` trains or estimates, from its config.

  Validated for the run's own device count, so a listed run is one that
  passes the program's checks.
  """
  config = load_config(run)
  validate(config, run.devices, training=run.checkpoint is None)
  model = model_name(config)
  norm = config.norm + (f' (ramp {config.renorm_warmup_steps:,})'
                        if config.norm == 'renorm' else '')
  if run.checkpoint is None:
    program = 'train'
    steps = steps_of(config)
    learning_rate = f'{config.learning_rate:g}'
  else:
    program = f'offline, from {run.checkpoint}'
    steps = config.offline_estimation_steps
    learning_rate = (f'{config.alpha_beta_learning_rate:g} '
                     f'({config.alpha_beta_optimizer}, alpha/beta)')
  return [run.name, program, config.dataset, model, norm,
          str(config.norm_batch_size), str(config.batch_size),
          str(run.devices), f'{steps:,}', learning_rate]


def listing(planned: Sequence[Run]) -> str:
  """A markdown table describing every run of ``planned``."""
  return markdown_table(LISTING_HEADERS, [describe(r) for r in planned])


def load_trained(run: Run, workdir_root: str):
  """(config, dataset, EvalNorm model, variables) of a finished training run."""
  import jax  # pylint: disable=g-import-not-at-top
  from evalnorm import data  # pylint: disable=g-import-not-at-top
  from evalnorm.training import builders, checkpoint, parallel
  config = load_config(run)
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes, 'evalnorm')
  template = parallel.init_variables(model, jax.random.PRNGKey(0),
                                     config.norm_batch_size, dataset.image_shape)
  manager = checkpoint.open_existing(files.join(workdir_root, run.name))
  return config, dataset, model, checkpoint.restore_variables(manager, template)