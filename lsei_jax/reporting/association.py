"""The verdict's statistics: how the classifier's predictions depend on each attribute of a
test split whose attributes may correlate (real data) and whose cells may be small.

The effect of attribute a on class k is the average over the test split of the change in
P(ŷ = k) when a goes 0 → 1 (what "relies on" means, and what re-rendering each image with a
flipped measures), estimated by least squares of 1[ŷ = k] on a, the other attributes and a ×
each centred other attribute (regression adjustment with interactions, Lin 2013): the
coefficient of a is the split's mean of fitted(a = 1) − fitted(a = 0). Without the
interactions the coefficient of a is a conditional-variance-weighted average of a's effect
over the other attributes' strata, not the split's average, wherever the effect differs
between strata and a correlates with them (docs/truthfulness_celeba_shaped.md: Male's effect
0.13–0.30 too high). An a × b term enters only where each of the four (a, b) cells holds at
least MIN_CELL images (the usual ten observations per parameter): below that the split cannot
estimate how a's effect differs with b, and the fit assumes it does not (the row's evidence
names those b among a's correlated attributes). Its interval:

  - HC3 standard errors (residuals inflated by 1/(1 − leverage)): robust to the
    heteroskedasticity of a binary outcome and, unlike HC0, not too small where a few
    images carry a coefficient; they widen with collinearity and with poorly identified
    interactions through (DᵀD)⁻¹;
  - a variance floor per image, p̃(1 − p̃) with p̃ the prediction's probability fitted
    without the attribute (the score test's null variance): where every image of a small
    cell has the same prediction its HC3 residuals are all 0, and that alone would read
    as certainty (8 positives at N = 200: a 10–21% family-wise error with HC0);
  - a Student t reference with Welch–Satterthwaite df, at most N − rank(design) (infinite
    width at df = 0: two images never give a zero-width interval), Bonferroni over
    attributes × classes.
The estimand is the average over *this* split's images (their attributes fixed), so the
sandwich conditional on the attributes is its variance.

Identifiability: an attribute that is a linear function of the others in the split (a copy,
a complement, a constant) has no effect the split can estimate; it gets 'cannot tell',
naming the attributes it is collinear with and how many test images separate it from its
most correlated one. Every row names the estimator and its evidence.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax.errors import UserError

MIN_CELL = 10
ESTIMATOR = ('average effect over the test split (least squares with a × other-attribute '
             f'interactions where each cell holds ≥ {MIN_CELL} images, HC3, t reference)')
ADDITIVE_ESTIMATOR = 'adjusted association (linear probability model, HC3, t reference)'


def check_inputs(pred: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                 num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(pred int [N], attributes float64 {0, 1} [N, A]) or a one-line UserError.

  ±1-coded attributes (CelebA's list_attr_celeba.txt) are mapped −1 → 0, +1 → 1: read as
  booleans they would all be True, i.e. constant.
  """
  pred, x = np.asarray(pred), np.asarray(attributes)
  if x.ndim != 2:
    raise UserError(f'attributes must be a 2-D array [N, A], got shape {x.shape}')
  if x.shape[1] != len(names):
    raise UserError(f'{x.shape[1]} attribute columns but {len(names)} names; give one name '
                    'per column')
  if pred.ndim != 1 or len(pred) != len(x):
    raise UserError(f'predictions have shape {pred.shape} but attributes have {len(x)} rows; '
                    'give one prediction per image')
  if pred.dtype.kind not in 'biu' and not (pred.dtype.kind == 'f' and np.all(np.isfinite(pred))
                                           and np.all(pred == np.round(pred))):
    raise UserError('predictions must be integer class indices (argmax of the logits), not '
                    f'{pred.dtype} values')
  if len(pred) and (pred.min() < 0 or pred.max() >= num_classes):
    raise UserError(f'predictions must be class indices in [0, {num_classes}); got values in '
                    f'[{pred.min()}, {pred.max()}]')
  if x.dtype == bool:
    return pred.astype(np.int64), x.astype(np.float64)
  if x.dtype.kind not in 'biuf':
    raise UserError(f'attributes must be binary numbers, got dtype {x.dtype}')
  x = x.astype(np.float64)
  if np.isnan(x).any():
    col = int(np.argwhere(np.isnan(x))[0, 1])
    raise UserError(f'attribute {names[col]!r} has missing (NaN) values; drop those images '
                    'or fill the attribute in')
  values = set(np.unique(x).tolist())
  if values <= {-1.0, 1.0} and -1.0 in values:
    return pred.astype(np.int64), (x > 0).astype(np.float64)
  if not values <= {0.0, 1.0}:
    bad = next(a for a in range(x.shape[1]) if not set(np.unique(x[:, a])) <= {0.0, 1.0})
    raise UserError(f'attribute {names[bad]!r} takes values {sorted(set(np.unique(x[:, bad])))[:5]}'
                    '; attributes must be binary (0/1, or −1/+1 for every column)')
  return pred.astype(np.int64), x


