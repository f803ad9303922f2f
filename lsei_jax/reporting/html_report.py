"""A self-contained HTML page (images embedded) with every evaluation result.

Works from a results dict alone (evaluation.compute's, or a saved metrics.json): the bar
charts are drawn from its numbers; the image grids, which need arrays, are embedded when
eval_dir holds them (evaluation.write draws them).
"""
from __future__ import annotations

import base64
import html
import io
import os

from lsei_jax.training import atomic
from lsei_jax.reporting import association, plots
from lsei_jax.reporting.report import TABLE_KEYS, invariance_lines

_CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 9px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.task{color:#777}.sig{font-weight:bold;color:#b00}.warn{background:#fee;border:1px solid #c00;
padding:.6em}.ok{background:#efe;border:1px solid #0a0;padding:.6em}img{max-width:100%}
figcaption{font-size:.9em;color:#555}"""

_LABELS = {'flip_all_change': '% change (flip all)', 'accuracy': 'accuracy of c',
           'accuracy_unbiased': 'accuracy of c, spurious attribute independent',
           'recon_accuracy': 'accuracy of c2(ĥ)', 'agreement': 'agreement c2(ĥ) / c2(h)',
           'info_cosine': 'cos(I(g), I(c2)) with reg', 'info_cosine_noreg':
           'cos(I(g), I(c2)) without reg'}


def _png(data: bytes, alt: str) -> str:
  return (f'<img alt="{html.escape(alt)}" '
          f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def _img(eval_dir: str | None, name: str, alt: str) -> str:
  """The PNG eval_dir/name embedded, or '' when there is none."""
  path = os.path.join(eval_dir, name) if eval_dir else ''
  if not path or not os.path.exists(path):
    return ''
  with open(path, 'rb') as f:
    return _png(f.read(), alt)


def _figure(eval_dir: str | None, name: str, alt: str, caption: str, head: str = ''
            ) -> list[str]:
  """The PNG eval_dir/name as a captioned <figure> after `head` (a heading), or [] when
  there is none."""
  img = _img(eval_dir, name, alt)
  return [head + '<figure>', img, f'<figcaption>{caption}</figcaption></figure>'] if img else []


def _drawn(draw, alt: str) -> str:
  """A figure drawn from the results (plots.* accept a file object) embedded."""
  buf = io.BytesIO()
  draw(buf)
  return _png(buf.getvalue(), alt)


def _fmt(key: str, v) -> str:
  if v is None:
    return '—'
  return f'{100 * v:.2f}%' if not key.startswith('info') else f'{v:.3f}'


def _table(header, rows) -> str:
  head = ''.join(f'<th>{html.escape(h)}</th>' for h in header)
  body = ''.join('<tr>' + ''.join(cell if cell.startswith('<td') else f'<td>{cell}</td>'
                                  for cell in row) + '</tr>' for row in rows)
  return f'<table><tr>{head}</tr>{body}</table>'


def _concepts_section(c: dict | None) -> list[str]:
  """The concept learner's metrics (evaluation.concept_summary) and factor recovery."""
  if not c:
    return []
  e = html.escape
  num = lambda v, fmt='.3f': '—' if v is None or v != v else format(v, fmt)
  rows = [['variance of h explained by ĥ', num(c['variance_explained'])],
          ['normalised MSE', num(c['normalized_mse'])],
          ['L0 (units on per sample)', f'{num(c["l0"], ".2f")} of {c["num_units"]}'],
          ['units never on / always on', f'{100 * c["dead_fraction"]:.1f}% / '
                                         f'{100 * c["always_on_fraction"]:.1f}%'],
          ['accuracy recovered (vs mean ablation)', num(c['accuracy_recovered'])],
          ['decisive units', str(c.get('num_decisive_units', '—'))]]
  fr = c.get('factor_recovery') or {}
  out = [f'<h2>Concept learner: {e(c["kind"])}</h2>', _table(['metric', 'value'], rows)]
  if c.get('frequency_histogram'):
    out.append(_drawn(lambda f: plots.frequency_bars(f, c['frequency_histogram'], c['kind']),
                      'activation frequency histogram'))
  if fr:
    out += [f'<p>Recovery of the annotated attributes: mean matched |correlation| (MCC, '
            f'Hungarian matching of units to attributes) {num(fr["mcc"])}.</p>',
            _table(['attribute', 'matched unit', 'corr', 'best unit', 'its AUC'],
                   [[e(a), str(fr['matched'].get(a, {}).get('unit', '—')),
                     num(fr['matched'].get(a, {}).get('corr')), str(b['unit']),
                     num(b['auc'])] for a, b in fr['best_unit_auc'].items()])]
  return out


def _invariance_section(v: dict | None, eval_dir: str | None) -> list[str]:
  """The conditional INN's invariance samples: the shares, the figure, per attribute."""
  if not v:
    return []
  e = html.escape
  parts = ['<h2>Invariances: what the classifier does not see</h2>',
           '<p>For each test image, its embedding h is held fixed and the rest of its '
           'autoencoder latent is resampled through the conditional INN, then decoded; the '
           'classifier and the attribute probes read the decoded images again.</p><ul>'
           + ''.join(f'<li>{e(x)}</li>' for x in invariance_lines(v)) + '</ul>']
  parts += _figure(eval_dir, 'invariance_grid.png', 'original, D(E(x)), invariance samples',
                   'Each row: a test image, its autoencoder reconstruction D(E(x)), and '
                   'images decoded from its h with the residual resampled (what the '
                   'classifier\'s representation cannot tell apart).')
  if 'attribute_change' in v:
    parts.append(_table(['attribute', 'samples changed (probe)', 'probe on h (linear)'],
                        [[e(a), f'{100 * x:.1f}%', f'{v["h_probe_accuracy"][a]:.3f}']
                         for a, x in v['attribute_change'].items()]))
  return parts


def _factor_sweep_section(v: dict | None, eval_dir: str | None) -> list[str]:
  """The factor sweeps (metrics.json 'factor_sweep', factor_sweep.png)."""
  if not v:
    return []
  e = html.escape
  parts = ['<h3>Factor sweeps</h3>',
           f'<p>{v["num_images"]} test images, each attribute\'s block of z = T(h) moved in '
           f'{v["steps"]} steps from its value-0 class mean to its value-1 one, mapped back '
           'to h\' and decoded with the image\'s own invariance residual. Endpoint change: '
           'the share of sweeps whose last label differs from their first, by the head on '
           'h\' and by the classifier on the decoded image; the two agree on '
           f'{100 * v["image_agrees_with_head"]:.1f}% of the sweep images.</p>',
           _table(['attribute', 'endpoint change (head on h\')',
                   'endpoint change (classifier on image)'],
                  [[e(a), f'{100 * x:.1f}%', f'{100 * v["image_endpoint_change"][a]:.1f}%']
                   for a, x in v['head_endpoint_change'].items()])]
  return parts + _figure(
      eval_dir, 'factor_sweep.png', 'factor sweeps',
      'Each row: a test image and one attribute; the original, then the images decoded '
      'along the sweep. Under each: the head\'s label of h\' / the classifier\'s label of '
      'the decoded image (the original: its own label).')


def render(result: dict, eval_dir: str | None = None, *, task: str | None = None,
           workdir: str = '', seeds: dict | None = None) -> str:
  """The report page of a results dict; image grids from eval_dir when it has them."""
  e = html.escape
  task = result.get('task', '') if task is None else task
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>lsei_jax report — '
           f'{e(task)}</title><style>{_CSS}</style></head><body>',
           f'<h1>lsei_jax report: what the <em>{e(task)}</em> classifier relies on</h1>',
           f'<p>{e(workdir)} · {e(result.get("split", ""))}, {result.get("num_examples")} images'
           f' · intervention: {e(result.get("intervention", "flip all bits"))}</p>',
           '<h2>Tables 1 and 2</h2>',
           _table(['figure', 'value'], [[e(_LABELS[k]), _fmt(k, result.get(k))]
                                        for k in ('accuracy', 'accuracy_unbiased',
                                                  *TABLE_KEYS[1:]) if k in result])]
  if seeds:
    parts += [f'<h3>Across {max(v["n"] for v in seeds.values())} seeds (mean ± std)</h3>',
              _table(['figure', 'mean', '± std', 'values'],
                     [[e(_LABELS[k]), _fmt(k, v['mean']), _fmt(k, v['std']),
                       ', '.join(_fmt(k, x) for x in v['values'])] for k, v in seeds.items()])]
  parts += _concepts_section(result.get('concepts'))
  parts += _figure(eval_dir, 'fig3_grid.png', 'original, g(ĥ), g(ĥ\')',
                   'Each row: a test image, the explainer\'s image of its embedding g(ĥ), '
                   'and after flipping every concept bit g(ĥ\').', '<h2>Concept images</h2>')
  parts += _invariance_section(result.get('invariance'), eval_dir)
  parts += _factor_sweep_section(result.get('factor_sweep'), eval_dir)

  rows = []
  for r in result['bias_report']:
    verdict = association.verdict_text(r)
    cls = 'task' if r['is_task'] and not r['flagged'] else ('sig' if r['flagged'] else '')
    rows.append([f'<td class="{cls}">{e(r["attribute"])}{" (task)" if r["is_task"] else ""}</td>',
                 e(verdict), f'{r["shift"]:+.3f}', f'[{r["ci_low"]:+.3f}, {r["ci_high"]:+.3f}]',
                 str(r.get('toward_class', 1)),
                 f'<td title="{e(r.get("evidence", ""))}">{e(r.get("estimator", ""))}</td>'])
  parts += ['<h2>Bias report: what the classifier relies on</h2>',
            '<p>For each attribute, how much the probability that the classifier predicts a '
            'class changes between test images with and without the attribute: '
            'P(ŷ = k | attribute) − P(ŷ = k | no attribute), adjusted for the other '
            'attributes (a least-squares fit on all of them), with a Bonferroni-corrected '
            'interval (HC3 errors, t reference) that widens as the attribute correlates with '
            'others and is never narrow on a handful of images. '
            '<b>Relied on</b>: the interval excludes 0 and the effect is at least the '
            'configured minimum; <b>no evidence</b>: the interval rules out a large effect; '
            '<b>cannot tell</b>: it does not, e.g. an attribute that the test split never '
            'separates from another (the row names it and how many test images separate '
            'them). A row the test split leaves cannot tell (a correlate confounds it, or its '
            'interval is too wide) is looked at again on the test images and held-out images '
            'of the training distribution (the validation split) pooled, at half the α (a '
            'second look); where that answers, the row names it as its estimator (hover: its '
            'evidence). '
            'Bold red: relied on.</p>',
            _table(['attribute', 'verdict', 'effect', 'interval', 'class', 'estimator'], rows),
            _drawn(lambda f: plots.bias_bars(f, result['bias_report'],
                                             result.get('intervention', 'flip all bits')),
                   'bias report bars')]
  inter = result.get('intervention_report')
  if inter:
    rows = []
    for r in inter:
      if not r['readable']:
        view = f'not readable (probe {100 * r["probe_accuracy"]:.0f}% on real test images)'
      else:
        view = 'moves with the decision' if r['flagged'] else 'does not move'
      rows.append([e(r['attribute']) + (' (task)' if r['is_task'] else ''), e(view),
                   f'{r["shift"]:+.3f}', f'[{r["ci_low"]:+.3f}, {r["ci_high"]:+.3f}]'])
    parts += ['<h3>The explainer\'s view: what changes in g(ĥ\') (not a verdict)</h3>',
              '<p>How an attribute probe\'s probability moves between the concept images '
              'g(ĥ) and g(ĥ\') as the intervention moves the decision towards a class (both '
              'directions weighted equally; only samples whose decision changed). On the '
              'truthfulness benchmark (docs/truthfulness.md) this flags many attributes the '
              'classifier does not use — the intervention changes them together with the '
              'decision — so it '
              'shows what the concept images look like, not what the classifier relies on.</p>',
              _table(['attribute', 'in g(ĥ\')', 'shift', 'interval'], rows)]
  assoc = result.get('data_association')
  if assoc:
    parts += ['<h3>Property of the training data (not of the classifier)</h3>',
              '<p>How much each attribute goes with the label in the training split: the spread '
              'of P(attribute | class) over the classes (0: independent, 1: the same as the '
              'label). A correlation in the data is a chance for the classifier to take a '
              'shortcut, not evidence that it did.</p>',
              _table(['attribute', 'spread', 'P(attribute | class)'],
                     [[e(n), f'{v["spread"]:.2f}',
                       ', '.join('—' if x is None else f'{x:.2f}' for x in v['by_class'])]
                      for n, v in assoc.items()])]
  if result.get('reliance'):
    rel = result['reliance']
    parts += ['<h3>Ground truth: reliance</h3>',
              '<p>The test images rendered again with one attribute flipped and nothing else '
              'changed: the fraction of the classifier\'s predictions that change, and the mean '
              'drop of the predicted class\'s probability. This is what the classifier relies '
              'on, measured directly.</p>',
              _table(['attribute', 'predictions changed', 'mean probability drop'],
                     [[e(n), f'{100 * v["flip_rate"]:.1f}%', f'{v["mean_prob_change"]:+.3f}']
                      for n, v in sorted(rel.items(), key=lambda kv: -kv[1]['flip_rate'])])]

  if result.get('tcav'):
    tc = {(t['concept'], t['class']): t for t in result['tcav']}
    classes = sorted({t['class'] for t in result['tcav']})
    cell = lambda t: (f'<td class="{"sig" if t["significant"] else ""}">{t["score"]:.2f} '
                      f'(p={t["p_value"]:.3g})</td>')
    parts += ['<h3>Cross-check: TCAV on the same layer</h3>',
              '<p>TCAV score of each attribute as a concept (fraction of a class\'s test '
              'examples whose class probability rises along the concept\'s activation vector), '
              'with the t-test against random vectors; bold red: significant. Rows in the bias '
              'report\'s order.</p>',
              _table(['concept'] + [f'class {k}' for k in classes],
                     [[e(r['attribute'])] + [cell(tc[(r['attribute'], k)]) for k in classes]
                      for r in result['bias_report'] if (r['attribute'], classes[0]) in tc])]
  if result.get('tcav_skipped'):
    parts += ['<h3>Cross-check: TCAV</h3>' if not result.get('tcav') else '',
              '<ul>' + ''.join(f'<li>{e(name)}: {e(why)}</li>'
                               for name, why in result['tcav_skipped'].items()) + '</ul>']
  parts += _figure(eval_dir, 'attribution_grid.png', 'image, IG, g(ĥ), g(ĥ\')',
                   'Each row: a test image, |integrated gradients| of the predicted class '
                   '(red: high), g(ĥ) and g(ĥ\').', '<h3>Cross-check: input attributions</h3>')
  attr = result.get('attribution_sanity')
  if attr:
    rows = [[e(m), ' → '.join(f'{x:.2f}' for x in v['spearman_abs']),
             '<td class="sig">maps do not depend on the weights</td>' if v['flagged'] else 'ok']
            for m, v in attr.items()]
    layers = next(iter(attr.values()))['layers']
    how = ('with the head replaced by the sanity check\'s random head (the top-layer step; '
           'a given classifier cannot be re-initialised layer by layer)' if layers == ['head']
           else f'as layers are re-initialised from the top ({e(" → ".join(layers))})')
    parts += ['<h3>Sanity check of the attributions (cascading randomisation)</h3>',
              f'<p>Rank correlation of |map| with the trained model\'s map {how}.</p>',
              _table(['method', 'Spearman per level', 'verdict'], rows)]

  sanity = result.get('sanity')
  if sanity:
    msg = (f'<div class="warn"><b>Warning:</b> {e(sanity["warning"])}</div>' if sanity['warning']
           else '<div class="ok">The explanation depends on the trained model: a '
                + ('random head on its embedding' if sanity.get('randomized') == 'head'
                   else 'randomly initialised classifier') + ' gives a different ranking.</div>')
    parts += ['<h2>Sanity check: model randomisation</h2>', msg,
              _table(['', 'trained classifier', 'random classifier'],
                     [['top candidate bias', e(str(sanity['top_trained'])),
                       e(str(sanity['top_randomized']))],
                      ['accuracy of c', '', _fmt('accuracy', sanity.get('random_accuracy'))],
                      ['rank correlation of |shift|', f'{sanity["rank_correlation"]:+.2f}', '']])]

  parts += ['<h2>Single-bit interventions</h2>',
            f'<p>{100 * result["single_bit_change"]:.1f}% of test samples have at least one '
            'bit whose flip alone changes the prediction.</p>',
            _drawn(lambda f: plots.per_bit_bars(
                f, {'per_class': result['per_bit_change_by_class'],
                    'single_bit_change': result['single_bit_change']}), 'per-bit bars'),
            '<h2>Attribute probes</h2><p>Held-out accuracy of the probes on real test images '
            'and on the explainer\'s images g(ĥ) of them.</p>',
            _table(['attribute', 'on real images', 'on g(ĥ)'],
                   [[e(n), f'{100 * v["real"]:.1f}%', f'{100 * v["generated"]:.1f}%']
                    for n, v in result['probe_accuracy'].items()]),
            '</body></html>']
  return '\n'.join(parts)


def write(path: str, result: dict, eval_dir: str | None = None, **kwargs) -> None:
  """Writes `render(result, eval_dir, **kwargs)` to path (atomically)."""
  atomic.write_text(path, render(result, eval_dir, **kwargs))
