r"""Seeds: which differences of Fig. 2 and Fig. 4 are larger than seed noise.

    python -m experiments.seeds [--scale small|full|smoke] [--seeds 0,1,2]

Repeats the Fig. 2 runs at the smallest B and at B=8 (EvalNorm runs, whose
modes include EMA, 1/B^2, 1/B and the estimate) and Batch Renorm at the
smallest B, over several seeds (seed 0 is the Fig. 2 run itself). Writes
seeds.md: per mode the mean, the sample standard deviation and every seed's
value, and the per-seed gain of EvalNorm over EMA.
"""

import sys

import numpy as np

from experiments import (command_line, fig2_error_vs_b, result_files, runner,
                         scales)

NAME = 'seeds'
FLAGS = command_line.SEEDS_FLAG
EVALNORM_MODES = ('ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'train_stats')


def seed_runs(scale: scales.Scale, seeds
              ) -> dict[tuple[str, int], list[runner.Run]]:
  """(method, B) -> the runs over seeds."""
  small_b = min(scale.b_values)
  groups = {('evalnorm', b): [fig2_error_vs_b.evalnorm_run(scale, b, s)
                              for s in seeds]
            for b in sorted({small_b, min(8, max(scale.b_values))})}
  groups[('renorm', small_b)] = [fig2_error_vs_b.renorm_run(scale, small_b, s)
                                 for s in seeds]
  return groups


def groups_of(context: command_line.Context
              ) -> dict[tuple[str, int], list[runner.Run]]:
  return seed_runs(context.scale, command_line.seeds(context))


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return [r for group in groups_of(context).values() for r in group]


def stats(values: list[float]) -> dict:
  """Mean, sample standard deviation (None for one value) and the values."""
  spread = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return {'mean': float(np.mean(values)), 'std': spread, 'seeds': values}


def headlines(context: command_line.Context, results: dict) -> dict:
  """Over the seeds: top-1 of each mode by method and B; at each B of the
  EvalNorm runs the gain of EvalNorm over EMA (points), and its mean."""
  top1, gain = {}, {}
  for (method, b), group in groups_of(context).items():
    runs = [results[r.name] for r in group]
    modes = EVALNORM_MODES if method == 'evalnorm' else ('ema',)
    top1.setdefault(method, {})[str(b)] = {
        m: stats([runner.top1(r, m) for r in runs]) for m in modes}
    if method == 'evalnorm':
      gain[str(b)] = stats([runner.top1(r, 'evalnorm') - runner.top1(r, 'ema')
                            for r in runs])
  return {'top1': top1, 'gain_over_seeds': gain, 'gain': {
      f'mean of {len(command_line.seeds(context))}': {
          b: g['mean'] for b, g in gain.items()}}}


def stats_row(label: str, values: dict) -> list[str]:
  spread = float('nan') if values['std'] is None else values['std']
  return [label, f"{values['mean']:.2f}", f'{spread:.2f}',
          ' / '.join(f'{v:.2f}' for v in values['seeds'])]


def report(context: command_line.Context, results: dict) -> dict:
  numbers = headlines(context, results)
  rows = []
  for method, by_b in numbers['top1'].items():
    for b, by_mode in by_b.items():
      rows += [stats_row(f'B={b}, {method} run, `{mode}`', values)
               for mode, values in by_mode.items()]
      if method == 'evalnorm':
        rows.append(stats_row(f'B={b}, EvalNorm gain over EMA (points)',
                              numbers['gain_over_seeds'][b]))
  seed_list = ', '.join(map(str, command_line.seeds(context)))
  table = result_files.markdown_table(['top-1 (%)', 'mean', 'std (n-1)',
                                       f'seeds {seed_list}'], rows)
  result_files.write_markdown(
      context.output(f'{NAME}.md'), 'Seeds: mean and spread',
      result_files.scale_note(context),
      'Each seed changes the initialization, the data order and the '
      'augmentation. A difference is real when it is several standard '
      'deviations and has the same sign for every seed.\n', table)
  return numbers


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
