r"""Time to the first training batch when a tfds run resumes, early and late.

    python -m benchmarks.resume [--examples 1000] [--epochs 50] [--repeats 3]

Under ``tfds.testing.mock_data`` (``--examples`` CIFAR-10 examples, batch 8,
the default shuffle buffer, which holds the whole mock split), builds the
dataset and times ``next(dataset.train_batches(step))`` for:

  early       a step early in the first epoch;
  late        the same position within its epoch, ``--epochs`` epochs later;
  early_end,  the last step of the first epoch and of the late epoch (the
  late_end    most of an epoch to skip).

Each is timed ``--repeats`` times in a rotating order; printed are the min
and median seconds and late / early of the minimums. The first batch of step
0 is fetched once beforehand, so TensorFlow's start-up is not counted.
"""

import argparse
import statistics
import sys
import time

import ml_collections


def first_batch_seconds(dataset, step: int) -> float:
  start = time.perf_counter()
  next(dataset.train_batches(step))
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--examples', type=int, default=1000)
  parser.add_argument('--epochs', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=8)
  args = parser.parse_args(argv)
  import tensorflow_datasets as tfds

  from evalnorm import data

  config = ml_collections.ConfigDict(dict(
      dataset='cifar10', batch_size=args.batch, eval_batch_size=args.batch,
      seed=0, data_dir=None, shuffle_buffer=None))
  steps_per_epoch = args.examples / args.batch
  late_offset = int(args.epochs * steps_per_epoch)
  steps = {'early': 2, 'late': 2 + late_offset,
           'early_end': int(steps_per_epoch) - 1,
           'late_end': int(steps_per_epoch) - 1 + late_offset}
  times = {name: [] for name in steps}
  with tfds.testing.mock_data(num_examples=args.examples):
    dataset = data.make_dataset(config)
    next(dataset.train_batches(0))
    names = list(steps)
    for r in range(args.repeats):
      for name in names[r % 4:] + names[:r % 4]:
        times[name].append(first_batch_seconds(dataset, steps[name]))
  for name, step in steps.items():
    print(f'{name:10s} step {step:6d}  min {min(times[name]):7.3f} s  '
          f'median {statistics.median(times[name]):7.3f} s')
  print(f'late / early (min): {min(times["late"]) / min(times["early"]):.2f}; '
        f'late_end / early_end: '
        f'{min(times["late_end"]) / min(times["early_end"]):.2f}')
  return times


if __name__ == '__main__':
  main(sys.argv[1:])
  sys.exit(0)
