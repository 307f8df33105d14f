"""The experiment scripts: run bookkeeping, reports, Fig. 1's capture, the notebook.

Training is what the other test files check; here every report is fed
synthetic ``eval.json`` results whose numbers are known, so the tests check
that each number lands in the right cell. The real end-to-end regeneration at
the smoke scale is the slow test at the end (``pytest -m slow``).
"""

import json
import math
import os
import threading
import zlib

import nbclient
import nbformat
import numpy as np
import pytest

from training_helpers import ROOT
from experiments import (command_line, estimate_every, estimation_programs,
                         fig1_histograms, fig2_error_vs_b, fig3_alpha_beta,
                         fig4_fixed_schedules, fig5_deeper_wider, provenance,
                         quick_start, run_all, run_configs, runner, scales,
                         seeds, table1_imagenet, table2_transfer)

MODES = ('ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'train_stats',
         'fixed_0.05', 'fixed_0.5', 'groupnorm')
LAYERS = ('stage1_block0/norm1', 'final_norm')


def fake_top1(name: str, mode: str) -> float:
  """A distinct, reproducible accuracy for each (run, mode)."""
  return round(50 + (zlib.crc32(f'{name}/{mode}'.encode()) % 4000) / 100, 2)


def fake_top5(name: str, mode: str) -> float:
  return min(100.0, fake_top1(name, mode) + 10)


def fake_result(name: str) -> dict:
  return {'step': 7, 'dataset': 'noisy_digits', 'norm': 'evalnorm',
          'norm_batch_size': 2, 'num_eval_examples': 512,
          'eval': {m: {'top1': fake_top1(name, m),
                       'top5': fake_top5(name, m), 'loss': 1.0}
                   for m in MODES},
          'alpha_beta': {l: {'alpha': fake_top1(name, l + 'a') / 100,
                             'beta': fake_top1(name, l + 'b') / 100}
                         for l in LAYERS}}


class FakeResults(dict):
  """{run name: eval.json} that makes up any run a report asks for."""

  def __missing__(self, name):
    self[name] = fake_result(name)
    return self[name]


@pytest.fixture
def context(tmp_path):
  return command_line.Context(scales.SCALES['small'], str(tmp_path / 'work'),
                              str(tmp_path / 'results'), jobs=1)


def read(context, filename):
  with open(os.path.join(context.results_dir, filename)) as f:
    return f.read()


def assert_plot(context, filename):
  path = os.path.join(context.results_dir, filename)
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_fig2_report_puts_each_error_in_its_cell(context):
  results = FakeResults()
  numbers = fig2_error_vs_b.report(context, results)
  bs = context.scale.b_values
  assert numbers['error']['EMA (BatchNorm)'] == {
      str(b): pytest.approx(100 - fake_top1(f'evalnorm_b{b}_seed0', 'ema'))
      for b in bs}
  assert numbers['error']['Batch Renorm']['2'] == pytest.approx(
      100 - fake_top1('renorm_b2_seed0', 'ema'))
  assert numbers['gain']['seed 0']['4'] == pytest.approx(
      fake_top1('evalnorm_b4_seed0', 'evalnorm')
      - fake_top1('evalnorm_b4_seed0', 'ema'))
  text = read(context, 'fig2_error_vs_b.md')
  row = next(l for l in text.splitlines() if l.startswith('| EvalNorm'))
  want = [f'{100 - fake_top1(f"evalnorm_b{b}_seed0", "evalnorm"):.2f}' for b in bs]
  assert row == '| EvalNorm (online) | ' + ' | '.join(want) + ' |'
  assert_plot(context, 'fig2_error_vs_b.png')


