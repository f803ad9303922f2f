"""The persistent compilation cache is on for library entry points, configurable and off
with ''. Each case runs in a fresh interpreter: JAX decides once per process."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import os, sys
    import jax, jax.numpy as jnp
    from lsei_jax import compile_cache
    jnp.ones(3).sum().block_until_ready()   # a compilation before the cache is turned on
    arg = sys.argv[1]
    path = compile_cache.enable(None if arg == 'default' else arg)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
    print(repr(path))
''')


def _run(arg, env_extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('LSEI_JAX_COMPILATION_CACHE', 'XLA_FLAGS')}
  env.update(env_extra, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _SCRIPT, arg], env=env, check=True,
                       capture_output=True, text=True)
  return eval(out.stdout.strip().splitlines()[-1])  # pylint: disable=eval-used


def test_enable_writes_to_the_given_directory_after_earlier_compilations(tmp_path):
  cache = str(tmp_path / 'xla')
  assert _run(cache, {'HOME': str(tmp_path)}) == cache
  assert os.listdir(cache)


def test_default_is_the_environment_variable_then_the_user_cache(tmp_path):
  env_cache = str(tmp_path / 'from_env')
  assert _run('default', {'HOME': str(tmp_path), 'LSEI_JAX_COMPILATION_CACHE': env_cache}
              ) == env_cache
  assert os.listdir(env_cache)
  home = tmp_path / 'home'
  home.mkdir()
  path = _run('default', {'HOME': str(home)})
  assert path == str(home / '.cache' / 'lsei_jax' / 'xla') and os.listdir(path)


def test_empty_string_turns_it_off(tmp_path):
  home = tmp_path / 'home'
  home.mkdir()
  assert _run('', {'HOME': str(home)}) == ''
  assert _run('default', {'HOME': str(home), 'LSEI_JAX_COMPILATION_CACHE': ''}) == ''
  assert not (home / '.cache').exists()
