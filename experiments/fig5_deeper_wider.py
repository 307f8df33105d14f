r"""Fig. 5: deeper and wider models at small B, EMA against EvalNorm.

    python -m experiments.fig5_deeper_wider [--scale small|full|smoke]

Full scale: the paper's grid on CIFAR-100, "deeper (20, 56, 110, and 254
layers) and wider (1, 2, 4, and 8 x)": ResNet v2 depths 20/56/110/254 at
width 1 and widths x2/x4/x8 at depth 20, at B=4 and B=8. Small scale (reduced
so that it runs on 2 CPU cores): depths 8/14/20 at width 1 and width x2 at
depth 8, the same steps as Fig. 2 (deeper and wider models are not trained
longer), and B = 2 besides 4 and 8. Writes fig5_deeper_wider.{md,png}.

Paper: EvalNorm's gain over EMA holds for every depth and width.
"""

import dataclasses

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import fig2_error_vs_b, runs  # noqa: E402

NAME = 'fig5_deeper_wider'
# (depths at width 1, widths at the smallest depth) per scale.
VARIANTS = {'smoke': ((8, 14), (1, 2)), 'small': ((8, 14, 20), (1, 2)),
            'full': ((20, 56, 110, 254), (1, 2, 4, 8))}
# The paper's B = 4 and 8; the small scale adds B = 2, the only B at which
# EMA evaluation breaks down on the built-in data (see Fig. 2).
B_VALUES = {'smoke': (2,), 'small': (2, 4, 8), 'full': (4, 8)}


def model_grid(scale: runs.Scale) -> list[tuple[int, int]]:
  depths, widths = VARIANTS[scale.name]
  grid = [(d, 1) for d in depths]
  return grid + [(depths[0], w) for w in widths if w != 1]


def model_run(scale: runs.Scale, depth: int, width: int, b: int) -> runs.Run:
  if (depth, width) == (VARIANTS[scale.name][0][0], 1):
    return fig2_error_vs_b.evalnorm_run(scale, b)  # shared with Fig. 2
  run = fig2_error_vs_b.evalnorm_run(scale, b, depth=depth, width=width)
  return dataclasses.replace(run, name=f'evalnorm_d{depth}_w{width}_b{b}_seed0')


def all_runs(scale: runs.Scale) -> list[runs.Run]:
  return [model_run(scale, depth, width, b) for depth, width in model_grid(scale)
          for b in B_VALUES[scale.name]]


def planned_runs(context: runs.Context) -> list[runs.Run]:
  return all_runs(context.scale)


def report(context: runs.Context, results: dict) -> dict:
  scale = context.scale
  bs = B_VALUES[scale.name]
  grid = model_grid(scale)
  rows, errors = [], {}
  for depth, width in grid:
    cells = []
    for b in bs:
      result = results[model_run(scale, depth, width, b).name]
      ema, en = runs.error(result, 'ema'), runs.error(result, 'evalnorm')
      errors[(depth, width, b)] = (ema, en)
      cells += [f'{ema:.2f}', f'{en:.2f}']
    rows.append([f'depth {depth}, width x{width}'] + cells)
  headers = ['model'] + [f'B={b} {m}' for b in bs for m in ('EMA', 'EvalNorm')]
  runs.write_markdown(
      context.output(f'{NAME}.md'), 'Fig. 5: deeper and wider models',
      runs.scale_note(context),
      'Test error (%), one seed (0). Each EvalNorm run gives both columns '
      '(EMA is the same network evaluated with the moving averages).\n',
      runs.markdown_table(headers, rows), f'![deeper and wider]({NAME}.png)\n')
  figure, axes = plt.subplots(1, len(bs), figsize=(5 * len(bs), 3.6),
                              squeeze=False)
  labels = [f'd{d}\nx{w}' for d, w in grid]
  for ax, b in zip(axes[0], bs):
    positions = range(len(grid))
    ax.bar([p - 0.2 for p in positions],
           [errors[(d, w, b)][0] for d, w in grid], 0.4, label='EMA')
    ax.bar([p + 0.2 for p in positions],
           [errors[(d, w, b)][1] for d, w in grid], 0.4, label='EvalNorm')
    ax.set_xticks(list(positions), labels)
    ax.set_title(f'B={b}')
    ax.set_ylabel('test error (%)')
    ax.legend()
  runs.save_figure(figure, context.output(f'{NAME}.png'))
  plt.close(figure)
  return errors


def main(argv=None):
  args = runs.argument_parser(__doc__).parse_args(argv)
  context = runs.context_from_args(args)
  results = context.execute(planned_runs(context))
  return report(context, results)


if __name__ == '__main__':
  main()
