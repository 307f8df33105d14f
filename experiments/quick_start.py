r"""The README's quick start over seeds, and the baselines at its setting.

    python -m experiments.quick_start [--scale small|full|smoke] [--seeds 0,1,2]

Every run is the quick start's setting (``configs/digits.py``: noisy digits,
3000 steps, B = 2; ``--scale smoke`` shrinks it to seconds):

  quick_start_seed<s>     the README's first command with ``--config.seed=s``
                          (EvalNorm, batch 128 in groups of 2, alpha/beta
                          estimated online);
  quick_start_seed0_8devices
                          seed 0 on 8 devices: the same training in another
                          XLA program, as another machine runs it;
  baseline_batchnorm      flax ``nn.BatchNorm`` on 8 devices x 2 (batch 16:
                          it normalizes each device's whole batch), then
  baseline_batchnorm_offline
                          ``python -m evalnorm.estimate`` on it (offline
                          estimation, fixed alpha = beta evaluated too);
  baseline_renorm         Batch Renorm, batch 128 in groups of 2, clips
                          ramped over the first third of the steps;
  baseline_groupnorm      GroupNorm, batch 128 (no batch statistics).

Writes quick_start.md: the table the quick start prints (seed 0), top-1 of
every mode per seed with the range over seeds, and the baselines.
"""

import sys

from evalnorm.training import summary as run_report
from experiments import command_line, result_files, run_configs, runner, scales

NAME = 'quick_start'
FLAGS = command_line.SEEDS_FLAG
QUICK_START_CONFIG = 'configs/digits.py'
SEED_MODES = ('ema', 'evalnorm', 'rule_of_thumb', 'one_over_b', 'train_stats')
BASELINE_MODES = ('evalnorm', 'rule_of_thumb', 'one_over_b', 'fixed_0.05',
                  'fixed_0.1', 'fixed_0.5')
BASELINE_DEVICES = 8  # nn.BatchNorm at B=2 needs a per-device batch of 2
RENORM = 'Batch Renorm (batch 128, groups of 2)'  # its baseline's label
OTHER_DEVICES = 8


def quick_start_run(scale: scales.Scale, name: str, devices: int = 1,
                    checkpoint: str | None = None, **overrides) -> runner.Run:
  """A run of the quick start's command with ``overrides``."""
  if scale.name == 'smoke':
    return runner.make_run(name, scale, devices, checkpoint,
                           norm_batch_size=2, **overrides)
  return runner.make_run(name, scale, devices, checkpoint,
                         config=QUICK_START_CONFIG, norm_batch_size=2,
                         **overrides)


def seed_run(scale: scales.Scale, seed: int) -> runner.Run:
  return quick_start_run(scale, f'{NAME}_seed{seed}', seed=seed)


def other_devices_run(scale: scales.Scale) -> runner.Run:
  """Seed 0 on 8 devices: the same groups of 2 and batch 128, another XLA
  program (per-device batches of 16), as another machine would compile."""
  return quick_start_run(scale, f'{NAME}_seed0_8devices', OTHER_DEVICES,
                         seed=0)


def baseline_runs(scale: scales.Scale) -> dict[str, runner.Run]:
  """The baselines of the README's table, by row label."""
  batchnorm = dict(norm='batchnorm', batch_size=2 * BASELINE_DEVICES)
  trained = quick_start_run(scale, 'baseline_batchnorm', BASELINE_DEVICES,
                            **batchnorm)
  renorm = run_configs.with_renorm_ramp(
      quick_start_run(scale, 'baseline_renorm', norm='renorm'), scale)
  return {
      'flax `nn.BatchNorm`, 8 devices x 2 (batch 16)': trained,
      'the same model after `evalnorm.estimate` (offline)': quick_start_run(
          scale, 'baseline_batchnorm_offline', BASELINE_DEVICES,
          checkpoint=trained.name, **batchnorm),
      RENORM: renorm,
      'GroupNorm (batch 128)': quick_start_run(scale, 'baseline_groupnorm',
                                               norm='groupnorm'),
  }


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  seeds = [seed_run(context.scale, s) for s in command_line.seeds(context)]
  return (seeds + [other_devices_run(context.scale)]
          + list(baseline_runs(context.scale).values()))