def test_fig2_full_scale_has_a_cifar100_and_a_cifar10_panel(tmp_path):
  context = command_line.Context(scales.SCALES['full'], str(tmp_path / 'work'),
                                 str(tmp_path / 'results'), jobs=1)
  numbers = fig2_error_vs_b.report(context, FakeResults())
  assert numbers['error']['EMA (BatchNorm)']['2'] == pytest.approx(
      100 - fake_top1('evalnorm_b2_seed0', 'ema'))  # the test-bed's runs
  text = read(context, 'fig2_error_vs_b.md')
  assert text.index('## `cifar100`') < text.index('## `cifar10`')
  cifar10 = text[text.index('## `cifar10`'):].splitlines()
  row = next(l for l in cifar10 if l.startswith('| Batch Renorm'))
  assert row.split(' | ')[1] == (
      f'{100 - fake_top1("cifar10_renorm_b2_seed0", "ema"):.2f}')
  assert_plot(context, 'fig2_error_vs_b.png')
  assert_plot(context, 'fig2_error_vs_b_cifar10.png')


def test_fig3_report_orders_layers_and_averages(context):
  numbers = fig3_alpha_beta.report(context, FakeResults())
  assert fig3_alpha_beta.network_order(
      ['final_norm', 'stage2_block0/norm1', 'stage1_block0/norm2']) == [
          'stage1_block0/norm2', 'stage2_block0/norm1', 'final_norm']
  assert list(numbers['layer_alpha']['2']) == list(LAYERS)
  assert numbers['layer_alpha']['4']['final_norm'] == pytest.approx(
      fake_top1('evalnorm_b4_seed0', 'final_norma') / 100)
  assert numbers['mean_beta']['2'] == pytest.approx(np.mean(
      [fake_top1('evalnorm_b2_seed0', l + 'b') / 100 for l in LAYERS]))
  assert '| B=2 | 0.2500 |' in read(context, 'fig3_alpha_beta.md')
  assert_plot(context, 'fig3_alpha_beta.png')


def test_fig1_headlines_are_read_back_from_its_table(context):
  """A rebuild from runs.json has no checkpoints: it reads Fig. 1's
  distances from the table the report wrote, and gets what it returned."""
  rng = np.random.default_rng(0)
  outputs = {b: {mode: rng.normal(size=(8, 4, 4, 3)) for mode in
                 fig1_histograms.MODES} for b in (128, 2)}
  fig1_histograms.write_report(context, 'some/norm', outputs)
  numbers = fig1_histograms.distances(outputs)
  train = outputs[2]['training statistics']
  assert numbers['distance']['2']['ema'] == float(
      f"{np.abs(outputs[2]['EMA statistics'] - train).mean():.3f}")
  assert fig1_histograms.headlines(context, results=None) == numbers


def test_fig4_report_has_every_schedule(context):
  numbers = fig4_fixed_schedules.report(context, FakeResults())
  errors = numbers['error']
  assert list(errors) == ['alpha = beta = 0 (EMA)', '1/B^2', '1/B',
                          'constant 0.05', 'constant 0.5', 'estimated (EvalNorm)']
  assert errors['1/B']['128'] == pytest.approx(
      100 - fake_top1('evalnorm_b128_seed0', 'one_over_b'))
  fixed = [100 - fake_top1('evalnorm_b128_seed0', m) for m in (
      'ema', 'rule_of_thumb', 'one_over_b', 'fixed_0.05', 'fixed_0.5')]
  assert numbers['best_fixed']['128'] == pytest.approx(min(fixed))
  assert_plot(context, 'fig4_fixed_schedules.png')


def test_fig5_grid_reuses_the_sweep_and_reports(context):
  names = [r.name for r in fig5_deeper_wider.all_runs(context.scale)]
  assert 'evalnorm_b4_seed0' in names  # the depth-8, width-1 model of Fig. 2
  assert 'evalnorm_d20_w1_b8_seed0' in names and len(names) == len(set(names))
  numbers = fig5_deeper_wider.report(context, FakeResults())
  ema, en = (100 - fake_top1('evalnorm_d14_w1_b4_seed0', m)
             for m in ('ema', 'evalnorm'))
  assert numbers['error']['depth 14, width x1']['4'] == {
      'ema': pytest.approx(ema), 'evalnorm': pytest.approx(en)}
  assert numbers['gain']['depth 14, width x1']['4'] == pytest.approx(ema - en)
  assert_plot(context, 'fig5_deeper_wider.png')


