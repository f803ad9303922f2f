"""TCAV: testing with concept activation vectors (Kim et al., ICML 2018).

For a classifier split as logits = c2(c1(x)) at a layer of width d:
  CAV v_c [d]      unit normal of a linear classifier separating c1 of concept examples
                   from c1 of counterexamples (logistic regression, positive side = concept)
  S_{c,k}(x)       ∇_h c2(h)_k · v_c at h = c1(x)                      (directional derivative)
  TCAV_{c,k}       fraction of class-k examples with S_{c,k}(x) > 0
Significance: the scores of R concept CAVs (concept vs a fresh draw of counterexamples per
run) against the scores of R random CAVs (random vs random examples), with a two-sided
two-sample t-test; the Student-t tail comes from the regularised incomplete beta function.
"""
from __future__ import annotations

import functools
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


# ----------------------------------------------------------------------------- statistics
def student_t_two_sided_p(t: Array, df: Array) -> Array:
  """Two-sided p-value P(|T| ≥ |t|) of Student's t with `df` (real, > 0) degrees of freedom.

  P(|T| ≥ |t|) = I_x(df/2, 1/2) with x = df / (df + t²); broadcasts over t and df.
  For x > ½ (|t| < √df, p large) it uses 1 − I_{1−x}(1/2, df/2) with 1 − x = t²/(df + t²)
  computed directly, which keeps float32 accurate for large df.
  """
  t = jnp.asarray(t, jnp.float32)
  df = jnp.asarray(df, jnp.float32)
  t2 = t * t
  x = df / (df + t2)
  direct = jax.scipy.special.betainc(df / 2.0, 0.5, jnp.minimum(x, 0.5))
  flipped = 1.0 - jax.scipy.special.betainc(0.5, df / 2.0, jnp.minimum(t2 / (df + t2), 0.5))
  return jnp.where(x <= 0.5, direct, flipped)


def ttest_ind(a: Array, b: Array, *, equal_var: bool = True) -> tuple[Array, Array]:
  """Two-sided two-sample t-test over the last axis: a [..., n], b [..., m] → (t, p) [...].

  equal_var=True is Student's pooled-variance test (scipy.stats.ttest_ind's default, and
  what the TCAV reference code calls); False is Welch's test. When both samples have zero
  variance, equal means give t = 0, p = 1 and different means give t = ±inf, p = 0.
  """
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  n, m = a.shape[-1], b.shape[-1]
  diff = jnp.mean(a, -1) - jnp.mean(b, -1)
  va, vb = jnp.var(a, -1, ddof=1), jnp.var(b, -1, ddof=1)
  if equal_var:
    df = jnp.full_like(diff, n + m - 2)
    pooled = ((n - 1) * va + (m - 1) * vb) / (n + m - 2)
    se2 = pooled * (1.0 / n + 1.0 / m)
  else:
    qa, qb = va / n, vb / m
    se2 = qa + qb
    # Welch–Satterthwaite; any positive df will do when se2 == 0 (p is then 0 or 1).
    df = jnp.where(se2 > 0, se2**2 / jnp.maximum(qa**2 / (n - 1) + qb**2 / (m - 1), 1e-30),
                   n + m - 2.0)
  safe_se = jnp.sqrt(jnp.where(se2 > 0, se2, 1.0))
  t = jnp.where(se2 > 0, diff / safe_se, jnp.where(diff == 0, 0.0, jnp.sign(diff) * jnp.inf))
  return t, student_t_two_sided_p(t, df)


# ----------------------------------------------------------------------------- CAVs
def train_cav(acts: Array, is_concept: Array, *, steps: int = 200,
              learning_rate: float = 0.1, l2: float = 1e-3) -> Array:
  """Unit CAV [d] from activations [n, d] and boolean concept labels [n].

  L2-regularised logistic regression, full batch, Adam from zero: deterministic, no key.
  Activations are centred and divided by one scalar (their RMS) for conditioning; a scalar
  keeps the geometry, so the normal found is the normal in activation space. The sign is
  such that the concept side is positive.
  """
  y = jnp.asarray(is_concept, jnp.float32)
  mu = jnp.mean(acts, axis=0)
  x = acts - mu
  x = x / jnp.maximum(jnp.sqrt(jnp.mean(x * x)), 1e-12)
  tx = optax.adam(learning_rate)

  def loss_fn(wb):
    w, b = wb
    z = x @ w + b
    return jnp.mean(optax.sigmoid_binary_cross_entropy(z, y)) + 0.5 * l2 * jnp.sum(w * w)

  def step(carry, _):
    wb, opt = carry
    g = jax.grad(loss_fn)(wb)
    upd, opt = tx.update(g, opt, wb)
    return (optax.apply_updates(wb, upd), opt), None

  wb0 = (jnp.zeros(acts.shape[-1], acts.dtype), jnp.zeros((), acts.dtype))
  ((w, _), _), _ = jax.lax.scan(step, (wb0, tx.init(wb0)), None, length=steps)
  return w / jnp.maximum(jnp.linalg.norm(w), 1e-12)


