"""Test setup: 4 host CPU devices for data-parallel tests, and a persistent XLA cache."""
import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_CACHE = os.path.join(tempfile.gettempdir(), 'lsei_jax_test_jit_cache')
# Subprocess runs of train.py / eval.py in the tests share compilations through this cache.
os.environ.setdefault('LSEI_JAX_COMPILATION_CACHE', _CACHE)

import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_config():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  return tiny.get_config()


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory, tiny_config):
  """The tiny config trained once, uninterrupted, on 4 devices: (workdir, metas)."""
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('trained'))
  metas = pipeline.train(tiny_config, workdir)
  return workdir, metas


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
  """A private copy of the trained workdir that a test may change."""
  dst = str(tmp_path / 'wd')
  shutil.copytree(trained_workdir[0], dst)
  return dst