def test_seeds_mean_and_spread(context):
  numbers = seeds.report(context, FakeResults())
  values = [fake_top1(f'evalnorm_b2_seed{s}', 'ema') for s in range(3)]
  assert numbers['top1']['evalnorm']['2']['ema'] == {
      'mean': pytest.approx(np.mean(values)),
      'std': pytest.approx(np.std(values, ddof=1)), 'seeds': values}
  gains = [fake_top1(f'evalnorm_b8_seed{s}', 'evalnorm')
           - fake_top1(f'evalnorm_b8_seed{s}', 'ema') for s in range(3)]
  assert numbers['gain_over_seeds']['8']['mean'] == pytest.approx(
      np.mean(gains))
  assert numbers['gain']['mean of 3']['8'] == pytest.approx(np.mean(gains))
  assert list(numbers['top1']['renorm']['2']) == ['ema']
  row = next(l for l in read(context, 'seeds.md').splitlines()
             if l.startswith('| B=8, EvalNorm gain'))
  assert row.split(' | ')[1:3] == [f'{np.mean(gains):.2f}',
                                   f'{np.std(gains, ddof=1):.2f}']


def test_estimate_every_report_and_its_reference_check(context):
  seed_runs = estimate_every.planned_runs(context, [0, 1, 2])
  assert dict(seed_runs[2].overrides)['seed'] == 2
  ks = context.scale.estimate_every_ks
  results = {r.name: {k: fake_result(f'{r.name}_k{k}') for k in ks}
             for r in seed_runs}
  summary = estimate_every.report(context, seed_runs, results, ks)['by_k']
  top1 = [fake_top1(f'{r.name}_k4', 'evalnorm') for r in seed_runs]
  assert summary['4']['mean'] == pytest.approx(np.mean(top1))
  assert summary['4']['std'] == pytest.approx(np.std(top1, ddof=1))
  alphas = [np.mean([fake_top1(f'{r.name}_k4', l + 'a') / 100 for l in LAYERS])
            for r in seed_runs]
  assert summary['4']['alpha'] == pytest.approx(np.mean(alphas))
  text = read(context, 'estimate_every.md')
  assert f"| 4 | {np.mean(top1):.2f} |" in text and '(No quick start run' in text
  assert_plot(context, 'estimate_every.png')
  row = {'mean': 90.0, 'std': 1.0, 'alpha': 0.30, 'alpha_std': 0.01,
         'beta': 0.40, 'beta_std': 0.01}
  assert estimate_every.within_spread(dict(row, mean=91.0), row)
  assert not estimate_every.within_spread(dict(row, mean=91.5), row)
  assert not estimate_every.within_spread(dict(row, alpha=0.32), row)
  assert not estimate_every.within_spread(dict(row, beta=0.38), row)
  # The quick start run of seed 1 (the default k = 4) must equal the k = 4
  # column in every mode.
  reference = estimate_every.reference_run(context.scale, 1)
  assert reference.name == 'quick_start_seed1'
  workdir = os.path.join(context.workdir_root, reference.name)
  os.makedirs(workdir)
  by_k = results[seed_runs[1].name]
  with open(os.path.join(workdir, 'eval.json'), 'w') as f:
    json.dump({'eval': by_k[4]['eval']}, f)
  estimate_every.report(context, seed_runs, results, ks)
  assert 'gives exactly the k = 4 column' in read(context, 'estimate_every.md')
  for mode, metric in (('evalnorm', 'top1'), ('ema', 'loss')):
    by_k[4]['eval'][mode][metric] += 1e-7
    estimate_every.report(context, seed_runs, results, ks)
    assert 'DIFFERS' in read(context, 'estimate_every.md')
    by_k[4]['eval'][mode][metric] -= 1e-7
  # At the full scale the curve trains on CIFAR: no quick start to check.
  assert estimate_every.reference_run(scales.SCALES['full'], 1) is None


