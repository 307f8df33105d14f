r"""Fig. 3: the estimated alpha and beta of every norm layer, for each B.

    python -m experiments.fig3_alpha_beta [--scale small|full|smoke]

Reads the online estimates of the Fig. 2 EvalNorm runs on the test-bed
(full scale: CIFAR-100, as the paper's Fig. 3; trained first if missing) and writes fig3_alpha_beta.{md,png}: grouped bars, one group per
layer (in network order), one bar per B, and the table with the rule of thumb
1/B^2 beside each B.

Paper: alpha and beta are largest at small B and fall towards 0 as B grows;
they differ between layers (no single constant fits every layer), and they are
well above 1/B^2 at B=2.
"""

import sys

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import (command_line, fig2_error_vs_b, result_files, runner)  # noqa: E402

NAME = 'fig3_alpha_beta'


def network_order(layers) -> list[str]:
  """stem-to-head order: stage/block names sort correctly, final_norm last."""
  return sorted(layers, key=lambda name: (name == 'final_norm', name))


def estimates(scale, results: dict) -> tuple[list[str], dict[str, np.ndarray]]:
  """(layers in network order, {'alpha'|'beta': [B, layer] array}) of the
  Fig. 2 EvalNorm runs (per-channel estimates averaged over channels)."""
  by_b = {b: results[fig2_error_vs_b.evalnorm_run(scale, b).name]['alpha_beta']
          for b in scale.b_values}
  layers = network_order(by_b[scale.b_values[0]])
  return layers, {p: np.array([[float(np.mean(by_b[b][layer][p]))
                                for layer in layers] for b in scale.b_values])
                  for p in ('alpha', 'beta')}


def headlines(context: command_line.Context, results: dict) -> dict:
  """Per B: the mean alpha and beta over layers, and each layer's alpha."""
  layers, values = estimates(context.scale, results)
  bs = [str(b) for b in context.scale.b_values]
  return {f'mean_{p}': dict(zip(bs, values[p].mean(axis=1).tolist()))
          for p in values} | {'layer_alpha': {
              b: dict(zip(layers, row.tolist()))
              for b, row in zip(bs, values['alpha'])}}


def report(context: command_line.Context, results: dict) -> dict:
  bs = context.scale.b_values
  layers, values = estimates(context.scale, results)
  rows = []
  for i, b in enumerate(bs):
    rows.append([f'B={b}', f'{1 / b**2:.4f}',
                 f'{values["alpha"][i].mean():.3f}', f'{values["beta"][i].mean():.3f}']
                + [f'{values["alpha"][i, j]:.2f} / {values["beta"][i, j]:.2f}'
                   for j in range(len(layers))])
  table = result_files.markdown_table(
      ['B', '1/B^2', 'mean alpha', 'mean beta'] + [f'`{l}` a / b' for l in layers],
      rows)
  result_files.write_markdown(
      context.output(f'{NAME}.md'), 'Fig. 3: estimated alpha and beta per layer',
      result_files.scale_note(context),
      'Online estimates at the end of training (seed 0), per layer in network '
      'order. Per-channel estimates, if any, are averaged over channels.\n',
      table, f'![alpha and beta per layer]({NAME}.png)\n')
  figure, axes = plt.subplots(2, 1, figsize=(max(6, len(layers) * 0.9), 6),
                              sharex=True)
  width = 0.8 / len(bs)
  positions = np.arange(len(layers))
  for ax, p in zip(axes, ('alpha', 'beta')):
    for i, b in enumerate(bs):
      ax.bar(positions + (i - (len(bs) - 1) / 2) * width, values[p][i], width,
             label=f'B={b}')
    ax.set_ylabel(f'estimated {p}')
    ax.grid(axis='y', alpha=0.3)
  axes[0].legend(ncol=min(len(bs), 7), fontsize=7)
  axes[1].set_xticks(positions, layers, rotation=30, ha='right', fontsize=8)
  axes[0].set_title(f'Estimated alpha/beta per layer ({context.scale.name} scale)')
  result_files.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)
  return headlines(context, results)


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return fig2_error_vs_b.evalnorm_sweep(context.scale)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
