"""The README's examples run as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_api_example_runs():
  text = README.read_text()
  match = re.search(r'<!-- api-example -->\s*```python\n(.*?)```', text, re.S)
  assert match, 'README lost its API example'
  exec(compile(match.group(1), 'README-api-example', 'exec'), {})
