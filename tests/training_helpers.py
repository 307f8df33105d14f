"""What the training-system tests share: a small digits config and a fresh
train state for it, reading a run's eval.json, the steps a run logged."""

import json
import os
import re

from configs import digits as digits_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_digits_config(**overrides):
  """The digits config shrunk to seconds: the same code path, less work.

  Plain 8x8 digits (a 447-example eval set), batch 16 = 8 fake devices x B=2.
  """
  config = digits_config.get_config()
  config.update(dict(dataset='digits', stem_strides=1,
                     num_train_steps=30, batch_size=16, eval_batch_size=64,
                     log_every_steps=10, checkpoint_every_steps=10,
                     eval_every_steps=1000))
  config.update(overrides)
  return config


def fresh_state(config, total_steps: int = 10):
  """(dataset, model, host train state) of a new run of ``config`` (weights
  from PRNGKey(0); the learning rate decays over ``total_steps``)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from evalnorm import data
  from evalnorm.training import builders, trainer
  # pylint: enable=g-import-not-at-top
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  state = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, total_steps))
  return dataset, model, state


def read_eval(workdir):
  with open(os.path.join(workdir, 'eval.json')) as f:
    return json.load(f)


def logged_steps(caplog):
  """Steps of the metrics a run logged (clu's LoggingWriter: '[step] k=v')."""
  steps = set()
  for record in caplog.records:
    match = re.match(r'\[(\d+)\] \S+=', record.getMessage())
    if match:
      steps.add(int(match.group(1)))
  return steps
