"""experiments/table2_detection.py: the runs it plans (running them is slow)."""

import pytest

from experiments import command_line, scales, table2_detection


def test_the_grid_is_five_paradigms_by_n_with_three_seeds_at_n2():
  context = command_line.Context(scales.SCALES['small'], '/tmp/work',
                                 '/tmp/results', 1)
  planned = table2_detection.planned_runs(context)
  pretrain, grid = planned[0], planned[1:]
  # 5 paradigms ((c) both ways) x (N=2 with 3 seeds + N=4 + N=8).
  assert len(grid) == 5 * 5 and len({r.name for r in grid}) == 25
  settings = {r.name: dict(r.overrides) for r in grid}
  pretraining = dict(pretrain.overrides)
  assert pretraining['norm_batch_size'] == 128
  assert pretraining['dataset'] == 'digit_crops'  # the scenes' own digits
  for name, s in settings.items():
    assert s['batch_size'] == s['norm_batch_size']  # SGD batch = one group
    assert s['learning_rate'] == 0.01 * s['batch_size']
    assert s['num_train_steps'] * s['batch_size'] == 6000
    assert ('init_from' in s) == (not name.startswith('detection_a'))
    assert s.get('init_from') in (None, context.workdir(pretrain))
  assert settings['detection_c_n2_seed0']['freeze_batch_stats'] is True
  assert settings['detection_c_frozen_bn_n4_seed0']['frozen_bn'] is True
  assert settings['detection_c_frozen_bn_n4_seed0']['init_norm'] == (
      'pretrained')
  assert settings['detection_b_n4_seed0']['init_norm'] == 'reset'


def test_the_report_gives_each_cell_and_evalnorms_gain_over_ema(tmp_path):
  context = command_line.Context(scales.SCALES['small'], str(tmp_path / 'work'),
                                 str(tmp_path / 'results'), 1)
  grid = table2_detection.grid_of(context)
  pretrain = table2_detection.pretrain_run(context.scale)
  results = {pretrain.name: {'eval': {'ema': {'top1': 91.25}}}}
  for (paradigm, n, seed), run in grid.items():
    ema = 10.0 * n + seed  # seeds 0, 1, 2 at N=2: EMA 20, 21, 22
    modes = {'ema': ema, 'evalnorm': ema + 1 + seed, 'rule_of_thumb': ema}
    results[run.name] = {'eval': {
        mode: {'AP': ap, 'AP50': ap + 30, 'AP75': ap - 5}
        for mode, ap in modes.items()}, 'alpha_beta': {
            'backbone/stage1/norm': {'alpha': [0.1 * n], 'beta': [0.0]},
            'backbone/stage2/norm': {'alpha': [0.3 * n], 'beta': [0.0]},
            'rcn/norm': {'alpha': [0.05 * n + seed], 'beta': [0.0]}}}
  numbers = table2_detection.report(context, results)
  cell = numbers['by_paradigm']['(a) random init']['2']
  assert cell['AP']['ema'] == {'mean': 21.0, 'std': 1.0,
                               'seeds': [20.0, 21.0, 22.0]}
  assert cell['gain']['seeds'] == [1.0, 2.0, 3.0]
  assert numbers['gain']['(a) random init'] == {'2': 2.0, '4': 1.0, '8': 1.0}
  # Mean alpha of the base network's layers and of the RCN's, N=2, seed 0.
  assert numbers['mean_alpha']['(b) pre-trained, BN reset'] == {
      'base': pytest.approx(0.4), 'rcn': pytest.approx(0.1)}
  assert numbers['pretrain_top1'] == 91.25
  text = (tmp_path / 'results' / 'table2_detection.md').read_text()
  assert '`detection_pretrain_digit_crops` (EMA top-1 91.25%' in text
  rows = [line for line in text.splitlines() if line.startswith('| (a)')]
  assert len(rows) == 3  # N = 2, 4, 8
  # N=2, 3 seeds: EMA AP 21.0 ± 1.0; EvalNorm gains 1, 2, 3.
  assert rows[0].split(' | ')[3] == '21.0 ± 1.0'
  assert rows[0].rstrip(' |').endswith('+2.0 ± 1.0')
  assert rows[1].rstrip(' |').endswith('+1.0')  # N=4, one seed
  assert (tmp_path / 'results' / 'table2_detection.png').is_file()
