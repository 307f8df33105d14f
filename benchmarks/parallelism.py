r"""The train step under jax.jit + shard_map against the same step under pmap.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        .venv/bin/python -m benchmarks.parallelism [--repeats 20] [--smoke]

Builds the quick start's model (the digits ResNet-8 v2, groups of B = 2) with
the SGD batch over every device the process sees, and times the SGD step of
``trainer.TrainPrograms`` run by ``parallel.Pmap`` and by
``parallel.ShardMap`` (compilation excluded, interleaved rounds, each on its
own state as the train loop runs it). Prints min and median ms and the
shard_map/pmap ratios measured in this one run; ``--output`` also writes them
as JSON, the record docs/training.md's table is rendered from (``table``;
``python -m benchmarks.cost_table --measure`` reruns it). On a CPU set the
device count with XLA_FLAGS before the first jax import; the 8 fake devices
then share the machine's cores.
"""

import argparse
import os
import sys

import jax

# Runnable as `python benchmarks/parallelism.py` too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cost  # noqa: E402
from configs import digits  # noqa: E402
from evalnorm import data  # noqa: E402
from evalnorm.training import (builders, files, parallel, summary,  # noqa: E402
                               trainer)
from experiments import provenance  # noqa: E402


class StepRunner:
  """One parallelism's SGD step on its own (donated) state."""

  def __init__(self, devices, forward_fn, host_state, batch):
    self.step = trainer.TrainPrograms(forward_fn, devices=devices).sgd
    self.state = devices.replicate(host_state)
    self.batch = devices.shard(batch)

  def __call__(self):
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m benchmarks.parallelism',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--smoke', action='store_true',
                      help='2 repeats on a small batch: checks that it runs')
  parser.add_argument('--output', default=None,
                      help='also write the results here as JSON (rows, '
                      'setting, device, flags, versions, commit)')
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error(f'--repeats={args.repeats} is too small (at least 1)')
  return args


def main(argv=None) -> dict[str, dict]:
  args = parse_args(argv)
  code = provenance.git_state(ROOT)  # before anything is written
  repeats = 2 if args.smoke else args.repeats
  config = digits.get_config()
  num_devices = jax.device_count()
  config.batch_size = 2 * num_devices if args.smoke else config.batch_size
  builders.validate(config, num_devices)
  dataset = data.make_dataset(config)
  model = builders.build_model(config, dataset.num_classes)
  host = trainer.create_train_state(
      model, jax.random.PRNGKey(0), config.norm_batch_size,
      dataset.image_shape, trainer.Optimizers.from_config(config, 10))
  batch = next(dataset.train_batches(0))
  runners = {name: StepRunner(parallelism(), trainer.classifier_forward, host,
                              batch)
             for name, parallelism in parallel.PARALLELISMS.items()}
  for run in runners.values():  # compiles, then one call more
    run()
    run()
  rows = cost.summarize(cost.time_interleaved(runners, repeats), 'pmap')
  print(f'# The SGD step under shard_map against pmap\n\n{num_devices} '
        f'devices ({jax.devices()[0].platform}), batch {config.batch_size} '
        f'in groups of {config.norm_batch_size}, {repeats} interleaved '
        f"rounds; XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}\n")
  print(summary.markdown_table(
      ('path', 'min ms', 'median ms', 'ratio (min)', 'ratio (median)',
       'ratio (paired median)'),
      [(name, f"{1e3 * r['min_s']:.1f}", f"{1e3 * r['median_s']:.1f}",
        f"{r['ratio_min']:.3f}x", f"{r['ratio_median']:.3f}x",
        f"{r['ratio_paired']:.3f}x") for name, r in rows.items()]))
  if args.output:
    files.write_json(args.output, {
        **cost.measured_by(code), 'num_devices': num_devices,
        'batch_size': config.batch_size,
        'norm_batch_size': config.norm_batch_size, 'repeats': repeats,
        'rows': rows})
  return rows


def table(record: dict) -> str:
  """shard_map's SGD step against pmap's, from a record of ``--output``."""
  shard_map = record['rows']['shard_map']
  device = record['device']
  return summary.markdown_table(
      ('time', 'minimums', 'medians', 'paired median', 'setting', 'machine',
       'commit'),
      [["shard_map's SGD step against pmap's"]
       + [f"{shard_map[f'ratio_{r}']:.2f}x" for r in ('min', 'median', 'paired')]
       + [f"{record['num_devices']} {device['platform'].upper()} devices, "
          f"batch {record['batch_size']} in groups of "
          f"{record['norm_batch_size']}, {record['repeats']} rounds",
          f"{device['cpu']}, {device['cpu_cores']} cores, XLA_FLAGS "
          f"`{record['xla_flags'] or '(none)'}`",
          record['commit'][:7] + ('' if record['clean'] else
                                  ' (uncommitted)')]], 'lrrrlll') + '\n'


if __name__ == '__main__':
  main()
