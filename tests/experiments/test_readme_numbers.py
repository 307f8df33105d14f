"""The READMEs' result tables are their results' (experiments/readme_blocks.py).

Each block is rendered from experiments/results/headlines.json and the cost
records; here the check fails on a stale block, headlines.json is what the
committed runs.json gives, and each table is rendered from made-up results
whose numbers must each land in their own cell.
"""

import copy
import json
import os
import shutil
import zlib

import numpy as np
import pytest

from experiments import (command_line, readme_blocks, reproduction, run_all,
                         runner, scales)
from experiments.readme_blocks import BLOCKS
from experiments.result_files import signed

SMALL = scales.SCALES['small']


def test_every_readme_block_is_rendered_from_the_committed_results():
  assert readme_blocks.update(write=False) == []


def test_every_renderer_has_its_block_in_a_readme():
  found = set()
  for filename in readme_blocks.README_FILES:
    with open(os.path.join(runner.ROOT, filename)) as f:
      found |= {name for name, _ in readme_blocks.BLOCK.findall(f.read())}
  assert set(readme_blocks.BLOCKS) <= found


def test_the_committed_headlines_are_rebuilt_from_runs_json():
  context = command_line.Context(SMALL, '', runner.RESULTS_DIR, 1)
  with open(os.path.join(runner.RESULTS_DIR, run_all.HEADLINES)) as f:
    committed = json.load(f)
  assert json.loads(json.dumps(run_all.rebuilt_headlines(context))) == committed


def test_a_changed_result_makes_its_blocks_stale():
  sources = readme_blocks.load()
  stale = lambda **changed: readme_blocks.update(
      sources=sources._replace(**changed), write=False)
  for change in (lambda setup: setup['ratios'].update(train_B2=2.0),
                 lambda setup: setup['train']['evalnorm_B2'].update(bytes=1)):
    cost = copy.deepcopy(sources.cost)
    change(next(iter(cost['ResNet-20, default flags']['setups'].values())))
    assert stale(cost=cost) == ['docs/cost.md: cost-table']
  headlines = copy.deepcopy(sources.headlines)
  headlines['fig2_error_vs_b']['gain']['seed 0']['4'] += 2
  assert stale(headlines=headlines) == ['README.md: reproduction',
                                        'experiments/README.md: findings']


def test_check_exits_nonzero_naming_a_stale_block(tmp_path, capsys):
  for filename in readme_blocks.README_FILES:
    (tmp_path / filename).parent.mkdir(exist_ok=True)
    shutil.copy(os.path.join(runner.ROOT, filename), tmp_path / filename)
  cost = tmp_path / 'docs' / 'cost.md'
  cost.write_text(cost.read_text().replace(
      '<!-- cost-table -->\n|', '<!-- cost-table -->\n| edited by hand |'))
  assert readme_blocks.main(['--check'], root=str(tmp_path)) == 1
  assert capsys.readouterr().out == 'stale: docs/cost.md: cost-table\n'
  assert readme_blocks.main([], root=str(tmp_path)) == 0
  assert readme_blocks.main(['--check'], root=str(tmp_path)) == 0
  assert readme_blocks.main(['--check']) == 0


# ---------------------------------------------------------------------------
# The tables, rendered from made-up results: every number from its own run.

MODES = ('ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'train_stats',
         'fixed_0.05', 'fixed_0.1', 'fixed_0.5', 'groupnorm')
LAYERS = ('backbone/stage1_block0/norm1', 'rcn/final_norm',
          'stage1_block0/norm1')


def made_up(name: str, mode: str) -> float:
  """A distinct, reproducible value for each (run, mode)."""
  return round(50 + (zlib.crc32(f'{name}/{mode}'.encode()) % 4000) / 100, 2)


def made_up_eval(name: str) -> dict:
  metrics = lambda m: {'top1': made_up(name, m), 'top5': 99.0, 'loss': 1.0,
                       'AP': made_up(name, m + 'AP')}
  return {'step': 3000, 'dataset': 'noisy_digits', 'norm': 'evalnorm',
          'norm_batch_size': 2, 'num_eval_examples': 1024,
          'wall_seconds': 60 * made_up(name, 'wall'),
          'eval': {m: metrics(m) for m in MODES},
          'alpha_beta': {l: {'alpha': made_up(name, l) / 100,
                             'beta': made_up(name, l + 'b') / 100}
                         for l in LAYERS}}


FIG1_TABLE = '''| trained at | statistics | mean | std | distance |
|---|---:|---:|---:|---:|
| B=128 | training statistics | 0 | 1 | 0.000 |
| B=128 | EMA statistics | 0 | 1 | 0.031 |
| B=128 | EvalNorm statistics | 0 | 1 | 0.032 |
| B=2 | EMA statistics | 0 | 1 | 0.275 |
| B=2 | EvalNorm statistics | 0 | 1 | 0.179 |
'''


