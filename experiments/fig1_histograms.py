r"""Fig. 1: one layer's normalized activations under three kinds of statistics.

    python -m experiments.fig1_histograms [--scale small|full|smoke] [--layer stage2_block0/norm2]

For the models trained at the largest and the smallest B of the sweep (the
Fig. 2 runs, trained first if missing), the same evaluation examples go
through the network three ways, and the chosen norm layer's output (before
its ReLU) is collected:

  training statistics  groups of B, as in training (what the next layer learned);
  EMA statistics       plain BatchNorm evaluation;
  EvalNorm statistics  the estimated blend.

Writes fig1_histograms.{md,png}: the histograms, and per mode the mean and
standard deviation of the activations and their mean absolute distance to the
training-statistics activations (the auxiliary loss's measure, after the
layer's scale and bias).

Paper (Fig. 1, ResNet-20 on CIFAR-100, the full scale's test-bed): at B=2
the EMA-normalized activations are shifted and narrower than the training
ones; EvalNorm's match them; at large B all three agree.
"""

import sys

import jax
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from evalnorm.variables import set_alpha_beta  # noqa: E402
from experiments import (command_line, fig2_error_vs_b, result_files,
                         run_configs, runner, scales)  # noqa: E402

NAME = 'fig1_histograms'
DEFAULT_LAYER = 'stage2_block0/norm2'
FLAGS = {'--layer': dict(default=DEFAULT_LAYER, help='norm layer path in the '
                         'model (module names)')}
MODES = ('training statistics', 'EMA statistics', 'EvalNorm statistics')


def layer_outputs(run: runner.Run, workdir_root: str, layer: str,
                  num_examples: int = 256) -> dict[str, np.ndarray]:
  """The layer's outputs for the first eval examples, per statistics mode."""
  config, dataset, model, variables = run_configs.load_trained(run,
                                                               workdir_root)
  batch = next(iter(dataset.eval_batches()))
  count = min(num_examples, len(batch['image']))
  count -= count % config.norm_batch_size
  images = np.asarray(batch['image'][:count])
  path = tuple(layer.split('/'))

  def capture(variables, train):
    # batch_stats is mutable so that a training pass may compute its EMA
    # update; the update is dropped, the variables stay as trained.
    _, state = model.apply(
        variables, images, train=train, mutable=['intermediates', 'batch_stats'],
        capture_intermediates=lambda mdl, _: mdl.scope.path == path)
    node = state['intermediates']
    for name in path:
      node = node[name]
    return node['__call__'][0]
  capture = jax.jit(capture, static_argnums=1)
  ema = {**variables, 'evalnorm': set_alpha_beta(variables['evalnorm'], 0.0)}
  return {
      # Training mode: each group of B normalized by its own statistics.
      'training statistics': np.asarray(capture(variables, True)),
      'EMA statistics': np.asarray(capture(ema, False)),
      'EvalNorm statistics': np.asarray(capture(variables, False)),
  }


def summary_rows(b: int, outputs: dict[str, np.ndarray]) -> list[list[str]]:
  reference = outputs['training statistics']
  return [[f'B={b}', mode, f'{values.mean():+.3f}', f'{values.std():.3f}',
           f'{np.abs(values - reference).mean():.3f}']
          for mode, values in outputs.items()]


# The headlines' names of the modes whose distance to training they give.
DISTANCE_KEYS = {'EMA statistics': 'ema', 'EvalNorm statistics': 'evalnorm'}


def distances(outputs: dict[int, dict[str, np.ndarray]]) -> dict:
  """Per trained B, each mode's mean absolute distance to the training
  activations, at the table's 3 decimals (as ``headlines`` reads them back)."""
  return {'distance': {str(b): {
      key: float(f"{np.abs(out[mode] - out['training statistics']).mean():.3f}")
      for mode, key in DISTANCE_KEYS.items()} for b, out in outputs.items()}}


def headlines(context: command_line.Context, results: dict) -> dict:
  """``distances`` as the committed table gives them: they come from the
  checkpoints, which a rebuild from runs.json does not have."""
  del results  # not in eval.json
  found = {}
  with open(context.output(f'{NAME}.md')) as f:
    for line in f:
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if cells[0].startswith('B=') and cells[1] in DISTANCE_KEYS:
        found.setdefault(cells[0][2:], {})[DISTANCE_KEYS[cells[1]]] = float(
            cells[-1])
  return {'distance': found}


def write_report(context: command_line.Context, layer: str,
                 outputs: dict[int, dict]) -> None:
  rows = [row for b, out in outputs.items() for row in summary_rows(b, out)]
  table = result_files.markdown_table(
      ['trained at', 'statistics', 'mean', 'std', 'mean abs. distance to training'],
      rows)
  result_files.write_markdown(
      context.output(f'{NAME}.md'),
      f'Fig. 1: activations of `{layer}` under three kinds of statistics',
      result_files.scale_note(context),
      'Layer output (after scale and bias, before the ReLU) for the same '
      'evaluation examples, from the Fig. 2 models trained at the largest and '
      'smallest B. Top row: the histograms; bottom row: each element\'s '
      'difference to its training-statistics value.\n', table, f'![histograms]({NAME}.png)\n')
  figure, axes = plt.subplots(2, len(outputs), figsize=(5 * len(outputs), 6.4),
                              squeeze=False)
  for column, (b, out) in enumerate(outputs.items()):
    reference = out['training statistics']
    low, high = np.percentile(reference, [0.5, 99.5])
    bins = np.linspace(low - 0.5, high + 0.5, 80)
    for mode, style in zip(MODES, ('-', '--', ':')):
      axes[0, column].hist(out[mode].ravel(), bins=bins, histtype='step',
                           density=True, linestyle=style, linewidth=1.6,
                           label=mode)
    axes[0, column].set_title(f'trained and evaluated with B={b}')
    axes[0, column].set_xlabel(f'{layer} output')
    axes[0, column].legend(fontsize=8)
    # The marginals can agree while each example is moved: the per-element
    # difference to what training produced shows it.
    diff_bins = np.linspace(-1.5, 1.5, 81)
    for mode, style in zip(MODES[1:], ('--', ':')):
      axes[1, column].hist((out[mode] - reference).ravel(), bins=diff_bins,
                           histtype='step', density=True, linestyle=style,
                           linewidth=1.6, label=f'{mode} - training')
    axes[1, column].set_xlabel('difference to the training-statistics output')
    axes[1, column].legend(fontsize=8)
  result_files.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)


def trained_runs(scale: scales.Scale) -> dict[int, runner.Run]:
  """The Fig. 2 runs at the largest and the smallest B."""
  chosen = sorted({max(scale.b_values), min(scale.b_values)}, reverse=True)
  return {b: fig2_error_vs_b.evalnorm_run(scale, b) for b in chosen}


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return list(trained_runs(context.scale).values())


def report(context: command_line.Context, results: dict) -> dict:
  """Captures the layer in each trained run and writes the figure."""
  del results  # the runs' checkpoints are read, not their eval.json
  layer = context.options.get('layer', DEFAULT_LAYER)
  outputs = {b: layer_outputs(run, context.workdir_root, layer)
             for b, run in trained_runs(context.scale).items()}
  write_report(context, layer, outputs)
  return distances(outputs)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
