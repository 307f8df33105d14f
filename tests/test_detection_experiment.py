"""experiments/table2_detection.py: the runs it plans (running them is slow)."""

from experiments import runs, table2_detection


def test_the_grid_is_four_paradigms_by_n_with_three_seeds_at_n2():
  context = runs.Context(runs.SCALES['small'], '/tmp/work', '/tmp/results', 1)
  planned = table2_detection.planned_runs(context)
  pretrain, grid = planned[0], planned[1:]
  # 4 paradigms x (N=2 with 3 seeds + N=4 + N=8).
  assert len(grid) == 4 * 5 and len({r.name for r in grid}) == 20
  settings = {r.name: dict(r.overrides) for r in grid}
  assert dict(pretrain.overrides)['norm_batch_size'] == 128
  for name, s in settings.items():
    assert s['batch_size'] == s['norm_batch_size']  # SGD batch = one group
    assert s['learning_rate'] == 0.01 * s['batch_size']
    assert s['num_train_steps'] * s['batch_size'] == 6000
    assert ('init_from' in s) == (not name.startswith('detection_a'))
  assert settings['detection_c_n2_seed0']['freeze_batch_stats'] is True
  assert settings['detection_b_n4_seed0']['init_norm'] == 'reset'
