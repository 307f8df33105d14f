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
import sys

from experiments import (command_line, fig2_error_vs_b, result_files, runner,
                         scales)

NAME = 'fig5_deeper_wider'


def model_grid(scale: scales.Scale) -> list[tuple[int, int]]:
  depths, widths = scale.fig5_models
  grid = [(d, 1) for d in depths]
  return grid + [(depths[0], w) for w in widths if w != 1]


def model_run(scale: scales.Scale, depth: int, width: int,
              b: int) -> runner.Run:
  if (depth, width) == (scale.fig5_models[0][0], 1):
    return fig2_error_vs_b.evalnorm_run(scale, b)  # shared with Fig. 2
  run = fig2_error_vs_b.evalnorm_run(scale, b, depth=depth, width=width)
  return dataclasses.replace(run, name=f'evalnorm_d{depth}_w{width}_b{b}_seed0')


def all_runs(scale: scales.Scale) -> list[runner.Run]:
  return [model_run(scale, depth, width, b) for depth, width in model_grid(scale)
          for b in scale.fig5_b_values]


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return all_runs(context.scale)


def errors(scale, results: dict) -> dict[tuple[int, int, int], tuple]:
  """(depth, width, B) -> (EMA's error, EvalNorm's error)."""
  return {(d, w, b): tuple(runner.error(results[model_run(scale, d, w, b).name],
                                        mode) for mode in ('ema', 'evalnorm'))
          for d, w in model_grid(scale) for b in scale.fig5_b_values}


def label(depth: int, width: int) -> str:
  return f'depth {depth}, width x{width}'


def headlines(context: command_line.Context, results: dict) -> dict:
  """Per model and B: EMA's and EvalNorm's error, and EvalNorm's gain
  (EMA's error minus EvalNorm's)."""
  numbers = {'error': {}, 'gain': {}}
  for (d, w, b), (ema, en) in errors(context.scale, results).items():
    numbers['error'].setdefault(label(d, w), {})[str(b)] = {
        'ema': ema, 'evalnorm': en}
    numbers['gain'].setdefault(label(d, w), {})[str(b)] = ema - en
  return numbers


def report(context: command_line.Context, results: dict) -> dict:
  scale = context.scale
  bs = scale.fig5_b_values
  grid = model_grid(scale)
  values = errors(scale, results)
  rows = [[label(d, w)] + [f'{e:.2f}' for b in bs for e in values[(d, w, b)]]
          for d, w in grid]
  headers = ['model'] + [f'B={b} {m}' for b in bs for m in ('EMA', 'EvalNorm')]
  result_files.write_markdown(
      context.output(f'{NAME}.md'), 'Fig. 5: deeper and wider models',
      result_files.scale_note(context),
      'Test error (%), one seed (0). Each EvalNorm run gives both columns '
      '(EMA is the same network evaluated with the moving averages).\n',
      result_files.markdown_table(headers, rows),
      f'![deeper and wider]({NAME}.png)\n')
  result_files.plot_ema_against_evalnorm(
      context.output(f'{NAME}.png'),
      {f'B={b}': {f'd{d}\nx{w}': values[(d, w, b)] for d, w in grid}
       for b in bs}, 'test error (%)', panel_width=5, height=3.6)
  return headlines(context, results)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
