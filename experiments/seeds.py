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


def seed_runs(scale: scales.Scale, seeds) -> dict[tuple[str, int], list[runner.Run]]:
  """(method, B) -> the runs over seeds."""
  small_b = min(scale.b_values)
  groups = {('evalnorm', b): [fig2_error_vs_b.evalnorm_run(scale, b, s)
                              for s in seeds]
            for b in sorted({small_b, min(8, max(scale.b_values))})}
  groups[('renorm', small_b)] = [fig2_error_vs_b.renorm_run(scale, small_b, s)
                                 for s in seeds]
  return groups


def groups_of(context: command_line.Context) -> dict[tuple[str, int], list[runner.Run]]:
  return seed_runs(context.scale, command_line.seeds(context))


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return [r for group in groups_of(context).values() for r in group]


def stats_row(label: str, values: list[float]) -> list[str]:
  spread = np.std(values, ddof=1) if len(values) > 1 else float('nan')
  return [label, f'{np.mean(values):.2f}', f'{spread:.2f}',
          ' / '.join(f'{v:.2f}' for v in values)]


def report(context: command_line.Context, results: dict) -> list[list[str]]:
  groups = groups_of(context)
  rows = []
  for (method, b), group in groups.items():
    modes = EVALNORM_MODES if method == 'evalnorm' else ('ema',)
    for mode in modes:
      values = [runner.top1(results[r.name], mode) for r in group]
      label = f'B={b}, {method} run, `{mode}`'
      rows.append(stats_row(label, values))
    if method == 'evalnorm':
      gains = [runner.top1(results[r.name], 'evalnorm')
               - runner.top1(results[r.name], 'ema') for r in group]
      rows.append(stats_row(f'B={b}, EvalNorm gain over EMA (points)', gains))
  seeds = [r.overrides for r in next(iter(groups.values()))]
  seed_list = ', '.join(str(dict(o)['seed']) for o in seeds)
  table = result_files.markdown_table(['top-1 (%)', 'mean', 'std (n-1)',
                               f'seeds {seed_list}'], rows)
  result_files.write_markdown(
      context.output(f'{NAME}.md'), 'Seeds: mean and spread',
      result_files.scale_note(context),
      'Each seed changes the initialization, the data order and the '
      'augmentation. A difference is real when it is several standard '
      'deviations and has the same sign for every seed.\n', table)
  return rows


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