@pytest.fixture(scope='module')
def made_up_sources(tmp_path_factory) -> readme_blocks.Sources:
  """Sources rebuilt, as ``run_all --headlines_only`` does, from a made-up
  runs.json and provenance.json; the committed cost records."""
  results = tmp_path_factory.mktemp('results')
  context = command_line.Context(SMALL, '', str(results), 1)
  names = {r.name for s in run_all.SCRIPTS for r in s.planned_runs(context)}
  every_k = {f'estimate_every_seed{s}': {str(k): made_up_eval(f'k{k}_seed{s}')
                                         for k in SMALL.estimate_every_ks}
             for s in range(3)}
  (results / 'runs.json').write_text(json.dumps(
      {'eval': {n: made_up_eval(n) for n in names}, 'every_k': every_k}))
  (results / 'provenance.json').write_text(json.dumps({
      'commits': ['a' * 40, 'b' * 40], 'clean': False,
      'machine': {'cpu': 'Some CPU', 'cpu_cores': 2, 'gpus': []},
      'packages': {'jax': '0.10.2', 'flax': '0.12.8'},
      'invocations': [  # in the record's order, not the order they ran
          {'started': '2026-01-02T00:00:00+00:00', 'commit': 'b' * 40},
          {'started': '2026-01-01T00:00:00+00:00', 'commit': 'a' * 40}]}))
  (results / 'fig1_histograms.md').write_text(FIG1_TABLE)
  committed = readme_blocks.load()
  return readme_blocks.Sources(run_all.rebuilt_headlines(context),
                               committed.cost, committed.parallelism)


def cells(table: str) -> dict[str, dict[str, str]]:
  """{first cell: {column header: cell}} of a markdown table."""
  lines = [[c.strip() for c in l.strip()[1:-1].split('|')]
           for l in table.splitlines() if l.startswith('|')]
  return {row[0]: dict(zip(lines[0], row)) for row in lines[2:]}


def test_quick_start_tables_take_each_number_from_its_run(made_up_sources):
  s = made_up_sources
  top1 = lambda run, mode: f'{made_up(run, mode):.2f}'
  assert cells(BLOCKS['digits-table'](s))['ema']['top-1 (%)'] == top1(
      'quick_start_seed0', 'ema')
  seeds = cells(BLOCKS['quick-start-seeds'](s))
  assert seeds['1']['rule_of_thumb'] == top1('quick_start_seed1',
                                             'rule_of_thumb')
  assert seeds['0, on 8 devices']['ema'] == top1('quick_start_seed0_8devices',
                                                 'ema')
  ema = sorted(made_up(f'quick_start_seed{n}', 'ema') for n in range(3))
  assert seeds['range']['ema'] == f'{ema[0]:.2f}-{ema[-1]:.2f}'
  baselines = cells(BLOCKS['baselines'](s))
  offline = baselines['the same model after `evalnorm.estimate` (offline)']
  assert offline['evalnorm'] == top1('baseline_batchnorm_offline', 'evalnorm')
  assert baselines['GroupNorm (batch 128)']['own evaluation'] == (
      top1('baseline_groupnorm', 'groupnorm') + ' (`groupnorm`)')
  renorm = cells(BLOCKS['renorm'](s))
  assert renorm['quick start (3000 steps), B=2, seed 0']['Batch Renorm'] == (
      top1('baseline_renorm', 'ema'))
  mean = np.mean([made_up(f'renorm_b2_seed{n}', 'ema') for n in range(3)])
  assert renorm['Fig. 2 runs (600 steps), B=2, mean of 3 seeds'][
      'Batch Renorm'] == f'{mean:.2f}'


def test_provenance_names_the_commits_in_the_order_they_ran(made_up_sources):
  (row,) = cells(BLOCKS['provenance'](made_up_sources)).values()
  assert row['commits, in the order they ran'] == 'aaaaaaa, bbbbbbb'
  assert (row['clean tree'], row['machine']) == ('no', 'Some CPU, 2 cores')