def test_quick_start_runs_are_the_readme_command_and_report(context):
  planned = {r.name: r for r in quick_start.planned_runs(context)}
  # Seed 0 is the README's first command exactly.
  assert (planned['quick_start_seed0'].config,
          dict(planned['quick_start_seed0'].overrides)) == (
              'configs/digits.py', {'norm_batch_size': 2, 'seed': 0})
  batchnorm = planned['baseline_batchnorm']
  assert (batchnorm.devices, dict(batchnorm.overrides)['batch_size']) == (8, 16)
  assert planned['baseline_batchnorm_offline'].checkpoint == batchnorm.name
  assert dict(planned['baseline_renorm'].overrides)['renorm_warmup_steps'] == 1000
  results = FakeResults()
  numbers = quick_start.report(context, results)
  assert numbers['baselines']['GroupNorm (batch 128)']['own'] == 'groupnorm'
  text = read(context, 'quick_start.md')
  assert f"| ema | {fake_top1('quick_start_seed0', 'ema'):.2f} |" in text
  ema = [fake_top1(f'quick_start_seed{s}', 'ema') for s in range(3)]
  assert f'| range | {min(ema):.2f}-{max(ema):.2f} |' in text
  other = planned['quick_start_seed0_8devices']
  assert other.devices == 8 and dict(other.overrides) == dict(
      planned['quick_start_seed0'].overrides)
  assert f"| 0, on 8 devices | {fake_top1(other.name, 'ema'):.2f} |" in text
  groupnorm = fake_top1('baseline_groupnorm', 'groupnorm')
  assert f'| GroupNorm (batch 128) | {groupnorm:.2f} (`groupnorm`) |' in text
  offline = fake_top1('baseline_batchnorm_offline', 'evalnorm')
  assert f'(`ema`) | {offline:.2f} |' in text


def test_estimation_programs_verdict_and_report(context):
  """estimation_programs: a program is within seed noise of the default when
  the two means differ by at most the larger standard deviation."""
  runs = estimation_programs.program_runs(context.scale, (0, 1, 2))
  top1 = {'separate, k = 4': (94.0, 94.5, 95.0),  # mean 94.5, std 0.5
          'fused, k = 1': (94.0, 94.1, 94.2),     # mean 94.1: within 0.5
          'fused, k = 4': (93.7, 93.8, 93.9)}     # mean 93.8: off by 0.7
  results = {r.name: {'eval': {m: {'top1': t} for m in ('ema', 'evalnorm')}}
             for name, group in runs.items() for r, t in zip(group, top1[name])}
  programs = estimation_programs.report(context, results)['programs']
  assert list(programs) == list(top1)
  assert [p['within_seed_noise_of_default'] for p in programs.values()] == [
      True, True, False]
  assert [(p['estimation'], p['k']) for p in programs.values()] == [
      ('separate', 4), ('fused', 1), ('fused', 4)]
  text = read(context, 'estimation_programs.md')
  assert '| fused, k = 4 | 93.70 / 93.80 / 93.90 | 93.80 (0.10) | no |' in text
  # The default's runs are the quick start's; the fused ones set the program.
  assert [r.name for r in runs['separate, k = 4']] == [
      f'quick_start_seed{s}' for s in range(3)]
  assert dict(runs['fused, k = 1'][2].overrides) == dict(
      norm_batch_size=2, seed=2, estimation='fused', estimate_every_steps=1)


def test_regenerating_one_script_merges_into_the_committed_record(context):
  """run_all --scripts: that script's runs replace theirs in runs.json, a
  run no script plans any more leaves it, the others stay as committed
  (provenance.json: test_provenance.py)."""
  committed = {'eval': {r.name: {'marker': 'committed'}
                        for s in run_all.SCRIPTS if s is not estimate_every
                        for r in s.planned_runs(context)},
               'every_k': {'estimate_every_seed0': {'marker': 'committed'}}}
  committed['eval']['an_old_run'] = {'marker': 'committed'}
  with open(context.output('runs.json'), 'w') as f:
    json.dump(committed, f)
  for run in table2_transfer.planned_runs(context):
    os.makedirs(context.workdir(run))
    with open(os.path.join(context.workdir(run), 'eval.json'), 'w') as f:
      json.dump({'marker': 'new'}, f)
  archive = run_all.write_archive(context, (table2_transfer,))
  assert json.loads(read(context, 'runs.json')) == archive
  new = {r.name for r in table2_transfer.planned_runs(context)}
  assert set(archive['eval']) == set(committed['eval']) - {'an_old_run'}
  for name, result in archive['eval'].items():
    assert result['marker'] == ('new' if name in new else 'committed'), name
  assert archive['every_k'] == committed['every_k']


