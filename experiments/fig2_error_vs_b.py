r"""Fig. 2: test error against the normalization batch B, SGD batch fixed.

    python -m experiments.fig2_error_vs_b [--scale small|full|smoke] [--jobs 2]

For each B: one EvalNorm run with online estimation (its ``ema`` mode is plain
BatchNorm evaluation of the very same network, since estimation does not
change training) and one Batch Renorm run. One panel per dataset: the scale's
test-bed (full: CIFAR-100), whose runs feed Fig. 1, 3, 4 and 5, and at full
scale also CIFAR-10, the paper's other panel. Writes
fig2_error_vs_b.{md,png} (and fig2_error_vs_b_<dataset>.png per further panel).

Paper (ResNet-20 v2, SGD batch 128, a CIFAR-10 and a CIFAR-100 panel): EMA
error grows sharply as B falls below ~8; Batch Renorm helps part of the way;
EvalNorm stays close to the large-B error down to B=2.
"""

import sys

from experiments import command_line, result_files, run_configs, runner, scales

NAME = 'fig2_error_vs_b'


def _panel(scale: scales.Scale, dataset: str | None) -> tuple[str, dict]:
  """(run-name prefix, overrides) of a panel; the test-bed's has neither."""
  if dataset is None or dataset == scale.dataset:
    return '', {}
  return f'{dataset}_', dict(dataset=dataset)


def evalnorm_run(scale: scales.Scale, b: int, seed: int = 0,
                 dataset: str | None = None, **overrides) -> runner.Run:
  prefix, panel = _panel(scale, dataset)
  return runner.make_run(f'{prefix}evalnorm_b{b}_seed{seed}', scale,
                         norm_batch_size=b, seed=seed, **panel, **overrides)


def renorm_run(scale: scales.Scale, b: int, seed: int = 0,
               dataset: str | None = None) -> runner.Run:
  prefix, panel = _panel(scale, dataset)
  run = runner.make_run(f'{prefix}renorm_b{b}_seed{seed}', scale, norm='renorm',
                        norm_batch_size=b, seed=seed, **panel)
  return run_configs.with_renorm_ramp(run, scale)


def datasets(scale: scales.Scale) -> tuple[str, ...]:
  """Fig. 2's panels, the test-bed first."""
  return (scale.dataset,) + scale.more_fig2_datasets


def evalnorm_sweep(scale: scales.Scale) -> list[runner.Run]:
  """The test-bed's EvalNorm runs of every B (seed 0): what Fig. 1, 3, 4 read."""
  return [evalnorm_run(scale, b) for b in scale.b_values]


def sweep_runs(scale: scales.Scale) -> list[runner.Run]:
  return [run for dataset in datasets(scale) for b in scale.b_values
          for run in (evalnorm_run(scale, b, dataset=dataset),
                      renorm_run(scale, b, dataset=dataset))]


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return sweep_runs(context.scale)


def curves(scale: scales.Scale, results: dict,
           dataset: str | None = None) -> dict[str, list[float]]:
  """Test error per B for each method, on one panel's dataset."""
  bs = scale.b_values
  en = [results[evalnorm_run(scale, b, dataset=dataset).name] for b in bs]
  renorm = [results[renorm_run(scale, b, dataset=dataset).name] for b in bs]
  return {
      'EMA (BatchNorm)': [runner.error(r, 'ema') for r in en],
      'Batch Renorm': [runner.error(r, 'ema') for r in renorm],
      'EvalNorm (online)': [runner.error(r, 'evalnorm') for r in en],
  }


def headlines(context: command_line.Context, results: dict) -> dict:
  """The test-bed's error per method and B, and EvalNorm's gain over EMA
  (points of top-1: EMA's error minus EvalNorm's), keyed by B."""
  bs = [str(b) for b in context.scale.b_values]
  errors = curves(context.scale, results)
  return {'error': {name: dict(zip(bs, errs)) for name, errs in errors.items()},
          'gain': {'seed 0': dict(zip(bs, (m - e for m, e in zip(
              errors['EMA (BatchNorm)'], errors['EvalNorm (online)']))))}}


def report(context: command_line.Context, results: dict) -> dict:
  """Writes every panel; returns the test-bed's headlines."""
  scale = context.scale
  sections = []
  for dataset in datasets(scale):
    errors = curves(scale, results, dataset)
    rows = [[name] + [f'{e:.2f}' for e in errs] for name, errs in errors.items()]
    suffix = '' if dataset == scale.dataset else f'_{dataset}'
    if scale.more_fig2_datasets:  # one heading per panel
      sections.append(f'## `{dataset}`\n')
    sections += [result_files.markdown_table(
        ['test error (%)'] + [f'B={b}' for b in scale.b_values], rows),
                 f'![error against B]({NAME}{suffix}.png)\n']
    result_files.plot_against_b(
        context.output(f'{NAME}{suffix}.png'), scale.b_values, errors,
        'test error (%)', f'Error against B, {dataset} ({scale.name} scale)',
        highlight='EvalNorm (online)')
  result_files.write_markdown(
      context.output(f'{NAME}.md'), 'Fig. 2: test error against B',
      result_files.scale_note(context),
      'SGD batch fixed; B is the normalization group size. One seed (0); see '
      '`seeds.md` for the spread over seeds.\n', *sections)
  return headlines(context, results)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
