r"""How often online estimation must run: the curve over k = estimate_every_steps.

    python -m experiments.estimate_every [--scale small|full|smoke] [--seeds 0,1,2]

Trains the same network at the smallest B with alpha/beta estimated every k-th
step, k = 1, 2, 4, 8, 16, for several seeds. At the ``small`` scale each run
is the quick start itself (``configs/digits.py``, noisy digits, B = 2, 3000
steps) with ``--config.estimate_every_steps=k``. Writes estimate_every.{md,png}:
per k the EvalNorm top-1 (mean, spread, every seed), the mean alpha and beta,
and whether the mean top-1 stays within the seed spread of k = 1.

The SGD step is the same program whatever k (``evalnorm.train.Steps``), so
every mode that does not read alpha/beta (EMA and the fixed schedules) must
come out identical for every k of a seed: the report checks that and says so.
The train-step cost of each k is ``benchmarks/cost.py``'s business (its
amortized ratio); the README puts the two side by side.
"""

import numpy as np

from experiments import runs

NAME = 'estimate_every'
KS = {'smoke': (1, 2), 'small': (1, 2, 4, 8, 16), 'full': (1, 2, 4, 8, 16)}
SEEDS = (0, 1, 2)
# Modes whose value does not depend on alpha/beta: equal for every k.
TRAINING_ONLY_MODES = ('ema', 'rule_of_thumb', 'one_over_b', 'train_stats')


def k_run(scale: runs.Scale, k: int, seed: int) -> runs.Run:
  name = f'estimate_every_k{k}_seed{seed}'
  if scale.name == 'small':  # The quick start, as its README command runs it.
    return runs.make_run(name, scale, config='configs/digits.py', seed=seed,
                         norm_batch_size=2, estimate_every_steps=k)
  return runs.make_run(name, scale, seed=seed, estimate_every_steps=k,
                       norm_batch_size=min(scale.b_values))


def k_runs(scale: runs.Scale, seeds) -> dict[int, list[runs.Run]]:
  """k -> the runs over seeds; k = 1 (estimation every step) first."""
  return {k: [k_run(scale, k, s) for s in seeds] for k in KS[scale.name]}


def planned_runs(context: runs.Context, seeds=SEEDS) -> list[runs.Run]:
  return [r for group in k_runs(context.scale, seeds).values() for r in group]


def mean_alpha_beta(result: dict) -> tuple[float, float]:
  """Mean over layers (and channels) of the estimated alpha and beta."""
  layers = result['alpha_beta'].values()
  return (float(np.mean([np.mean(v['alpha']) for v in layers])),
          float(np.mean([np.mean(v['beta']) for v in layers])))


def training_differences(groups, results) -> list[str]:
  """Runs whose alpha/beta-free modes differ from k = 1's of the same seed."""
  differences = []
  for k, group in groups.items():
    for run, reference in zip(group, groups[1]):
      for mode in TRAINING_ONLY_MODES:
        if mode in results[run.name]['eval'] and (
            results[run.name]['eval'][mode]
            != results[reference.name]['eval'][mode]):
          differences.append(f'{run.name} `{mode}`')
  return differences


def spread(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else float('nan')


def summarize(groups, results) -> dict[int, dict]:
  """Per k: EvalNorm top-1 per seed, its mean and spread, mean alpha/beta."""
  out = {}
  for k, group in groups.items():
    top1 = [runs.top1(results[r.name], 'evalnorm') for r in group]
    alpha_beta = np.array([mean_alpha_beta(results[r.name]) for r in group])
    out[k] = {'top1': top1, 'mean': float(np.mean(top1)), 'std': spread(top1),
              'alpha': float(np.mean(alpha_beta[:, 0])),
              'beta': float(np.mean(alpha_beta[:, 1])),
              'alpha_std': spread(alpha_beta[:, 0]),
              'beta_std': spread(alpha_beta[:, 1])}
  return out


def within_spread(row: dict, reference: dict) -> bool:
  """The mean differs from k = 1's by at most the larger seed spread."""
  allowed = max(row['std'], reference['std'])
  return abs(row['mean'] - reference['mean']) <= allowed


def report(context: runs.Context, groups: dict, results: dict) -> dict:
  summary = summarize(groups, results)
  reference = summary[1]
  rows = []
  for k, row in summary.items():
    rows.append([
        str(k), f"{row['mean']:.2f}", f"{row['std']:.2f}",
        ' / '.join(f'{v:.2f}' for v in row['top1']),
        f"{row['alpha']:.3f} ({row['alpha_std']:.3f})",
        f"{row['beta']:.3f} ({row['beta_std']:.3f})",
        'yes' if within_spread(row, reference) else 'NO'])
  seeds = ', '.join(str(dict(r.overrides)['seed']) for r in groups[1])
  table = runs.markdown_table(
      ['k', 'EvalNorm top-1 mean', 'std (n-1)', f'seeds {seeds}',
       'mean alpha (std)', 'mean beta (std)', 'within spread of k=1'], rows)
  ema = [runs.top1(results[r.name], 'ema') for r in groups[1]]
  differences = training_differences(groups, results)
  identical = ('Training is the same for every k: the EMA top-1 of each seed '
               f"({' / '.join(f'{v:.2f}' for v in ema)}) and every other mode "
               'that does not read alpha/beta are identical across k.\n'
               if not differences else
               'TRAINING DIFFERS ACROSS k (it must not): '
               + ', '.join(differences) + '\n')
  runs.write_markdown(
      context.output(f'{NAME}.md'),
      'Online estimation every k steps: EvalNorm top-1 and alpha/beta',
      runs.scale_note(context) if context.scale.name != 'small' else
      'Scale `small`: the quick start (`configs/digits.py`, noisy digits, '
      'B=2, 3000 steps) with `--config.estimate_every_steps=k`.\n',
      identical,
      '"Within spread": the mean top-1 differs from k=1\'s by at most the '
      'larger of the two seed standard deviations.\n', table,
      f'![k curve]({NAME}.png)\n')
  plot(context, summary)
  return summary


def plot(context: runs.Context, summary: dict) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ks = list(summary)
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
  top.errorbar(ks, [summary[k]['mean'] for k in ks],
               yerr=[summary[k]['std'] for k in ks], marker='o', capsize=3)
  top.set_ylabel('EvalNorm top-1 (%)')
  for name, marker in (('alpha', 'o'), ('beta', 's')):
    bottom.errorbar(ks, [summary[k][name] for k in ks],
                    yerr=[summary[k][f'{name}_std'] for k in ks],
                    marker=marker, capsize=3, label=f'mean {name}')
  bottom.set_ylabel('estimate')
  bottom.legend()
  bottom.set_xscale('log', base=2)
  bottom.set_xticks(ks, [str(k) for k in ks])
  bottom.set_xlabel('k = estimate_every_steps')
  top.set_title(f'Estimating every k steps ({context.scale.name} scale)')
  for axes in (top, bottom):
    axes.grid(alpha=0.3)
  runs.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)


def main(argv=None):
  parser = runs.argument_parser(__doc__)
  parser.add_argument('--seeds', default=','.join(str(s) for s in SEEDS),
                      help='comma-separated seeds (at least 3 for a spread)')
  args = parser.parse_args(argv)
  context = runs.context_from_args(args)
  seeds = [int(s) for s in args.seeds.split(',')]
  groups = k_runs(context.scale, seeds)
  results = context.execute(planned_runs(context, seeds))
  return report(context, groups, results)


if __name__ == '__main__':
  main()
