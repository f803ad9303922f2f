"""The package's shape: layers import only downward, no module over 450 lines, setup.cfg's
package list matches the tree, and configs/ is importable as lsei_jax.configs."""
import ast
import configparser
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / 'lsei_jax'

# Layers, bottom first: a module may import its own layer and those below, never above.
# maths: the top-level modules (relaxed Bernoulli, Fisher, interventions, models, …);
# data, concepts, the INN and baselines on it; training (loop, checkpoints, steps); reporting
# (tables, figures, the verdict's statistics); the pipeline (run spec, graph, walks);
# the API and the CLI.
LAYERS = {'maths': 0, 'data': 1, 'concepts': 1, 'inn': 1, 'baselines': 1, 'configs': 1,
          'training': 2, 'reporting': 3, 'pipeline': 4, 'api': 5, 'cli': 5, '__init__': 5}


def _layer(module: str) -> int:
  """'lsei_jax.training.trainer' → its layer."""
  parts = module.split('.')
  if len(parts) == 1:
    return LAYERS['__init__']
  return LAYERS.get(parts[1], LAYERS['maths'])


def _imports(path: pathlib.Path):
  """lsei_jax modules a file imports: 'from lsei_jax.x import y' and 'import lsei_jax.x',
  with 'from lsei_jax import y' read as lsei_jax.y."""
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('lsei_jax'):
      if node.module == 'lsei_jax':
        yield from (f'lsei_jax.{a.name}' for a in node.names)
      else:
        yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('lsei_jax'))


def _module_of(path: pathlib.Path) -> str:
  """lsei_jax/training/trainer.py → 'lsei_jax.training.trainer' (a package: its name)."""
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def test_no_import_runs_back_up():
  upward = []
  for path in PKG.rglob('*.py'):
    mod = _module_of(path)
    if path.name == '__init__.py' and path.parent == PKG:
      continue   # the public namespace gathers every layer
    for imp in _imports(path):
      if _layer(imp) > _layer(mod):
        upward.append(f'{mod} imports {imp}')
  assert not upward, upward


def test_the_layer_check_sees_an_upward_import(tmp_path):
  # The checker itself: a maths module importing training is caught.
  bad = tmp_path / 'fisher.py'
  bad.write_text('from lsei_jax.training import steps\n')
  assert [(_layer(i), _layer('lsei_jax.fisher')) for i in _imports(bad)] == [(2, 0)]


def test_no_module_over_450_lines():
  long = {str(p.relative_to(ROOT)): n for p in PKG.rglob('*.py')
          if (n := len(p.read_text().splitlines())) > 450}
  assert not long, long


def test_setup_cfg_lists_every_package():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  listed = set(cfg['options']['packages'].split())
  tree = {'.'.join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob('__init__.py')}
  assert listed == tree | {'lsei_jax.configs'}, (listed ^ (tree | {'lsei_jax.configs'}))
  assert 'lsei_jax.configs = configs' in cfg['options']['package_dir']


def test_configs_import_as_lsei_jax_configs_from_outside_the_repository(tmp_path):
  code = ('import lsei_jax.configs.tiny as t, lsei_jax.configs.shapes as s; '
          'assert t.get_config().data.image_size == 16; print(s.__name__)')
  r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == 'lsei_jax.configs.shapes', r.stderr
