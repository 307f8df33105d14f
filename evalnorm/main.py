r"""Command line: train, evaluate every mode, write eval.json.

    python -m evalnorm.main --config=configs/digits.py --workdir=/tmp/digits \
        --config.norm_batch_size=2

A rerun with the same --workdir resumes from the latest checkpoint. Errors
the user can fix end with one line: exit status 2 for the command line or a
config value, 1 for what is found while running (data that is not prepared,
a diverged run, an unusable checkpoint); SIGTERM saves and exits 143 (see
evalnorm.training.cli).
"""

import jax
from absl import flags

from evalnorm.training import cli, preemption

FLAGS = flags.FLAGS
COMMAND = cli.Command(
    {'workdir': 'the directory for checkpoints, logs and eval.json'})


def main(argv):
  del argv  # COMMAND.parse refused extra arguments.
  # Imported after parsing: the training code pulls in TensorFlow (through
  # clu), seconds that a mistyped flag should not wait for.
  # pylint: disable=import-outside-toplevel
  from evalnorm.detection import train as detection_train
  from evalnorm.training import summary, trainer
  # pylint: enable=import-outside-toplevel
  config = FLAGS.config
  # SIGTERM is handled from here on (train_and_evaluate handles its own).
  with cli.exit_statuses(), preemption.SigtermFlag(
      defer=False, situation=preemption.STARTING):
    if config.distributed:
      cli.initialize_distributed(config)
    cli.log_devices()
    # A detection config (dataset digit_scenes or coco) trains the detector.
    detection = detection_train.is_detection(config)
    program = detection_train if detection else trainer
    results = program.train_and_evaluate(config, FLAGS.workdir)
  if jax.process_index() == 0:
    table = (detection_train.results_table if detection
             else summary.results_table)
    print(table(results))


if __name__ == '__main__':
  COMMAND.run(main)