def headlines(context: command_line.Context, results: dict) -> dict:
  """What the README quotes: the first seed's table (the quick start's
  output), top-1 of every mode per seed with the range over the seeds, seed 0
  on another device count, and the baselines' top-1."""
  scale = context.scale
  seed_runs = [seed_run(scale, s) for s in command_line.seeds(context)]
  per_seed = {str(dict(r.overrides)['seed']): _top1(results[r.name], SEED_MODES)
              for r in seed_runs}
  first = results[seed_runs[0].name]
  return {
      'quick_start_table': {k: first[k] for k in (
          'dataset', 'norm', 'norm_batch_size', 'step', 'num_eval_examples',
          'eval')},
      'top1_by_seed': per_seed,
      'top1_range': {m: [min(t[m] for t in per_seed.values()),
                         max(t[m] for t in per_seed.values())]
                     for m in SEED_MODES},
      'top1_on_other_devices': _top1(results[other_devices_run(scale).name],
                                     SEED_MODES),
      'baselines': {label: _baseline(run, results[run.name])
                    for label, run in baseline_runs(scale).items()},
  }


def _top1(result: dict, modes) -> dict[str, float]:
  """Top-1 of those of ``modes`` that ``result`` evaluated."""
  return {m: runner.top1(result, m) for m in modes if m in result['eval']}


def _baseline(run: runner.Run, result: dict) -> dict:
  """A baseline's own evaluation mode, and top-1 of it and of the modes it has."""
  from evalnorm.training import builders  # pylint: disable=g-import-not-at-top
  own = builders.NORMS[run_configs.load_config(run).norm].eval_mode or 'ema'
  return {'own': own, 'top1': _top1(result, (own,) + BASELINE_MODES)}


def seeds_table(numbers: dict) -> str:
  """Top-1 of every mode per seed, the range over the seeds, and seed 0 on
  another device count (``numbers``: the headlines)."""
  row = lambda label, top1: [label] + [f'{top1[m]:.2f}' for m in SEED_MODES]
  ranges = [f'{low:.2f}-{high:.2f}'
            for low, high in numbers['top1_range'].values()]
  return result_files.markdown_table(('seed',) + SEED_MODES, [
      row(seed, top1) for seed, top1 in numbers['top1_by_seed'].items()] + [
          ['range'] + ranges,
          row(f'0, on {OTHER_DEVICES} devices',
              numbers['top1_on_other_devices'])])


def baselines_table(numbers: dict) -> str:
  """Top-1 of each baseline's own evaluation and of the modes it has."""
  rows = []
  for label, baseline in numbers['baselines'].items():
    top1, own = baseline['top1'], baseline['own']
    rows.append([label, f'{top1[own]:.2f} (`{own}`)'] + [
        f'{top1[m]:.2f}' if m in top1 else '' for m in BASELINE_MODES])
  return result_files.markdown_table(
      ('run (seed 0, top-1 %)', 'own evaluation') + BASELINE_MODES, rows)


def setting(context: command_line.Context, command: str) -> str:
  """A result file's line on what ran: the smoke scale's note, or the quick
  start's setting and ``command``."""
  if context.scale.name == 'smoke':
    return result_files.scale_note(context)
  return (f'`{QUICK_START_CONFIG}` (noisy digits, 3000 steps), B=2: '
          f'{command}.\n')


def report(context: command_line.Context, results: dict) -> dict:
  numbers = headlines(context, results)
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      'Quick start: every mode, seeds and baselines at B=2',
      setting(context, "the README's first command"),
      '## The quick start (seed 0)\n\n'
      + run_report.results_table(numbers['quick_start_table']) + '\n',
      '## Top-1 (%) per seed (`--config.seed`)\n\n'
      'The last row is seed 0 again, on 8 devices (per-device batches of 16, '
      'the same groups of 2): the same training compiled into another '
      'program, as on another machine.\n\n'
      + seeds_table(numbers),
      '## Baselines\n\n'
      'Each run\'s own evaluation (moving averages, or GroupNorm\'s '
      'per-example statistics), then the modes that blend statistics where '
      'the model has them (blank: it has none).\n\n'
      + baselines_table(numbers))
  return numbers


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
