"""The READMEs' result tables, one function per block, from the `Sources`."""

import typing

from evalnorm.training import config_lib, summary
from experiments import quick_start, run_all, table2_detection
from experiments.reproduction import RESULTS, signed

COST_MODELS = {'cifar': 'ResNet-20', 'resnet50': 'ResNet-50'}
COST_FLAGS = {'default': 'default flags', 'avx2': 'AVX2',
              'eigen': 'Eigen'}
# The scripts whose headlines have a 'gain' ({row: {B or N: gain}}).
GAINS = {'Fig. 2': 'fig2_error_vs_b', 'Seeds': 'seeds',
         'Fig. 5': 'fig5_deeper_wider', 'Table 1': 'table1_imagenet',
         'Table 2': 'table2_detection', 'Table 2 analog': 'table2_transfer'}


class Sources(typing.NamedTuple):
  headlines: dict                     # experiments/results/headlines.json
  cost: dict[tuple[str, str], dict]   # (model, flags) -> benchmarks.cost record


def table(headers, rows, align: str | None = None) -> str:
  return summary.markdown_table(headers, rows, align) + '\n'


def digits_table(s: Sources) -> str:
  """The table the quick start prints, without its first line."""
  first = s.headlines['quick_start']['quick_start_table']
  return summary.results_table(first).split('\n\n', 1)[1] + '\n'


def quick_start_seeds(s: Sources) -> str:
  return table(('seed',) + quick_start.SEED_MODES,
               quick_start.seed_rows(s.headlines['quick_start']))


def baselines(s: Sources) -> str:
  return table(('run (seed 0, top-1 %)', 'own evaluation')
               + quick_start.BASELINE_MODES,
               quick_start.baseline_rows(s.headlines['quick_start']))


def provenance(s: Sources) -> str:
  p, machine = s.headlines['provenance'], s.headlines['provenance']['machine']
  return table(('commits, in the order they ran', 'clean tree', 'machine',
                'jax', 'flax', 'records'), [[
                    ', '.join(p['commits']), 'yes' if p['clean'] else 'no',
                    f"{machine['cpu']}, {machine['cpu_cores']} cores"
                    + ''.join(f', GPU {g}' for g in machine['gpus']),
                    p['packages']['jax'], p['packages']['flax'],
                    ', '.join(f'[{name}]({RESULTS}/{name})' for name in (
                        'provenance.json', 'runs.json', 'headlines.json'))]],
               'l' * 6)


def detection(s: Sources) -> str:
  """AP at N=2 over its seeds, the gains at the other N, the mean alpha."""
  numbers = s.headlines['table2_detection']
  later = list(next(iter(numbers['gain'].values())))[1:]
  mean_std = table2_detection.mean_std
  rows = [[p, *(mean_std(at['2']['AP'][m]) for m in table2_detection.MODES),
           mean_std(at['2']['gain'], '+'),
           *(signed(numbers['gain'][p][n]) for n in later),
           *(f'{a:.2f}' for a in numbers['mean_alpha'][p].values())]
          for p, at in numbers['by_paradigm'].items()]
  return table(('paradigm', 'EMA AP, N=2', 'EvalNorm AP', '1/B^2 AP', 'gain',
                *(f'gain, N={n}' for n in later), 'mean alpha: base',
                'RCN'), rows)


def cost_columns(s: Sources, corner: str, rows) -> str:
  """One column per committed cost run; ``rows``: (label, function of the
  run's setup and its record)."""
  runs = [(m, f) for m in COST_MODELS for f in COST_FLAGS if (m, f) in s.cost]
  setup = lambda run: next(iter(s.cost[run]['setups'].values()))
  return table([corner] + [f'{COST_MODELS[m]}, {COST_FLAGS[f]}'
                           for m, f in runs],
               [[label] + [value(setup(run), s.cost[run]) for run in runs]
                for label, value in rows])


def ratio(key: str):
  """A setup's ratio ``key`` (which may name its batch) against BatchNorm;
  '' where the record predates the row."""
  def cell(setup, _):
    value = setup['ratios'].get(key.format(**setup))
    return '' if value is None else f'{value:.2f}x'
  return cell


def bytes_ratio(*programs: str, stage: str = 'train', per=(1, 1)):
  """The bytes XLA says ``programs`` access (each divided by its ``per``)
  against BatchNorm's: unlike times, machine load does not change them; ''
  where the record predates one of the programs."""
  def cell(setup, _):
    rows = setup[stage]
    if any(p not in rows for p in programs):
      return ''
    return '{:.2f}x'.format(sum(rows[p]['bytes'] / n for p, n in
                                zip(programs, per)) / rows['batchnorm']['bytes'])
  return cell


