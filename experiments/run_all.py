r"""Regenerates every figure and table of the paper at one scale.

    python -m experiments.run_all [--scale small|full|smoke] [--jobs 2] [--dry_run]
        [--scripts table2_detection]

Runs the scripts in an order that lets later ones reuse earlier runs (Fig. 2's
sweep feeds Fig. 1, 3, 4, 5 and the seeds; the quick start runs are the
default program of the estimation comparison and the k curve's check), then writes runs.json (every run's eval.json) and
runtimes.md (per script, its runs' minutes). Finished runs (an ``eval.json``
in their workdir) are reused, so an interrupted regeneration continues where
it stopped; delete ``experiments/workdirs/<scale>`` to start afresh. Also
writes provenance.json: per script the commits its results come from, the
commit, tree state and machine of those invocations, package versions
(``experiments/provenance.py``); and headlines.json: what each script's
report returned (the numbers the READMEs' tables show, by script name), the
provenance's short form and the runtimes.

``--headlines_only`` runs nothing: it rebuilds headlines.json from the
runs.json and provenance.json in the results directory, through each
script's ``headlines``, so that the READMEs' tables can be regenerated
without the runs' workdirs (which are not committed).

``--scripts a,b`` regenerates only the scripts named (e.g.
``table2_detection``, after a change that moves only its results): their
runs replace theirs in the results directory's runs.json (runs that no
script plans any more leave it), their commits replace theirs in the
committed provenance.json, and runtimes.md and headlines.json are rebuilt
from the merged record. A regeneration too long for one sitting can so be
split into groups of scripts, each from a clean workdir root at the same
commit (a script's runs must all be in its group: Fig. 1, 3, 4, 5 and the
seeds reuse Fig. 2's runs, the estimation comparison the quick start's, the k
curve checks against the quick start's).

``--dry_run`` runs nothing: it prints every run each script needs (dataset,
model, B, SGD batch, devices, steps, learning rate), in the order they would
run, each listed under the first script that needs it.
"""

import functools
import time

import numpy as np

from evalnorm.training import files
from evalnorm.training.summary import markdown_table
from experiments import (command_line, estimate_every, estimation_programs,
                         fig1_histograms, fig2_error_vs_b, fig3_alpha_beta,
                         fig4_fixed_schedules, fig5_deeper_wider, provenance,
                         quick_start, result_files, run_configs, runner, seeds,
                         table1_imagenet, table2_detection, table2_transfer)

HEADLINES = 'headlines.json'
SCRIPTS = (quick_start, estimation_programs, fig2_error_vs_b, fig1_histograms,
           fig3_alpha_beta, fig4_fixed_schedules, seeds, fig5_deeper_wider,
           table1_imagenet, table2_transfer, table2_detection, estimate_every)


def script_name(script) -> str:
  """'fig2_error_vs_b' for experiments.fig2_error_vs_b."""
  return script.__name__.rsplit('.', 1)[1]


def script_arguments(args) -> list[str]:
  argv = [f'--scale={args.scale}', f'--jobs={args.jobs}']
  if args.workdir_root:
    argv.append(f'--workdir_root={args.workdir_root}')
  if args.results_dir:
    argv.append(f'--results_dir={args.results_dir}')
  return argv


def dry_run_listing(context: command_line.Context) -> str:
  """Markdown: per script, the runs it adds to those of the scripts before."""
  seen, sections = set(), []
  for script in SCRIPTS:
    name = script_name(script)
    planned = script.planned_runs(context)
    new = [r for r in planned if r.name not in seen]
    seen.update(r.name for r in new)
    reused = len(planned) - len(new)
    note = f', reuses {reused} of the scripts above' if reused else ''
    sections.append(f'## {name}: {len(new)} new runs{note}\n\n'
                    + (run_configs.listing(new) if new else ''))
  header = (f'# Every `{context.scale.name}` run ({len(seen)} in all), in the '
            'order `run_all` starts them\n\n'
            'Steps of an offline run are its estimation batches; its lr is '
            'the alpha/beta optimizer\'s.\n')
  return '\n'.join([header] + sections)


