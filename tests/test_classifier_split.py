"""ClassifierSplit: classifiers the library did not define, cut at any layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsei_jax
from examples import resnet
from lsei_jax import classifier_split, errors, models
from lsei_jax.classifier_split import ClassifierSplit, from_module, split_at


@pytest.fixture(scope='module')
def resnet_variables():
  model = resnet.ResNet(widths=(4, 8), num_classes=3)
  x = jax.random.uniform(jax.random.key(1), (6, 16, 16, 3))
  variables = model.init(jax.random.key(0), x[:1])
  # Running statistics unlike a batch's own, so inference mode is visible in the output.
  stats = jax.tree.map(lambda s: s + 0.3 * jax.random.normal(jax.random.key(2), s.shape) ** 2,
                       variables['batch_stats'])
  return model, {'params': variables['params'], 'batch_stats': stats}, x


def test_resnet_cut_after_global_pooling(resnet_variables):
  model, variables, x = resnet_variables
  split = lsei_jax.split_at(model, variables, 'pool', example=x, train=False)
  h = jax.jit(split.embed)(variables, x)
  # Oracle: the pooled features Flax itself captures, in inference mode.
  _, inter = model.apply(variables, x, train=False, capture_intermediates=True)
  np.testing.assert_allclose(h, inter['intermediates']['pool']['__call__'][0], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(split.head)(variables, h),
                             model.apply(variables, x, train=False), rtol=1e-5, atol=1e-6)
  assert split.dims((16, 16, 3)) == (8, 3)
  # BatchNorm ran with the running averages (train mode would use batch statistics).
  train_out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert np.max(np.abs(split(x) - train_out)) > 1e-3


def test_cut_inside_residual_block_is_refused(resnet_variables):
  model, variables, x = resnet_variables
  with pytest.raises(ValueError, match=r"layer 'block1/Conv_0' of ResNet is not a cut.*skip"):
    split_at(model, variables, 'block1/Conv_0', example=x, train=False)
  # After a whole block, every path goes through the cut.
  split = split_at(model, variables, 'block1', example=x, train=False)
  assert split.dims((16, 16, 3)) == (8 * 8 * 8, 3)


def test_unknown_layer_names_the_submodules(resnet_variables):
  model, variables, x = resnet_variables
  with pytest.raises(ValueError, match=r"calls no submodule 'poool'.*block0/Conv_0.*pool"):
    split_at(model, variables, 'poool', example=x, train=False)


def test_plain_function_pair():
  rng = np.random.default_rng(0)
  w, v = rng.normal(size=(12, 5)), rng.normal(size=(5, 4))
  params = {'w': jnp.asarray(w, jnp.float32), 'v': jnp.asarray(v, jnp.float32)}
  split = ClassifierSplit(embed=lambda p, x: jax.nn.relu(x.reshape(x.shape[0], -1) @ p['w']),
                          head=lambda p, h: h @ p['v'], params=params)
  x = rng.uniform(size=(3, 2, 2, 3))
  want = np.maximum(x.reshape(3, -1) @ w, 0) @ v
  np.testing.assert_allclose(split(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)
  assert split.dims((2, 2, 3)) == (5, 4)
  split.check_cut(jnp.asarray(x, jnp.float32))  # no uncut model given: nothing to compare


def test_from_module_uses_embed_and_head():
  clf = models.Classifier(channels=(4,), strides=(2,), hidden_dim=6, num_classes=3)
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  variables = clf.init(jax.random.key(1), x)
  split = lsei_jax.ClassifierSplit.from_module(clf, variables, train=False)
  np.testing.assert_allclose(split(x), clf.apply(variables, x), rtol=1e-6)
  assert split.dims((8, 8, 3)) == (6, 3)
  split.check_cut(x)


def test_shape_errors_name_the_problem():
  flat = lambda p, x: x.reshape(x.shape[0], -1)
  bad_embed = ClassifierSplit(embed=lambda p, x: x, head=lambda p, h: h, params={})
  with pytest.raises(ValueError, match=r'embed returns shape \(2, 4, 4, 3\).*\[B, d\]'):
    bad_embed.dims((4, 4, 3))
  one_class = ClassifierSplit(embed=flat, head=lambda p, h: h[:, :1], params={})
  with pytest.raises(ValueError, match=r'C ≥ 2'):
    one_class.dims((4, 4, 3))
  with pytest.raises(ValueError, match=r"Flax variables \{'params'"):
    from_module(models.Classifier(), {'Conv_0': {}})


# ----------------------------------------------------------------------- the random head
def test_random_head_matches_the_real_heads_logit_spread(resnet_variables):
  model, variables, x = resnet_variables
  split = lsei_jax.split_at(model, variables, 'pool', example=x, train=False)
  key = jax.random.key(7)
  rand = classifier_split.random_head(split, key, x)
  assert rand.params['classifier'] is variables  # the given params are never touched
  logits, real = np.asarray(rand(x), np.float64), np.asarray(split(x), np.float64)
  assert logits.shape == real.shape == (6, 3)
  spread = lambda z: np.std(z - z.mean(-1, keepdims=True))
  np.testing.assert_allclose(spread(logits), spread(real), rtol=1e-5)
  # Oracle: (h − h̄) @ s·W0 with W0 ~ N(0, 1/d) from the key; each class centred on the batch.
  h = np.asarray(split.embed(variables, x), np.float64)
  w0 = np.asarray(jax.random.normal(key, (8, 3)), np.float64) / np.sqrt(8)
  kernel = np.asarray(rand.params['random_head']['kernel'], np.float64)
  scale = kernel / w0
  np.testing.assert_allclose(scale, scale[0, 0], rtol=1e-5)
  np.testing.assert_allclose(logits, (h - h.mean(0)) @ kernel, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits.mean(0), 0, atol=1e-5)
  assert len(set(np.argmax(logits, -1))) > 1  # not one class for every image


def test_random_head_is_a_pure_function_of_the_key():
  rng = np.random.default_rng(0)
  params = (jnp.asarray(rng.normal(size=(12, 5)), jnp.float32), jnp.arange(5, dtype=jnp.int32),
            jnp.asarray(rng.normal(size=(5, 4)), jnp.float32))
  split = ClassifierSplit(embed=lambda p, x: jax.nn.relu(x.reshape(x.shape[0], -1) @ p[0])[:, p[1]],
                          head=lambda p, h: h @ p[2], params=params)
  x = jnp.asarray(rng.uniform(size=(16, 2, 2, 3)), jnp.float32)
  a, b = (classifier_split.random_head(split, jax.random.key(3), x) for _ in range(2))
  c = classifier_split.random_head(split, jax.random.key(4), x)
  for k in ('kernel', 'bias'):
    np.testing.assert_array_equal(a.params['random_head'][k], b.params['random_head'][k])
  assert not np.allclose(a.params['random_head']['kernel'], c.params['random_head']['kernel'])
  assert a.embed is c.embed and a.head is c.head  # one jitted function per given embed
  assert a.dims((2, 2, 3)) == (5, 4)
  np.testing.assert_allclose(np.std(a(x) - a(x).mean(-1, keepdims=True)),
                             np.std(split(x) - split(x).mean(-1, keepdims=True)), rtol=1e-5)


def test_random_head_refuses_non_finite_logits():
  split = ClassifierSplit(embed=lambda p, x: x.reshape(x.shape[0], -1),
                          head=lambda p, h: jnp.log(h[:, :2] - 2.0), params=())
  with pytest.raises(ValueError, match='non-finite logits on the probe batch'):
    classifier_split.random_head(split, jax.random.key(0), jnp.zeros((4, 2, 2, 3)))


def test_sanity_mode_for_given_and_builtin(tiny_config):
  from lsei_jax.pipeline import identity
  config = tiny_config.copy_and_resolve_references()
  assert identity.sanity_mode(config.sanity, given=False) == 'init'
  assert identity.sanity_mode(config.sanity, given=True) == 'head'
  config.sanity.randomize = 'head'
  assert identity.sanity_mode(config.sanity, given=False) == 'head'
  config.sanity.randomize = 'init'
  with pytest.raises(errors.UserError, match="randomize='init'.*use 'head'"):
    identity.sanity_mode(config.sanity, given=True)
  config.sanity.randomize = 'weights'
  with pytest.raises(errors.UserError, match="must be one of 'auto', 'init', 'head'"):
    identity.sanity_mode(config.sanity, given=False)


def test_head_randomization_of_attribution_maps(resnet_variables):
  import types
  from lsei_jax.reporting import crosscheck
  model, variables, x = resnet_variables
  split = lsei_jax.split_at(model, variables, 'pool', example=x, train=False)
  cfg = types.SimpleNamespace(methods=('gradient', 'integrated_gradients'), ig_steps=3,
                              flag_threshold=0.5)
  target = np.asarray(np.argmax(split(x), -1))
  # Oracle: the head "randomised" to itself gives the same maps (correlation 1, SSIM 1).
  same = crosscheck.head_randomization(split, split, x, target, cfg)
  for v in same.values():
    assert v['layers'] == ['head'] and v['flagged']
    np.testing.assert_allclose([v['spearman_abs'][0], v['ssim'][0]], 1.0, rtol=1e-5)
  rand = classifier_split.random_head(split, jax.random.key(0), x)
  out = crosscheck.head_randomization(split, rand, x, target, cfg)
  assert all(v['spearman_abs'][0] < 0.99 for v in out.values()), out