def test_regenerating_an_unknown_script_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run_all.main(['--scale=smoke', '--scripts=table3',
                  f'--workdir_root={tmp_path}/w', f'--results_dir={tmp_path}/r'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--scripts=table3: no script ['table3']; known: quick_start," in error


def test_table1_per_device_setup_and_report(context):
  trained, offline = table1_imagenet.table_runs(context.scale)
  b2 = dict(next(r for r in trained if r.name == 'imagenet_evalnorm_b2').overrides)
  b32 = dict(next(r for r in trained if r.name == 'imagenet_evalnorm_b32').overrides)
  # Per-device batch B on 8 devices, the same examples for every B.
  assert (b2['batch_size'], b32['batch_size']) == (16, 256)
  assert b2['num_train_steps'] * 16 == b32['num_train_steps'] * 256
  assert all(r.devices == 8 for r in trained + offline)
  assert {r.checkpoint for r in offline} == {
      f'imagenet_evalnorm_b{b}' for b in (2, 4, 8, 16, 32)}
  # GroupNorm too has one run per column, with that column's batch.
  groupnorm = {r.name: dict(r.overrides) for r in trained
               if dict(r.overrides).get('norm') == 'groupnorm'}
  assert {o['batch_size'] for o in groupnorm.values()} == {16, 32, 64, 128, 256}
  numbers = table1_imagenet.report(context, FakeResults())
  table = numbers['top1']
  assert table['EvalNorm offline']['2'] == fake_top1('imagenet_offline_b2',
                                                     'evalnorm')
  assert table['GroupNorm']['32'] == fake_top1('imagenet_groupnorm_b32',
                                               'groupnorm')
  assert numbers['steps'] == {str(b): 7 for b in (2, 4, 8, 16, 32)}
  text = read(context, 'table1_imagenet.md')
  assert 'configs/imagenet.py' in text and '64.80' in text
  recall = text[text.index('## Recall@5'):].splitlines()
  row = next(l for l in recall if l.startswith('| EMA |'))
  want = [f'{fake_top5(f"imagenet_evalnorm_b{b}", "ema"):.2f}'
          for b in (2, 4, 8, 16, 32)]
  assert row == '| EMA | ' + ' | '.join(want) + ' |  |'


def test_table2_paradigms(context):
  grid = table2_transfer.fine_tune_runs(context.scale, '/pretrained')
  settings = {p: dict(grid[(p, 2)].overrides) for p in table2_transfer.PARADIGMS}
  a, b, c, d = settings.values()
  assert 'init_from' not in a
  assert b['init_norm'] == 'reset' and b['init_from'] == '/pretrained'
  assert c['freeze_batch_stats'] is True and c['init_norm'] == 'pretrained'
  assert d['init_norm'] == 'pretrained' and 'freeze_batch_stats' not in d
  assert {s['dataset'] for s in settings.values()} == {'noisy_digits'}
  numbers = table2_transfer.report(context, FakeResults())
  cell = numbers['top1']['(a) random init']['8']
  assert cell == {m: fake_top1('transfer_a_b8', m) for m in ('ema', 'evalnorm')}
  assert numbers['gain']['(a) random init']['8'] == pytest.approx(
      cell['evalnorm'] - cell['ema'])
  assert 'not the paper' in read(context, 'table2_transfer.md')


def test_finished_runs_are_reused(context):
  run = runner.Run('done', 'configs/does_not_exist.py', ())
  os.makedirs(os.path.join(context.workdir_root, 'done'))
  with open(os.path.join(context.workdir_root, 'done', 'eval.json'), 'w') as f:
    json.dump({'eval': {}, 'marker': 1}, f)
  assert context.execute([run]) == {'done': {'eval': {}, 'marker': 1}}


def test_failed_run_reports_its_log(context, monkeypatch):
  """A run that exits non-zero raises RunFailed with its log's last lines.

  (What ``evalnorm.main`` prints for a bad config is tested in test_train.)
  """
  def failing_call(args, cwd, stdout, stderr, env):
    del args, cwd, stderr
    assert env['XLA_FLAGS'].endswith('--xla_force_host_platform_device_count=8')
    stdout.write("error: config.norm='layernorm' is invalid: allowed: ...\n")
    return 2
  monkeypatch.setattr(runner.subprocess, 'call', failing_call)
  run = runner.make_run('bad', context.scale, devices=8, norm='layernorm')
  with pytest.raises(runner.RunFailed, match=r"(?s)bad exited with status 2.*"
                     r"config.norm='layernorm' is invalid"):
    context.execute([run])
  assert runner.read_eval(os.path.join(context.workdir_root, 'bad')) is None


def test_command_is_the_users_command_line(context):
  run = runner.make_run('x', context.scale, norm_batch_size=4,
                        fixed_alpha_beta=(0.1, 0.2))
  args = runner.command(run, '/w')
  assert args[1:5] == ['-m', 'evalnorm.main', '--config=configs/digits.py',
                       '--workdir=/w/x']
  assert '--config.norm_batch_size=4' in args
  assert '--config.fixed_alpha_beta=(0.1,0.2,)' in args
  offline = runner.Run('y', 'configs/digits.py', (), checkpoint='x')
  assert runner.command(offline, '/w')[2] == 'evalnorm.estimate'
  assert '--checkpoint=/w/x' in runner.command(offline, '/w')


def test_eval_json_has_top1_and_top5_of_every_mode(trained_run):
  from evalnorm.training import evaluation  # pylint: disable=g-import-not-at-top
  _, _, report = trained_run
  for metrics in report['eval'].values():
    assert 0 <= metrics['top1'] <= metrics['top5'] <= 100
  logits = np.array([[0., 1, 2, 3, 4, 5, 6], [6., 5, 4, 3, 2, 1, 0]])
  labels = np.array([1, 1])  # rank 6 of 7 in the first row, 2 in the second
  np.testing.assert_array_equal(
      evaluation._in_top_k(logits, labels, 5), [False, True])


@pytest.mark.slow
def test_fig1_layer_outputs(trained_run, tmp_path):
  config, workdir, _ = trained_run
  overrides = {k: config[k] for k in ('dataset', 'stem_strides', 'batch_size',
                                      'eval_batch_size', 'norm_batch_size')}
  run = runner.Run(os.path.basename(workdir), 'configs/digits.py',
                   tuple(overrides.items()))
  layer = 'stage1_block0/norm2'
  outputs = fig1_histograms.layer_outputs(run, os.path.dirname(workdir), layer,
                                          num_examples=64)
  assert set(outputs) == set(fig1_histograms.MODES)
  _, _, _, variables = run_configs.load_trained(run, os.path.dirname(workdir))
  params = variables['params']['stage1_block0']['norm2']
  train_out = outputs['training statistics']
  assert train_out.shape[0] == 64 and train_out.shape[-1] == params['bias'].shape[0]
  # Training statistics: every group of B=2 is normalized by its own moments,
  # so after the affine map each group's per-channel mean is the bias.
  groups = train_out.reshape((32, -1, train_out.shape[-1]))
  np.testing.assert_allclose(groups.mean(1), np.broadcast_to(
      params['bias'], (32, params['bias'].shape[0])), atol=1e-4)
  assert not np.allclose(outputs['EMA statistics'], train_out, atol=1e-2)


@pytest.mark.slow  # ~30 s: a fresh kernel compiles training and evaluation.
def test_ablation_notebook_runs():
  path = os.path.join(ROOT, 'experiments', 'ablation.ipynb')
  notebook = nbformat.read(path, as_version=4)
  parameters = next(c for c in notebook.cells
                    if 'parameters' in c.metadata.get('tags', []))
  parameters.source = "STEPS = 3\nB = 2\nDATASET = 'digits'"
  # One CPU device, as a notebook user has (the suite's 8 fake devices would
  # make the kernel compile and run every step 8 times over).
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(path)}}
                          ).execute(env=env)
  outputs = ''.join(o.get('text', '') for c in notebook.cells
                    if c.cell_type == 'code' for o in c.get('outputs', []))
  assert '| evalnorm |' in outputs and 'best fixed c=' in outputs


