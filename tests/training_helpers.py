"""What the training-system tests share: a small digits config, reading a
run's eval.json, the steps a run logged."""

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
