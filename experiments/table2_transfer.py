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

import sys

from experiments import command_line, result_files, runner, scales

NAME = 'table2_transfer'
PARADIGMS = {
    '(a) random init': {},
    '(b) pre-trained, BN reset': dict(init_norm='reset'),
    '(c) pre-trained, BN statistics frozen': dict(init_norm='pretrained',
                                                  freeze_batch_stats=True),
    '(d) pre-trained, everything fine-tuned': dict(init_norm='pretrained'),
}


def fine_tune_steps(scale: scales.Scale) -> int:
  steps = scale.overrides.get('num_train_steps', 64_000)
  return max(1, steps // 2)


def pretrain_run(scale: scales.Scale) -> runner.Run:
  source = scale.transfer_datasets[0]
  return runner.make_run(f'transfer_pretrain_{source}', scale, dataset=source,
                         norm_batch_size=scale.transfer_pretrain_b)


def fine_tune_runs(scale: scales.Scale, pretrain_dir: str) -> dict:
  """(paradigm, B) -> run."""
  target = scale.transfer_datasets[1]
  steps = fine_tune_steps(scale)
  result = {}
  for index, (paradigm, overrides) in enumerate(PARADIGMS.items()):
    for b in scale.transfer_b_values:
      init = dict(init_from=pretrain_dir) if overrides else {}
      result[(paradigm, b)] = runner.make_run(
          f'transfer_{"abcd"[index]}_b{b}', scale, dataset=target,
          norm_batch_size=b, num_train_steps=steps,
          checkpoint_every_steps=steps, eval_every_steps=steps,
          **init, **overrides)
  return result


def grid_of(context: command_line.Context) -> dict:
  return fine_tune_runs(context.scale, context.workdir(pretrain_run(context.scale)))


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return [pretrain_run(context.scale)] + list(grid_of(context).values())


def top1(context: command_line.Context, results: dict
         ) -> dict[tuple[str, int], tuple[float, float]]:
  """(paradigm, B) -> (EMA's top-1, EvalNorm's)."""
  grid = grid_of(context)
  return {key: tuple(runner.top1(results[run.name], mode)
                     for mode in ('ema', 'evalnorm'))
          for key, run in grid.items()}


def headlines(context: command_line.Context, results: dict) -> dict:
  """Per initialization and B: EMA's and EvalNorm's top-1 and EvalNorm's
  gain; the source model's top-1."""
  numbers = {'top1': {}, 'gain': {}}
  for (paradigm, b), (ema, en) in top1(context, results).items():
    numbers['top1'].setdefault(paradigm, {})[str(b)] = {
        'ema': ema, 'evalnorm': en}
    numbers['gain'].setdefault(paradigm, {})[str(b)] = en - ema
  pretrain = results[pretrain_run(context.scale).name]
  return numbers | {'pretrain_top1': runner.top1(pretrain, 'ema')}


def report(context: command_line.Context, results: dict) -> dict:
  bs = context.scale.transfer_b_values
  values = top1(context, results)
  rows = [[paradigm] + [f'{ema:.2f} / {en:.2f} ({en - ema:+.2f})'
                        for ema, en in (values[(paradigm, b)] for b in bs)]
          for paradigm in PARADIGMS]
  source, target = context.scale.transfer_datasets
  pretrain = results[pretrain_run(context.scale).name]
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      'Table 2 analog: initialization paradigms, EMA against EvalNorm',
      result_files.scale_note(context),
      f'**An analog, not the paper\'s COCO detection experiment.** Source '
      f'`{source}` pre-trained at B={context.scale.transfer_pretrain_b} '
      f'(EMA top-1 {runner.top1(pretrain, "ema"):.2f}), fine-tuned on '
      f'`{target}` for {fine_tune_steps(context.scale)} steps; top-1 (%) as '
      'EMA / EvalNorm '
      '(gain), one seed.\n',
      result_files.markdown_table(
          ['initialization'] + [f'B={b}' for b in bs], rows),
      f'![initialization paradigms]({NAME}.png)\n')
  result_files.plot_ema_against_evalnorm(
      context.output(f'{NAME}.png'),
      {f'fine-tuned at B={b}': {p[:3]: values[(p, b)] for p in PARADIGMS}
       for b in bs}, 'top-1 (%)', panel_width=4.2, height=3.8, sharey=True)
  return headlines(context, results)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