def test_reproduction_cells_take_each_number_from_its_run(made_up_sources):
  rows = cells(reproduction.table(made_up_sources.headlines))
  here = lambda label: rows[next(r for r in rows if f'[{label}]' in r)][
      'small scale']
  gain = lambda run: made_up(run, 'evalnorm') - made_up(run, 'ema')
  assert here('Fig. 2') == 'gain at B=2: {}; B=4: {}; B=8: {}'.format(*(
      signed(gain(f'evalnorm_b{b}_seed0')) for b in (2, 4, 8)))
  assert here('Fig. 1') == ('distance, EMA / EvalNorm: 0.275 / 0.179 at B=2; '
                            '0.031 / 0.032 at B=128')
  assert here('Table 1') == (
      f"gain at B=2: {signed(gain('imagenet_evalnorm_b2'))}")
  transfer = [gain(f'transfer_{p}_b2') for p in 'abcd']
  assert here('Table 2 analog').startswith(
      f'gain at B=2: {reproduction.span(transfer)}; B=4, 8: ')
  detection_ap = lambda run: (made_up(run, 'evalnormAP')
                              - made_up(run, 'emaAP'))
  at_n2 = [np.mean([detection_ap(f'detection_{p}_n2_seed{s}')
                    for s in range(3)])
           for p in ('a', 'b', 'c', 'c_frozen_bn', 'd')]
  assert here('Table 2').startswith(f'gain at N=2: {reproduction.span(at_n2)};')


def test_estimation_table_takes_each_number_from_its_run(made_up_sources):
  rows = cells(BLOCKS['estimation-programs'](made_up_sources))
  fused = rows['fused, k = 1']
  evalnorm = [made_up(f'estimation_programs_fused_k1_seed{s}', 'evalnorm')
              for s in range(3)]
  assert fused['EvalNorm top-1 (%), seeds 0/1/2'] == ' / '.join(
      f'{v:.2f}' for v in evalnorm)
  assert fused['mean (std)'] == (
      f'{np.mean(evalnorm):.2f} ({np.std(evalnorm, ddof=1):.2f})')
  assert rows['separate, k = 4']['EMA top-1 (%), seeds 0/1/2'].startswith(
      f"{made_up('quick_start_seed0', 'ema'):.2f} / ")
  cost = made_up_sources.cost
  fused_k1 = [next(iter(r['setups'].values()))['ratios'].get(
      'fused_B2_estimating') for t, r in cost.items() if t.startswith('ResNet-20')]
  fused_k1 = sorted(v for v in fused_k1 if v is not None)
  assert fused["mean train step against BatchNorm's (ResNet-20, docs/cost.md)"
               ] == f'{fused_k1[0]:.2f}-{fused_k1[-1]:.2f}x'


def test_parallelism_table_takes_each_number_from_its_record(made_up_sources):
  record = copy.deepcopy(made_up_sources.parallelism)
  record['rows']['shard_map'].update(ratio_min=0.914, ratio_median=1.046,
                                     ratio_paired=1.234)
  record.update(commit='c' * 40, clean=True)
  row = lambda: cells(BLOCKS['parallelism'](made_up_sources._replace(
      parallelism=record)))["shard_map's SGD step against pmap's"]
  assert (row()['minimums'], row()['medians'], row()['paired median'],
          row()['commit']) == ('0.91x', '1.05x', '1.23x', 'ccccccc')
  record['clean'] = False
  assert row()['commit'] == 'ccccccc (uncommitted)'


def test_detection_table_takes_each_number_from_its_run(made_up_sources):
  rows = cells(BLOCKS['detection-table'](made_up_sources))
  frozen = rows['(c) pre-trained, BN statistics frozen']
  ema = [made_up(f'detection_c_n2_seed{s}', 'emaAP') for s in range(3)]
  assert frozen['EMA AP, N=2'] == (
      f'{np.mean(ema):.1f} ± {np.std(ema, ddof=1):.1f}')
  at_n8 = (made_up('detection_c_n8_seed0', 'evalnormAP')
           - made_up('detection_c_n8_seed0', 'emaAP'))
  assert frozen['gain, N=8'] == signed(at_n8)
  alpha = made_up('detection_c_n2_seed0', 'rcn/final_norm') / 100
  assert frozen['RCN'] == f'{alpha:.2f}'


def test_findings_and_runtimes_take_each_number_from_its_run(made_up_sources):
  rows = cells(BLOCKS['findings'](made_up_sources))
  gain = lambda run: made_up(run, 'evalnorm') - made_up(run, 'ema')
  assert rows['Fig. 5, depth 14, width x1']['4'] == signed(
      gain('evalnorm_d14_w1_b4_seed0'))
  assert rows['Table 2 analog, (d) pre-trained, everything fine-tuned'][
      '8'] == signed(gain('transfer_d_b8'))
  assert rows['Seeds, mean of 3']['4'] == ''
  runtimes = cells(BLOCKS['runtimes'](made_up_sources))
  names = [r.name for r in run_all.SCRIPTS[0].planned_runs(
      command_line.Context(SMALL, '', '', 1))]
  assert runtimes['`quick_start.py`']['minutes per run (median)'] == (
      f"{np.median([made_up(n, 'wall') for n in names]):.1f}")
  # Fig. 1, 3, 4 only read the Fig. 2 runs.
  assert runtimes['`fig1_histograms.py`']['run-minutes'] == ''