def main(argv=None):
  parser = command_line.argument_parser(__doc__)
  parser.add_argument('--dry_run', action='store_true',
                      help='print every run (dataset, model, B, batch, '
                      'devices, steps, lr) and run nothing')
  parser.add_argument('--headlines_only', action='store_true',
                      help='run nothing: rebuild headlines.json from the '
                      'runs.json and provenance.json of --results_dir')
  parser.add_argument('--scripts', default=None,
                      help='regenerate only these scripts (comma-separated '
                      'names, e.g. table2_detection) into the committed '
                      'runs.json and provenance.json')
  args = parser.parse_args(argv)
  context = command_line.context_from_args(args)
  if args.dry_run:
    listing = dry_run_listing(context)
    print(listing)
    return listing
  if args.headlines_only:
    return write_headlines(context, rebuilt_headlines(context))
  scripts = chosen_scripts(parser, args.scripts)
  invocation = provenance.start(runner.ROOT, args.scale, args.jobs,
                                context.workdir_root, runner.machine_gpus())
  seconds, numbers = {}, {}
  for script in scripts:
    name = script_name(script)
    print(f'== {name}', flush=True)
    started = time.time()
    # A script with a main of its own (estimate_every trains in its own way).
    numbers[name] = getattr(
        script, 'main', functools.partial(command_line.main, script))(
            script_arguments(args))
    seconds[name] = round(time.time() - started, 1)
    provenance.script_done(context.workdir_root, invocation, name,
                           seconds[name])
  if scripts == SCRIPTS:
    archive = write_archive(context)
    record = provenance.finish(context.workdir_root, runner.machine_gpus(),
                               context.output('provenance.json'))
    write_runtimes(context, args, record, archive['eval'])
    write_headlines(context, numbers | own_headlines(context, archive['eval'],
                                                     record))
    return seconds
  archive = write_archive(context, scripts)
  record = provenance.finish(
      context.workdir_root, runner.machine_gpus(),
      context.output('provenance.json'),
      files.read_json(context.output('provenance.json')),
      [script_name(s) for s in scripts])
  write_runtimes(context, args, record, archive['eval'])
  write_headlines(context, rebuilt_headlines(context))
  return seconds


def chosen_scripts(parser, names: str | None) -> tuple:
  """SCRIPTS, or those that the comma-separated ``names`` name (in SCRIPTS'
  order); an unknown name ends the command line with one line, exit 2."""
  if names is None:
    return SCRIPTS
  wanted = set(names.split(','))
  known = [script_name(s) for s in SCRIPTS]
  if wanted - set(known):
    parser.error(f'--scripts={names}: no script {sorted(wanted - set(known))}'
                 f'; known: {", ".join(known)}')
  return tuple(s for s in SCRIPTS if script_name(s) in wanted)


def rebuilt_headlines(context: command_line.Context) -> dict:
  """headlines.json from the results directory's runs.json and
  provenance.json: each script's ``headlines`` of its runs' results."""
  archive = files.read_json(context.output('runs.json'))
  record = files.read_json(context.output('provenance.json'))
  # The k curve's trainings keep their results in every_k, not eval.
  numbers = {script_name(s): s.headlines(
      context, archive['every_k' if s is estimate_every else 'eval'])
             for s in SCRIPTS}
  return numbers | own_headlines(context, archive['eval'], record)


def own_headlines(context: command_line.Context, evals: dict[str, dict],
                  record: dict) -> dict:
  """What run_all adds to the scripts' headlines: provenance and runtimes."""
  return {'provenance': provenance.headlines(record),
          'runtimes': runtimes(context, evals)}


def write_headlines(context: command_line.Context, numbers: dict) -> dict:
  files.write_json(context.output(HEADLINES), numbers, indent=1)
  print(f'wrote {context.output(HEADLINES)}')
  return numbers


