"""Command lines of evalnorm.main and evalnorm.estimate: one line, exit 2, no traceback.

Most cases parse in-process with a fresh flag registry (the same
``cli.Command`` both programs use); two run the real programs.
"""

import os
import subprocess
import sys

import pytest
from absl import flags

from evalnorm.training import cli

from training_helpers import ROOT

PROGRAMS = {
    'evalnorm.main': {'workdir': 'the directory for checkpoints'},
    'evalnorm.estimate': {'checkpoint': 'the trained run',
                          'workdir': 'the directory for eval.json'},
}
DIRS = {'workdir': '--workdir=/tmp/out', 'checkpoint': '--checkpoint=/tmp/run'}

BAD_COMMAND_LINES = [
    # (arguments, fragments the error line must hold)
    (['--config=configs/digits.py', '--config.norm_batch_size=abc'],
     ['--config.norm_batch_size', "'abc'", 'an integer']),
    (['--config=configs/cifar.py:depth=abc'], ['depth', "'abc'", 'an integer']),
    (['--config=configs/cifar.py:depht=56'], ["'depht'", 'closest', 'depth']),
    (['--config=configs/digits.py', '--config.nosuchkey=1'],
     ["'nosuchkey'", 'known keys']),
    (['--config=configs/digits.py', '--config.norm_batch_sise=4'],
     ["'norm_batch_sise'", 'closest known keys: norm_batch_size']),
    (['--config=configs/digits.py', '--config.half_precision=maybe'],
     ['half_precision', 'true or false']),
    (['--config=configs/digits.py', '--config.num_epochs=many'],
     ['num_epochs', 'a number']),
    (['--config=configs/nothere.py'], ['configs/nothere.py', 'cannot load']),
    (['--config=configs/digits.py', 'stray'], ['unexpected arguments stray']),
    (['--config.norm_batch_size=2'], ['--config is required']),
]


def parse(program, args, monkeypatch):
  """Parses like ``python -m program`` would; returns the SystemExit."""
  flag_values = flags.FlagValues()
  command = cli.Command(PROGRAMS[program], flag_values)
  argv = [program, *args]
  # The config flag reads its --config.KEY overrides from sys.argv.
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit) as exit_info:
    command.parse(argv)
  return exit_info.value


@pytest.mark.parametrize('program', sorted(PROGRAMS))
@pytest.mark.parametrize('args, fragments', BAD_COMMAND_LINES)
def test_bad_command_line_is_one_line_and_exit_2(program, args, fragments,
                                                 monkeypatch, capsys):
  args = args + [DIRS[name] for name in PROGRAMS[program]]
  assert parse(program, args, monkeypatch).code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  for fragment in fragments:
    assert fragment in lines[0]


@pytest.mark.parametrize('program', sorted(PROGRAMS))
def test_each_missing_directory_flag_is_named(program, monkeypatch, capsys):
  for missing in PROGRAMS[program]:
    args = ['--config=configs/digits.py'] + [
        DIRS[name] for name in PROGRAMS[program] if name != missing]
    assert parse(program, args, monkeypatch).code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f'error: --{missing} is required: '
                     f'{PROGRAMS[program][missing]}']


def test_good_command_line_parses(monkeypatch):
  flag_values = flags.FlagValues()
  command = cli.Command(PROGRAMS['evalnorm.main'], flag_values)
  argv = ['evalnorm.main', '--config=configs/digits.py:depth=14',
          '--workdir=/tmp/out', '--config.norm_batch_size=4',
          '--config.fixed_alpha_beta=0.25']
  monkeypatch.setattr(sys, 'argv', argv)
  assert command.parse(argv) == ['evalnorm.main']
  config = flag_values['config'].value
  assert (config.depth, config.norm_batch_size) == (14, 4)
  assert config.fixed_alpha_beta == (0.25,)


def run_program(program, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', program, *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('program, args, fragment', [
    ('evalnorm.main', ['--config=configs/digits.py', '--workdir=/tmp/out',
                       '--config.nosuchkey=1'], "'nosuchkey'"),
    ('evalnorm.estimate', ['--config=configs/cifar.py:depth=abc',
                           '--checkpoint=/tmp/run', '--workdir=/tmp/out'],
     "depth='abc'"),
])
def test_programs_end_bad_command_lines_with_one_line(program, args, fragment):
  result = run_program(program, *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and 'FATAL' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and fragment in errors[0]


def test_distributed_keys_reach_jax_distributed_initialize(monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  from evalnorm.training import config_lib  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kwargs: calls.append(kwargs))
  config = config_lib.base_config()
  cli.initialize_distributed(config)  # unset: jax auto-detects the cluster
  config.update(dict(coordinator_address='10.0.0.1:1234', num_processes=2,
                     process_id=1, distributed_timeout_s=30))
  cli.initialize_distributed(config)
  assert calls == [
      dict(coordinator_address=None, num_processes=None, process_id=None,
           initialization_timeout=120, heartbeat_timeout_seconds=120),
      dict(coordinator_address='10.0.0.1:1234', num_processes=2,
           process_id=1, initialization_timeout=30,
           heartbeat_timeout_seconds=30)]
  config.process_id = 2
  with pytest.raises(config_lib.ConfigError, match='process_id=2'):
    cli.initialize_distributed(config)