def test_runtimes_leave_out_a_run_without_its_time():
  """A run whose eval.json was written just as run_all was killed has no wall
  time: it is counted as a run, not in the minutes."""
  context = command_line.Context(SMALL, '', '', 1)
  evals = {r.name: {'wall_seconds': 60.0} for s in run_all.SCRIPTS
           for r in s.planned_runs(context)}
  del evals['detection_a_n2_seed2']['wall_seconds']
  detection = run_all.runtimes(context, evals)['by_script']['table2_detection']
  assert (detection['new_runs'], detection['run_minutes']) == (26, 25.0)


def test_cost_table_takes_each_number_from_its_record(made_up_sources):
  cost = copy.deepcopy(made_up_sources.cost)
  setup = next(iter(cost['ResNet-50, Eigen']['setups'].values()))
  setup['ratios'].update(alpha_beta_B2=0.4321, fused_B2_estimating=0.9876,
                         fused_B2_amortized=1.0)
  train = setup['train']
  train['batchnorm'].update(min_s=2.0, median_s=2.5, bytes=100.0)
  train['evalnorm_B2'].update(bytes=90.0)
  train['evalnorm_B2_alpha_beta'].update(bytes=20.0)
  train['evalnorm_B2_fused'] = dict(train['evalnorm_B2'], bytes=95.0)
  column = lambda: {label: row['ResNet-50, Eigen'] for label, row in cells(
      BLOCKS['cost-table'](made_up_sources._replace(cost=cost))).items()}
  table = column()
  assert table['separate estimation: alpha/beta step'] == '0.43x (0.20x)'
  assert table['separate estimation: mean step at k = 4'].endswith(
      '(0.95x)')  # 90 + 20 / 4
  assert table['fused estimation: mean step at k = 4'].endswith(
      '(0.91x)')  # (3 * 90 + 95) / 4
  assert table['fused estimation: estimating step (every step at k = 1)'] == (
      '0.99x (0.95x)')
  assert table["BatchNorm's train step: minimum, median"] == (
      '2.00 s, median 1.25x')
  # A record from before the fused program leaves its cells empty.
  del setup['ratios']['fused_B2_estimating']
  assert column()[
      'fused estimation: estimating step (every step at k = 1)'] == ''


# ---------------------------------------------------------------------------
# The "agrees?" rules, on hand-made headlines.


def test_a_gain_counts_above_the_threshold_per_paradigm_and_batch():
  row = reproduction.gain_row('claim', 'N', ('2',), ('4', '8'))
  gains = {'(a) x': {'2': 3.0, '4': 1.5, '8': 2.0},
           '(b) y': {'2': 1.5, '4': 0.9, '8': 2.0},  # 0.9 does not count
           '(c) z': {'2': -2.0, '4': -1.0, '8': -3.0}}
  assert row({'gain': gains}) == [
      'claim', 'gain at N=2: -2.0 to +3.0; N=4, 8: -3.0 to +2.0',
      'N=2 except (c); N=4, 8 only (a)']
  one = reproduction.gain_row('claim', 'B', ('2',), ('4',), ('8',))
  assert one({'gain': {'seed 0': {'2': 5.0, '4': 0.5, '8': -0.04}}})[1:] == [
      'gain at B=2: +5.0; B=4: +0.5; B=8: +0.0', 'only B=2']
  assert one({'gain': {'seed 0': {'2': 5.0, '4': 1.01, '8': 2.0}}})[2] == 'yes'


def test_the_figure_rules_say_where_the_shape_holds():
  fig1 = {'distance': {'128': {'ema': 0.03, 'evalnorm': 0.2},
                       '2': {'ema': 0.3, 'evalnorm': 0.1}}}
  assert reproduction.fig1(fig1)[2] == 'only B=2'  # 0.2 at B=128 > 0.1
  fig3 = {'mean_alpha': {'2': 0.3, '4': 0.31, '8': 0.1},
          'layer_alpha': {'2': {'a': 0.1, 'b': 0.3}}}
  assert reproduction.fig3(fig3)[2] == 'only vary'
  fig4 = {'error': {'estimated (EvalNorm)': {'2': 10.0, '4': 9.0, '8': 9.5}},
          'best_fixed': {'2': 10.5, '4': 7.9, '8': 8.5}}
  assert reproduction.fig4(fig4)[1:] == [
      'estimate minus best fixed: -0.50 to +1.10', 'except B=4']