@pytest.mark.slow
def test_run_all_at_smoke_scale(tmp_path):
  seconds = run_all.main(['--scale=smoke', f'--workdir_root={tmp_path}/w',
                          f'--results_dir={tmp_path}/r', '--jobs=2'])
  assert len(seconds) == len(run_all.SCRIPTS)
  for name in ('fig1_histograms', 'fig2_error_vs_b', 'fig3_alpha_beta',
               'fig4_fixed_schedules', 'fig5_deeper_wider', 'table1_imagenet',
               'table2_transfer', 'table2_detection', 'estimate_every'):
    assert os.path.exists(tmp_path / 'r' / f'{name}.md')
    assert os.path.exists(tmp_path / 'r' / f'{name}.png')
  for name in ('seeds', 'quick_start', 'runtimes'):
    assert os.path.exists(tmp_path / 'r' / f'{name}.md')
  archive = json.loads((tmp_path / 'r' / 'runs.json').read_text())
  planned = {r.name for script in run_all.SCRIPTS
             if script is not estimate_every
             for r in script.planned_runs(command_line.Context(
                 scales.SCALES['smoke'], f'{tmp_path}/w', f'{tmp_path}/r', 2))}
  assert set(archive['eval']) == planned
  assert all(archive['eval'][name]['eval'] for name in planned)
  assert set(archive['every_k']) == {'estimate_every_seed0',
                                     'estimate_every_seed1',
                                     'estimate_every_seed2'}
  record = json.loads((tmp_path / 'r' / 'provenance.json').read_text())
  assert record['commits'] == [provenance.git_state(ROOT)['commit']]
  assert set(record['minutes_per_script']) == set(seconds)
  assert record['packages']['jax'] and record['machine']['cpu_cores']
  # A second invocation over the same runs reuses them and is recorded too.
  run_all.main(['--scale=smoke', f'--workdir_root={tmp_path}/w',
                f'--results_dir={tmp_path}/r', '--jobs=2'])
  record = json.loads((tmp_path / 'r' / 'provenance.json').read_text())
  assert len(record['invocations']) == 2
  # headlines.json holds every script's report and is rebuilt, without the
  # workdirs, from runs.json and provenance.json alone.
  written = (tmp_path / 'r' / 'headlines.json').read_text()
  assert set(json.loads(written)) == set(seconds) | {'provenance', 'runtimes'}
  os.rename(tmp_path / 'w', tmp_path / 'gone')
  run_all.main(['--scale=smoke', f'--results_dir={tmp_path}/r',
                f'--workdir_root={tmp_path}/w', '--headlines_only'])
  assert (tmp_path / 'r' / 'headlines.json').read_text() == written


