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
