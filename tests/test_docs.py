"""The README and docs/ stay navigable: every relative link reaches a file (and a heading,
when it names one), and the README stays short enough to read (issue 24: ≤ 300 lines)."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))


def _prose(text):
  """The text outside fenced code blocks (links inside code are not links)."""
  return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


def _anchors(page):
  """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces → '-'."""
  heads = re.findall(r'^#+\s+(.*)$', _prose(page.read_text()), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in heads}


def _links(page):
  for target in re.findall(r'\]\(([^)\s]+)\)', _prose(page.read_text())):
    if not re.match(r'[a-z]+:', target):  # http:, https:, mailto: are not checked
      yield target


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  broken = []
  for target in _links(page):
    path, _, anchor = target.partition('#')
    dest = (page.parent / path) if path else page
    if not dest.exists():
      broken.append(target)
    elif anchor and dest.is_file() and anchor not in _anchors(dest):
      broken.append(target)
  assert not broken, f'{page.name}: links that lead nowhere: {broken}'


def test_anchor_rule_matches_github():
  # Known GitHub anchors of headings in these pages, so that the rule above is not vacuous.
  assert 'your-own-data' in _anchors(ROOT / 'docs' / 'configs.md')
  assert 'metricsjson' in _anchors(ROOT / 'docs' / 'report.md')
  assert 'what-a-run-guarantees' in _anchors(ROOT / 'docs' / 'errors.md')


def test_readme_is_short():
  assert len((ROOT / 'README.md').read_text().splitlines()) <= 300
