r"""Fig. 2: test error against the normalization batch B, SGD batch fixed.

    python -m experiments.fig2_error_vs_b [--scale small|full|smoke] [--jobs 2]

For each B: one EvalNorm run with online estimation (its ``ema`` mode is plain
BatchNorm evaluation of the very same network, since estimation does not
change training) and one Batch Renorm run. Writes fig2_error_vs_b.{md,png}.
The same runs feed Fig. 1, 3 and 4.

Paper (CIFAR-10, ResNet-20 v2, batch 128): EMA error grows sharply as B
falls below ~8; Batch Renorm helps part of the way; EvalNorm stays close to
the large-B error down to B=2.
"""

from experiments import runs

NAME = 'fig2_error_vs_b'


def evalnorm_run(scale: runs.Scale, b: int, seed: int = 0, **overrides) -> runs.Run:
  return runs.make_run(f'evalnorm_b{b}_seed{seed}', scale, norm_batch_size=b,
                       seed=seed, **overrides)


def renorm_run(scale: runs.Scale, b: int, seed: int = 0) -> runs.Run:
  steps = scale.overrides.get('num_train_steps', 128_000)
  return runs.make_run(
      f'renorm_b{b}_seed{seed}', scale, norm='renorm', norm_batch_size=b,
      seed=seed,
      renorm_warmup_steps=max(1, int(steps * scale.renorm_warmup_fraction)))


def evalnorm_sweep(scale: runs.Scale) -> list[runs.Run]:
  """The EvalNorm runs of every B (seed 0): what Fig. 1, 3 and 4 read."""
  return [evalnorm_run(scale, b) for b in scale.b_values]


def sweep_runs(scale: runs.Scale) -> list[runs.Run]:
  return evalnorm_sweep(scale) + [renorm_run(scale, b) for b in scale.b_values]


def curves(scale: runs.Scale, results: dict) -> dict[str, list[float]]:
  """Test error per B for each method."""
  bs = scale.b_values
  return {
      'EMA (BatchNorm)': [runs.error(results[f'evalnorm_b{b}_seed0'], 'ema')
                          for b in bs],
      'Batch Renorm': [runs.error(results[f'renorm_b{b}_seed0'], 'ema')
                       for b in bs],
      'EvalNorm (online)': [runs.error(results[f'evalnorm_b{b}_seed0'],
                                       'evalnorm') for b in bs],
  }


def report(context: runs.Context, results: dict) -> dict[str, list[float]]:
  bs = context.scale.b_values
  errors = curves(context.scale, results)
  rows = [[name] + [f'{e:.2f}' for e in errs] for name, errs in errors.items()]
  table = runs.markdown_table(['test error (%)'] + [f'B={b}' for b in bs], rows)
  runs.write_markdown(
      context.output(f'{NAME}.md'), 'Fig. 2: test error against B',
      runs.scale_note(context),
      'SGD batch fixed; B is the normalization group size. One seed (0); see '
      '`seeds.md` for the spread over seeds.\n', table,
      f'![error against B]({NAME}.png)\n')
  runs.plot_against_b(context.output(f'{NAME}.png'), bs, errors,
                      'test error (%)',
                      f'Error against B ({context.scale.name} scale)',
                      highlight='EvalNorm (online)')
  return errors


def main(argv=None):
  args = runs.argument_parser(__doc__).parse_args(argv)
  context = runs.context_from_args(args)
  results = context.execute(sweep_runs(context.scale))
  return report(context, results)


if __name__ == '__main__':
  main()
