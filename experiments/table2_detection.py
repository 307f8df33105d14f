r"""Table 2: Faster R-CNN in four training paradigms, EMA against EvalNorm, COCO AP.

    python -m experiments.table2_detection [--scale small|full|smoke] [--jobs 2]

The detector (``configs/detection.py``) is trained with N images per SGD
step, N = 2, 4, 8, each step one normalization group (B = N, as in the
paper: no gradient averaging across groups), the learning rate proportional
to N and the number of steps to 1/N (the same number of images for every N),
starting from:

  (a) random init            no pre-training;
  (b) pre-trained, BN reset  classifier weights loaded, every norm layer's
                             scale, bias and moving averages fresh;
  (c) pre-trained, BN statistics frozen
                             weights and BN loaded, the moving averages not
                             updated (groups still normalize by their own
                             statistics; scale and bias are trained): the
                             paper's text (``freeze_batch_stats=True``);
  (c') pre-trained, frozen BN
                             weights and BN loaded, every norm layer
                             normalizes with its loaded moving averages in
                             training and evaluation alike, its scale and
                             bias not trained: detection codebases' frozen BN
                             (``frozen_bn=True``);
  (d) pre-trained, all tuned weights and BN loaded, everything fine-tuned.

The "ImageNet model" is a classifier pre-trained at B=128: at the small scale
the ResNet-8 v2 of ``configs/digits.py`` on ``digit_crops`` (the digits of
the scenes, rendered by the scenes' own code, one per cell-sized crop), whose
layers are the small detector's (``evalnorm.detection.pretrained_backbone``);
``--scale full`` is the COCO config with ResNet-50 v2 from
``configs/imagenet.py``. N=2 is run with three seeds. Writes
table2_detection.{md,png}: AP, AP50, AP75 of EMA, EvalNorm (online estimate)
and the rule of thumb 1/B^2.
"""

import functools
import sys

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import (command_line, result_files, runner, scales,
                         table1_imagenet)  # noqa: E402
from experiments.seeds import stats as over_seeds  # noqa: E402

NAME = 'table2_detection'
MODES = ('ema', 'evalnorm', 'rule_of_thumb')
PRETRAIN_DATASET = 'digit_crops'
FROZEN_STATISTICS = '(c) pre-trained, BN statistics frozen'
FROZEN_BN = "(c') pre-trained, frozen BN"
# Paradigm -> (its runs' name tag, its overrides); (c) both ways.
PARADIGMS = {
    '(a) random init': ('a', {}),
    '(b) pre-trained, BN reset': ('b', dict(init_norm='reset')),
    FROZEN_STATISTICS: ('c', dict(init_norm='pretrained',
                                  freeze_batch_stats=True)),
    FROZEN_BN: ('c_frozen_bn', dict(init_norm='pretrained',
                                    frozen_bn=True)),
    '(d) pre-trained, everything fine-tuned': ('d',
                                               dict(init_norm='pretrained')),
}


def pretrain_run(scale: scales.Scale) -> runner.Run:
  """The classifier whose weights paradigms (b)-(d) start from."""
  steps = scale.detection.pretrain_steps
  if steps is None:  # Table 1's ImageNet model at its largest B (8 devices x 32).
    return table1_imagenet.column_runs(scale, max(scale.table1_b_values))[
        'evalnorm']
  return runner.make_run(
      f'detection_pretrain_{PRETRAIN_DATASET}', scale,
      config='configs/digits.py', dataset=PRETRAIN_DATASET,
      norm_batch_size=128, batch_size=128,
      num_train_steps=steps, checkpoint_every_steps=steps,
      eval_every_steps=steps)


