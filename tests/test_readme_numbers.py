"""The READMEs' numbers are their results' (experiments/readme.py)."""

import copy

from experiments import readme_numbers as readme


def test_every_readme_block_is_rendered_from_the_committed_results():
  assert readme.stale_blocks() == []


def test_every_renderer_has_its_block_in_a_readme():
  found = set()
  for filename in readme.README_FILES:
    with open(f'{readme.ROOT}/{filename}') as f:
      found |= set(readme.blocks_in(f.read()))
  assert set(readme.BLOCKS) <= found


def test_a_changed_result_makes_its_blocks_stale():
  sources = readme.Sources.load()
  changed = copy.deepcopy(sources.cost)
  setup = readme._setup(changed[('cifar', 'default')])  # pylint: disable=protected-access
  setup['ratios']['train_B2_amortized'] += 0.01
  stale = readme.stale_blocks(sources=readme.Sources(changed))
  assert stale == ['README.md: cost-table', 'README.md: cost-summary']


def test_check_exits_nonzero_naming_a_stale_block(tmp_path, capsys):
  (tmp_path / 'experiments').mkdir()
  for filename in readme.README_FILES:
    with open(f'{readme.ROOT}/{filename}') as f:
      text = f.read()
    (tmp_path / filename).write_text(text.replace(
        '<!-- cost-table -->\n|', '<!-- cost-table -->\n| edited by hand |'))
  assert readme.stale_blocks(str(tmp_path)) == ['README.md: cost-table']
  readme.rewrite(str(tmp_path))
  assert readme.stale_blocks(str(tmp_path)) == []
  assert readme.main(['--check']) == 0
  assert 'stale' not in capsys.readouterr().out
