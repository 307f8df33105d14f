r"""Command line of offline estimation (see evalnorm.offline).

    python -m evalnorm.estimate --config=configs/digits.py --checkpoint=DIR --workdir=OUT \
        [--config.norm=batchnorm] [--config.offline_estimation_steps=300]

Estimates alpha/beta for the model trained in DIR (an EvalNorm run or a plain
nn.BatchNorm run) without changing its weights or EMA statistics, and writes
OUT/eval.json with every evaluation mode, ``evalnorm`` being the offline
estimate. A missing or mismatched checkpoint ends with one line and exit 1.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from evalnorm import checkpoint, config_lib, data, offline, report

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'workdir of the trained run.')
flags.DEFINE_string('workdir', None, 'Directory for the offline eval.json.')
config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file (path[:key=value,...]).',
    lock_config=True)
flags.mark_flags_as_required(['config', 'checkpoint', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    results = offline.estimate_and_evaluate(FLAGS.config, FLAGS.checkpoint,
                                            FLAGS.workdir)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (checkpoint.CheckpointError, data.DatasetUnavailableError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  if jax.process_index() == 0:
    print(report.results_table(results))


if __name__ == '__main__':
  app.run(main)
