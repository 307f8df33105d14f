r"""Table 1: the ImageNet table's rows over B, in the paper's per-device setup.

    python -m experiments.table1_imagenet [--scale small|full|smoke] [--jobs 2]

The paper trains ResNet-50 v2 on 8 workers with B examples each (SGD batch 8B,
learning rate scaled with it, BN statistics never cross devices). Here the
same setup runs as 8 fake CPU devices (``--xla_force_host_platform_device_count=8``,
one pmap replica each, per-device batch B, one normalization group per
device). Small scale: built-in noisy digits and the digits ResNet, every B
seeing the same number of examples (`Scale.table1_examples`), learning rate 0.1 x 8B/128.
Rows, each with one value per B column:

  EMA, EvalNorm (online), 1/B^2   modes of one EvalNorm run per B;
  EvalNorm offline                ``evalnorm.estimate`` on that run's checkpoint;
  Batch Renorm                    one run per B;
  GroupNorm                       one run per B (its SGD batch 8B, learning
                                  rate and steps are the column's).

Full scale: ``configs/imagenet.py:norm_batch_size=B`` (prepared ImageNet and 8
accelerators; SGD batch, learning rate, 60 epochs and a one-epoch offline
estimation follow from B); the commands are written to table1_imagenet.md
either way. Reports Prec@1 and Recall@5 (top-1 and top-5), as the paper.

Paper (ResNet-50, B=2): Prec@1 64.80 with EMA, 70.98 with EvalNorm.
"""

import sys

from experiments import command_line, result_files, run_configs, runner, scales

NAME = 'table1_imagenet'
DEVICES = 8
PAPER_B2 = {'EMA': 64.80, 'EvalNorm (online)': 70.98}


