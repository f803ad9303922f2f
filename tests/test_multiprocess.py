"""Two processes × 2 CPU devices (jax.distributed on loopback) train like one process × 4."""
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from lsei_jax.training import parallel
from lsei_jax import pipeline
from lsei_jax.training.trainer import load_complete
import pytest  # noqa: E402

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['--config=configs/tiny.py', '--stages=classifier,concepts',
        '--config.explainer.train_noreg=False']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  return env


def _params(workdir, config):
  """Final parameters of each stage, restored onto this process's devices (the 2-process
  checkpoints were written on another topology: the template's shardings place them)."""
  mesh = parallel.make_mesh()
  spec = pipeline.make_spec(config, mesh)
  out = {}
  for stage in ('classifier', 'concepts'):
    state, meta = load_complete(workdir, stage, pipeline.restore_target(spec, stage))
    out[stage] = jax.tree.map(np.asarray, state.params)
  return out


def _one_and_two_processes(tmp_path, args) -> tuple[str, str, list]:
  """train.py with `args` in one process on 4 devices and in two processes on 2 devices
  each: (single workdir, multi workdir, the two processes' (stdout, stderr)); both succeed."""
  single = str(tmp_path / 'single')
  r = subprocess.run([sys.executable, 'train.py', f'--workdir={single}', *args], cwd=ROOT,
                     env=_env(4), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  multi = str(tmp_path / 'multi')
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, 'train.py', f'--workdir={multi}', *args,
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:  # never leave a process behind, whatever happened
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return single, multi, outs


# k = 4: four steps per dispatch, each process feeding its rows of the k stacked batches.
@pytest.mark.parametrize('k', [1, 4])
def test_two_processes_equal_one_process_with_four_devices(tmp_path, tiny_config, k):
  single, multi, outs = _one_and_two_processes(
      tmp_path, ARGS + [f'--config.steps_per_dispatch={k}'])
  assert 'process 1 of 2, 2 local / 4 global devices' in outs[1][1]
  # Gradients are all-reduced by gloo across processes, in another summation order than
  # within one process: equal up to float rounding, not bit for bit.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               _params(multi, tiny_config), _params(single, tiny_config))


def _npy_dir(path: str, config) -> str:
  """The tiny config's shapes splits written as a directory of .npy files (split column)."""
  from lsei_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from lsei_jax.data import byo  # pylint: disable=g-import-not-at-top
  train, test = (data_lib.load(config.data, s) for s in ('train', 'test'))
  byo.save_npy_dir(path, np.concatenate([train.images, test.images]),
                   np.concatenate([train.attributes, test.attributes]), train.attribute_names,
                   split=['train'] * len(train) + ['test'] * len(test))
  return path


def test_images_on_disk_train_bitwise_like_in_memory(trained_workdir, tiny_config, tmp_path):
  # The same examples in the same order, read per batch from disk (data/rows.py) instead of
  # held in memory: the same batches, so the same classifier bit for bit.
  config = tiny_config.copy_and_resolve_references()
  config.data.update(name='numpy', path=_npy_dir(str(tmp_path / 'npy'), tiny_config))
  pipeline.train(config, str(tmp_path / 'wd'), ['classifier'])
  got = load_complete(str(tmp_path / 'wd'), 'classifier',
                      pipeline.restore_target(pipeline.make_spec(config), 'classifier'))
  want = load_complete(trained_workdir[0], 'classifier',
                       pipeline.restore_target(pipeline.make_spec(tiny_config), 'classifier'))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               got[0].params, want[0].params)


def test_two_processes_read_their_rows_from_disk(tmp_path, tiny_config):
  """The streaming path across hosts: each process reads only its rows of an .npy split."""
  path = _npy_dir(str(tmp_path / 'npy'), tiny_config)
  config_file = tmp_path / 'tiny_npy.py'   # the tiny config's data section has no path
  config_file.write_text(
      'import ml_collections\nfrom configs import tiny\n\n\ndef get_config():\n'
      '  c = tiny.get_config()\n'
      f'  c.data = ml_collections.ConfigDict(dict(name="numpy", path={path!r}, '
      f'image_size=16, task={tiny_config.data.task!r}, seed=0))\n  return c\n')
  single, multi, _ = _one_and_two_processes(
      tmp_path, [f'--config={config_file}', '--stages=classifier'])
  config = tiny_config.copy_and_resolve_references()
  config.data = ml_collections.ConfigDict(dict(name='numpy', path=path, image_size=16,
                                               task=tiny_config.data.task, seed=0))
  template = lambda: pipeline.restore_target(pipeline.make_spec(config), 'classifier')
  # gloo's all-reduce sums in another order than one process: equal up to rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=1e-4, atol=1e-6),
               load_complete(multi, 'classifier', template())[0].params,
               load_complete(single, 'classifier', template())[0].params)
