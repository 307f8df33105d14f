r"""Table 1: the ImageNet table's rows over B, in the paper's per-device setup.

    python -m experiments.table1_imagenet [--scale small|full|smoke] [--jobs 2]

The paper trains ResNet-50 v2 on 8 workers with B examples each (SGD batch 8B,
learning rate scaled with it, BN statistics never cross devices). Here the
same setup runs as 8 fake CPU devices (``--xla_force_host_platform_device_count=8``,
one pmap replica each, per-device batch B, one normalization group per
device). Small scale: built-in noisy digits and the digits ResNet, every B
seeing the same number of examples (`EXAMPLES`), learning rate 0.1 x 8B/128.
Rows:

  EMA, EvalNorm (online), 1/B^2   modes of one EvalNorm run per B;
  EvalNorm offline                ``evalnorm.estimate`` on that run's checkpoint;
  Batch Renorm                    one run per B;
  GroupNorm                       one run (batch-independent; the B=16 setting).

Full scale: ``configs/imagenet.py:norm_batch_size=B`` (prepared ImageNet and 8
accelerators); the commands are written to table1_imagenet.md either way.

Paper (ResNet-50, B=2): Prec@1 64.80 with EMA, 70.98 with EvalNorm.
"""

from experiments import runs

NAME = 'table1_imagenet'
DEVICES = 8
B_VALUES = {'smoke': (2,), 'small': (2, 4, 8, 16, 32), 'full': (2, 4, 8, 16, 32)}
GROUPNORM_B = {'smoke': 2, 'small': 16, 'full': 16}
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
                     learning_rate=0.1 * batch / 128,
                     renorm_warmup_steps=max(1, int(
                         steps * scale.renorm_warmup_fraction)))
  return overrides


def table_runs(scale: runs.Scale) -> tuple[list[runs.Run], list[runs.Run]]:
  """(training runs, offline estimation runs that read their checkpoints)."""
  config = scale.imagenet_config
  trained, offline = [], []
  for b in B_VALUES[scale.name]:
    overrides = per_device_overrides(scale, b)
    trained.append(runs.make_run(f'imagenet_evalnorm_b{b}', scale, DEVICES,
                                 config=config, **overrides))
    trained.append(runs.make_run(f'imagenet_renorm_b{b}', scale, DEVICES,
                                 config=config, norm='renorm', **overrides))
    offline.append(runs.make_run(
        f'imagenet_offline_b{b}', scale, DEVICES,
        checkpoint=f'imagenet_evalnorm_b{b}', config=config,
        **{k: v for k, v in overrides.items() if k != 'renorm_warmup_steps'}))
  trained.append(runs.make_run(
      'imagenet_groupnorm', scale, DEVICES, config=config, norm='groupnorm',
      **per_device_overrides(scale, GROUPNORM_B[scale.name])))
  return trained, offline


def rows_by_method(scale: runs.Scale, results: dict) -> dict[str, list[float]]:
  bs = B_VALUES[scale.name]
  en = [results[f'imagenet_evalnorm_b{b}'] for b in bs]
  groupnorm = runs.top1(results['imagenet_groupnorm'], 'groupnorm')
  return {
      'EMA': [runs.top1(r, 'ema') for r in en],
      'EvalNorm (online)': [runs.top1(r, 'evalnorm') for r in en],
      '1/B^2': [runs.top1(r, 'rule_of_thumb') for r in en],
      'EvalNorm offline': [runs.top1(results[f'imagenet_offline_b{b}'], 'evalnorm')
                           for b in bs],
      'GroupNorm': [groupnorm] * len(bs),
      'Batch Renorm': [runs.top1(results[f'imagenet_renorm_b{b}'], 'ema')
                       for b in bs],
  }


def full_scale_commands() -> str:
  trained, offline = table_runs(runs.SCALES['full'])
  root = '/tmp/evalnorm_table1'
  lines = [' '.join(['python'] + runs.command(r, root)[1:]) for r in trained + offline]
  return ('Full scale (ImageNet prepared in tfds, 8 accelerators; offline '
          'runs after their training run):\n\n```\n' + '\n'.join(lines)
          + '\n```\n')


def report(context: runs.Context, results: dict) -> dict[str, list[float]]:
  scale = context.scale
  bs = B_VALUES[scale.name]
  table = rows_by_method(scale, results)
  rows = [[name] + [f'{v:.2f}' for v in values]
          + [f'{PAPER_B2[name]:.2f}' if name in PAPER_B2 else '']
          for name, values in table.items()]
  steps = {b: results[f'imagenet_evalnorm_b{b}']['step'] for b in bs}
  runs.write_markdown(
      context.output(f'{NAME}.md'),
      'Table 1: ImageNet rows, per-device B on 8 devices',
      runs.scale_note(context),
      f'Top-1 (%). {DEVICES} fake CPU devices, per-device batch B, SGD batch '
      f'{DEVICES}B; steps per B: '
      + ', '.join(f'B={b}: {s}' for b, s in steps.items())
      + f'. GroupNorm is one run (the B={GROUPNORM_B[scale.name]} setting), '
      'repeated across the row. The last column is the paper\'s ImageNet '
      'ResNet-50 figure at B=2 (a different dataset and model: compare the '
      'gaps, not the levels).\n',
      runs.markdown_table(['top-1 (%)'] + [f'B={b}' for b in bs]
                          + ['paper, B=2'], rows),
      f'![table 1]({NAME}.png)\n', full_scale_commands())
  runs.plot_against_b(
      context.output(f'{NAME}.png'), bs, table, 'top-1 (%)',
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