def write_archive(context: command_line.Context, scripts=SCRIPTS) -> dict:
  """runs.json: the eval.json of every run the scripts used, by run name,
  and the k curve's per-seed results: what the tables and the README's
  numbers are computed from, committed beside them.

  With fewer ``scripts`` than all, their runs replace theirs in the results
  directory's runs.json, whose other runs stay, but for those that no
  script plans any more.
  """
  if scripts == SCRIPTS:
    archive = {'eval': {}, 'every_k': {}}
  else:
    archive = files.read_json(context.output('runs.json'))
    planned = {run.name for script in SCRIPTS if script is not estimate_every
               for run in script.planned_runs(context)}
    archive['eval'] = {name: result for name, result in
                       archive['eval'].items() if name in planned}
  # The k curve's trainings write every_k.json, not eval.json.
  for script in (s for s in scripts if s is not estimate_every):
    for run in script.planned_runs(context):
      archive['eval'][run.name] = runner.read_eval(context.workdir(run))
  if estimate_every in scripts:
    for run in estimate_every.planned_runs(context):
      archive['every_k'][run.name] = files.read_json(
          estimate_every.result_path(context.workdir_root, run))
  files.write_json(context.output('runs.json'), archive, indent=1)
  return archive


def write_runtimes(context: command_line.Context, args, record: dict,
                   evals: dict[str, dict]) -> None:
  """runtimes.md: per script, the runs it adds and their minutes."""
  jobs = {i['jobs'] for i in record['invocations']}
  k_curve = record['minutes_per_script'].get('estimate_every')
  result_files.write_markdown(
      context.output('runtimes.md'), 'Runtimes of the last regeneration',
      result_files.scale_note(context),
      f'`python -m experiments.run_all --scale={args.scale} --jobs={args.jobs}`'
      ' runs the scripts in this order; runs that an earlier script made are '
      "reused. `provenance.json` has each invocation's commit and wall "
      'seconds per script.\n',
      'Per script: the runs it adds to those of the scripts before it, the '
      'median minutes of one such run, and their sum (`--jobs '
      f"{'/'.join(map(str, sorted(jobs)))}` on "
      f"{record['machine']['cpu_cores']} cores runs that many at a time, so "
      'the wall time is about the sum divided by the jobs). A run\'s minutes '
      'include any time the machine was shared or the regeneration paused; '
      'the median is the steadier figure. `estimate_every.py` trains in its '
      'own processes, one per seed'
      + (f' ({k_curve:.0f} wall minutes for the three)' if k_curve else '')
      + '.\n', runtimes_table(runtimes(context, evals)) + '\n')


def runtimes(context: command_line.Context, evals: dict[str, dict]) -> dict:
  """Per script: the runs it adds to those of the scripts before it, the
  median minutes of one such run and their sum; and the totals. From each
  run's own wall time, so a regeneration spread over several invocations,
  or one that reused finished runs, still counts every run once."""
  seen, by_script = set(), {}
  for script in SCRIPTS:
    new = [r for r in script.planned_runs(context) if r.name not in seen]
    seen.update(r.name for r in new)
    # The k curve's trainings write no eval.json; a run whose eval.json was
    # written just before run_all was killed has no time recorded.
    walls = [] if script is estimate_every else [
        evals[r.name]['wall_seconds'] / 60 for r in new
        if 'wall_seconds' in evals[r.name]]
    by_script[script_name(script)] = {
        'new_runs': len(new),
        'median_minutes': float(np.median(walls)) if walls else None,
        'run_minutes': sum(walls) if walls else None}
  return {'by_script': by_script, 'runs': len(seen), 'run_minutes': sum(
      s['run_minutes'] or 0 for s in by_script.values())}


def runtimes_table(numbers: dict) -> str:
  """The runtimes (``runtimes``' numbers) as a markdown table."""
  cell = lambda value, spec: '' if value is None else format(value, spec)
  rows = [[f'`{name}.py`', str(s['new_runs']), cell(s['median_minutes'], '.1f'),
           cell(s['run_minutes'], '.0f')]
          for name, s in numbers['by_script'].items()]
  rows.append(['total', str(numbers['runs']), '',
               f"{numbers['run_minutes']:.0f}"])
  return markdown_table(('script', 'new runs', 'minutes per run (median)',
                         'run-minutes'), rows)


if __name__ == '__main__':
  main()