def detection_runs(scale: scales.Scale, pretrain_dir: str) -> dict:
  """(paradigm, N, seed) -> run."""
  grid = scale.detection
  result = {}
  for paradigm, (tag, overrides) in PARADIGMS.items():
    init = dict(init_from=pretrain_dir) if overrides else {}
    for n in grid.n_values:
      steps = max(1, grid.images // n)
      for seed in grid.seeds if n == 2 else grid.seeds[:1]:
        result[(paradigm, n, seed)] = runner.make_run(
            f'detection_{tag}_n{n}_seed{seed}', scale,
            config=grid.config, batch_size=n,
            norm_batch_size=n, seed=seed, num_train_steps=steps,
            learning_rate=grid.learning_rate_per_image * n,
            checkpoint_every_steps=steps, **grid.overrides, **init, **overrides)
  return result


def grid_of(context: command_line.Context) -> dict:
  return detection_runs(context.scale, context.workdir(pretrain_run(context.scale)))


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return [pretrain_run(context.scale)] + list(grid_of(context).values())


def mean_std(values: dict, sign: str = '') -> str:
  """A ``seeds.stats`` record as the tables print it: '47.2 ± 1.8' (or the
  one value)."""
  spread = '' if values['std'] is None else f" ± {values['std']:.1f}"
  return f"{values['mean']:{sign}.1f}{spread}"


def summary_table(numbers: dict) -> str:
  """docs/detection.md's table (``numbers``: the headlines): AP at N=2 over
  its seeds, the gains at the other N, the mean alpha."""
  later = list(next(iter(numbers['gain'].values())))[1:]
  rows = [[p, *(mean_std(at['2']['AP'][m]) for m in MODES),
           mean_std(at['2']['gain'], '+'),
           *(result_files.signed(numbers['gain'][p][n]) for n in later),
           *(f'{a:.2f}' for a in numbers['mean_alpha'][p].values())]
          for p, at in numbers['by_paradigm'].items()]
  return result_files.markdown_table(
      ('paradigm', 'EMA AP, N=2', 'EvalNorm AP', '1/B^2 AP', 'gain',
       *(f'gain, N={n}' for n in later), 'mean alpha: base', 'RCN'), rows)


def _stats(results, grid, paradigm, n, seeds, value) -> dict:
  """``value(eval.json's 'eval')`` over the seeds of (paradigm, N)."""
  return over_seeds([value(results[grid[(paradigm, n, s)].name]['eval'])
                     for s in seeds])


def _gain(evaluation: dict) -> float:
  """EvalNorm's AP minus EMA's."""
  return evaluation['evalnorm']['AP'] - evaluation['ema']['AP']


def mean_alpha(result: dict) -> dict[str, float]:
  """Mean estimated alpha of the base network's norm layers and the RCN's."""
  layers = result['alpha_beta']
  return {part: float(np.mean([np.mean(v['alpha']) for k, v in layers.items()
                               if k.startswith(prefix)]))
          for part, prefix in (('base', 'backbone/'), ('rcn', 'rcn/'))}


def run_seeds(scale: scales.Scale, n: int) -> tuple[int, ...]:
  """N=2 runs with every seed, the other N with the first."""
  seeds = scale.detection.seeds
  return seeds if n == 2 else seeds[:1]


def pretrain_top1(context: command_line.Context, results: dict) -> float:
  """The "ImageNet model"'s EMA top-1 on its own eval set."""
  return runner.top1(results[pretrain_run(context.scale).name], 'ema')


def headlines(context: command_line.Context, results: dict) -> dict:
  """Per paradigm and N, over its seeds: the AP of each mode and EvalNorm's
  gain over EMA, and the gain's mean alone; per paradigm, the mean alpha at
  N=2 (first seed); the pre-trained classifier's top-1."""
  grid = grid_of(context)
  by_paradigm, alpha = {}, {}
  for paradigm in PARADIGMS:
    for n in context.scale.detection.n_values:
      stats = functools.partial(_stats, results, grid, paradigm, n,
                                run_seeds(context.scale, n))
      by_paradigm.setdefault(paradigm, {})[str(n)] = {
          'AP': {m: stats(lambda e, m=m: e[m]['AP']) for m in MODES},
          'gain': stats(_gain)}
    first = grid[(paradigm, 2, context.scale.detection.seeds[0])]
    alpha[paradigm] = mean_alpha(results[first.name])
  return {'by_paradigm': by_paradigm, 'mean_alpha': alpha, 'gain': {
      p: {n: at['gain']['mean'] for n, at in by_n.items()}
      for p, by_n in by_paradigm.items()},
          'pretrain_top1': pretrain_top1(context, results)}


def report(context: command_line.Context, results: dict) -> dict:
  grid = grid_of(context)
  ns = context.scale.detection.n_values
  rows = []
  for paradigm in PARADIGMS:
    for n in ns:
      seeds = run_seeds(context.scale, n)
      stats = functools.partial(_stats, results, grid, paradigm, n, seeds)
      row = [paradigm, n, len(seeds)]
      for mode in MODES:
        row += [mean_std(stats(lambda e, m=metric: e[mode][m]))
                for metric in ('AP', 'AP50', 'AP75')]
      rows.append(row + [mean_std(stats(_gain), '+')])
  headers = ['paradigm', 'N', 'seeds'] + [f'{m} {metric}' for m in MODES
                                          for metric in ('AP', 'AP50', 'AP75')]
  headers.append('EvalNorm - EMA (AP)')
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      'Table 2: Faster R-CNN, training paradigms, EMA against EvalNorm',
      f'Scale `{context.scale.name}`: `{context.scale.detection.config}`, '
      'N images per batch = normalization batch B of the base network; the '
      'RCN normalizes the ROIs of those N images. COCO AP (%) by pycocotools; '
      'mean ± standard deviation over seeds where there are several.\n',
      f'(b)-(d) start from the classifier `{pretrain_run(context.scale).name}`'
      f' (EMA top-1 {pretrain_top1(context, results):.2f}% on its own eval '
      "set); (c) is the paper's text, frozen moving averages with groups "
      "normalized by their own statistics; (c') is detection's frozen BN, the "
      'moving averages used in training too and scale and bias fixed.\n',
      'Paper (COCO, ResNet-50): EvalNorm over EMA by +1.5 to +7.0 AP across '
      'paradigms and N.\n',
      result_files.markdown_table(headers, rows),
      f'![AP per paradigm]({NAME}.png)\n')
  _plot(context, grid, results, ns)
  return headlines(context, results)


def _plot(context, grid, results, ns) -> None:
  figure, axes = plt.subplots(1, len(PARADIGMS),
                              figsize=(4 * len(PARADIGMS), 3.8), sharey=True,
                              squeeze=False)
  for ax, paradigm in zip(axes[0], PARADIGMS):
    for mode, marker in zip(MODES, 'osd'):
      ax.plot(ns, [results[grid[(paradigm, n, 0)].name]['eval'][mode]['AP']
                   for n in ns], marker=marker, label=mode)
    ax.set_xscale('log', base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_title(paradigm, fontsize=9)
    ax.set_xlabel('images per batch N')
  axes[0][0].set_ylabel('COCO AP (%)')
  axes[0][0].legend(fontsize=8)
  result_files.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
