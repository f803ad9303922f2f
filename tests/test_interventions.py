import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsei_jax import (bit_set_mask, decisive_bits, flip_all_mask, intervene,
                      single_bit_masks)


def test_intervene_is_an_involution_and_flip_all_is_one_minus_z():
  z = (jax.random.uniform(jax.random.key(0), (16, 8)) > 0.5).astype(jnp.float32)
  mask = (jax.random.uniform(jax.random.key(1), (8,)) > 0.5).astype(jnp.float32)
  np.testing.assert_array_equal(intervene(intervene(z, mask), mask), z)
  np.testing.assert_array_equal(intervene(z, flip_all_mask(8)), 1 - z)
  assert intervene(z, mask).dtype == z.dtype


def test_per_sample_masks_and_bit_sets():
  z = jnp.zeros((3, 4))
  masks = jnp.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], jnp.float32)
  np.testing.assert_array_equal(intervene(z, masks), masks)
  np.testing.assert_array_equal(bit_set_mask(4, [0, 3]), [1, 0, 0, 1])
  chex.assert_shape(single_bit_masks(5), (5, 5))
  zb = jnp.array([[True, False]])
  np.testing.assert_array_equal(intervene(zb, jnp.array([1, 1])), [[False, True]])


def test_decisive_bits_known_answer():
  # Decoder = identity, head predicts class 1 iff bit 0 + bit 2 >= 1 (an OR of two bits).
  decode = lambda z: z
  head = lambda h: jnp.stack([jnp.full(h.shape[0], 0.5), h[:, 0] + h[:, 2]], -1)
  z = jnp.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 1, 0]], jnp.float32)
  got = np.asarray(jax.jit(lambda z: decisive_bits(z, decode, head))(z))
  expected = np.array([[True, False, True],    # 0 → either of bits 0, 2 turns it on
                       [True, False, False],   # only bit 0 is on: flipping it turns off
                       [False, False, False],  # two bits on: no single flip turns off
                       [True, False, True]])
  np.testing.assert_array_equal(got, expected)


def test_jit_as_documented_and_shape_errors():
  # decisive_bits with its callables static (same function objects → one compilation).
  decode = lambda z: z
  head = lambda h: jnp.stack([jnp.full(h.shape[0], 0.5), h[:, 0] + h[:, 2]], -1)
  jitted = jax.jit(decisive_bits, static_argnums=(1, 2))
  z = jnp.array([[0, 0, 0], [1, 0, 1]], jnp.float32)
  np.testing.assert_array_equal(jitted(z, decode, head), [[True, False, True],
                                                          [False, False, False]])
  with pytest.raises(ValueError, match=r'codes z must be \[B, K\].*got shape \(2, 1, 3\)'):
    decisive_bits(z[:, None], decode, head)
  with pytest.raises(ValueError, match=r'mask of shape \(4,\) does not fit codes of shape '
                                       r'\(2, 3\)'):
    intervene(z, jnp.ones(4))
  # One code at a time under vmap is fine.
  np.testing.assert_array_equal(jax.vmap(intervene, (0, None))(z, flip_all_mask(3)), 1 - z)