# ---------------------------------------------------------------------------
# The full scale: the paper's grids, as the dry run lists them.


def listed_runs(text: str) -> dict[str, dict[str, str]]:
  """{run: {column: cell}} of the dry-run listing's tables."""
  rows = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if line.startswith('| ') and cells[0] != 'run':
      rows[cells[0]] = dict(zip(run_configs.LISTING_HEADERS, cells))
  return rows


@pytest.fixture(scope='module')
def full_listing(tmp_path_factory):
  root = tmp_path_factory.mktemp('full')
  return listed_runs(run_all.main(['--scale=full', '--dry_run',
                                   f'--workdir_root={root}']))


def test_full_scale_cifar_runs_are_the_papers_setup(full_listing):
  cifar = {n: r for n, r in full_listing.items()
           if r['dataset'].startswith('cifar')}
  # One device, SGD batch 128 cut into groups of B, 128k steps, lr 0.1.
  assert {(r['devices'], r['batch'], r['lr']) for r in cifar.values()} == {
      ('1', '128', '0.1')}
  fig2 = {(r['dataset'], r['norm'].split()[0], int(r['B']))
          for n, r in cifar.items() if n.split('_')[-1] == 'seed0'
          and r['model'] == 'ResNet-20 v2 x1' and r['steps'] == '128,000'}
  # Fig. 2: both panels, EvalNorm and Renorm at every B.
  assert fig2 >= {(d, norm, b) for d in ('cifar10', 'cifar100')
                  for norm in ('evalnorm', 'renorm')
                  for b in (2, 4, 8, 16, 32, 64, 128)}
  # CIFAR-100 is the test-bed: every figure run but Fig. 2's CIFAR-10 panel
  # (and the transfer table's target) trains on it.
  on_cifar10 = {n for n, r in cifar.items() if r['dataset'] == 'cifar10'}
  assert all(n.startswith(('cifar10_', 'transfer_')) for n in on_cifar10)
  # Fig. 5: deeper (20, 56, 110, 254) at x1 and wider (x1, x2, x4, x8) at
  # depth 20, each at B = 4 and 8.
  fig5 = {(r['model'], int(r['B'])) for n, r in cifar.items()
          if n in [x.name for x in fig5_deeper_wider.all_runs(
              scales.SCALES['full'])]}
  models = {f'ResNet-{d} v2 x1' for d in (20, 56, 110, 254)} | {
      f'ResNet-20 v2 x{w}' for w in (1, 2, 4, 8)}
  assert fig5 == {(m, b) for m in models for b in (4, 8)}
  assert all(cifar[n]['dataset'] == 'cifar100' for n in cifar
             if n.startswith('evalnorm_d'))


