"""The image editor's rows (issue 25 item 3): reliance = how the classifier's predictions
change on test images edited in one attribute, answered only where the edit is trusted
(lsei_jax.editor.edit_trust: probes confirm it and see no leakage). Pure NumPy."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lsei_jax.reporting.bias import _normal_quantile, is_task_attribute  # pylint: disable=protected-access


def editor_rows(pred_reference: np.ndarray, pred_edit: np.ndarray, attributes: np.ndarray,
                trust: Sequence[dict], names: Sequence[str], task: str, *,
                level: float = 0.95, min_effect: float = 0.05, max_hidden: float = 0.25
                ) -> list[dict]:
  """One row per attribute (in `names` order).

  Args:
    pred_reference: int [N] in {0, 1}, c's prediction on the reconstructions decode(z, a).
    pred_edit: int [A, N], on decode(z, a with attribute j flipped) for each j.
    attributes: [N, A] the test images' attributes; trust: edit_trust's dict per attribute.

  Row: flip_rate (share of predictions the edit changes), effect = mean of
  s·(1[ŷ_edit = 1] − 1[ŷ_ref = 1]) with s = +1 where the edit turns the attribute on and −1
  where it turns it off (paired; flips of borderline decisions in both directions cancel, as
  in the verdict), a Bonferroni normal interval (s.e. at least 1/(2√N): never zero-width);
  verdict: 'cannot tell' where the edit is not trusted, else 'relied on' (interval excludes
  0 and |effect| ≥ min_effect), 'no evidence' (interval inside ±max_hidden) or 'cannot
  tell'; estimator 'image_editor' and its evidence (confirm, leakage).
  """
  pred_reference, pred_edit = np.asarray(pred_reference), np.asarray(pred_edit)
  classes = np.unique(np.concatenate([pred_reference, pred_edit.ravel()]))
  if np.any((classes != 0) & (classes != 1)):
    raise ValueError(f'editor_rows signs changes towards class 1 and needs 2 classes; the '
                     f'predictions have classes {classes.tolist()}')
  attributes = np.asarray(attributes).astype(bool)
  n = len(pred_reference)
  z = _normal_quantile(1 - (1 - level) / (2 * max(len(names), 1)))
  rows = []
  for j, name in enumerate(names):
    sign = np.where(attributes[:, j], -1.0, 1.0)
    d = sign * (pred_edit[j].astype(float) - pred_reference.astype(float))
    eff = float(d.mean()) if n else 0.0
    se = max(float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else np.inf, 0.5 / np.sqrt(max(n, 1)))
    lo, hi = eff - z * se, eff + z * se
    t = trust[j]
    evidence = (f'edit confirmed on {t["confirm"]:.0%} of {n} images, largest leakage '
                f'{t["max_leakage"]:.0%}')
    if not t['trusted']:
      verdict = 'cannot tell'
      evidence = 'edit not trusted: ' + evidence
    else:
      verdict = ('relied on' if (lo > 0 or hi < 0) and abs(eff) >= min_effect else
                 'no evidence' if max(abs(lo), abs(hi)) < max_hidden else 'cannot tell')
    rows.append({'attribute': name, 'is_task': is_task_attribute(name, task),
                 'flip_rate': float(np.mean(pred_edit[j] != pred_reference)) if n else 0.0,
                 'effect': eff, 'ci_low': lo, 'ci_high': hi, 'verdict': verdict,
                 'flagged': verdict == 'relied on', 'trusted': t['trusted'],
                 'confirm': t['confirm'], 'max_leakage': t['max_leakage'],
                 'estimator': 'image_editor', 'evidence': evidence})
  return rows
