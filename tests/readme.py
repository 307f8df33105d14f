"""The README's python examples, by section, for the tests that run them."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    return f.read()


def readme_code(*headings: str) -> str:
  """The first ```python block after the given headings, in order.

  ``readme_code('The layer')`` is the first example under "## The layer";
  ``readme_code('EvalNorm in your own model', 'NNX')`` the first under that
  section's "### NNX".
  """
  text = _readme()
  position = 0
  for heading in headings:
    match = re.compile(rf'^#+ {re.escape(heading)}\s*$', re.M).search(
        text, position)
    assert match, f'README has no heading {heading!r} after {headings[:-1]}'
    position = match.end()
  return re.compile(r'```python\n(.*?)```', re.S).search(text, position).group(1)


def readme_calibration_top1() -> tuple[float, float]:
  """The (moving averages, calibrated EvalNorm) top-1 % the README quotes for
  the calibration examples' test model."""
  match = re.search(r'the moving averages give about (\d+)% top-1, the '
                    r'calibrated\s+EvalNorm about (\d+)%', _readme())
  assert match, 'README no longer quotes the calibration top-1'
  return float(match.group(1)), float(match.group(2))