def mean_difference_cav(acts: Array, is_concept: Array) -> Array:
  """Unit CAV [d]: mean of the concept's activations minus mean of the others' [n, d].

  The "pattern" rather than the "filter" of a linear model (Haufe et al., NeuroImage 2014):
  where a concept is separable along many directions, logistic regression picks one by its
  margin, while the mean difference is the direction the data actually move in between the
  two groups, so ∇f · v says how f changes from one group to the other.
  """
  y = jnp.asarray(is_concept, acts.dtype)[:, None]
  v = jnp.sum(acts * y, 0) / jnp.maximum(jnp.sum(y), 1.0) - (
      jnp.sum(acts * (1 - y), 0) / jnp.maximum(jnp.sum(1 - y), 1.0))
  return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)


def _sample(key: Array, member: Array, num: int) -> Array:
  """`num` distinct indices [num] drawn uniformly from where member [N] is True.

  Top-k of uniform scores with non-members pushed below 0: fixed shapes, so it vmaps.
  The caller guarantees member.sum() ≥ num.
  """
  u = jax.random.uniform(key, member.shape)
  return jax.lax.top_k(jnp.where(member, u, -1.0), num)[1]


def class_gradients(c2: Callable[[Array], Array], acts: Array,
                    output: Literal['logit', 'log_prob'] = 'logit') -> Array:
  """∇_h of class k's output for every class: acts [N, d] → [N, C, d].

  output 'logit' differentiates c2(h)_k (the reference TCAV); 'log_prob' differentiates
  log_softmax(c2(h))_k. One VJP per class over the whole batch; valid because c2 treats
  rows independently (eval mode: no batch statistics), so the gradient of the batch sum
  is each row's own.
  """
  if output not in ('logit', 'log_prob'):
    raise ValueError(f"output must be 'logit' or 'log_prob', got {output!r}")
  fn = c2 if output == 'logit' else (lambda h: jax.nn.log_softmax(c2(h), axis=-1))
  logits, vjp = jax.vjp(fn, acts)
  num_classes = logits.shape[-1]
  cot = jnp.broadcast_to(jnp.eye(num_classes, dtype=logits.dtype)[:, None, :],
                         (num_classes,) + logits.shape)
  (g,) = jax.vmap(vjp)(cot)                                            # [C, N, d]
  return jnp.swapaxes(g, 0, 1)


def tcav_scores(grads: Array, labels: Array, cavs: Array) -> Array:
  """TCAV scores [..., C] of CAVs [..., d] from class gradients [N, C, d] and labels [N].

  Score [..., k] = fraction of the examples with label k whose class-k logit increases along
  the CAV (NaN for a class with no examples).
  """
  num_classes = grads.shape[1]
  dd = jnp.einsum('ncd,...d->...nc', grads, cavs)                      # [..., N, C]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=grads.dtype)      # [N, C]
  positive = jnp.sum((dd > 0).astype(grads.dtype) * onehot, axis=-2)
  return positive / jnp.sum(onehot, axis=0)


@functools.partial(jax.jit, static_argnames=('num_runs', 'num_per_side', 'negatives',
                                             'equal_var', 'cav_method', 'steps',
                                             'learning_rate', 'l2'))
def _tcav_core(key, acts, concepts, grads, eval_labels, *, num_runs, num_per_side,
               negatives, equal_var, cav_method, steps, learning_rate, l2):
  """Concept and random CAVs, their scores and the t-test; see `tcav`."""
  num_attr = concepts.shape[1]
  k_concept, k_random = jax.random.split(key)
  if cav_method == 'logistic':
    fit = functools.partial(train_cav, steps=steps, learning_rate=learning_rate, l2=l2)
  else:
    fit = mean_difference_cav
  is_pos = jnp.concatenate([jnp.ones(num_per_side, bool), jnp.zeros(num_per_side, bool)])

  def concept_cav(k, member):
    """One run of one concept: fresh concept examples and counterexamples."""
    kp, kn = jax.random.split(k)
    neg_pool = ~member if negatives == 'complement' else jnp.ones_like(member)
    idx = jnp.concatenate([_sample(kp, member, num_per_side),
                           _sample(kn, neg_pool, num_per_side)])
    return fit(acts[idx], is_pos)

  def random_cav(k):
    """Random vs random: two disjoint random sets of the same size."""
    idx = _sample(k, jnp.ones(acts.shape[0], bool), 2 * num_per_side)
    return fit(acts[idx], is_pos)

  keys = jax.random.split(k_concept, (num_attr, num_runs))
  cavs = jax.vmap(jax.vmap(concept_cav, (0, None)), (0, 1))(keys, concepts)   # [A, R, d]
  random_cavs = jax.vmap(random_cav)(jax.random.split(k_random, num_runs))     # [R, d]
  concept_scores = tcav_scores(grads, eval_labels, cavs)                       # [A, R, C]
  random_scores = tcav_scores(grads, eval_labels, random_cavs)                 # [R, C]
  t, p = ttest_ind(jnp.moveaxis(concept_scores, 1, -1),
                   jnp.moveaxis(random_scores, 0, -1)[None], equal_var=equal_var)
  return dict(score=jnp.mean(concept_scores, axis=1), p_value=p, t=t,
              concept_scores=concept_scores, random_scores=random_scores,
              cavs=cavs, random_cavs=random_cavs)


