r"""Table 1: the ImageNet table's rows over B, in the paper's per-device setup.

    python -m experiments.table1_imagenet [--scale small|full|smoke] [--jobs 2]

The paper trains ResNet-50 v2 on 8 workers with B examples each (SGD batch 8B,
learning rate scaled with it, BN statistics never cross devices). Here the
same setup runs as 8 fake CPU devices (``--xla_force_host_platform_device_count=8``,
one pmap replica each, per-device batch B, one normalization group per
device). Small scale: built-in noisy digits and the digits ResNet, every B
seeing the same number of examples (`EXAMPLES`), learning rate 0.1 x 8B/128.
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

from experiments import runs

NAME = 'table1_imagenet'
DEVICES = 8
B_VALUES = {'smoke': (2,), 'small': (2, 4, 8, 16, 32), 'full': (2, 4, 8, 16, 32)}
EXAMPLES = {'smoke': 2 * DEVICES * 2, 'small': 38_400}  # per run, any B
PAPER_B2 = {'EMA': 64.80, 'EvalNorm (online)': 70.98}


def per_device_overrides(scale: runs.Scale, b: int) -> dict:
  """Batch, steps and learning rate of the per-device-B setup."""
  overrides = dict(scale.imagenet_overrides, norm_batch_size=b)
  if scale.name != 'full':  # configs/imagenet.py derives these from B itself
    batch = DEVICES * b
    steps = max(1, EXAMPLES[scale.name] // batch)
    overrides.update(batch_size=batch, num_train_steps=steps,
                     checkpoint_every_steps=steps,
                     learning_rate=0.1 * batch / 128)
  return overrides


def table_runs(scale: runs.Scale) -> tuple[list[runs.Run], list[runs.Run]]:
  """(training runs, offline estimation runs that read their checkpoints)."""
  config = scale.imagenet_config
  trained, offline = [], []
  for b in B_VALUES[scale.name]:
    overrides = per_device_overrides(scale, b)
    trained.append(runs.make_run(f'imagenet_evalnorm_b{b}', scale, DEVICES,
                                 config=config, **overrides))
    trained.append(runs.with_renorm_ramp(runs.make_run(
        f'imagenet_renorm_b{b}', scale, DEVICES, config=config, norm='renorm',
        **overrides), scale))
    trained.append(runs.make_run(f'imagenet_groupnorm_b{b}', scale, DEVICES,
                                 config=config, norm='groupnorm', **overrides))
    offline.append(runs.make_run(
        f'imagenet_offline_b{b}', scale, DEVICES,
        checkpoint=f'imagenet_evalnorm_b{b}', config=config, **overrides))
  return trained, offline


def planned_runs(context: runs.Context) -> list[runs.Run]:
  trained, offline = table_runs(context.scale)
  return trained + offline


def rows_by_method(scale: runs.Scale, results: dict,
                   metric=runs.top1) -> dict[str, list[float]]:
  """{row: one value per B}; ``metric`` is runs.top1 or runs.top5."""
  bs = B_VALUES[scale.name]
  en = [results[f'imagenet_evalnorm_b{b}'] for b in bs]
  return {
      'EMA': [metric(r, 'ema') for r in en],
      'EvalNorm (online)': [metric(r, 'evalnorm') for r in en],
      '1/B^2': [metric(r, 'rule_of_thumb') for r in en],
      'EvalNorm offline': [metric(results[f'imagenet_offline_b{b}'], 'evalnorm')
                           for b in bs],
      'GroupNorm': [metric(results[f'imagenet_groupnorm_b{b}'], 'groupnorm')
                    for b in bs],
      'Batch Renorm': [metric(results[f'imagenet_renorm_b{b}'], 'ema')
                       for b in bs],
  }


def full_scale_commands() -> str:
  trained, offline = table_runs(runs.SCALES['full'])
  root = '/tmp/evalnorm_table1'
  lines = [' '.join(['python'] + runs.command(r, root)[1:]) for r in trained + offline]
  return ('Full scale (ImageNet prepared in tfds, 8 accelerators; offline '
          'runs after their training run):\n\n```\n' + '\n'.join(lines)
          + '\n```\n')


def metric_table(scale: runs.Scale, results: dict, metric, label: str) -> str:
  """One markdown table of every row over B, the paper's B=2 value beside."""
  table = rows_by_method(scale, results, metric)
  paper = PAPER_B2 if metric is runs.top1 else {}
  rows = [[name] + [f'{v:.2f}' for v in values]
          + [f'{paper[name]:.2f}' if name in paper else '']
          for name, values in table.items()]
  return runs.markdown_table(
      [label] + [f'B={b}' for b in B_VALUES[scale.name]] + ['paper, B=2'],
      rows)


def report(context: runs.Context, results: dict) -> dict[str, list[float]]:
  """Writes the Prec@1 and Recall@5 tables; returns the Prec@1 rows."""
  scale = context.scale
  bs = B_VALUES[scale.name]
  table = rows_by_method(scale, results)
  steps = {b: results[f'imagenet_evalnorm_b{b}']['step'] for b in bs}
  devices = 'accelerators' if scale.name == 'full' else 'fake CPU devices'
  runs.write_markdown(
      context.output(f'{NAME}.md'),
      'Table 1: ImageNet rows, per-device B on 8 devices',
      runs.scale_note(context),
      f'{DEVICES} {devices}, per-device batch B, SGD batch {DEVICES}B; every '
      'row has one run per B column (that column\'s batch, learning rate and '
      'steps); steps per B: '
      + ', '.join(f'B={b}: {s}' for b, s in steps.items())
      + '. The last column is the paper\'s ImageNet ResNet-50 figure at B=2 '
      '(below full scale a different dataset and model: compare the gaps, '
      'not the levels).\n',
      '## Prec@1 (top-1, %)\n',
      metric_table(scale, results, runs.top1, 'Prec@1 (%)'),
      '## Recall@5 (top-5, %)\n',
      metric_table(scale, results, runs.top5, 'Recall@5 (%)'),
      f'![table 1]({NAME}.png)\n', full_scale_commands())
  runs.plot_against_b(
      context.output(f'{NAME}.png'), bs, table, 'Prec@1 (%)',
      f'Table 1 rows ({context.scale.name} scale)',
      xlabel=f'per-device batch B ({DEVICES} devices)',
      highlight='EvalNorm (online)')
  return table


def main(argv=None):
  args = runs.argument_parser(__doc__).parse_args(argv)
  context = runs.context_from_args(args)
  trained, offline = table_runs(context.scale)
  results = context.execute(trained)
  results.update(context.execute(offline))
  return report(context, results)


if __name__ == '__main__':
  main()
