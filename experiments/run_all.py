r"""Regenerates every figure and table of the paper at one scale.

    python -m experiments.run_all [--scale small|full|smoke] [--jobs 2] [--dry_run]

Runs the scripts in an order that lets later ones reuse earlier runs (Fig. 2's
sweep feeds Fig. 1, 3, 4, 5 and the seeds), then writes runtimes.md with the
wall time each script added. Finished runs (an ``eval.json`` in their
workdir) are reused, so an interrupted regeneration continues where it
stopped; delete ``experiments/workdirs/<scale>`` to start afresh.

``--dry_run`` runs nothing: it prints every run each script needs (dataset,
model, B, SGD batch, devices, steps, learning rate), in the order they would
run, each listed under the first script that needs it.
"""

import functools
import time

from experiments import (estimate_every, fig1_histograms, fig2_error_vs_b,
                         fig3_alpha_beta, fig4_fixed_schedules,
                         fig5_deeper_wider, runs, seeds, table1_imagenet,
                         table2_transfer)

SCRIPTS = (fig2_error_vs_b, fig1_histograms, fig3_alpha_beta,
           fig4_fixed_schedules, seeds, fig5_deeper_wider, table1_imagenet,
           table2_transfer, estimate_every)


def script_arguments(args) -> list[str]:
  argv = [f'--scale={args.scale}', f'--jobs={args.jobs}']
  if args.workdir_root:
    argv.append(f'--workdir_root={args.workdir_root}')
  if args.results_dir:
    argv.append(f'--results_dir={args.results_dir}')
  return argv


def dry_run_listing(context: runs.Context) -> str:
  """Markdown: per script, the runs it adds to those of the scripts before."""
  seen, sections = set(), []
  for script in SCRIPTS:
    name = script.__name__.rsplit('.', 1)[1]
    planned = script.planned_runs(context)
    new = [r for r in planned if r.name not in seen]
    seen.update(r.name for r in new)
    reused = len(planned) - len(new)
    note = f', reuses {reused} of the scripts above' if reused else ''
    sections.append(f'## {name}: {len(new)} new runs{note}\n\n'
                    + (runs.listing(new) if new else ''))
  header = (f'# Every `{context.scale.name}` run ({len(seen)} in all), in the '
            'order `run_all` starts them\n\n'
            'Steps of an offline run are its estimation batches; its lr is '
            'the alpha/beta optimizer\'s.\n')
  return '\n'.join([header] + sections)


def main(argv=None):
  parser = runs.argument_parser(__doc__)
  parser.add_argument('--dry_run', action='store_true',
                      help='print every run (dataset, model, B, batch, '
                      'devices, steps, lr) and run nothing')
  args = parser.parse_args(argv)
  context = runs.context_from_args(args)
  if args.dry_run:
    listing = dry_run_listing(context)
    print(listing)
    return listing
  seconds = {}
  for script in SCRIPTS:
    name = script.__name__.rsplit('.', 1)[1]
    print(f'== {name}', flush=True)
    started = time.time()
    # A script with a main of its own (estimate_every trains in its own way).
    getattr(script, 'main', functools.partial(runs.main, script))(
        script_arguments(args))
    seconds[name] = time.time() - started
  rows = [[f'`experiments/{name}.py`', f'{s / 60:.1f}'] for name, s in seconds.items()]
  rows.append(['total', f'{sum(seconds.values()) / 60:.1f}'])
  runs.write_markdown(
      context.output('runtimes.md'), 'Runtimes of the last regeneration',
      runs.scale_note(context),
      f'`python -m experiments.run_all --scale={args.scale} --jobs={args.jobs}`'
      ' in this order; runs that an earlier script made are reused (and runs '
      'left by an earlier regeneration too: then a script takes seconds).\n',
      runs.markdown_table(['script', 'minutes added'], rows))
  return seconds


if __name__ == '__main__':
  main()
