r"""The READMEs' numbers, rendered from the committed results.

    python -m experiments.readme_numbers [--check]

Every number README.md and experiments/README.md give about a run or a
benchmark sits in a block between ``<!-- name -->`` and ``<!-- /name -->``,
and ``BLOCKS[name]`` renders that block from the committed results:
``experiments/results/runs.json`` (every run's eval.json) and
``provenance.json``, both written by ``run_all``; a result table for the
numbers that are not in eval.json (Fig. 1's distances); and
``benchmarks/results/cost_<model>_<flags>.json`` (``python -m
benchmarks.cost --output``). Without ``--check`` the blocks are rewritten
in place; with it nothing is written and the command exits 1 naming each
block that differs from its rendering. ``tests/test_readme_numbers.py`` runs the
check, so a README number cannot drift from the result it comes from.
"""

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable

import numpy as np

from evalnorm.training import files, summary as run_report
from evalnorm.training.summary import markdown_table
from experiments import command_line, runner, scales
from experiments import (estimate_every, fig2_error_vs_b, fig4_fixed_schedules,
                         fig5_deeper_wider, quick_start, seeds,
                         table1_imagenet, table2_detection, table2_transfer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_FILES = ('README.md', os.path.join('experiments', 'README.md'),
                *(os.path.join('docs', f'{name}.md') for name in (
                    'cost', 'detection', 'training')))
COST_DIR = os.path.join(ROOT, 'benchmarks', 'results')
# The cost runs the README shows: (model, XLA flags) -> the file's suffix.
COST_MODELS = {'cifar': 'ResNet-20', 'resnet50': 'ResNet-50'}
COST_FLAGS = {'default': 'default flags', 'eigen': 'Eigen'}
BLOCK = re.compile(r'<!-- ([a-z0-9-]+) -->\n(.*?)<!-- /\1 -->', re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Sources:
  """The committed results the blocks are rendered from."""
  cost: dict[tuple[str, str], dict]   # (model, flags) -> benchmarks.cost record
  evals: dict[str, dict] = dataclasses.field(default_factory=dict)  # eval.json by run
  every_k: dict[str, dict] = dataclasses.field(default_factory=dict)  # k curve
  provenance: dict = dataclasses.field(default_factory=dict)
  results_dir: str = runner.RESULTS_DIR

  @classmethod
  def load(cls, cost_dir: str = COST_DIR,
           results_dir: str = runner.RESULTS_DIR) -> 'Sources':
    archive = files.read_json(os.path.join(results_dir, 'runs.json'))
    return cls(load_cost(cost_dir), archive['eval'], archive['every_k'],
               files.read_json(os.path.join(results_dir, 'provenance.json')),
               results_dir)

  def table_cell(self, filename: str, *row_start: str) -> str:
    """The last cell of the first row of a committed result table whose
    first cells are ``row_start`` (for numbers that are not in eval.json)."""
    with open(os.path.join(self.results_dir, filename)) as f:
      for line in f:
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('|') and tuple(cells[:len(row_start)]) == row_start:
          return cells[-1]
    raise KeyError(f'{filename}: no row starting {row_start}')


SMALL = scales.SCALES['small']


def load_cost(cost_dir: str = COST_DIR) -> dict[tuple[str, str], dict]:
  """The committed ``benchmarks.cost`` records, by (model, flags)."""
  cost = {}
  for model in COST_MODELS:
    for flags in COST_FLAGS:
      path = os.path.join(cost_dir, f'cost_{model}_{flags}.json')
      if os.path.exists(path):
        cost[(model, flags)] = files.read_json(path)
  return cost


def _top1(sources: Sources, run: runner.Run, mode: str) -> float:
  return runner.top1(sources.evals[run.name], mode)


def _span(values) -> str:
  """'a-b' of values at 2 decimals (one value: itself)."""
  low, high = f'{min(values):.2f}', f'{max(values):.2f}'
  return low if low == high else f'{low}-{high}'


# ---------------------------------------------------------------------------
# The quick start (experiments/quick_start.py, the k curve).


def quick_start_table(sources: Sources) -> str:
  """The table the first command prints (seed 0), without its header line."""
  text = run_report.results_table(
      sources.evals[quick_start.seed_run(SMALL, 0).name])
  return text.split('\n\n', 1)[1] + '\n'


def quick_start_seeds(sources: Sources) -> str:
  """Top-1 per seed, what is exact and what is a range."""
  from evalnorm.training import config_lib  # pylint: disable=g-import-not-at-top
  seed_runs = [quick_start.seed_run(SMALL, s) for s in scales.DEFAULT_SEEDS]
  other = quick_start.other_devices_run(SMALL)
  table = markdown_table(('seed',) + quick_start.SEED_MODES,
                         quick_start.seed_rows(quick_start.headlines(
                             command_line.Context(SMALL, '', runner.RESULTS_DIR, 1), sources.evals)))
  of = lambda mode: [_top1(sources, r, mode) for r in seed_runs]
  every = config_lib.base_config().estimate_every_steps
  every_step = [runner.top1(sources.every_k[r.name]['1'], 'evalnorm')
                for r in estimate_every.planned_runs(
                    command_line.Context(SMALL, '', '', 1))]
  machine = sources.provenance['machine']
  versions = sources.provenance['packages']
  ema, evalnorm = of('ema'), of('evalnorm')
  ranges = (
      f'Over the three seeds EMA evaluation gives {_span(ema)}, EvalNorm '
      f"{_span(evalnorm)}, the rule of thumb {_span(of('rule_of_thumb'))} and "
      "the training groups' own statistics "
      f"{_span(of('train_stats'))}. alpha/beta are estimated every {every}th "
      'step (the default `estimate_every_steps`; every step gives '
      f"{' / '.join(f'{v:.2f}' for v in every_step)}, see "
      '[the k curve](experiments/results/estimate_every.md)).')
  exact = (
      '**Which numbers are exact.** On one machine, with the same device '
      'count and library versions, a run is exact: rerunning it writes a '
      'bit-identical `eval.json`, and the first command prints the table '
      'above with seed 0 on the machine that produced it '
      f"({machine['cpu']}, {machine['cpu_cores']} cores, jax "
      f"{versions['jax']}). Anywhere else the same command trains through "
      'other floating-point round-off, which a 2-example normalization '
      'amplifies (by up to 1/sqrt(epsilon)) until the run behaves like '
      'another seed: seed 0 on 8 devices, the same groups in another '
      f"compiled program, gives EMA {_top1(sources, other, 'ema'):.2f} and "
      f"EvalNorm {_top1(sources, other, 'evalnorm'):.2f}. Expect a number in "
      'the range over seeds, not the digits of the table: EMA spans '
      f'{max(ema) - min(ema):.1f} points over three seeds (a difference of '
      'that size is not a broken install), EvalNorm '
      f'{max(evalnorm) - min(evalnorm):.1f}.')
  return _paragraphs(table, ranges, exact)


def _paragraphs(*parts: str) -> str:
  """Markdown paragraphs: tables as they are, text wrapped like the READMEs."""
  return '\n\n'.join(p if p.startswith('|') else '\n'.join(_wrap(p))
                     for p in parts) + '\n'


def baselines(sources: Sources) -> str:
  """The baselines table and what offline estimation gains."""
  rows = quick_start.baseline_rows(quick_start.headlines(
      command_line.Context(SMALL, '', runner.RESULTS_DIR, 1), sources.evals))
  table = markdown_table(
      ('run (seed 0, top-1 %)', 'own evaluation')
      + quick_start.BASELINE_MODES, rows)
  named = quick_start.baseline_runs(SMALL)
  trained, offline = (named[k] for k in list(named)[:2])
  fixed = ', '.join(
      f"{c} gives {_top1(sources, offline, f'fixed_{c}'):.2f}"
      for c in ('0.05', '0.1', '0.5'))
  gain = (_top1(sources, offline, 'evalnorm')
          - _top1(sources, trained, 'ema'))
  text = (
      f'The plain-BatchNorm model gains {gain:.1f} points from offline '
      'estimation without retraining (it is weaker overall: its SGD batch is '
      f'16, not 128). Fixed alpha = beta on it: {fixed} (0.5 = 1/B).')
  return _paragraphs(table, text)


# ---------------------------------------------------------------------------
# The paper's figures and tables at the small scale.


def _error(sources: Sources, run: runner.Run, mode: str) -> float:
  return runner.error(sources.evals[run.name], mode)


def _mean_alpha(result: dict) -> float:
  return estimate_every.mean_alpha_beta(result)[0]


def _gains(sources: Sources, group: list[runner.Run]) -> list[float]:
  return [_top1(sources, r, 'evalnorm') - _top1(sources, r, 'ema')
          for r in group]


def fig2_cell(sources: Sources) -> str:
  errors = fig2_error_vs_b.curves(SMALL, sources.evals)
  ema, en = errors['EMA (BatchNorm)'], errors['EvalNorm (online)']
  renorm = errors['Batch Renorm']
  large = ema[1:] + en[1:]
  return (f'B=2: EMA {ema[0]:.1f}, EvalNorm {en[0]:.1f}; B >= 4: EMA and '
          f'EvalNorm {min(large):.1f}-{max(large):.1f}; Renorm '
          f'{min(renorm):.0f}-{max(renorm):.0f} at every B')


def seeds_cell(sources: Sources) -> str:
  groups = seeds.seed_runs(SMALL, scales.DEFAULT_SEEDS)
  small, eight = _gains(sources, groups[('evalnorm', 2)]), _gains(
      sources, groups[('evalnorm', 8)])
  return (f'EvalNorm gain at B=2: {np.mean(small):+.1f} '
          f"({' / '.join(f'{g:.1f}' for g in small)}); at B=8: "
          f'{np.mean(eight):+.2f} +- {np.std(eight, ddof=1):.2f}')


def _fig1_distance(sources: Sources, b: int, stats: str) -> str:
  """Fig. 1's mean absolute distance to the training activations, at B=b
  under 'EMA' or 'EvalNorm' statistics (not in eval.json: from its table)."""
  return sources.table_cell('fig1_histograms.md', f'B={b}',
                            f'{stats} statistics')


def fig1_cell(sources: Sources) -> str:
  d = lambda b, stats: _fig1_distance(sources, b, stats)
  return (f"distance to training activations at B=2: EMA {d(2, 'EMA')}, "
          f"EvalNorm {d(2, 'EvalNorm')} (B=128: {d(128, 'EMA')} / "
          f"{d(128, 'EvalNorm')})")


def fig3_cell(sources: Sources) -> str:
  sweep = {b: sources.evals[fig2_error_vs_b.evalnorm_run(SMALL, b).name]
           for b in SMALL.b_values}
  layers = [float(np.mean(v['alpha']))
            for v in sweep[2]['alpha_beta'].values()]
  return (f'mean alpha {_mean_alpha(sweep[2]):.2f} (B=2) to '
          f'{_mean_alpha(sweep[max(sweep)]):.2f} (B={max(sweep)}); per layer '
          f'{min(layers):.2f}-{max(layers):.2f} at B=2')


def fig4_cell(sources: Sources) -> str:
  b2 = fig2_error_vs_b.evalnorm_run(SMALL, 2)
  b128 = fig2_error_vs_b.evalnorm_run(SMALL, max(SMALL.b_values))
  e = lambda mode: f'{_error(sources, b2, mode):.1f}'
  return (f"B=2 error: estimated {e('evalnorm')}, 1/B {e('one_over_b')}, "
          f"1/B^2 {e('rule_of_thumb')}, EMA {e('ema')}; constant 0.5 gives "
          f"{_error(sources, b128, 'fixed_0.5'):.1f} at B=128")


def _fig5_errors(sources: Sources, b: int, mode: str) -> list[float]:
  """Fig. 5's errors at B=b for the models deeper or wider than the base."""
  base = (SMALL.fig5_models[0][0], 1)
  return [_error(sources, fig5_deeper_wider.model_run(SMALL, d, w, b), mode)
          for d, w in fig5_deeper_wider.model_grid(SMALL) if (d, w) != base]


def _fig5_differences(sources: Sources) -> list[float]:
  """EvalNorm's error minus EMA's, every larger model, at B past 2."""
  return [e - m for b in SMALL.fig5_b_values[1:]
          for e, m in zip(_fig5_errors(sources, b, 'evalnorm'),
                          _fig5_errors(sources, b, 'ema'))]


def fig5_cell(sources: Sources) -> str:
  at = lambda b, mode: _fig5_errors(sources, b, mode)
  differences = _fig5_differences(sources)
  return (f"B=2: EMA {min(at(2, 'ema')):.1f}-{max(at(2, 'ema')):.1f} vs "
          f"EvalNorm {min(at(2, 'evalnorm')):.1f}-"
          f"{max(at(2, 'evalnorm')):.1f} error; B=4, 8: EvalNorm minus EMA "
          f'{min(differences):+.1f} to {max(differences):+.1f}')


def fig5_agrees(sources: Sources) -> str:
  """The paper's gain at B=4, 8 (lower error with EvalNorm); B=2 is ours."""
  if max(_fig5_differences(sources)) < -LEAST_GAIN:
    return 'yes'
  at2 = zip(_fig5_errors(sources, 2, 'evalnorm'), _fig5_errors(sources, 2, 'ema'))
  return ('at B=2 only' if all(m - e > LEAST_GAIN for e, m in at2)
          else 'no')


def table1_cell(sources: Sources) -> str:
  rows = {k: v[0] for k, v in table1_imagenet.rows_by_method(
      SMALL, sources.evals).items()}
  gain = rows['EvalNorm (online)'] - rows['EMA']
  return (f"B=2: EMA {rows['EMA']:.2f}, EvalNorm "
          f"{rows['EvalNorm (online)']:.2f} ({gain:+.1f}), offline "
          f"{rows['EvalNorm offline']:.2f}, 1/B^2 {rows['1/B^2']:.2f}, Renorm "
          f"{rows['Batch Renorm']:.2f}, GroupNorm {rows['GroupNorm']:.2f}")


def _detection_gains(sources: Sources, n: int) -> dict[str, list[float]]:
  """Per paradigm, EvalNorm's AP minus EMA's at N = n, one per seed."""
  grid = table2_detection.detection_runs(SMALL, '')
  gains = {}
  for (paradigm, runs_n, _), run in grid.items():
    if runs_n == n:
      result = sources.evals[run.name]['eval']
      gains.setdefault(paradigm, []).append(
          result['evalnorm']['AP'] - result['ema']['AP'])
  return gains


def table2_cell(sources: Sources) -> str:
  at2 = {p: float(np.mean(g)) for p, g in _detection_gains(sources, 2).items()}
  later = [g for n in SMALL.detection.n_values[1:]
           for p, gs in _detection_gains(sources, n).items() if '(c)' not in p
           for g in gs]
  frozen = [_detection_gains(sources, n)[FROZEN][0]
            for n in SMALL.detection.n_values[1:]]
  labels = ('random init', 'BN reset', 'BN statistics frozen', 'all tuned')
  cells = ', '.join(f'{at2[p]:+.1f} {label}'
                    for p, label in zip(table2_detection.PARADIGMS, labels))
  return (f'AP gain of EvalNorm over EMA at N=2 (3 seeds): {cells}; at N=4, 8: '
          f'{min(later):+.1f} to {max(later):+.1f} (frozen: '
          f"{' / '.join(f'{g:+.1f}' for g in frozen)})")


FROZEN = '(c) pre-trained, BN statistics frozen'


def _transfer_gains(sources: Sources, b: int) -> dict[str, float]:
  """Per initialization, EvalNorm's top-1 minus EMA's at B=b."""
  grid = table2_transfer.fine_tune_runs(SMALL, '')
  return {p: _top1(sources, grid[(p, b)], 'evalnorm')
          - _top1(sources, grid[(p, b)], 'ema')
          for p in table2_transfer.PARADIGMS}


def transfer_cell(sources: Sources) -> str:
  labels = ('random', 'BN reset', 'BN frozen', 'all tuned')
  cells = ', '.join(f'{gain:+.1f} {label}' for gain, label in
                    zip(_transfer_gains(sources, 2).values(), labels))
  return f'EvalNorm gain at B=2: {cells}'


# The least gain (points of top-1 or AP) the 'agrees?' column counts as one:
# a gain's seed-to-seed spread here is 0.2-0.6 points where the B or N is
# not 2 (seeds.md at B=8, the detector's three seeds at N=2).
LEAST_GAIN = 1.0


def _agreement(first: dict[str, float], later: dict[str, list[float]],
               first_at: str, later_at: str) -> str:
  """The 'agrees?' cell of a paradigm table: where EvalNorm gains over EMA
  (the paper: in every paradigm), at the smallest batch (one gain per
  paradigm) and at the larger ones (every gain)."""
  def where(gaining, at):
    gaining = [p[:3] for p, gains in gaining.items()
               if min(gains) > LEAST_GAIN]
    losing = [p[:3] for p in first if p[:3] not in gaining]
    if not losing:
      return f'yes at {at}'
    if not gaining:
      return f'not at {at}'
    if len(gaining) < len(losing):
      return f"at {at} only in {', '.join(gaining)}"
    return f"at {at} except {', '.join(losing)}"
  return '; '.join((where({p: [g] for p, g in first.items()}, first_at),
                    where(later, later_at)))


def table2_agrees(sources: Sources) -> str:
  later = {}
  for n in SMALL.detection.n_values[1:]:
    for paradigm, gains in _detection_gains(sources, n).items():
      later.setdefault(paradigm, []).extend(gains)
  first = {p: float(np.mean(g)) for p, g in _detection_gains(sources, 2).items()}
  return (_agreement(first, later, 'N=2', 'N=4, 8')
          + '; (c) read differently, see below')


def transfer_agrees(sources: Sources) -> str:
  later = {p: [_transfer_gains(sources, b)[p]
               for b in SMALL.transfer_b_values[1:]]
           for p in table2_transfer.PARADIGMS}
  return _agreement(_transfer_gains(sources, 2), later, 'B=2', 'B=4, 8')


# (link, what, small-scale cell, the paper, agrees?) of the reproduction table;
# 'agrees?' is a function of the results where its answer depends on signs.
REPRODUCTION = (
    ('[Fig. 2](experiments/results/fig2_error_vs_b.md): error against B',
     fig2_cell, 'EMA error rises sharply at small B, EvalNorm stays close',
     'yes at B=2; here B=4-8 is already "large"'),
    ('[Seeds](experiments/results/seeds.md)', seeds_cell, '',
     'gain real at B=2; a small cost at B=8'),
    ('[Fig. 1](experiments/results/fig1_histograms.md): activations',
     fig1_cell, "EMA's differ at small B",
     'yes (per example, not in the pooled histogram)'),
    ('[Fig. 3](experiments/results/fig3_alpha_beta.md): alpha/beta per layer',
     fig3_cell, 'fall with B, vary by layer', 'yes'),
    ('[Fig. 4](experiments/results/fig4_fixed_schedules.md): fixed schedules',
     fig4_cell, 'estimated best; constants fail across B', 'yes'),
    ('[Fig. 5](experiments/results/fig5_deeper_wider.md): deeper, wider '
     '(reduced: depth 8/14/20, width x1/x2)', fig5_cell,
     'gain for every depth/width at B=4, 8', fig5_agrees),
    ('[Table 1](experiments/results/table1_imagenet.md): 8 devices x B',
     table1_cell, 'ImageNet B=2: 64.80 / 70.98 (+6.18)',
     'gain yes; GroupNorm best here'),
    ('[Table 2](experiments/results/table2_detection.md): Faster R-CNN on '
     '`digit_scenes`, four paradigms x N = 2, 4, 8', table2_cell,
     'COCO: +1.5 to +7.0 AP in every paradigm', table2_agrees),
    ('[Table 2 analog](experiments/results/table2_transfer.md): '
     'initializations (digits to noisy digits, not COCO)', transfer_cell,
     'COCO: +1.5 to +7.0 AP in every paradigm', transfer_agrees),
)


def reproduction_table(sources: Sources) -> str:
  rows = [[what, cell(sources), paper,
           agrees(sources) if callable(agrees) else agrees]
          for what, cell, paper, agrees in REPRODUCTION]
  table = markdown_table(('paper', 'small-scale result (top-1 or error, %)',
                          'paper', 'agrees?'), rows, align='llll')
  at8 = _gains(sources, seeds.seed_runs(SMALL, scales.DEFAULT_SEEDS)[
      ('evalnorm', 8)])
  detector = [np.std(g, ddof=1) for p, g in _detection_gains(sources, 2).items()
              if p != FROZEN]
  text = (f"In 'agrees?' a gain counts when it exceeds {LEAST_GAIN:g} point: "
          "a gain's seed-to-seed spread (standard deviation) is "
          f'{np.std(at8, ddof=1):.2f} points at B=8 and '
          f'{min(detector):.1f}-{max(detector):.1f} AP for the detector at '
          'N=2 outside (c), several points at B=2.')
  return _paragraphs(table, text)


def detection_table(sources: Sources) -> str:
  """README's Table 2 table: AP at N=2 over seeds, gains at N=4 and 8."""
  grid = table2_detection.detection_runs(SMALL, '')
  seeds_n2 = SMALL.detection.seeds
  later = SMALL.detection.n_values[1:]
  rows = []
  numbers = table2_detection.headlines(command_line.Context(SMALL, '', runner.RESULTS_DIR, 1), sources.evals)['by_paradigm']
  for paradigm in table2_detection.PARADIGMS:
    at = numbers[paradigm]
    cell = lambda mode: table2_detection.mean_std(at['2']['AP'][mode])
    gain = table2_detection.mean_std(at['2']['gain'], '+')
    others = ' / '.join(table2_detection.mean_std(at[str(n)]['gain'], '+')
                        for n in later)
    rows.append([paradigm, cell('ema'), cell('evalnorm'), gain, others])
  table = markdown_table(
      ('paradigm', 'EMA AP', 'EvalNorm AP', 'gain',
       ' / '.join(f'N={n}' for n in later)), rows)
  rule = ', '.join(
      f"{np.mean([sources.evals[grid[(p, 2, s)].name]['eval']['rule_of_thumb']['AP'] for s in seeds_n2]):.1f}"
      for p in table2_detection.PARADIGMS if p != FROZEN)
  alphas = {p: _detection_alphas(sources, grid[(p, 2, 0)])
            for p in table2_detection.PARADIGMS}
  others = [a for p, a in alphas.items() if p != FROZEN]
  text = (
      f'The rule of thumb at N=2: {rule} AP in (a), (b), (d). In (c), '
      "EvalNorm's estimate leans on each example's own statistics: mean "
      f'alpha {alphas[FROZEN][0]:.2f} in the base network and '
      f'{alphas[FROZEN][1]:.2f} in the RCN, against '
      f'{min(a[0] for a in others):.2f}-{max(a[0] for a in others):.2f} and '
      f'{min(a[1] for a in others):.2f}-{max(a[1] for a in others):.2f} in '
      'the other paradigms (seed 0).')
  return _paragraphs(table, text)


def _detection_alphas(sources: Sources, run: runner.Run) -> tuple[float, float]:
  """Mean alpha of the base network's norm layers and of the RCN's."""
  layers = sources.evals[run.name]['alpha_beta']
  part = lambda prefix: float(np.mean([np.mean(v['alpha']) for k, v in
                                       layers.items() if k.startswith(prefix)]))
  return part('backbone/'), part('rcn/')


# ---------------------------------------------------------------------------
# experiments/README.md's findings: the numbers of each claim, and the words
# that depend on their sign (every seed, the same sign) computed from them.


def _mean_std(values) -> str:
  return f'{np.mean(values):.2f} +- {np.std(values, ddof=1):.2f}'


def _every_seed(values, what: str) -> str:
  count = sum(v > 0 for v in values)
  return (f'{what} for every seed' if count == len(values)
          else f'{what} for {count} of {len(values)} seeds')


def findings(sources: Sources) -> str:
  bs = SMALL.b_values
  sweep = [sources.evals[r.name]
           for r in fig2_error_vs_b.evalnorm_sweep(SMALL)]
  curves = fig2_error_vs_b.curves(SMALL, sources.evals)
  ema, en = curves['EMA (BatchNorm)'], curves['EvalNorm (online)']
  renorm = curves['Batch Renorm']
  groups = seeds.seed_runs(SMALL, scales.DEFAULT_SEEDS)
  gains2 = _gains(sources, groups[('evalnorm', 2)])
  gains8 = _gains(sources, groups[('evalnorm', 8)])
  top1 = lambda group, mode: [_top1(sources, r, mode) for r in group]
  spread = lambda group, mode: float(np.std(top1(group, mode), ddof=1))
  alphas = [_mean_alpha(r) for r in sweep]
  layers2 = [float(np.mean(v['alpha'])) for v in sweep[0]['alpha_beta'].values()]
  falls = all(a >= b for a, b in zip(alphas, alphas[1:]))
  schedules = fig4_fixed_schedules.schedules(sweep[0])
  fixed = {label: [runner.error(r, mode) for r in sweep] for label, mode in
           schedules.items() if label != 'estimated (EvalNorm)'}
  best_fixed = [min(v[i] for v in fixed.values()) for i in range(len(bs))]
  estimate_gap = max(e - b for e, b in zip(en[1:], best_fixed[1:]))
  best_at_2 = en[0] <= best_fixed[0]
  fig5 = lambda b, mode: _fig5_errors(sources, b, mode)
  fig5_diff = _fig5_differences(sources)
  table1 = table1_imagenet.rows_by_method(SMALL, sources.evals)
  t1 = lambda row, i=0: table1[row][i]
  b_last = SMALL.table1_b_values[-1]
  column = table1_imagenet.column_runs(SMALL, b_last)['evalnorm']
  steps_last = sources.evals[column.name]['step']
  lr_last = dict(column.overrides)['learning_rate']
  d = lambda b, stats: _fig1_distance(sources, b, stats)
  renorm_group, ema_group = groups[('renorm', 2)], groups[('evalnorm', 2)]
  quick_ema = _top1(sources, quick_start.seed_run(SMALL, 0), 'ema')
  quick_renorm = _top1(sources, quick_start.baseline_runs(SMALL)[
      'Batch Renorm (batch 128, groups of 2)'], 'ema')
  det2 = _detection_gains(sources, 2)
  det_later = [g for n in SMALL.detection.n_values[1:]
               for p, gs in _detection_gains(sources, n).items()
               if p != FROZEN for g in gs]
  det_grid = table2_detection.detection_runs(SMALL, '')
  frozen_ap = lambda mode: [sources.evals[r.name]['eval'][mode]['AP']
                            for (p, _, _), r in det_grid.items() if p == FROZEN]
  frozen_alpha = _detection_alphas(sources, det_grid[(FROZEN, 2, 0)])[0]
  transfer = table2_transfer.fine_tune_runs(SMALL, '')
  t_gain = lambda p, b: _transfer_gains(sources, b)[p]
  t_frozen = '(c) pre-trained, BN statistics frozen'
  t_others = [p for p in table2_transfer.PARADIGMS if p != t_frozen]
  t_later = [t_gain(p, b) for p in t_others
             for b in SMALL.transfer_b_values[1:]]
  t_frozen_ema, t_frozen_evalnorm = (
      [_top1(sources, transfer[(t_frozen, b)], mode)
       for b in SMALL.transfer_b_values] for mode in ('ema', 'evalnorm'))
  n = len(scales.DEFAULT_SEEDS)
  bullets_agree = [
      f'*Fig. 2 / seeds:* EMA evaluation breaks down at B=2 ({ema[0]:.1f}% '
      f'error against {min(ema[1:]):.1f}-{max(ema[1:]):.1f}% for B >= 4) and '
      f'EvalNorm recovers part of it ({en[0]:.1f}%). Over {n} seeds the gain '
      f'at B=2 is {np.mean(gains2):+.1f} points '
      f"({' / '.join(f'{g:.1f}' for g in gains2)}), "
      + _every_seed(gains2, 'positive') + '.',
      f'*Fig. 3:* the estimated alpha and beta '
      + ('fall steadily' if falls else 'fall overall') + ' with B (mean alpha '
      f'{alphas[0]:.2f} at B=2, {alphas[1]:.2f} at B={bs[1]}, '
      f'{alphas[-1]:.2f} at B={bs[-1]}) and differ between layers (at B=2 '
      f'from {min(layers2):.2f} to {max(layers2):.2f} for alpha), so no '
      'single constant fits every layer.',
      '*Fig. 4:* a large constant that helps at B=2 hurts at large B '
      f"(alpha = beta = 0.5: {fixed['constant 0.5'][0]:.1f}% error at B=2, "
      f"{fixed['constant 0.5'][-1]:.1f}% at B={bs[-1]}); the estimate "
      + ('is the best schedule' if best_at_2 else 'is not the best schedule')
      + f' at B=2 ({en[0]:.1f}%, best fixed {best_fixed[0]:.1f}%) and within '
      f'{estimate_gap:.1f} points of the best fixed schedule at every other B; '
      f"1/B^2 gives {fixed['1/B^2'][0]:.1f}% at B=2 without estimation.",
      f"*Fig. 5 (at B=2):* EMA error {min(fig5(2, 'ema')):.1f}-"
      f"{max(fig5(2, 'ema')):.1f}% against {min(fig5(2, 'evalnorm')):.1f}-"
      f"{max(fig5(2, 'evalnorm')):.1f}% with EvalNorm for the deeper and wider "
      'models.',
      f"*Table 1:* in the per-device setup (8 devices x B), B=2 gives "
      f"{t1('EMA'):.2f} top-1 with EMA and {t1('EvalNorm (online)'):.2f} with "
      f"EvalNorm ({t1('EvalNorm (online)') - t1('EMA'):+.1f}; the paper: "
      f"+6.18 on ImageNet). Offline estimation on the same checkpoint gets "
      f"{t1('EvalNorm offline'):.2f} and 1/B^2 {t1('1/B^2'):.2f}.",
      f"*Fig. 1:* at B=128 the EMA and EvalNorm activations are both close "
      f"to the training ones (mean absolute distance {d(128, 'EMA')} and "
      f"{d(128, 'EvalNorm')}); at B=2 EMA's are {d(2, 'EMA')} away and "
      f"EvalNorm's {d(2, 'EvalNorm')}.",
  ]
  bullets_differ = [
      '*B = 4 and 8 are already "large" here.* EMA evaluation is within '
      f'{max(ema[1:]) - min(ema[1:]):.1f} points of the large-B error from '
      'B=4 on, and Fig. 5 at the paper\'s B=4 and 8 shows differences of '
      f'{min(fig5_diff):+.1f} to {max(fig5_diff):+.1f} points between '
      'EvalNorm and EMA; the paper sees the gap up to B=8. The small scale '
      'therefore adds B=2 to Fig. 5.',
      f'*EvalNorm at B=8:* {np.mean(gains8):+.2f} +- '
      f'{np.std(gains8, ddof=1):.2f} points against EMA over {n} seeds, '
      + ('the same sign every time' if len({g > 0 for g in gains8}) == 1
         else 'of either sign') + '.',
      f'*Batch Renorm* gives {min(renorm):.0f}-{max(renorm):.0f}% error in '
      f"the 600-step runs of Fig. 2, and at B=2 {_mean_std(top1(renorm_group, 'ema'))} "
      f"top-1 over seeds against EMA's {_mean_std(top1(ema_group, 'ema'))}. "
      'Its clip ramp takes a third of these short runs; in the 3000-step '
      f'quick start setting it reaches {quick_renorm:.2f} at B=2 (EMA: '
      f'{quick_ema:.2f}). The paper finds Renorm between EMA and EvalNorm.',
      "*Fig. 1's pooled histograms nearly coincide* at B=2 too: the mismatch "
      'is per example (each example is normalized by a different pair of '
      'statistics), not a global shift, so the difference histograms (bottom '
      'row) show it and the pooled ones do not.',
      f"*Table 1's large-B columns are undertrained:* every B sees "
      f'{SMALL.table1_examples:,} examples, so B={b_last} gets {steps_last} '
      f'steps at learning rate {lr_last:g}; there EMA gives '
      f"{t1('EMA', -1):.2f} and EvalNorm {t1('EvalNorm (online)', -1):.2f}. "
      f"GroupNorm gives {min(table1['GroupNorm']):.2f}-"
      f"{max(table1['GroupNorm']):.2f} over the B columns: it uses no batch "
      'statistics (not checked against the paper\'s GroupNorm row).',
      '*Table 2 (detection):* EvalNorm\'s AP gain at N=2 (3 seeds): '
      + ', '.join(f'{np.mean(g):+.1f} in {p[:3]}' for p, g in det2.items())
      + f'; at N=4 and 8 outside (c) {min(det_later):+.1f} to '
      f'{max(det_later):+.1f}. With the pre-trained moving averages frozen '
      f"(c), EMA evaluation gives {min(frozen_ap('ema')):.0f}-"
      f"{max(frozen_ap('ema')):.0f} AP and EvalNorm "
      f"{min(frozen_ap('evalnorm')):.0f}-{max(frozen_ap('evalnorm')):.0f}, its "
      "estimate leaning on each example's own statistics (mean alpha "
      f'{frozen_alpha:.2f} in the base network). The paper reports +1.5 to '
      '+7.0 in every paradigm and N; see the README\'s Detection section for '
      'how (c) is read here.',
      '*Table 2 analog:* EvalNorm\'s gain at B=2 is '
      f'{min(t_gain(p, 2) for p in table2_transfer.PARADIGMS):+.1f} to '
      f'{max(t_gain(p, 2) for p in table2_transfer.PARADIGMS):+.1f} over the '
      f'initializations and, outside the frozen case, {min(t_later):+.1f} to '
      f'{max(t_later):+.1f} at B=4 and 8. With BN statistics frozen at the '
      f'source data\'s values, EMA evaluation gives {min(t_frozen_ema):.0f}-'
      f'{max(t_frozen_ema):.0f}% and EvalNorm\'s gain is '
      + ', '.join(f'{t_gain(t_frozen, b):+.1f} at B={b}'
                  for b in SMALL.transfer_b_values)
      + f' (EvalNorm itself: {min(t_frozen_evalnorm):.0f}-'
      f'{max(t_frozen_evalnorm):.0f}%, chance being 10%). The paper reports '
      'gains in every paradigm; its detector trains far '
      'longer, and digits to noisy digits is a much larger shift than '
      'ImageNet to COCO.',
  ]
  intro = (
      f'All numbers are from the committed results (one seed unless '
      f"`seeds.md` says otherwise; the seed spread at B=2 is "
      f"{spread(ema_group, 'evalnorm'):.1f} points for EvalNorm and "
      f"{spread(ema_group, 'ema'):.1f} for EMA, at B=8 "
      f"{spread(groups[('evalnorm', 8)], 'evalnorm'):.1f}). The paper's "
      'numbers are quoted only where the paper states them in text (ImageNet, '
      'B=2: 64.80 EMA, 70.98 EvalNorm); for its figures we compare the shape.')
  bullet = lambda text: '\n'.join(
      ('- ' if i == 0 else '  ') + line for i, line in enumerate(_wrap(text, 86)))
  return ('## What the small scale shows, against the paper\n\n'
          + '\n'.join(_wrap(intro)) + '\n\n**Agrees.**\n'
          + '\n'.join(bullet(b) for b in bullets_agree)
          + '\n\n**Does not agree, or not shown at this scale.**\n'
          + '\n'.join(bullet(b) for b in bullets_differ) + '\n')


# ---------------------------------------------------------------------------
# Provenance and runtimes (experiments/run_all.py).


def provenance_note(sources: Sources) -> str:
  record = sources.provenance
  invocations = sorted(record['invocations'], key=lambda i: i['started'])
  commits = list(dict.fromkeys(i['commit'][:7] for i in invocations
                               if i['commit']))
  machine, versions = record['machine'], record['packages']
  count = len(invocations)
  text = (
      f"The committed results were produced by {count} invocation"
      f"{'s' if count > 1 else ''} of `run_all` (an interrupted regeneration "
      'reruns the command and reuses the finished runs), at commit'
      f"{'s' if len(commits) > 1 else ''} {_listing(commits)}"
      f"{' in that order' if len(commits) > 1 else ''}, "
      f"{'each on a clean tree' if record['clean'] else 'not all on a clean tree'}"
      f", on {machine['cpu']} ({machine['cpu_cores']} cores), jax "
      f"{versions['jax']}, flax {versions['flax']} "
      '([provenance.json](experiments/results/provenance.json) has the '
      'package versions and each invocation; '
      '[runs.json](experiments/results/runs.json) every run\'s '
      '`eval.json`; [runtimes](experiments/README.md#scripts) the time each '
      'script takes).')
  return _paragraphs(text)


def _listing(items: list[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return ', '.join(items[:-1]) + (' and ' if len(items) > 1 else '') + items[-1]


def runtimes_table(sources: Sources) -> str:
  """experiments/README: the table run_all writes to runtimes.md."""
  from experiments import run_all  # pylint: disable=g-import-not-at-top
  record = sources.provenance
  k_curve = record['minutes_per_script'].get('estimate_every')
  text = (
      'Per script: the runs it adds to those of the scripts before it, the '
      'median minutes of one such run, and their sum (`--jobs '
      f"{'/'.join(map(str, sorted({i['jobs'] for i in record['invocations']})))}` on "
      f"{record['machine']['cpu_cores']} cores runs that many at a time, so "
      'the wall time is about the sum divided by the jobs). A run\'s minutes '
      'include any time the machine was shared or the regeneration paused; '
      'the median is the steadier figure. `estimate_every.py` trains in its '
      'own processes, one per seed'
      + (f' ({k_curve:.0f} wall minutes for the three)' if k_curve else '')
      + '.')
  return _paragraphs(text, run_all.runtimes_table(run_all.runtimes(
      command_line.Context(SMALL, '', '', 1), sources.evals)))


# ---------------------------------------------------------------------------
# Cost (benchmarks/cost.py).


def _setup(record: dict) -> dict:
  """The one model a cost record measured."""
  (setup,) = record['setups'].values()
  return setup


def _times(value: float) -> str:
  return f'{value:.2f}x'


# (row label, ratios key or a function of the setup) of the cost table.
def _cost_rows(small: int, every: int):
  return (
      ('SGD step, EvalNorm B = the whole per-device batch',
       lambda s: s['ratios'][f"train_B{s['batch']}"]),
      (f'SGD step, EvalNorm B={small}',
       lambda s: s['ratios'][f'train_B{small}']),
      (f'alpha/beta step, EvalNorm B={small}',
       lambda s: s['ratios'][f'alpha_beta_B{small}']),
      (f'mean step at k = {every}, EvalNorm B={small} (amortized)',
       lambda s: s['ratios'][f'train_B{small}_amortized']),
      (f'estimating step (both programs), EvalNorm B={small}',
       lambda s: s['ratios'][f'train_B{small}_estimating']),
      ("evaluation, EvalNorm `eval_stats='evalnorm'` (against BatchNorm's "
       'evaluation)', lambda s: s['ratios']['eval_evalnorm']),
  )


def cost_columns(sources: Sources) -> list[tuple[str, str]]:
  """The (model, flags) of the committed cost runs, in the table's order."""
  return [(m, f) for m in COST_MODELS for f in COST_FLAGS
          if (m, f) in sources.cost]


def cost_table(sources: Sources) -> str:
  from evalnorm.training import config_lib  # pylint: disable=g-import-not-at-top
  columns = cost_columns(sources)
  setups = {c: _setup(sources.cost[c]) for c in columns}
  every = config_lib.base_config().estimate_every_steps
  rows = [[label] + [_times(value(setups[c])) for c in columns]
          for label, value in _cost_rows(2, every)]
  rows.append(['interleaved rounds timed'] + [str(setups[c]['repeats'])
                                              for c in columns])
  headers = ["against flax `nn.BatchNorm`'s train step"] + [
      f'{COST_MODELS[m]}, {COST_FLAGS[f]}' for m, f in columns]
  return markdown_table(headers, rows) + '\n'


def _bytes_ratio(setup: dict, key: str) -> float:
  return setup['train'][key]['bytes'] / setup['train']['batchnorm']['bytes']


def cost_summary(sources: Sources) -> str:
  """The sentences under the table: machine, bytes, the goal, the spread."""
  from evalnorm.training import config_lib  # pylint: disable=g-import-not-at-top
  every = config_lib.base_config().estimate_every_steps
  setups = {c: _setup(sources.cost[c]) for c in cost_columns(sources)}
  record = sources.cost[('cifar', 'default')]
  cifar, eigen = setups[('cifar', 'default')], setups.get(('cifar', 'eigen'))
  sgd = _bytes_ratio(cifar, 'evalnorm_B2')
  aux = _bytes_ratio(cifar, 'evalnorm_B2_alpha_beta')
  amortized = lambda c: setups[c]['ratios']['train_B2_amortized']
  goal = lambda c: ('within' if amortized(c) <= 1.05 else 'above')
  bn = lambda s: s['train']['batchnorm']
  device = record['device']
  text = [
      f"Measured on {device['cpu']} ({device['cpu_cores']} cores, nothing "
      f"else running), jax {record['versions']['jax']}, flax "
      f"{record['versions']['flax']}"
      + (f", commit {record['commit'][:7]}" if record.get('commit') else '')
      + ('' if record.get('clean') else ' with uncommitted changes')
      + '; each column is one run, ratio of minimums; '
      '`benchmarks/results/cost_<model>_<flags>.json` holds every row '
      '(medians, memory, bytes).',
      "By XLA's bytes accessed, which do not depend on machine load (CIFAR): "
      f"the SGD step at B = 2 reads {_times(sgd)} BatchNorm's bytes and the "
      f'alpha/beta step {_times(aux)}, so the mean step at k = {every} reads '
      f'{_times(sgd + aux / every)} and estimating every step '
      f'{_times(sgd + aux)}.',
  ]
  if eigen is not None:
    text.append(
        f"The amortized CIFAR step is {_times(amortized(('cifar', 'eigen')))} "
        f"with Eigen kernels ({goal(('cifar', 'eigen'))} the 1.05x goal) and "
        f"{_times(amortized(('cifar', 'default')))} with the default flags "
        f"({goal(('cifar', 'default'))} it); YNNPACK's call-to-call spread "
        "is larger than the differences measured: BatchNorm's median "
        f"step was {bn(cifar)['median_s'] / bn(cifar)['min_s']:.2f}x its "
        f"minimum, against {bn(eigen)['median_s'] / bn(eigen)['min_s']:.2f}x "
        "with Eigen kernels, which make BatchNorm's CIFAR step "
        f"{bn(cifar)['min_s'] / bn(eigen)['min_s']:.1f}x faster "
        f"({bn(cifar)['min_s']:.2f} s against {bn(eigen)['min_s']:.2f} s).")
  resnet50 = [c for c in setups if c[0] == 'resnet50']
  if resnet50:
    shares = sorted(setups[c]['ratios']['alpha_beta_B2'] for c in resnet50)
    costs = sorted(amortized(c) for c in resnet50)
    text.append(
        f"At ResNet-50's batch of {setups[resnet50[0]]['batch']} the alpha/beta "
        f'step is a larger share of a step ({_range(shares)}), so the mean '
        f'step at k = {every} is {_range(costs)} there.')
  text.append(
      "The evaluation pass with `eval_stats='evalnorm'` reads the per-example "
      f"statistics too ({cifar['eval']['evalnorm']['bytes'] / 1e9:.2f} GB "
      f"accessed against {cifar['eval']['batchnorm']['bytes'] / 1e9:.2f} GB "
      'for CIFAR).')
  return '\n'.join(_wrap(' '.join(text))) + '\n'


def _range(values: list[float]) -> str:
  low, high = f'{min(values):.2f}', f'{max(values):.2f}'
  return f'{low}x' if low == high else f'{low}-{high}x'


def _wrap(text: str, width: int = 88) -> list[str]:
  """Lines of at most ``width`` characters, as the READMEs are written."""
  import textwrap  # pylint: disable=g-import-not-at-top
  return textwrap.wrap(text, width, break_long_words=False,
                       break_on_hyphens=False)


BLOCKS: dict[str, Callable[[Sources], str]] = {
    'digits-table': quick_start_table,
    'quick-start-seeds': quick_start_seeds,
    'baselines': baselines,
    'provenance': provenance_note,
    'reproduction': reproduction_table,
    'detection-table': detection_table,
    'cost-table': cost_table,
    'cost-summary': cost_summary,
    'runtimes': runtimes_table,
    'findings': findings,
}


# ---------------------------------------------------------------------------
# Reading and rewriting the READMEs.


def blocks_in(text: str) -> dict[str, str]:
  """{block name: its current content} of one README."""
  return {m.group(1): m.group(2) for m in BLOCK.finditer(text)}


def render(text: str, sources: Sources) -> str:
  """``text`` with every known block replaced by its rendering."""
  def replace(match):
    name = match.group(1)
    if name not in BLOCKS:
      return match.group(0)
    return f'<!-- {name} -->\n{rendering(name, sources)}<!-- /{name} -->'
  return BLOCK.sub(replace, text)


def rendering(name: str, sources: Sources) -> str:
  """What block ``name`` holds when it is up to date."""
  return NEGATIVE_ZERO.sub(r'+\1', BLOCKS[name](sources))


# A signed difference that rounds to zero from below prints as -0.0; +0.0
# reads as what it is.
NEGATIVE_ZERO = re.compile(r'(?<![\w.])-(0\.0+)(?![\d])')


def stale_blocks(root: str = ROOT, sources: Sources | None = None
                 ) -> list[str]:
  """'file: block' of every block whose content is not its rendering."""
  sources = sources or Sources.load()
  stale = []
  for filename in README_FILES:
    with open(os.path.join(root, filename)) as f:
      current = blocks_in(f.read())
    for name, content in current.items():
      if name in BLOCKS and rendering(name, sources) != content:
        stale.append(f'{filename}: {name}')
  return stale


def rewrite(root: str = ROOT, sources: Sources | None = None) -> None:
  sources = sources or Sources.load()
  for filename in README_FILES:
    path = os.path.join(root, filename)
    with open(path) as f:
      text = f.read()
    rendered = render(text, sources)
    if rendered != text:
      with open(path, 'w') as f:
        f.write(rendered)
      print(f'rewrote the blocks of {filename}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='write nothing; exit 1 if a block is stale')
  args = parser.parse_args(argv)
  if args.check:
    stale = stale_blocks()
    for block in stale:
      print(f'stale: {block} (python -m experiments.readme_numbers rewrites it)')
    return 1 if stale else 0
  rewrite()
  return 0


if __name__ == '__main__':
  sys.exit(main())