def per_device_overrides(scale: scales.Scale, b: int) -> dict:
  """Batch, steps and learning rate of the per-device-B setup."""
  overrides = dict(scale.imagenet_overrides, norm_batch_size=b)
  if scale.table1_examples:  # else configs/imagenet.py derives these from B
    batch = DEVICES * b
    steps = max(1, scale.table1_examples // batch)
    overrides.update(batch_size=batch, num_train_steps=steps,
                     checkpoint_every_steps=steps,
                     learning_rate=0.1 * batch / 128)
  return overrides


def column_runs(scale: scales.Scale, b: int) -> dict[str, runner.Run]:
  """The runs of one B column: three trainings, and offline estimation."""
  config = scale.imagenet_config
  overrides = per_device_overrides(scale, b)
  evalnorm = runner.make_run(f'imagenet_evalnorm_b{b}', scale, DEVICES,
                             config=config, **overrides)
  return {
      'evalnorm': evalnorm,
      'renorm': run_configs.with_renorm_ramp(runner.make_run(
          f'imagenet_renorm_b{b}', scale, DEVICES, config=config,
          norm='renorm', **overrides), scale),
      'groupnorm': runner.make_run(f'imagenet_groupnorm_b{b}', scale, DEVICES,
                                   config=config, norm='groupnorm', **overrides),
      'offline': runner.make_run(f'imagenet_offline_b{b}', scale, DEVICES,
                                 checkpoint=evalnorm.name, config=config,
                                 **overrides),
  }


def table_runs(scale: scales.Scale
               ) -> tuple[list[runner.Run], list[runner.Run]]:
  """(training runs, offline estimation runs that read their checkpoints)."""
  columns = [column_runs(scale, b) for b in scale.table1_b_values]
  return ([c[k] for c in columns for k in ('evalnorm', 'renorm', 'groupnorm')],
          [c['offline'] for c in columns])


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  trained, offline = table_runs(context.scale)
  return trained + offline


def rows_by_method(scale: scales.Scale, results: dict,
                   metric=runner.top1) -> dict[str, list[float]]:
  """{row: one value per B}; ``metric`` is runner.top1 or runner.top5."""
  columns = [{k: results[r.name] for k, r in column_runs(scale, b).items()}
             for b in scale.table1_b_values]
  return {
      'EMA': [metric(c['evalnorm'], 'ema') for c in columns],
      'EvalNorm (online)': [metric(c['evalnorm'], 'evalnorm') for c in columns],
      '1/B^2': [metric(c['evalnorm'], 'rule_of_thumb') for c in columns],
      'EvalNorm offline': [metric(c['offline'], 'evalnorm') for c in columns],
      'GroupNorm': [metric(c['groupnorm'], 'groupnorm') for c in columns],
      'Batch Renorm': [metric(c['renorm'], 'ema') for c in columns],
  }


def full_scale_commands() -> str:
  trained, offline = table_runs(scales.SCALES['full'])
  root = '/tmp/evalnorm_table1'
  lines = [' '.join(['python'] + runner.command(r, root)[1:])
           for r in trained + offline]
  return ('Full scale (ImageNet prepared in tfds, 8 accelerators; offline '
          'runs after their training run):\n\n```\n' + '\n'.join(lines)
          + '\n```\n')


def metric_table(scale: scales.Scale, results: dict, metric, label: str) -> str:
  """One markdown table of every row over B, the paper's B=2 value beside."""
  table = rows_by_method(scale, results, metric)
  paper = PAPER_B2 if metric is runner.top1 else {}
  rows = [[name] + [f'{v:.2f}' for v in values]
          + [f'{paper[name]:.2f}' if name in paper else '']
          for name, values in table.items()]
  return result_files.markdown_table(
      [label] + [f'B={b}' for b in scale.table1_b_values] + ['paper, B=2'],
      rows)


def steps_by_b(scale: scales.Scale, results: dict) -> dict[int, int]:
  """The SGD steps of each B column (its EvalNorm run's)."""
  return {b: results[column_runs(scale, b)['evalnorm'].name]['step']
          for b in scale.table1_b_values}


def headlines(context: command_line.Context, results: dict) -> dict:
  """Top-1 (Prec@1) of every row by B, EvalNorm's gain over EMA, the steps
  of each column and the paper's B=2 figures."""
  bs = [str(b) for b in context.scale.table1_b_values]
  table = rows_by_method(context.scale, results)
  return {'top1': {row: dict(zip(bs, values)) for row, values in table.items()},
          'gain': {f'{DEVICES} devices x B': dict(zip(bs, (
              e - m for e, m in zip(table['EvalNorm (online)'],
                                    table['EMA']))))},
          'steps': {str(b): s for b, s in
                    steps_by_b(context.scale, results).items()},
          'paper_b2': PAPER_B2}


def report(context: command_line.Context, results: dict) -> dict:
  """Writes the Prec@1 and Recall@5 tables; returns the headlines."""
  scale = context.scale
  bs = scale.table1_b_values
  table = rows_by_method(scale, results)
  steps = steps_by_b(scale, results)
  devices = 'accelerators' if scale.name == 'full' else 'fake CPU devices'
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      'Table 1: ImageNet rows, per-device B on 8 devices',
      result_files.scale_note(context),
      f'{DEVICES} {devices}, per-device batch B, SGD batch {DEVICES}B; every '
      'row has one run per B column (that column\'s batch, learning rate and '
      'steps); steps per B: '
      + ', '.join(f'B={b}: {s}' for b, s in steps.items())
      + '. The last column is the paper\'s ImageNet ResNet-50 figure at B=2 '
      '(below full scale a different dataset and model: compare the gaps, '
      'not the levels).\n',
      '## Prec@1 (top-1, %)\n',
      metric_table(scale, results, runner.top1, 'Prec@1 (%)'),
      '## Recall@5 (top-5, %)\n',
      metric_table(scale, results, runner.top5, 'Recall@5 (%)'),
      f'![table 1]({NAME}.png)\n', full_scale_commands())
  result_files.plot_against_b(
      context.output(f'{NAME}.png'), bs, table, 'Prec@1 (%)',
      f'Table 1 rows ({context.scale.name} scale)',
      xlabel=f'per-device batch B ({DEVICES} devices)',
      highlight='EvalNorm (online)')
  return headlines(context, results)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
