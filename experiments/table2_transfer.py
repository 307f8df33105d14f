r"""Table 2, as a transfer-learning analog: four initializations, EMA against EvalNorm.

    python -m experiments.table2_transfer [--scale small|full|smoke] [--jobs 2]

This is an analog of the paper's COCO Faster R-CNN table, not that
experiment: there is no detector or COCO here. What carries over is the
question: when a network is fine-tuned with small normalization batches, does
EvalNorm's gain over EMA evaluation depend on how the network was initialized?

A source model is pre-trained at B=128 (small scale: plain 8x8 ``digits``;
full: CIFAR-100), then fine-tuned on the target (``noisy_digits``; full:
CIFAR-10) at B = 2, 4, 8 with online estimation, starting from:

  (a) random init            no pre-training;
  (b) pre-trained, BN reset  weights loaded, every norm layer's scale, bias and
                             moving averages freshly initialized;
  (c) pre-trained, BN frozen weights and BN loaded; the moving averages are
                             not updated in fine-tuning (groups still normalize
                             by their own statistics, and alpha/beta are still
                             estimated against the frozen averages);
  (d) pre-trained, all tuned weights and BN loaded, everything fine-tuned.

The classifier head is always new. Writes table2_transfer.{md,png}.

Paper (COCO): EvalNorm improves AP over EMA in every initialization paradigm,
by +1.5 to +7.0 AP, most where BN statistics are trained from small batches.
"""

import os

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import runs  # noqa: E402

NAME = 'table2_transfer'
PRETRAIN_B = {'smoke': 2, 'small': 128, 'full': 128}  # smoke: batch 16
B_VALUES = {'smoke': (2,), 'small': (2, 4, 8), 'full': (2, 4, 8)}
# (source dataset, target dataset) per scale.
DATASETS = {'smoke': ('digits', 'digits'), 'small': ('digits', 'noisy_digits'),
            'full': ('cifar100', 'cifar10')}
PARADIGMS = {
    '(a) random init': {},
    '(b) pre-trained, BN reset': dict(init_norm='reset'),
    '(c) pre-trained, BN statistics frozen': dict(init_norm='pretrained',
                                                  freeze_batch_stats=True),
    '(d) pre-trained, everything fine-tuned': dict(init_norm='pretrained'),
}


def fine_tune_steps(scale: runs.Scale) -> int:
  steps = scale.overrides.get('num_train_steps', 64_000)
  return max(1, steps // 2)


def pretrain_run(scale: runs.Scale) -> runs.Run:
  source = DATASETS[scale.name][0]
  return runs.make_run(f'transfer_pretrain_{source}', scale, dataset=source,
                       norm_batch_size=PRETRAIN_B[scale.name])


def fine_tune_runs(scale: runs.Scale, pretrain_dir: str) -> dict:
  """(paradigm, B) -> run."""
  target = DATASETS[scale.name][1]
  steps = fine_tune_steps(scale)
  result = {}
  for index, (paradigm, overrides) in enumerate(PARADIGMS.items()):
    for b in B_VALUES[scale.name]:
      init = dict(init_from=pretrain_dir) if overrides else {}
      result[(paradigm, b)] = runs.make_run(
          f'transfer_{"abcd"[index]}_b{b}', scale, dataset=target,
          norm_batch_size=b, num_train_steps=steps,
          checkpoint_every_steps=steps, eval_every_steps=steps,
          **init, **overrides)
  return result


def planned_runs(context: runs.Context) -> list[runs.Run]:
  pretrain = pretrain_run(context.scale)
  grid = fine_tune_runs(context.scale,
                        os.path.join(context.workdir_root, pretrain.name))
  return [pretrain] + list(grid.values())


def report(context: runs.Context, grid: dict, results: dict) -> dict:
  bs = B_VALUES[context.scale.name]
  rows, values = [], {}
  for paradigm in PARADIGMS:
    cells = []
    for b in bs:
      result = results[grid[(paradigm, b)].name]
      ema, en = runs.top1(result, 'ema'), runs.top1(result, 'evalnorm')
      values[(paradigm, b)] = (ema, en)
      cells.append(f'{ema:.2f} / {en:.2f} ({en - ema:+.2f})')
    rows.append([paradigm] + cells)
  source, target = DATASETS[context.scale.name]
  pretrain = results[pretrain_run(context.scale).name]
  runs.write_markdown(
      context.output(f'{NAME}.md'),
      'Table 2 analog: initialization paradigms, EMA against EvalNorm',
      runs.scale_note(context),
      f'**An analog, not the paper\'s COCO detection experiment.** Source '
      f'`{source}` pre-trained at B={PRETRAIN_B[context.scale.name]} (EMA top-1 '
      f'{runs.top1(pretrain, "ema"):.2f}), fine-tuned on `{target}` for '
      f'{fine_tune_steps(context.scale)} steps; top-1 (%) as EMA / EvalNorm '
      '(gain), one seed.\n',
      runs.markdown_table(['initialization'] + [f'B={b}' for b in bs], rows),
      f'![initialization paradigms]({NAME}.png)\n')
  figure, axes = plt.subplots(1, len(bs), figsize=(4.2 * len(bs), 3.8),
                              squeeze=False, sharey=True)
  positions = np.arange(len(PARADIGMS))
  for ax, b in zip(axes[0], bs):
    ax.bar(positions - 0.2, [values[(p, b)][0] for p in PARADIGMS], 0.4,
           label='EMA')
    ax.bar(positions + 0.2, [values[(p, b)][1] for p in PARADIGMS], 0.4,
           label='EvalNorm')
    ax.set_xticks(positions, [p[:3] for p in PARADIGMS])
    ax.set_title(f'fine-tuned at B={b}')
    ax.set_ylabel('top-1 (%)')
  axes[0][0].legend()
  runs.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)
  return values


def main(argv=None):
  args = runs.argument_parser(__doc__).parse_args(argv)
  context = runs.context_from_args(args)
  pretrain = pretrain_run(context.scale)
  results = context.execute([pretrain])
  grid = fine_tune_runs(context.scale,
                        os.path.join(context.workdir_root, pretrain.name))
  results.update(context.execute(list(grid.values())))
  return report(context, grid, results)


if __name__ == '__main__':
  main()
