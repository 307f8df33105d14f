"""The README's code runs as shown."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_layer_example_runs():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  example = re.search(r'```python\n(.*?)```', readme, re.S).group(1)
  namespace = {}
  exec(compile(example, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['eval_logits'].shape == (8, 10)
  assert float(namespace['aux']) > 0

