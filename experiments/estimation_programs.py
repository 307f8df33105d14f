r"""Online estimation's two programs at the quick start's setting, over seeds.

    python -m experiments.estimation_programs [--scale small|full|smoke] [--seeds 0,1,2]

``--config.estimation`` picks the program that estimates alpha/beta online
(docs/training.md): ``separate``, the default (a forward pass of its own on
every k-th step, k = 4), is the quick start itself, whose runs
``experiments/quick_start.py`` makes; ``fused`` adds the auxiliary loss to the
SGD step's own pass, here on every step (k = 1) and on every 4th. Fused
estimation changes the order of the weights' arithmetic in the last bits,
which normalization groups of 2 amplify until the run behaves like another
seed's, so the programs are compared over seeds.

Writes estimation_programs.md: per program EvalNorm's and EMA's top-1 for each
seed, and whether its mean EvalNorm top-1 is within seed noise of the
default's (the two means differ by at most the larger of their standard
deviations over seeds).
"""

import sys

import numpy as np

from experiments import (command_line, quick_start, result_files, run_configs,
                         runner, scales)

NAME = 'estimation_programs'
FLAGS = command_line.SEEDS_FLAG
FUSED_KS = (1, 4)


def fused_run(scale: scales.Scale, k: int, seed: int) -> runner.Run:
  """The quick start's command with fused estimation every k-th step."""
  return quick_start.quick_start_run(
      scale, f'{NAME}_fused_k{k}_seed{seed}', seed=seed, estimation='fused',
      estimate_every_steps=k)


def label(run: runner.Run) -> str:
  """'fused, k = 1': the program and k that ``run``'s config sets."""
  config = run_configs.load_config(run)
  return f'{config.estimation}, k = {config.estimate_every_steps}'


def program_runs(scale: scales.Scale, seeds) -> dict[str, list[runner.Run]]:
  """{program label: its runs over ``seeds``}; the default program first."""
  groups = [[quick_start.seed_run(scale, s) for s in seeds]]
  groups += [[fused_run(scale, k, s) for s in seeds] for k in FUSED_KS]
  return {label(runs[0]): runs for runs in groups}


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return [r for runs in program_runs(
      context.scale, command_line.seeds(context)).values() for r in runs]


def spread(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def headlines(context: command_line.Context, results: dict) -> dict:
  """Per program (the default first): EvalNorm's and EMA's top-1 per seed,
  the EvalNorm mean and standard deviation over seeds, and whether that mean
  is within seed noise of the default's."""
  programs = {}
  for name, runs in program_runs(context.scale,
                                 command_line.seeds(context)).items():
    evalnorm = [runner.top1(results[r.name], 'evalnorm') for r in runs]
    config = run_configs.load_config(runs[0])
    programs[name] = {
        'estimation': config.estimation, 'k': config.estimate_every_steps,
        'seeds': [dict(r.overrides)['seed'] for r in runs],
        'evalnorm': evalnorm, 'ema': [runner.top1(results[r.name], 'ema')
                                      for r in runs],
        'mean': float(np.mean(evalnorm)), 'std': spread(evalnorm)}
  default = next(iter(programs.values()))
  for row in programs.values():
    row['within_seed_noise_of_default'] = bool(
        abs(row['mean'] - default['mean']) <= max(row['std'], default['std']))
  return {'programs': programs}


def table(numbers: dict, cost: dict[str, str] | None = None) -> str:
  """Per program: top-1 per seed, the EvalNorm mean (std) and the verdict;
  with ``cost`` ({program label: cell}) a column of train-step cost."""
  rows = []
  for name, row in numbers['programs'].items():
    per_seed = lambda mode: ' / '.join(f'{v:.2f}' for v in row[mode])
    rows.append([name] + ([cost.get(name, '')] if cost else []) + [
        per_seed('evalnorm'), f"{row['mean']:.2f} ({row['std']:.2f})",
        'yes' if row['within_seed_noise_of_default'] else 'no',
        per_seed('ema')])
  seeds = '/'.join(map(str, next(iter(numbers['programs'].values()))['seeds']))
  return result_files.markdown_table(
      ['program'] + (["mean train step against BatchNorm's (ResNet-20, "
                      'docs/cost.md)'] if cost else [])
      + [f'EvalNorm top-1 (%), seeds {seeds}', 'mean (std)',
         "within seed noise of the default's", f'EMA top-1 (%), seeds {seeds}'],
      rows)


def report(context: command_line.Context, results: dict) -> dict:
  numbers = headlines(context, results)
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      'Online estimation: separate and fused programs over seeds',
      quick_start.setting(context, "the README's first command with "
                          '`--config.estimation` and '
                          '`--config.estimate_every_steps` set'),
      'The default is the quick start run of each seed. "Within seed noise": '
      "the program's mean EvalNorm top-1 differs from the default's by at "
      'most the larger of the two standard deviations over seeds (n-1). The '
      "train-step cost of each program is docs/cost.md's.\n",
      table(numbers))
  return numbers


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