def cost_table(s: Sources) -> str:
  """Each program's minimum time against BatchNorm's train step."""
  every = config_lib.base_config().estimate_every_steps
  return cost_columns(s, "against flax `nn.BatchNorm`'s train step", (
      ('SGD step, EvalNorm B = the whole per-device batch',
       ratio('train_B{batch}')),
      ('SGD step, EvalNorm B=2', ratio('train_B2')),
      ('separate estimation: alpha/beta step, EvalNorm B=2',
       ratio('alpha_beta_B2')),
      (f'separate estimation: mean step at k = {every} (amortized)',
       ratio('train_B2_amortized')),
      ('separate estimation: estimating step = every step at k = 1',
       ratio('train_B2_estimating')),
      (f'fused estimation: mean step at k = {every} (amortized)',
       ratio('fused_B2_amortized')),
      ('fused estimation: estimating step = every step at k = 1',
       ratio('fused_B2_estimating')),
      ("evaluation, EvalNorm `eval_stats='evalnorm'` (against BatchNorm's "
       'evaluation)', ratio('eval_evalnorm')),
      ('interleaved rounds timed', lambda setup, _: str(setup['repeats']))))


def cost_summary(s: Sources) -> str:
  """Where each run was measured, bytes accessed, BatchNorm's time spread."""
  every = config_lib.base_config().estimate_every_steps
  sgd, aux = 'evalnorm_B2', 'evalnorm_B2_alpha_beta'
  step = lambda setup: setup['train']['batchnorm']
  return cost_columns(s, 'measured on; bytes accessed against BatchNorm', (
      ('machine, jax, flax', lambda _, r: f"{r['device']['cpu']}, "
       f"{r['device']['cpu_cores']} cores, "
       + ', '.join(r['versions'].values())),
      ('commit', lambda _, r: r['commit'][:7]
       + ('' if r['clean'] else ' (uncommitted changes)')),
      ('bytes: SGD step, EvalNorm B=2', bytes_ratio(sgd)),
      ('bytes: alpha/beta step', bytes_ratio(aux)),
      (f'bytes: mean step at k = {every}', bytes_ratio(sgd, aux,
                                                       per=(1, every))),
      ('bytes: estimating step (separate)', bytes_ratio(sgd, aux)),
      ('bytes: estimating step (fused)', bytes_ratio('evalnorm_B2_fused')),
      ("bytes: evaluation, `eval_stats='evalnorm'`",
       bytes_ratio('evalnorm', stage='eval')),
      ("BatchNorm's train step: median / minimum", lambda setup, _:
       f"{step(setup)['median_s'] / step(setup)['min_s']:.2f}x"),
      ("BatchNorm's train step: minimum (s)",
       lambda setup, _: f"{step(setup)['min_s']:.2f}")))


def runtimes(s: Sources) -> str:
  return run_all.runtimes_table(s.headlines['runtimes']) + '\n'


def findings(s: Sources) -> str:
  """EvalNorm's gain over EMA in every experiment, by B (N in Table 2)."""
  rows = [[f'{name}, {label}'] + [signed(g[b]) if b in g else ''
                                  for b in ('2', '4', '8')]
          for name, script in GAINS.items()
          for label, g in s.headlines[script]['gain'].items()]
  return table(('gain (points of top-1; AP in Table 2)', 'B or N = 2', '4',
                '8'), rows)


def renorm(s: Sources) -> str:
  """Batch Renorm's top-1 beside EMA's and EvalNorm's at the same setting."""
  sweep = s.headlines['seeds']['top1']
  quick = s.headlines['quick_start']
  table1 = s.headlines['table1_imagenet']['top1']
  rows = [['Fig. 2 runs (600 steps), B=2, mean of 3 seeds',
           *(sweep[run]['2'][mode]['mean'] for run, mode in (
               ('evalnorm', 'ema'), ('renorm', 'ema'),
               ('evalnorm', 'evalnorm')))],
          ['quick start (3000 steps), B=2, seed 0',
           quick['top1_by_seed']['0']['ema'],
           quick['baselines'][quick_start.RENORM]['top1']['ema'],
           quick['top1_by_seed']['0']['evalnorm']]]
  rows += [[f'Table 1 (8 devices x B), B={b}', *(table1[row][b] for row in (
      'EMA', 'Batch Renorm', 'EvalNorm (online)'))] for b in ('2', '32')]
  return table(('top-1 (%)', 'EMA', 'Batch Renorm', 'EvalNorm'),
               [[label] + [f'{v:.2f}' for v in values]
                for label, *values in rows])