def t_quantile(p: float, df):
  """Student t quantile at p with df (a number or an array) degrees of freedom (inf for
  df ≤ 0: no residual information; df = inf: the normal quantile)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top  (a dependency of jax)
  df = np.asarray(df, np.float64)
  q = np.where(df > 0, stats.t.ppf(p, np.maximum(df, 1e-12)), np.inf)
  return float(q) if q.ndim == 0 else q


def effects(y: np.ndarray, x: np.ndarray, min_cell: int | None = MIN_CELL) -> dict:
  """Average effects over the split of every column of x [N, A] (float {0, 1}) on each
  outcome column of y [N, R] (float), with HC3-and-floor standard errors; vectorised over
  outcomes (module doc). min_cell=None: the additive fit (no interactions; the verdict
  before the average effect, kept for comparison).

  Returns {'effect' [A, R], 'se' [A, R] (inf where not identifiable), 'df' [A, R] (the
  t reference's degrees of freedom: Welch–Satterthwaite's for the sandwich, at most
  N − rank; 0 where not identifiable),
  'identifiable' bool [A], 'collinear' [A] lists of column indices a is a linear function
  of (with the constant), 'residual_ss' [A] (Σ of x_a's residual on the others: the
  information left to separate a; 0 when not identifiable), 'additive_in' [A] lists of the
  columns b whose a × b term was left out (a cell under min_cell; all of them for
  min_cell=None)}.
  """
  n, num_a = x.shape
  design = np.concatenate([np.ones((n, 1)), x], 1)                    # [N, P]
  # Everything through Gram matrices (P ≤ 2A): an SVD or lstsq of the N × P design per
  # attribute took 30 s at CelebA's test size (N = 19,962, A = 40) on 2 CPU cores.
  gram = design.T @ design
  xty = design.T @ y                                                  # [P, R]
  tol = 1e-8 * max(n, 1)
  eff, se = np.zeros((num_a, y.shape[1])), np.full((num_a, y.shape[1]), np.inf)
  df = np.zeros((num_a, y.shape[1]))
  ident, collinear, rss = np.zeros(num_a, bool), [], np.zeros(num_a)
  additive_in = []
  ones = x.sum(0)
  both = x.T @ x                                                      # [A, A] cells a = b = 1
  for a in range(num_a):
    o = np.delete(np.arange(num_a + 1), a + 1)                        # the other columns
    g_oo = np.linalg.pinv(gram[np.ix_(o, o)], hermitian=True)
    coef = g_oo @ gram[o, a + 1]                     # x_a on the others (least squares)
    rss[a] = max(float(gram[a + 1, a + 1] - gram[o, a + 1] @ coef), 0.0)
    others = [b for b in range(num_a) if b != a]
    if rss[a] <= tol:
      collinear.append([int(b - 1) + (b - 1 >= a) for b in np.nonzero(np.abs(coef) > 1e-6)[0]
                        if b > 0])
      additive_in.append(others)
      continue
    collinear.append([])
    ident[a] = True
    # The four (a, b) cells: a ∧ b, a ∧ ¬b, ¬a ∧ b, ¬a ∧ ¬b.
    cells = np.stack([both[a], ones[a] - both[a], ones - both[a], n - ones[a] - ones + both[a]])
    inter = [b for b in others if min_cell is not None and cells[:, b].min() >= min_cell]
    # Centred interactions: the coefficient of a is then the split's mean of
    # fitted(a = 1) − fitted(a = 0), the average effect.
    xc = x[:, inter] - x[:, inter].mean(0)
    d = np.concatenate([design, x[:, a:a + 1] * xc], 1)               # [N, P + |inter|]
    g = d.T @ d
    g_pinv = np.linalg.pinv(g, hermitian=True)
    if abs(g_pinv[a + 1] @ g[:, a + 1] - 1) > 1e-6:   # a × b terms made a's column collinear
      inter, d, g_pinv = [], design, np.linalg.pinv(gram, hermitian=True)
      g = gram
    additive_in.append([b for b in others if b not in inter])
    rank = int(np.linalg.matrix_rank(g, hermitian=True))
    w = d @ g_pinv                                                    # [N, Q]
    beta = g_pinv @ (d.T @ y)                                         # [Q, R]
    resid = y - d @ beta
    lev = np.einsum('nq,nq->n', w, d)                                # hat-matrix diagonal
    free = lev < 1 - 1e-8   # lev = 1: the image fits its own coefficient (residual 0 / 0)
    hc3 = np.where(free[:, None], resid / np.where(free, 1 - lev, 1)[:, None], 0.0) ** 2
    # Null variance: the prediction's probability fitted without a (clipped off 0 and 1).
    fit0 = design[:, o] @ (g_oo @ xty[o])
    c = 0.5 / (n + 1)
    p0 = np.clip(fit0, c, 1 - c)
    omega = np.maximum(hc3, p0 * (1 - p0))                             # [N, R]
    eff[a] = beta[a + 1]
    terms = w[:, a + 1, None] ** 2 * omega                             # [N, R]
    var = terms.sum(0)
    se[a] = np.sqrt(var)
    # Welch–Satterthwaite: a variance resting on k images has about k degrees of freedom,
    # however large N is (a pair of attributes separated by 1 image of 400).
    df[a] = np.minimum(var ** 2 / np.maximum((terms ** 2).sum(0), 1e-300), n - rank)
  return {'effect': eff, 'se': se, 'df': df, 'identifiable': ident,
          'collinear': collinear, 'residual_ss': rss, 'additive_in': additive_in}


def partners(x: np.ndarray) -> list[tuple[int | None, int, float]]:
  """Per column a of x [N, A]: (its most correlated other column, the images separating the
  two, their correlation); separating = images where the two differ (agree, for a negative
  correlation). Constant columns correlate with nothing: (None, N, 0)."""
  n, num_a = x.shape
  sd = x.std(0)
  z = (x - x.mean(0)) / np.where(sd > 0, sd, 1)
  corr = np.where(np.outer(sd > 0, sd > 0), z.T @ z / max(n, 1), 0.0)
  np.fill_diagonal(corr, 0.0)
  ones = x.sum(0)
  diff = np.rint(ones[:, None] + ones[None] - 2 * x.T @ x)   # images where a ≠ b (exact ints)
  out = []
  for a in range(num_a):
    live = [b for b in range(num_a) if b != a and sd[b] > 0]
    if sd[a] == 0 or not live:
      out.append((None, n, 0.0))
      continue
    b = max(live, key=lambda k: abs(corr[a, k]))
    d = int(diff[a, b])
    out.append((b, d if corr[a, b] >= 0 else n - d, float(corr[a, b])))
  return out


def prediction_association(pred: np.ndarray, attributes: np.ndarray, names: Sequence[str],
                           task: str, num_classes: int, *, level: float = 0.95,
                           min_effect: float = 0.05, max_hidden: float = 0.25,
                           max_confounding: float | None = None,
                           split: str = 'test',
                           min_cell: int | None = MIN_CELL) -> list[dict]:
  """Which attributes the classifier's predictions depend on, on a test split (module doc).

  Args:
    pred: int [N] predictions in [0, num_classes); attributes: [N, A] binary (bool, 0/1 or
      ±1); names: the A names; task: the attribute(s) the classifier was trained on.
    level: family-wise confidence (Bonferroni over attributes × classes).
    min_effect: the smallest |effect| reported as relied on.
    max_hidden: 'no evidence' only where the interval rules out an effect this large;
      a wider interval that contains 0 is 'cannot tell'.
    max_confounding: ignored (the correlation gate it set is replaced by the intervals);
      accepted so that configs written before keep working.
    split: the split's name in the rows' evidence ('test'; heldout.py: 'validation').
    min_cell: an a × b interaction enters where each (a, b) cell holds this many images;
      None: the additive fit (ADDITIVE_ESTIMATOR, for comparison).

  Returns one row per attribute, sorted by |shift|: shift (the effect on P(ŷ = k), k = 1
  for two classes, else the class of the largest |effect|), toward_class, se, ci_low,
  ci_high, verdict ('relied on' | 'no evidence' | 'cannot tell'), flagged (= relied on),
  confounded_by (names; non-empty where a correlated attribute makes it 'cannot tell'),
  partner / separated_by / correlation (its most correlated attribute, the images that
  separate them), estimator, evidence (one line), is_task.
  """
  del max_confounding
  from lsei_jax.reporting.bias import is_task_attribute  # pylint: disable=g-import-not-at-top
  pred, x = check_inputs(pred, attributes, names, num_classes)
  classes = [1] if num_classes == 2 else list(range(num_classes))
  y = (pred[:, None] == np.asarray(classes)[None]).astype(np.float64)   # [N, K]
  varies = x.std(0) > 0 if len(x) else np.zeros(len(names), bool)
  cols = np.nonzero(varies)[0]
  fit = effects(y, x[:, cols], min_cell) if len(cols) else None
  estimator = ADDITIVE_ESTIMATOR if min_cell is None else ESTIMATOR
  p_level = 1 - (1 - level) / (2 * len(names) * len(classes))
  rows = []
  pairs = partners(x)
  for a, name in enumerate(names):
    partner, sep, r = pairs[a]
    row = {'attribute': name, 'shift': 0.0, 'toward_class': classes[0], 'se': float('inf'),
           'ci_low': -float('inf'), 'ci_high': float('inf'), 'verdict': 'cannot tell',
           'flagged': False, 'confounded_by': [],
           'partner': None if partner is None else names[partner], 'separated_by': sep,
           'correlation': r, 'estimator': estimator, 'is_task': is_task_attribute(name, task)}
    if not varies[a]:
      row['evidence'] = f'constant in the {len(x)} {split} images: no effect to estimate'
      rows.append(row)
      continue
    j = int(np.searchsorted(cols, a))
    if not fit['identifiable'][j]:
      with_ = [names[cols[b]] for b in fit['collinear'][j]] or [names[partner]]
      row.update(confounded_by=with_, evidence=(
          f'a linear function of {", ".join(with_)} in the {len(x)} {split} images '
          f'({sep} separate it from {names[partner]}): the split cannot tell their effects '
          'apart'))
      rows.append(row)
      continue
    e, s = fit['effect'][j], fit['se'][j]
    q = t_quantile(p_level, fit['df'][j])                           # [K]
    i = int(np.argmax(np.abs(e)))
    lo, hi = e - q * s, e + q * s
    flagged = bool((lo[i] > 0 or hi[i] < 0) and abs(e[i]) >= min_effect)
    small = bool(np.all((lo > -max_hidden) & (hi < max_hidden)))
    verdict = 'relied on' if flagged else 'no evidence' if small else 'cannot tell'
    # Which correlated attribute widened the interval: the variance inflation of a.
    vif = len(x) * x[:, a].var() / max(fit['residual_ss'][j], 1e-300)
    confounded = verdict == 'cannot tell' and partner is not None and vif > 2
    ci = f'[{lo[i]:+.3f}, {hi[i]:+.3f}]'
    why = (f'; correlated with {names[partner]} (r = {r:+.2f}, {sep} images separate them)'
           if partner is not None and abs(r) > 0.1 else '')
    # Correlated attributes whose interaction with a the split cannot estimate: the effect
    # is averaged assuming it does not vary with them.
    flat = [names[cols[b]] for b in fit['additive_in'][j]
            if min_cell is not None and abs(np.corrcoef(x[:, a], x[:, cols[b]])[0, 1]) > 0.1]
    if flat:
      why += (f'; assumes its effect does not vary with {", ".join(flat[:3])}'
              f'{f" (+{len(flat) - 3})" if len(flat) > 3 else ""} (a cell under {min_cell} '
              'images, or an interaction collinear with it: the split cannot tell)')
    row.update(shift=float(e[i]), toward_class=int(classes[i]), se=float(s[i]),
               ci_low=float(lo[i]), ci_high=float(hi[i]), verdict=verdict, flagged=flagged,
               confounded_by=[names[partner]] if confounded else [],
               evidence=f'effect {e[i]:+.3f} {ci} on {len(x)} {split} images{why}')
    rows.append(row)
  return sorted(rows, key=lambda r: -abs(r['shift']))


def verdict_text(r: dict) -> str:
  """The verdict of one row as the reports show it (rows written before 'verdict' too)."""
  v = r.get('verdict')
  if v is None:    # rows of the correlation gate
    return ('cannot tell: correlated with ' + ', '.join(r['confounded_by'])
            if r.get('confounded_by') else 'relied on' if r['flagged'] else 'no evidence')
  if v == 'cannot tell' and r.get('confounded_by'):
    return (f'cannot tell: confounded with {", ".join(r["confounded_by"])} '
            f'({r.get("separated_by", "?")} test images separate it from {r.get("partner")})')
  if v == 'cannot tell' and r.get('se', 0) == float('inf'):
    return 'cannot tell: ' + r.get('evidence', 'no estimate')
  return v + (' (interval too wide to decide)' if v == 'cannot tell' else '')
