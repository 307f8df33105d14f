"""The tests that compare against measured numbers, under other CPU kernels.

A number measured on one machine is only worth pinning if other CPUs and XLA
builds reproduce it. XLA:CPU picks its kernels by instruction set and by
flags, so capping the instruction set at AVX2 and turning YNNPACK's fusions
off (Eigen kernels) makes this machine compute like another one: a
machine-bound value then fails here the day it is written, not on a user's
machine.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_KERNELS = ('--xla_cpu_max_isa=AVX2 '
                 '--xla_cpu_experimental_ynn_fusion_type=')
# Every test that compares against a value measured on a machine.
MEASURED = ('tests/test_golden.py', 'tests/experiments/test_readme_numbers.py',
            'tests/test_calibration.py::test_readme_linen_own_model',
            'tests/test_calibration.py::test_readme_nnx_own_model')


@pytest.mark.slow
def test_measured_values_hold_under_other_kernels():
  env = dict(os.environ, XLA_FLAGS=OTHER_KERNELS)
  # A fresh compilation cache: programs compiled under this session's flags
  # must not stand in for the other kernels'.
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  result = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p',
       'no:cacheprovider', *MEASURED],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
      check=False)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
