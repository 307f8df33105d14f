"""The python examples of the README and docs/, by section, for the tests
that run them."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(filename: str = 'README.md') -> str:
  with open(os.path.join(ROOT, filename)) as f:
    return f.read()


def readme_text() -> str:
  return _read()


def readme_code(*headings: str) -> str:
  """The first ```python block of README.md after the given headings, in order.

  ``readme_code('The layer')`` is the first example under "## The layer";
  ``readme_code('EvalNorm in your own model', 'NNX')`` the first under that
  section's "### NNX".
  """
  return doc_code('README.md', *headings)


def doc_code(filename: str, *headings: str) -> str:
  """As ``readme_code``, in ``filename`` (relative to the repository)."""
  text = _read(filename)
  position = 0
  for heading in headings:
    match = re.compile(rf'^#+ {re.escape(heading)}\s*$', re.M).search(
        text, position)
    assert match, f'{filename} has no heading {heading!r} after {headings[:-1]}'
    position = match.end()
  return re.compile(r'```python\n(.*?)```', re.S).search(text, position).group(1)


def readme_calibration_gains() -> dict[str, tuple[float, float]]:
  """The measured ranges of calibrated EvalNorm's top-1 gain over the moving
  averages that the README quotes for the calibration examples' test model,
  by API: {'linen': (low, high), 'NNX': (low, high)}."""
  pattern = (r'beats the moving averages by ([\d.]+)-([\d.]+) points of top-1 '
             r'in linen and by ([\d.]+)-([\d.]+) in NNX').replace(' ', r'\s+')
  match = re.search(pattern, readme_text())
  assert match, 'README no longer quotes the calibration gains'
  low, high, nnx_low, nnx_high = map(float, match.groups())
  return {'linen': (low, high), 'NNX': (nnx_low, nnx_high)}
