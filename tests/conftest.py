"""pytest configuration shared by the test-suite.

Runs before any test module is imported, so it is the place to configure JAX:
- 8 fake CPU devices (``--xla_force_host_platform_device_count=8``) so that the
  ``jax.pmap`` tests can run on a machine without accelerators;
- ``JAX_PLATFORMS=cpu`` so that the tests are deterministic and never pick an
  accelerator that happens to be present.
These environment variables only take effect if jax has not been imported yet.
"""

import os
import sys
import tempfile
import warnings

_DEVICE_FLAG = '--xla_force_host_platform_device_count=8'

_flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' ' + _DEVICE_FLAG).strip()
os.environ['JAX_PLATFORMS'] = 'cpu'
# Many tests build the same small networks: a compilation cache shared by the
# session (and its subprocesses) compiles each once. It is fresh per session,
# so no result depends on an earlier run. Every compile is cached, however
# short: the two workers dispatch many of the same small ops eagerly.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='evalnorm-jax-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

if 'jax' in sys.modules:  # pragma: no cover - only when a plugin imported jax.
  warnings.warn(
      'jax was imported before tests/conftest.py could set XLA_FLAGS; '
      'the multi-device (pmap) tests may be skipped.'
  )

# Make the package importable when pytest is run without installing it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


import pytest  # noqa: E402  (after the environment is set up)


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """(config, workdir, eval.json) of one 20-step run, checkpoints at 10 and 20.

  Shared read-only: a test that changes the run copies the workdir first.
  """
  from training_helpers import small_digits_config
  from evalnorm.training import trainer
  config = small_digits_config(num_train_steps=20)
  workdir = str(tmp_path_factory.mktemp('trained_run'))
  return config, workdir, trainer.train_and_evaluate(config, workdir)


# The longest single tests. Under xdist they are handed out first, after the
# trained run's group, so that the workers finish together instead of one
# waiting out the other's last long test.
LONGEST_FIRST = (
    'test_estimation_leaves_the_quick_start_bit_identical',
    'test_divergence_stops_with_one_line_and_saves_no_bad_state',
    'test_readme_linen_own_model',
    'test_every_mode_in_one_pass_equals_each_mode_alone',
    'test_first_steps_match_the_pinned_values',
)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
  """Tests of the shared trained run go to one xdist worker: one run, not two.

  The group marker is added before pytest-xdist's own hook turns markers
  into groups. Under xdist the longest tests (LONGEST_FIRST) also move to
  the front.
  """
  for item in items:
    if 'trained_run' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.xdist_group('trained_run'))
  result = yield
  if getattr(config.option, 'loadgroup', False):  # an xdist worker
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(getattr(item, 'originalname', None),
                                         len(rank)))
  return result
