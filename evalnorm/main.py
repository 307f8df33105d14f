r"""Command line: train, evaluate every mode, write eval.json.

    python -m evalnorm.main --config=configs/digits.py --workdir=/tmp/digits \
        --config.norm_batch_size=2

A rerun with the same --workdir resumes from the latest checkpoint. Errors
the user can fix (a bad config value, data that is not prepared, a diverged
run, an unusable checkpoint) end with one line and exit status 1 or 2.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from evalnorm import checkpoint, config_lib, data, report, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and eval.json.')
config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file (path[:key=value,...]).',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

# 128 + SIGTERM, as a shell reports a terminated job, so that a scheduler
# retries the (resumable) run instead of taking it as finished.
PREEMPTED_EXIT_STATUS = 143
USER_ERRORS = (data.DatasetUnavailableError, train.TrainingDiverged,
               checkpoint.CheckpointError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  try:
    if config.distributed:
      jax.distributed.initialize()
    logging.info('JAX process %d/%d, %d local devices of %d: %s',
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count(), jax.devices())
    results = train.train_and_evaluate(config, FLAGS.workdir)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_STATUS)
  if jax.process_index() == 0:
    print(report.results_table(results))


if __name__ == '__main__':
  app.run(main)
