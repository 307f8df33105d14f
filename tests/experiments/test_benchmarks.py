"""Smoke test of benchmarks/cost.py: it runs end to end and prints sane ratios."""

import json
import math

import pytest

from benchmarks import cost, cost_table, parallelism


@pytest.mark.slow
def test_cost_smoke_prints_finite_positive_ratios(capsys, tmp_path):
  results = cost.main(['--smoke', f'--output={tmp_path}/cost.json'])
  out = capsys.readouterr().out
  assert 'flax nn.BatchNorm' in out and 'ratio (min)' in out
  printed = cost.parse_ratios(out)
  for key in ('train_B8', 'train_B2', 'alpha_beta_B2', 'train_B2_estimating',
              'train_B2_amortized', 'eval_evalnorm', 'eval_ema',
              'train_peak_B8', 'train_peak_B2', 'alpha_beta_peak_B2',
              'eval_peak_evalnorm'):
    assert key in printed, key
    assert math.isfinite(printed[key]) and printed[key] > 0, (key, printed[key])
  smoke = results['smoke']
  for phase in ('train', 'eval'):
    for row in smoke[phase].values():
      for name in ('ratio_min', 'ratio_median', 'ratio_paired'):
        assert math.isfinite(row[name]) and row[name] > 0, (phase, name, row)
  assert smoke['train']['batchnorm']['ratio_min'] == 1.0
  # The JSON record holds what was printed, and what produced it.
  saved = json.loads((tmp_path / 'cost.json').read_text())
  assert saved['setups']['smoke']['ratios'] == pytest.approx(
      printed, abs=1e-4)
  assert saved['device']['platform'] == 'cpu' and 'xla_flags' in saved
  assert set(saved) >= {'commit', 'clean', 'versions'}


def test_amortized_ratio():
  # SGD step 1.0, alpha/beta step 0.4, reference 1.0: every step 1.4; every
  # 8th step 1.05.
  assert cost.amortized_ratio(1.0, 0.4, 1.0, 1) == 1.4
  assert cost.amortized_ratio(1.0, 0.4, 1.0, 8) == 1.05
  assert cost.amortized_ratio(1.0, 0.4, 2.0, 8) == 0.525


def test_cost_table_measures_each_model_under_each_kernel_configuration(
    monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(cost_table.subprocess, 'run', lambda argv, env, check:
                      calls.append((argv[2], env['XLA_FLAGS'], argv[-1])))
  cost_table.measure(['cifar'], ['default', 'eigen'], str(tmp_path))
  assert calls == [
      ('benchmarks.cost', '', str(tmp_path / 'cost_cifar_default.json')),
      ('benchmarks.cost', '--xla_cpu_experimental_ynn_fusion_type=',
       str(tmp_path / 'cost_cifar_eigen.json')),
      ('benchmarks.parallelism', '--xla_force_host_platform_device_count=8',
       str(tmp_path / 'parallelism.json'))]


def test_a_programs_cost_range_spans_its_models_columns():
  records = {f'ResNet-20, {flags}': {'setups': {'cifar': {'ratios': ratios}}}
             for flags, ratios in (('default flags', {'fused_B2_amortized': 1.004}),
                                   ('Eigen', {'fused_B2_amortized': 0.9449}),
                                   ('AVX2', {}))}
  records['ResNet-50, Eigen'] = {'setups': {'resnet50': {'ratios': {
      'fused_B2_amortized': 2.0}}}}
  key = cost_table.mean_step_key('fused', 4)
  assert cost_table.time_range(records, key, 'ResNet-20') == '0.94-1.00x'
  assert cost_table.time_range(records, key, 'ResNet-50') == '2.00x'
  assert cost_table.time_range(records, 'train_B2', 'ResNet-20') == ''
  assert cost_table.mean_step_key('separate', 1) == 'train_B2_estimating'
  assert cost_table.mean_step_key('fused', 3) is None


def test_cost_table_names_an_unknown_model_in_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cost_table.main(['--models', 'cifar,resnet18'])
  assert exit_info.value.code == 2
  assert "--models: unknown 'resnet18' (allowed: cifar, resnet50)" in (
      capsys.readouterr().err)


@pytest.mark.slow
def test_parallelism_smoke_writes_the_record_its_table_reads(tmp_path):
  rows = parallelism.main(['--smoke', f'--output={tmp_path}/p.json'])
  record = json.loads((tmp_path / 'p.json').read_text())
  assert record['rows'] == rows  # JSON keeps a float exactly
  assert set(record) >= {'commit', 'clean', 'device', 'versions', 'repeats'}
  ratios = [float(c.rstrip('x')) for c in
            parallelism.table(record).splitlines()[2].split(' | ')[1:4]]
  shard_map = rows['shard_map']
  assert ratios == [round(shard_map[f'ratio_{r}'], 2)
                    for r in ('min', 'median', 'paired')]
