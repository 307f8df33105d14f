r"""Command line of offline estimation (see evalnorm.training.offline_estimation).

    python -m evalnorm.estimate --config=configs/digits.py --checkpoint=DIR --workdir=OUT \
        [--config.norm=batchnorm] [--config.offline_estimation_steps=300]

Estimates alpha/beta for the model trained in DIR (an EvalNorm run or a plain
nn.BatchNorm run) without changing its weights or EMA statistics, and writes
OUT/eval.json with every evaluation mode, ``evalnorm`` being the offline
estimate. Errors end with one line: exit status 2 for the command line or a
config value, 1 for a missing or mismatched checkpoint (see evalnorm.training.cli).
"""

import jax
from absl import flags

from evalnorm.training import cli

FLAGS = flags.FLAGS
COMMAND = cli.Command({
    'checkpoint': 'the --workdir of the trained run to estimate for',
    'workdir': 'the directory for the offline eval.json'})


def main(argv):
  del argv  # COMMAND.parse refused extra arguments.
  # Imported after parsing, as in evalnorm.main: a mistyped flag fails fast.
  # pylint: disable=import-outside-toplevel
  from evalnorm.detection import train as detection_train
  from evalnorm.training import offline_estimation, summary
  # pylint: enable=import-outside-toplevel
  detection = detection_train.is_detection(FLAGS.config)
  program = detection_train if detection else offline_estimation
  with cli.exit_statuses():
    cli.log_devices()
    results = program.estimate_and_evaluate(FLAGS.config, FLAGS.checkpoint,
                                            FLAGS.workdir)
  if jax.process_index() == 0:
    table = (detection_train.results_table if detection
             else summary.results_table)
    print(table(results))


if __name__ == '__main__':
  COMMAND.run(main)
