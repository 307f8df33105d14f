r"""docs/cost.md's table: the committed cost records side by side.

    python -m benchmarks.cost_table [--measure] [--models cifar,resnet50]
        [--flags default,avx2,eigen]

A column per record ``results/cost_<model>_<flags>.json``; a program's cell is
its ratio of minimum times against BatchNorm's and, in parentheses, the ratio
of the bytes XLA says the programs access (machine load does not change
those). A cell is empty where the record predates the program.

``--measure`` first reruns ``benchmarks.cost`` for each model and kernel
configuration (one process each, ``XLA_FLAGS`` from ``FLAG_VALUES``) and
``benchmarks.parallelism`` (default kernels, 8 host devices), and rewrites
their records; it prints the table either way. Measure on an otherwise idle
machine: the ratios are interleaved, the minimums are not.
"""

import argparse
import os
import subprocess
import sys

from evalnorm.training import config_lib, files, summary

MODELS = {'cifar': 'ResNet-20', 'resnet50': 'ResNet-50'}
FLAGS = {'default': 'default flags', 'avx2': 'AVX2', 'eigen': 'Eigen'}
FLAG_VALUES = {'default': '', 'avx2': '--xla_cpu_max_isa=AVX2',
               'eigen': '--xla_cpu_experimental_ynn_fusion_type='}
RESULTS_DIR = os.path.join(os.path.dirname(__file__), 'results')
SGD, FUSED = 'evalnorm_B2', 'evalnorm_B2_fused'
ALPHA_BETA = 'evalnorm_B2_alpha_beta'


PARALLELISM_RECORD = 'parallelism.json'
PARALLELISM_DEVICES = 8


def record_path(model: str, flags: str, results_dir: str = RESULTS_DIR) -> str:
  return os.path.join(results_dir, f'cost_{model}_{flags}.json')


def load_parallelism(results_dir: str = RESULTS_DIR) -> dict:
  """The committed record of ``benchmarks.parallelism``."""
  return files.read_json(os.path.join(results_dir, PARALLELISM_RECORD))


def load(results_dir: str = RESULTS_DIR) -> dict[str, dict]:
  """{column title: record} of the committed records, models then flags."""
  paths = {f'{title}, {flags}': record_path(m, f, results_dir)
           for m, title in MODELS.items() for f, flags in FLAGS.items()}
  return {title: files.read_json(p) for title, p in paths.items()
          if os.path.exists(p)}


def programs(k: int):
  """(label, time ratio key, stage, {program: its share of the bytes})."""
  return (
      ('SGD step, EvalNorm B = the whole per-device batch', 'train_B{batch}',
       'train', {'evalnorm_B{batch}': 1}),
      ('SGD step, EvalNorm B=2', 'train_B2', 'train', {SGD: 1}),
      ('separate estimation: alpha/beta step', 'alpha_beta_B2', 'train',
       {ALPHA_BETA: 1}),
      (f'separate estimation: mean step at k = {k}', 'train_B2_amortized',
       'train', {SGD: 1, ALPHA_BETA: 1 / k}),
      ('separate estimation: estimating step (every step at k = 1)',
       'train_B2_estimating', 'train', {SGD: 1, ALPHA_BETA: 1}),
      (f'fused estimation: mean step at k = {k}', 'fused_B2_amortized',
       'train', {SGD: 1 - 1 / k, FUSED: 1 / k}),
      ('fused estimation: estimating step (every step at k = 1)',
       'fused_B2_estimating', 'train', {FUSED: 1}),
      ("evaluation, `eval_stats='evalnorm'` (against BatchNorm's evaluation)",
       'eval_evalnorm', 'eval', {'evalnorm': 1}))


def mean_step_key(estimation: str, k: int) -> str | None:
  """The time ratio of online estimation's mean train step for this
  program (``config.estimation``) and k; None where the benchmark has none."""
  every = config_lib.base_config().estimate_every_steps
  return {('separate', 1): 'train_B2_estimating',
          ('separate', every): 'train_B2_amortized',
          ('fused', 1): 'fused_B2_estimating',
          ('fused', every): 'fused_B2_amortized'}.get((estimation, k))


