"""The paper's tables as plain text."""
from __future__ import annotations

from lsei_jax.reporting import association

# The figures of Tables 1 and 2, in the order the reports list them.
TABLE_KEYS = ('accuracy', 'recon_accuracy', 'agreement', 'flip_all_change', 'info_cosine',
              'info_cosine_noreg')
# metrics.json's keys in the order it lists them (the graph's evaluators add them by node).
REPORT_ORDER = ('split', 'num_examples', 'task', 'num_classes', 'embed_dim', 'classifier',
                'accuracy', 'accuracy_unbiased', 'recon_accuracy', 'agreement',
                'flip_all_change', 'concepts', 'info_cosine', 'info_cosine_noreg',
                'per_bit_change', 'single_bit_change', 'per_bit_change_by_class',
                'probe_accuracy', 'intervention', 'bias_report', 'intervention_report',
                'closed_loop',
                'data_association', 'reliance', 'tcav', 'tcav_skipped', 'attribution_sanity',
                'inn', 'invariance', 'factor_sweep', 'sanity')

def format_tables(m: dict) -> str:
  """Table 1 (percentages, as in the paper) and Table 2 (cosines) as plain text."""
  pct = lambda key: f'{100 * m[key]:6.2f}'
  lines = [
      f'Table 1 — {m.get("split", "test")}, {m.get("num_examples", "?")} images',
      f'  {"% change":>9} {"acc":>8} {"acc on ĥ":>9} {"agreement":>10}',
      f'  {pct("flip_all_change"):>9} {pct("accuracy"):>8} {pct("recon_accuracy"):>9} '
      f'{pct("agreement"):>10}',
      *([f'  accuracy of c on the same images with the spurious attribute independent: '
         f'{pct("accuracy_unbiased").strip()}'] if 'accuracy_unbiased' in m else []),
      'Table 2 — cosine similarity of I(g) and I(c2)',
      f'  {"without reg":>12} {"with reg":>9}',
      f'  {_fmt(m.get("info_cosine_noreg")):>12} {_fmt(m.get("info_cosine")):>9}',
  ]
  return '\n'.join(lines)


def _fmt(x) -> str:
  return '—' if x is None else f'{x:.3f}'


def format_bias(m: dict, top: int = 6) -> str:
  """The bias report's largest shifts and the sanity verdict as plain text."""
  lines = ['Bias report: what the classifier relies on (change of P(prediction) with the '
           'attribute on the test split)']
  for r in m['bias_report'][:top]:
    verdict = association.verdict_text(r)
    by = r.get('estimator')
    by = f' — by {by}' if by and by != association.ESTIMATOR else ''   # a fallback answered
    lines.append(f'  {r["attribute"]:>14}{" (task)" if r["is_task"] else "       "} '
                 f'{r["shift"]:+.3f} [{r["ci_low"]:+.3f}, {r["ci_high"]:+.3f}] {verdict}{by}')
  rel = m.get('reliance')
  if rel:
    lines.append('Ground truth (counterfactual test images, one attribute flipped): '
                 'predictions changed')
    for n, v in sorted(rel.items(), key=lambda kv: -kv[1]['flip_rate']):
      lines.append(f'  {n:>14} {100 * v["flip_rate"]:5.1f}%')
  s = m.get('sanity')
  if s:
    what = 'random head' if s.get('randomized') == 'head' else 'random classifier'
    lines.append(f'Sanity ({what}): rank correlation {s["rank_correlation"]:+.2f}, '
                 f'top candidate {s["top_trained"]} vs {s["top_randomized"]}'
                 + (f' — WARNING: {s["warning"]}' if s['warning'] else ''))
  return '\n'.join(lines)



def format_concepts(m: dict) -> str:
  """The concept learner's metrics (metrics.json 'concepts') as plain text; '' without."""
  c = m.get('concepts')
  if not c:
    return ''
  lines = [f'Concept learner {c["kind"]}: variance explained {c["variance_explained"]:.3f}, '
           f'normalised MSE {c["normalized_mse"]:.4f}, L0 {c["l0"]:.2f} of {c["num_units"]}, '
           f'never on {100 * c["dead_fraction"]:.1f}%, always on '
           f'{100 * c["always_on_fraction"]:.1f}%',
           f'  accuracy recovered {c["accuracy_recovered"]:.3f} (mean ablation '
           f'{100 * c["accuracy_mean_ablation"]:.2f}%), decisive units '
           f'{c.get("num_decisive_units", "—")}']
  fr = c.get('factor_recovery')
  if fr:
    best = ', '.join(f'{a} {b["auc"]:.2f}' for a, b in fr['best_unit_auc'].items())
    lines.append(f'  attributes: MCC {fr["mcc"]:.3f}; best unit AUC {best}')
  return '\n'.join(lines)


def format_seeds(agg: dict) -> str:
  """Mean ± std over training seeds of each Table 1 / Table 2 figure."""
  n = max(v['n'] for v in agg.values())
  lines = [f'Across {n} seeds (mean ± std)']
  for k, v in agg.items():
    scale = 1 if k.startswith('info') else 100
    lines.append(f'  {k:>18} {scale * v["mean"]:7.2f} ± {scale * v["std"]:.2f}')
  return '\n'.join(lines)


