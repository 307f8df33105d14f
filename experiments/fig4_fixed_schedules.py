r"""Fig. 4: fixed alpha = beta schedules against the estimated ones, error against B.

    python -m experiments.fig4_fixed_schedules [--scale small|full|smoke]

Every schedule is an evaluation mode of the same Fig. 2 EvalNorm runs on the
test-bed (full scale: CIFAR-100; trained first if missing), so the comparison
holds the network fixed:

  alpha = beta = 0     plain EMA evaluation (``ema``);
  1/B^2                the paper's rule of thumb (``rule_of_thumb``);
  1/B                  (``one_over_b``);
  constants            ``fixed_<c>`` for each c of ``config.fixed_alpha_beta``;
  estimated            online estimation (``evalnorm``).

Writes fig4_fixed_schedules.{md,png}.

Paper: the estimated alpha/beta are best or tied at every B; 1/B^2 recovers
much of the gap; a constant that helps at B=2 hurts at large B.
"""

import sys

from experiments import command_line, fig2_error_vs_b, result_files, runner

NAME = 'fig4_fixed_schedules'
SCHEDULES = {'alpha = beta = 0 (EMA)': 'ema', '1/B^2': 'rule_of_thumb',
             '1/B': 'one_over_b'}
ESTIMATED = 'estimated (EvalNorm)'


def schedules(result: dict) -> dict[str, str]:
  """Label -> eval mode, the constants read from what the run evaluated."""
  labels = dict(SCHEDULES)
  constants = sorted((m for m in result['eval'] if m.startswith('fixed_')),
                     key=lambda m: float(m.split('_', 1)[1]))
  labels.update({f'constant {m.split("_", 1)[1]}': m for m in constants})
  labels[ESTIMATED] = 'evalnorm'
  return labels


def errors_by_schedule(scale, results: dict) -> dict[str, list[float]]:
  """Test error of every schedule, one per B."""
  by_b = [results[run.name] for run in fig2_error_vs_b.evalnorm_sweep(scale)]
  return {label: [runner.error(r, mode) for r in by_b]
          for label, mode in schedules(by_b[0]).items()}


def headlines(context: command_line.Context, results: dict) -> dict:
  """Every schedule's error by B, and the lowest of the fixed ones."""
  bs = [str(b) for b in context.scale.b_values]
  errors = errors_by_schedule(context.scale, results)
  fixed = [errs for label, errs in errors.items() if label != ESTIMATED]
  return {'error': {label: dict(zip(bs, errs))
                    for label, errs in errors.items()},
          'best_fixed': dict(zip(bs, map(min, zip(*fixed))))}


def report(context: command_line.Context, results: dict) -> dict:
  bs = context.scale.b_values
  errors = errors_by_schedule(context.scale, results)
  rows = [[label] + [f'{e:.2f}' for e in errs] for label, errs in errors.items()]
  table = result_files.markdown_table(
      ['test error (%)'] + [f'B={b}' for b in bs], rows)
  result_files.write_markdown(
      context.output(f'{NAME}.md'), 'Fig. 4: fixed schedules against estimated',
      result_files.scale_note(context),
      'Each row evaluates the same trained network (seed 0) with another '
      'alpha = beta schedule.\n', table, f'![schedules]({NAME}.png)\n')
  result_files.plot_against_b(
      context.output(f'{NAME}.png'), bs, errors, 'test error (%)',
      f'Fixed alpha = beta schedules ({context.scale.name} scale)',
      highlight=ESTIMATED)
  return headlines(context, results)


def planned_runs(context: command_line.Context) -> list[runner.Run]:
  return fig2_error_vs_b.evalnorm_sweep(context.scale)


if __name__ == '__main__':
  command_line.main(sys.modules[__name__])