def test_full_scale_table1_runs_are_the_papers_setup(full_listing):
  for b in (2, 4, 8, 16, 32):
    batch = 8 * b
    for norm in ('evalnorm', 'renorm', 'groupnorm'):
      row = full_listing[f'imagenet_{norm}_b{b}']
      assert (row['dataset'], row['model'], row['devices']) == (
          'imagenet2012', 'ResNet-50 v2', '8')
      assert (int(row['B']), int(row['batch'])) == (b, batch)
      assert float(row['lr']) == pytest.approx(0.1 * batch / 256)
      assert row['steps'] == f'{math.ceil(60 * 1_281_167 / batch):,}'
    # Offline estimation: one epoch of the column's batches.
    offline = full_listing[f'imagenet_offline_b{b}']
    assert offline['program'] == f'offline, from imagenet_evalnorm_b{b}'
    assert offline['steps'] == f'{math.ceil(1_281_167 / batch):,}'


def test_gpus_are_handed_out_one_run_at_a_time(context, monkeypatch):
  """On a GPU machine each run sees its own GPUs, never all of them."""
  monkeypatch.setattr(runner, 'machine_gpus', lambda: ('0', '1'))
  seen, lock = {}, threading.Lock()
  both_running = threading.Barrier(2, timeout=30)

  def fake_call(args, cwd, stdout, stderr, env):
    del cwd, stdout, stderr
    name = os.path.basename(next(a for a in args if a.startswith('--workdir')))
    with lock:
      seen[name] = env['CUDA_VISIBLE_DEVICES']
    if name.startswith('one'):
      both_running.wait()  # the two one-device runs hold a GPU each at once
    workdir = os.path.join(context.workdir_root, name)
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump({'eval': {}}, f)
    return 0
  monkeypatch.setattr(runner.subprocess, 'call', fake_call)
  one_device = [runner.make_run(f'one_{i}', context.scale) for i in range(2)]
  runner.execute(one_device, context.workdir_root, jobs=2)
  assert sorted(seen.values()) == ['0', '1']
  runner.execute([runner.make_run('eight', context.scale, devices=8)],
                 context.workdir_root)
  assert seen['eight'] == '0,1'  # all there are: groups of B on fewer devices


def test_a_run_waits_for_the_runs_it_reads(context):
  pretrain = table2_transfer.pretrain_run(context.scale)
  grid = table2_transfer.grid_of(context)
  assert runner.prerequisites(grid[('(b) pre-trained, BN reset', 2)],
                              context.workdir_root) == {pretrain.name}
  assert runner.prerequisites(grid[('(a) random init', 2)],
                              context.workdir_root) == set()
  _, offline = table1_imagenet.table_runs(context.scale)
  assert runner.prerequisites(offline[0], context.workdir_root) == {
      'imagenet_evalnorm_b2'}