def invariance_lines(v: dict) -> list[str]:
  """metrics.json 'invariance' as sentences (eval.py's printout and the report page)."""
  lines = [f'{100 * v["label_kept"]:.1f}% of {v["samples_per_image"]} × {v["num_images"]} '
           f'invariance samples (temperature {v.get("temperature", 1.0):g}) keep the label of '
           f'their original (its reconstruction D(E(x)): {100 * v["recon_label_kept"]:.1f}%)']
  if 'varied' in v:
    lines.append('the samples vary ' + (', '.join(v['varied']) or 'no attribute')
                 + '; h encodes (linear probe) ' + (', '.join(v['encoded_by_h']) or 'none')
                 + '; every attribute h does not encode varies: '
                 + ('yes' if v['unencoded_varied'] else 'no')
                 + (f' (probes cannot read {", ".join(v["unreadable"])} on D(E(x)))'
                    if v.get('unreadable') else ''))
  if 'relied_kept' in v:   # an attribute the probe cannot read is not shown as a change
    kept = ', '.join(f'{a} unreadable' if a in v.get('unreadable', ())
                     else f'{a} {100 * v["attribute_change"][a]:.1f}%' for a in v['relied_on'])
    lines.append(f'attributes relied on (ground truth): {kept or "none"} changed; all kept: '
                 + ('yes' if v['relied_kept'] else 'no'))
  if 'relied_kept_latent' in v:   # the linear probes on the autoencoder's latent
    kept = ', '.join(f'{a} unreadable' if a in v.get('unreadable_latent', ())
                     else f'{a} {100 * v["attribute_change_latent"][a]:.1f}%'
                     for a in v['relied_on'])
    lines.append(f'read by linear probes on E(x̃): samples vary '
                 + (', '.join(v['varied_latent']) or 'no attribute')
                 + f'; relied on: {kept or "none"} changed; all kept: '
                 + ('yes' if v['relied_kept_latent'] else 'no'))
  if 'relied_kept_per_image' in v:
    lines.append(_per_image_line(v))
  return lines


def _per_image_line(v: dict) -> str:
  """The samples of the images whose prediction flips with a relied-on attribute (ground
  truth per image) against the other images' (invariance_reliance.summarise_by_reliance)."""
  pct = lambda e: '-' if e is None or e.get('change') is None else f'{100 * e["change"]:.1f}'
  groups = [(v['attribute_change_where_relied'], v['attribute_change_where_not_relied'])]
  if 'relied_kept_per_image_latent' in v:
    groups.append((v['attribute_change_where_relied_latent'],
                   v['attribute_change_where_not_relied_latent']))
  rel = groups[0][0]
  parts = [f'{a} on {rel[a]["images"]} images ' + ' / '.join(pct(r[a]) for r, _ in groups)
           + '% (the others ' + ' / '.join(pct(o[a]) for _, o in groups) + '%; labels kept '
           + f'{100 * rel[a]["label_kept"]:.1f}%)' for a in v['relied_per_image_judged']]
  kept = ' / '.join('yes' if v[k] else 'no' for k in
                    ('relied_kept_per_image', 'relied_kept_per_image_latent') if k in v)
  return ('per image (relied on where flipping it flips c\'s label, ≥ '
          f'{v["relied_per_image_min_images"]} of {v["num_images"]}): '
          + ('; '.join(parts) or 'none') + ' changed ('
          + ('image / latent probe' if len(groups) > 1 else 'image probe')
          + f'); all kept there: {kept}')


def format_invariance(m: dict) -> str:
  """The conditional INN's invariance samples (metrics.json 'invariance'); '' without."""
  v = m.get('invariance')
  if not v:
    return ''
  lines = ['Invariances (h fixed, residual resampled, decoded; classifier and probes re-run):']
  lines += [f'  {x}' for x in invariance_lines(v)]
  if 'attribute_change' in v:
    lat = v.get('attribute_change_latent', {})
    lines.append('  ' + f'{"attribute":>14} {"changed":>8} {"probe on h":>11}'
                 + (f' {"changed (latent probe)":>23}' if lat else ''))
    for a, x in v['attribute_change'].items():
      lines.append(f'  {a:>14} {100 * x:7.1f}% {v["h_probe_accuracy"][a]:11.3f}'
                   + (f' {100 * lat[a]:22.1f}%' if lat else ''))
  return '\n'.join(lines)


def format_factor_sweep(m: dict) -> str:
  """The factor sweeps (metrics.json 'factor_sweep'); '' without."""
  v = m.get('factor_sweep')
  if not v:
    return ''
  lines = [f'Factor sweeps ({v["num_images"]} images; each block from its value-0 class mean '
           f'to its value-1 one in {v["steps"]} steps,',
           f'  decoded with the image\'s own residual; the classifier on the images agrees with '
           f'c2(h\') on {100 * v["image_agrees_with_head"]:.1f}%):',
           f'  {"attribute":>14} ' + "last label changed: c2(h')".rjust(27) + f' {"c(image)":>9}']
  for a, x in v['head_endpoint_change'].items():
    lines.append(f'  {a:>14} {100 * x:26.1f}% {100 * v["image_endpoint_change"][a]:8.1f}%')
  return '\n'.join(lines)
