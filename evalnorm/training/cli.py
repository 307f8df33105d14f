"""Command-line plumbing shared by ``evalnorm.main`` and ``evalnorm.estimate``.

Exit statuses, each failure ending with one line on stderr and no traceback:

- 2: the command line cannot work: a missing flag, an unknown config key, a
  value of the wrong type, a bad ``--config=FILE:key=value`` argument, a
  config value that validation refuses;
- 1: a problem found while running: data that is not prepared, a diverged
  run, an unusable checkpoint;
- 143: SIGTERM (after saving what is worth saving).

Also here: joining a multi-process job (``config.distributed``).
"""

import contextlib
import importlib.util
import os
import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from evalnorm.training import config_lib, console, preemption

USAGE_ERROR = 2
RUN_ERROR = 1
# 128 + SIGTERM, as a shell reports a terminated job, so that a scheduler
# retries the (resumable) run instead of taking it as finished.
PREEMPTED = 143

_OVERRIDE = re.compile(r'--?(?:no)?config\.([\w.]+)(?:=(.*))?$', re.DOTALL)


def fail(message, status: int = USAGE_ERROR):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


class Command:
  """``--config`` plus required directory flags, parsed with one-line errors."""

  def __init__(self, directory_flags: dict[str, str],
               flag_values: flags.FlagValues = flags.FLAGS):
    self.flag_values = flag_values
    self.help = {'config': 'the config file, e.g. configs/digits.py[:key=value,...]',
                 **directory_flags}
    for name, help_string in directory_flags.items():
      flags.DEFINE_string(name, None, help_string, flag_values=flag_values)
    config_flags.DEFINE_config_file(
        'config', None, 'ml_collections config file (path[:key=value,...]).',
        flag_values=flag_values, lock_config=True)

  def run(self, main) -> None:
    """absl's app.run with this command's flag parsing and console."""
    def configured_main(argv):
      console.configure()
      return main(argv)
    app.run(configured_main, flags_parser=self.parse)

  def parse(self, argv: list[str]) -> list[str]:
    """Parses ``argv``; any mistake exits with status 2 and one line."""
    try:
      rest = self.flag_values(argv)
      # A config file that failed to load raises only when first read.
      if self.flag_values['config'].value is not None:
        self.flag_values['config'].value.keys()
    except Exception as error:  # absl, ml_collections and config files raise many types.
      fail(self.explain(error, argv))
    for name, help_string in self.help.items():
      if self.flag_values[name].value is None:
        fail(f'--{name} is required: {help_string}')
    if len(rest) > 1:
      fail(f'unexpected arguments {" ".join(rest[1:])}: every option is '
           '--name=value')
    return rest

  def explain(self, error: Exception, argv: list[str]) -> str:
    """One line naming the flag or config key that made parsing fail."""
    config_errors = [e for e in _chain(error)
                     if isinstance(e, config_lib.ConfigError)]
    if config_errors:  # raised by a config file's get_config(ARG)
      return str(config_errors[-1])
    for name, help_string in self.help.items():
      if not any(re.match(rf'--?{name}(=|$)', arg) for arg in argv[1:]):
        return f'--{name} is required: {help_string}'
    path = _config_path(argv)
    config = _load_config(path)
    if config is None:
      return (f'--config={path}: cannot load this config file (expected a '
              'python file with get_config(), e.g. configs/digits.py)')
    for arg in argv[1:]:
      match = _OVERRIDE.match(arg)
      problem = match and _override_problem(config, *match.groups())
      if problem:
        return problem
    return str(error).strip().splitlines()[0]


def initialize_distributed(config) -> None:
  """Joins the multi-process job; unset keys are auto-detected by jax.

  The timeout bounds both the wait for every process to join and how long
  the others go on after one process dies (the coordination service's
  heartbeat timeout, after which jax ends them), so such a job stops
  instead of hanging.
  """
  import jax  # pylint: disable=import-outside-toplevel
  config_lib.validate_distributed(config)
  # jax's preemption service installs its own SIGTERM handler (in C++) here,
  # which would swallow SIGTERM until the run's handler (preemption.SigtermFlag)
  # is installed again; the processes agree on when to stop through
  # preemption.StopAgreement instead.
  jax.config.update('jax_enable_preemption_service', False)
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address,
      num_processes=config.num_processes, process_id=config.process_id,
      initialization_timeout=config.distributed_timeout_s,
      heartbeat_timeout_seconds=config.distributed_timeout_s)


def log_devices() -> None:
  """The device layout, once per command."""
  import jax  # pylint: disable=import-outside-toplevel
  logging.info('JAX process %d/%d, %d local devices of %d: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices())


@contextlib.contextmanager
def exit_statuses():
  """Maps the errors a user can act on to one line and an exit status."""
  # Imported here, not at the top: these pull in TensorFlow (through clu),
  # seconds that a mistyped flag should not wait for.
  from evalnorm import data  # pylint: disable=import-outside-toplevel
  from evalnorm.training import checkpoint, trainer
  try:
    yield
  except config_lib.ConfigError as e:
    fail(e, USAGE_ERROR)
  except (data.DatasetUnavailableError, trainer.TrainingDiverged,
          checkpoint.CheckpointError) as e:
    fail(e, RUN_ERROR)
  except preemption.Preempted as e:
    # Saved and on the way out: a later SIGTERM (another host's notice, a
    # scheduler's repeat) must not kill the process mid-exit, e.g. in
    # jax.distributed's shutdown barrier, turning exit 143 into a signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(str(e), file=sys.stderr)
    sys.exit(PREEMPTED)


def _chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _config_path(argv: list[str]) -> str | None:
  for arg in argv[1:]:
    match = re.match(r'--?config=(.*)$', arg, re.DOTALL)
    if match:
      return match.group(1)
  return None


def _load_config(path: str | None):
  """The config ``path`` names, or None when it cannot be loaded."""
  file, sep, arg = (path or '').partition(':')
  if not os.path.isfile(file):
    return None
  try:
    spec = importlib.util.spec_from_file_location('evalnorm_cli_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if sep else []))
  except Exception:  # noqa: BLE001 - any failure means "cannot load".
    return None


def _override_problem(config, key: str, text: str | None) -> str | None:
  """What is wrong with ``--config.KEY=TEXT``, or None if nothing is."""
  top = key.split('.')[0]
  if top not in config:
    return f'--config.{key}: {config_lib.unknown_key(top, config)}'
  if text is None or '.' in key or config.get_type(key) is tuple:
    return None  # absl's own parsers judge these
  try:
    config_lib.parse_value(config, key, text, f'--config.{key}')
  except config_lib.ConfigError as e:
    return str(e)
  return None