def time_range(records: dict[str, dict], key: str | None, model: str) -> str:
  """'1.00-1.08x': the time ratio ``key`` over ``model``'s columns (a
  ``MODELS`` title); '' where none has it."""
  values = sorted(setup['ratios'][key] for title, r in records.items()
                  if title.startswith(f'{model}, ')
                  for setup in r['setups'].values() if key in setup['ratios'])
  if not values:
    return ''
  low, high = f'{values[0]:.2f}', f'{values[-1]:.2f}'
  return f'{low}x' if low == high else f'{low}-{high}x'


def cell(setup: dict, key: str, stage: str, shares: dict) -> str:
  time = setup['ratios'].get(key.format(**setup))
  rows = setup[stage]
  shares = {p.format(**setup): share for p, share in shares.items()}
  if time is None or any(p not in rows for p in shares):
    return ''
  nbytes = sum(rows[p]['bytes'] * share for p, share in shares.items())
  return f"{time:.2f}x ({nbytes / rows['batchnorm']['bytes']:.2f}x)"


def about(record: dict, setup: dict) -> list[str]:
  """Where and how the column was measured."""
  step = setup['train']['batchnorm']
  return [f"{record['device']['cpu']}, {record['device']['cpu_cores']} "
          f"cores, jax {record['versions']['jax']}, flax "
          f"{record['versions']['flax']}",
          record['commit'][:7] + ('' if record['clean'] else ' (uncommitted)'),
          str(setup['repeats']),
          f"{step['min_s']:.2f} s, median "
          f"{step['median_s'] / step['min_s']:.2f}x"]


def table(records: dict[str, dict]) -> str:
  setups = {t: next(iter(r['setups'].values())) for t, r in records.items()}
  every = config_lib.base_config().estimate_every_steps
  rows = [[label] + [cell(setup, *how) for setup in setups.values()]
          for label, *how in programs(every)]
  facts = zip(*(about(records[t], s) for t, s in setups.items()))
  rows += [[label, *values] for label, values in zip(
      ('machine', 'commit', 'interleaved rounds timed',
       "BatchNorm's train step: minimum, median"), facts)]
  return summary.markdown_table(
      ['time (bytes) against flax `nn.BatchNorm`', *setups], rows) + '\n'


def measure(models, flags, results_dir: str = RESULTS_DIR) -> None:
  """Reruns the benchmark for each model under each kernel configuration,
  then the parallelism benchmark."""
  for model in models:
    for name in flags:
      env = dict(os.environ, XLA_FLAGS=FLAG_VALUES[name])
      print(f'== {model}, {FLAGS[name]}', flush=True)
      subprocess.run([sys.executable, '-m', 'benchmarks.cost', '--model',
                      model, '--output', record_path(model, name, results_dir)],
                     env=env, check=True)
  print('== shard_map against pmap', flush=True)
  devices = f'--xla_force_host_platform_device_count={PARALLELISM_DEVICES}'
  subprocess.run([sys.executable, '-m', 'benchmarks.parallelism', '--output',
                  os.path.join(results_dir, PARALLELISM_RECORD)],
                 env=dict(os.environ, XLA_FLAGS=devices), check=True)


def choices(parser, flag: str, value: str, allowed) -> list[str]:
  """The comma-separated ``value`` of ``flag``; an unknown name ends the
  command with one line naming it and what is allowed."""
  names = value.split(',')
  for name in names:
    if name not in allowed:
      parser.error(f"--{flag}: unknown '{name}' (allowed: "
                   f"{', '.join(allowed)})")
  return names


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.cost_table',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--measure', action='store_true',
                      help='rerun the benchmark and rewrite its records first')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--flags', default=','.join(FLAGS))
  args = parser.parse_args(argv)
  models = choices(parser, 'models', args.models, MODELS)
  flags = choices(parser, 'flags', args.flags, FLAGS)
  if args.measure:
    measure(models, flags)
  print(table(load()), end='')


if __name__ == '__main__':
  main()
