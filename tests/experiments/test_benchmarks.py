"""Smoke test of benchmarks/cost.py: it runs end to end and prints sane ratios."""

import json
import math

import pytest

from benchmarks import cost, cost_table


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
                      calls.append((argv[argv.index('--model') + 1],
                                    env['XLA_FLAGS'], argv[-1])))
  cost_table.measure(['cifar'], ['default', 'eigen'], str(tmp_path))
  assert calls == [
      ('cifar', '', str(tmp_path / 'cost_cifar_default.json')),
      ('cifar', '--xla_cpu_experimental_ynn_fusion_type=',
       str(tmp_path / 'cost_cifar_eigen.json'))]


def test_cost_table_names_an_unknown_model_in_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cost_table.main(['--models', 'cifar,resnet18'])
  assert exit_info.value.code == 2
  assert "--models: unknown 'resnet18' (allowed: cifar, resnet50)" in (
      capsys.readouterr().err)