def tcav(key: Array, c2: Callable[[Array], Array], acts: Array, concepts: Array,
         labels: Array, *, num_runs: int = 10, num_per_side: int = 50,
         negatives: Literal['complement', 'random'] = 'complement',
         eval_acts: Array | None = None, eval_labels: Array | None = None,
         output: Literal['logit', 'log_prob'] = 'logit', alpha: float = 0.05,
         equal_var: bool = True,
         cav_method: Literal['logistic', 'mean_difference'] = 'logistic', cav_steps: int = 200,
         learning_rate: float = 0.1, l2: float = 1e-3, grads: Array | None = None
         ) -> dict[str, Array]:
  """TCAV of every (concept, class) pair, with a significance test against random CAVs.

  Args:
    key: PRNG key; the result is a function of it (and of the inputs) only.
    c2: activations [B, d] → logits [B, C] (eval mode, rows independent).
    acts: activations h = c1(x) [N, d] that CAVs are trained on.
    concepts: bool [N, A]; concept a = the examples where column a is True.
    labels: int [N], class of each example (used for scoring unless eval_labels is given).
    num_runs: R ≥ 10 concept CAVs per concept and R random CAVs.
    num_per_side: examples per side of each CAV's training set (clipped to what the
      smallest concept / counterexample pool holds).
    negatives: counterexamples drawn from where the concept is False ('complement'), or
      from all examples ('random', the reference code's random images).
    eval_acts, eval_labels: examples the scores are computed on (default: acts, labels).
    output: differentiate class k's logit ('logit', the reference) or its log-probability
      ('log_prob'). A softmax ignores what is added to every logit alike, but a raw
      logit's derivative includes it: with 2 classes, ∇ log p_k ∝ ∇(logit_k − logit_other)
      has the sign of what the prediction does, ∇ logit_k need not.
    alpha: significance level of the two-sided t-test (no multiple-comparison correction;
      pass alpha / (A·C) for Bonferroni).
    equal_var: Student's pooled test (True, the reference code's) or Welch's (False).
    cav_method: 'logistic' (`train_cav`, the reference; cav_steps, learning_rate, l2 are
      its settings) or 'mean_difference' (`mean_difference_cav`).
    grads: `class_gradients(c2, eval_acts, output)` [N, C, d] when the caller has them
      (e.g. from a jitted function; outside jit each op compiles on its own); c2 is then
      not called.

  Returns:
    score [A, C] (mean TCAV score over runs), p_value [A, C], significant bool [A, C],
    t [A, C], concept_scores [A, R, C], random_scores [R, C], cavs [A, R, d],
    random_cavs [R, d].
  """
  if num_runs < 2:
    raise ValueError(f'num_runs must be ≥ 2 for a t-test (≥ 10 recommended), got {num_runs}')
  if cav_method not in ('logistic', 'mean_difference'):
    raise ValueError(f"cav_method must be 'logistic' or 'mean_difference', got {cav_method!r}")
  if negatives not in ('complement', 'random'):
    raise ValueError(f"negatives must be 'complement' or 'random', got {negatives!r}")
  concepts_np = np.asarray(concepts, bool)
  if concepts_np.ndim != 2 or concepts_np.shape[0] != acts.shape[0]:
    raise ValueError(f'concepts must be bool [N, A] with N = {acts.shape[0]}, got '
                     f'{concepts_np.shape}')
  pools = [concepts_np.sum(0).min(), len(concepts_np) // 2]
  if negatives == 'complement':
    pools.append((~concepts_np).sum(0).min())
  m = int(min(num_per_side, *pools))
  if m < 2:
    raise ValueError(f'every concept needs ≥ 2 examples and ≥ 2 counterexamples; the '
                     f'smallest pool has {m}')
  # Host arrays placed with device_put: an eager jnp.asarray compiles an executable per shape.
  eval_acts = acts if eval_acts is None else eval_acts
  eval_labels = labels if eval_labels is None else eval_labels
  if grads is None:
    grads = class_gradients(c2, jnp.asarray(eval_acts), output)
  out = _tcav_core(key, jnp.asarray(acts), jax.device_put(concepts_np), grads,
                   jnp.asarray(eval_labels), num_runs=num_runs, num_per_side=m,
                   negatives=negatives, equal_var=equal_var, cav_method=cav_method,
                   steps=cav_steps,
                   learning_rate=learning_rate, l2=l2)
  out['significant'] = out['p_value'] < alpha
  return out


def tcav_table(result: dict[str, Array], concept_names: Sequence[str]
               ) -> dict[tuple[str, int], dict[str, float | bool]]:
  """{(concept name, class): {score, p_value, significant}} from a `tcav` result."""
  score, p, sig = (np.asarray(result[k]) for k in ('score', 'p_value', 'significant'))
  return {(name, k): dict(score=float(score[a, k]), p_value=float(p[a, k]),
                          significant=bool(sig[a, k]))
          for a, name in enumerate(concept_names) for k in range(score.shape[1])}
