"""Time to an explanation: every stage of a run split into compile / train / eval seconds,
with a cold and a warm persistent compilation cache.

  python benchmarks/time_to_explanation.py --scenario demo
  python benchmarks/time_to_explanation.py --scenario given_classifier
  python benchmarks/time_to_explanation.py --scenario celeba64 --steps 6

Scenarios:
  demo              configs/shapes.py end to end: train.py's stages, then eval.py's evaluate.
  given_classifier  the same with the classifier already trained (a user who brings one):
                    the classifier is trained first, untimed and without the cache, and
                    every timed run starts from a copy of that workdir.
  celeba64          configs/celeba_smiling.py (paper architecture, 64×64) on synthetic
                    64×64 shapes images instead of CelebA: each stage runs --steps steps;
                    the step time, measured between the 2nd and the last step, is
                    extrapolated to the config's steps (reported as `extrapolated_s`, an
                    estimate, not a measurement). Eval runs on --celeba_test images.

Each run is a fresh process (import, tracing and compilation included) in a fresh workdir
that trains every stage in one `pipeline.train` call, as train.py does (frozen inputs such as
h = c1(x) computed once), then evaluates; a stage's seconds run from the end of the stage
before it to its own end, so the inputs it is the first to need count for it;
`cold` starts with an empty cache directory, `warm` reuses the one `cold` filled. compile_s
sums JAX's tracing, lowering and XLA compilation (or cache load) events; train_s / eval_s is
the rest of the stage's wall time (data, steps, checkpoints). Prints one JSON line per
(run, stage), then a table. other_cpu_frac: CPU used by other processes (shared machine).
The persistent cache's use (issue 27): `executables` (every XLA executable the stage
obtained, compiled or loaded), `cache_hits` (of those, loaded from the cache), and
`uncached_compile_s` (backend seconds of the ones compiled: the cache cannot save what
compiles in under compile_cache.MIN_COMPILE_SECS, which it never stores).
--by_function adds, per run, the jitted functions at their call sites ranked by seconds
traced + lowered (what no persistent cache saves): wall, this thread's CPU (what a shared
machine disturbs least) and garbage collection inside, with executables and cache hits.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

T_START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _busy_s() -> float:
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return (sum(v[:8]) - v[3] - v[4]) / os.sysconf('SC_CLK_TCK')


def _config(scenario: str, steps: int, celeba_test: int):
  if scenario != 'celeba64':
    from configs import shapes  # pylint: disable=g-import-not-at-top
    return shapes.get_config()
  import ml_collections  # pylint: disable=g-import-not-at-top
  from configs import celeba_smiling, shapes  # pylint: disable=g-import-not-at-top
  c = celeba_smiling.get_config()
  full = {s: c[s].steps for s in ('classifier', 'concepts', 'explainer', 'probe')}
  c.data = ml_collections.ConfigDict(dict(shapes.get_config().data, image_size=64,
                                          num_train=4096, num_test=celeba_test))
  for s in full:
    c[s].steps = steps
    if 'warmup_steps' in c[s]:  # a schedule's warmup must fit in the shortened stage
      c[s].warmup_steps = min(c[s].warmup_steps, max(steps - 1, 0))
  c.checkpoint.update(every_steps=2, max_to_keep=2)   # hooks time steps 2 … steps
  c.eval.fisher_examples = min(c.eval.fisher_examples, celeba_test)
  c.explainer.info_examples = min(c.explainer.info_examples, celeba_test)
  c.eval.batch_size = min(c.eval.batch_size, celeba_test)
  return c, full


# jax's event for an executable loaded from the persistent compilation cache (jax 0.10's
# compiler.compile_or_get_cached); a renamed event reads as 0 hits, not as an error.
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'


def child(args) -> None:
  """One timed run in this process: prints a JSON line per stage."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  from jax._src import dispatch  # pylint: disable=g-import-not-at-top
  from lsei_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import evaluation  # pylint: disable=g-import-not-at-top
  from lsei_jax import pipeline  # pylint: disable=g-import-not-at-top
  from lsei_jax.pipeline import node as node_lib  # pylint: disable=g-import-not-at-top

  compile_cache.enable(args.cache_dir)
  compile_cache.freeze_startup_objects()   # as train.py and eval.py do (cli.setup)
  compile_events = (dispatch.JAXPR_TRACE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT,
                    dispatch.BACKEND_COMPILE_EVENT)
  acc = {'compile': 0.0, 'executables': 0, 'hits': 0, 'missed_s': 0.0}
  last_hit = [False]

  # --by_function: (time, event, 'name @ call site', wall s, this thread's CPU s, hit). The
  # CPU seconds are what a busy shared machine disturbs least (tracing and lowering run in
  # this thread); JAX records an event's start as a scalar just before the work.
  events: list[tuple] = []
  cpu_start: dict[str, float] = {}

  gc_in = {'s': 0.0, 'at': 0.0}   # Python's garbage collections inside a compile event

  def at_start(event, value, **_):
    if event in compile_events:
      cpu_start[event] = time.thread_time()
      gc_in[event] = gc_in['s']

  def gc_timer(phase, info):
    if phase == 'start':
      gc_in['at'] = time.perf_counter()
    elif cpu_start:
      gc_in['s'] += time.perf_counter() - gc_in['at']

  def listener(event, duration, fun_name='', **_):
    if event in compile_events:
      acc['compile'] += duration
      if args.by_function:
        cpu = time.thread_time() - cpu_start.pop(event, time.thread_time())
        events.append((time.perf_counter(), event, f'{_bare(fun_name)} @ {_call_site()}',
                       duration, cpu, gc_in['s'] - gc_in.pop(event, gc_in['s']),
                       last_hit[0]))
    if event == dispatch.BACKEND_COMPILE_EVENT:   # every executable, compiled or loaded
      acc['executables'] += 1
      if not last_hit[0]:
        acc['missed_s'] += duration
      last_hit[0] = False

  def counter(event, **_):
    # Recorded inside the backend compile it belongs to, just before that one's duration.
    if event == CACHE_HIT_EVENT:
      acc['hits'] += 1
      last_hit[0] = True
  monitoring.register_event_duration_secs_listener(listener)
  monitoring.register_event_listener(counter)
  if args.by_function:
    monitoring.register_scalar_listener(at_start)
    gc.callbacks.append(gc_timer)

  got = _config(args.scenario, args.steps, args.celeba_test)
  config, full = got if isinstance(got, tuple) else (got, None)
  if args.inn:
    config.inn.enabled = True
  if args.invariance:
    config.invariance.enabled = True
  stages = [s for s in pipeline.stage_names(config)
            if not (args.scenario == 'given_classifier' and s == 'classifier')
            and (not args.stages or s in args.stages)]
  base = dict(scenario=args.scenario, cache=args.label, jax_version=jax.__version__,
              threads=os.cpu_count())
  print(json.dumps(dict(base, stage='startup', wall_s=round(time.perf_counter() - T_START, 2))),
        flush=True)
  marks: dict[str, list] = {}
  hook = lambda name, step, state: marks.setdefault(name, []).append((step, time.perf_counter()))
  # One pipeline.train call over every stage, as train.py makes: frozen inputs (h, ĥ, I(c2))
  # are computed once, not once per stage. A stage's row runs from the end of the previous
  # stage to its own end (so its inputs count for it); the sanity run's stages (in
  # WORKDIR/sanity) are one row.
  ends: list[tuple] = []

  def clock() -> tuple:
    return (time.perf_counter(), acc['compile'], _busy_s(), time.process_time(),
            acc['executables'], acc['hits'], acc['missed_s'])

  def timed(fn):
    def wrapped(stage, workdir, *a, **k):
      out = fn(stage, workdir, *a, **k)
      sanity = os.path.basename(os.path.normpath(workdir)) == 'sanity'
      ends.append(('sanity' if sanity else stage.name, clock()))
      return out
    return wrapped
  node_lib.run_stage = timed(node_lib.run_stage)
  node_lib.adopt_stage = timed(node_lib.adopt_stage)
  # A stage fitted in closed form (the 'pca' autoencoder) is stored by save_untrained.
  from lsei_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  saved = trainer_lib.save_untrained

  def save_timed(workdir, stage, *a, **k):
    out = saved(workdir, stage, *a, **k)
    ends.append((stage, clock()))
    return out
  trainer_lib.save_untrained = save_timed
  acc['compile'] = 0.0
  start = clock()
  pipeline.train(config, args.workdir, tuple(stages), hooks=(hook,))
  spans, prev = [], start   # [(label, from, to)] merging consecutive ends of one label
  for label, at in ends:
    if spans and spans[-1][0] == label:
      spans[-1] = (label, spans[-1][1], at)
    else:
      spans.append((label, prev, at))
    prev = at
  if not args.stages:   # a subset of stages has no full evaluation to time
    acc['compile'] = 0.0
    t_eval = clock()
    evaluation.evaluate(config, args.workdir)
    spans.append(('eval', t_eval, clock()))
  for stage, (t0, c0, busy0, own0, x0, h0, m0), (t1, c1, busy1, own1, x1, h1, m1) in spans:
    wall = t1 - t0
    other = ((busy1 - busy0) - (own1 - own0)) / (wall * os.cpu_count())
    row = dict(base, stage=stage, wall_s=round(wall, 2), compile_s=round(c1 - c0, 2),
               other_cpu_frac=round(max(other, 0.0), 3),
               executables=x1 - x0, cache_hits=h1 - h0, uncached_compile_s=round(m1 - m0, 2))
    row['eval_s' if stage == 'eval' else 'train_s'] = round(wall - (c1 - c0), 2)
    if full is not None and stage != 'eval':
      # Extrapolation: per-step time between the first and last checkpoint of each
      # sub-stage (the sanity run has three), times the config's steps.
      est = 0.0
      per_step = {}
      mine = {k: m for k, m in marks.items()
              if (k.startswith('sanity/') if stage == 'sanity' else k == stage)}
      for name, m in mine.items():
        (s0, t_a), (s1, t_b) = m[0], m[-1]
        per_step[name] = (t_b - t_a) / max(s1 - s0, 1)
        est += per_step[name] * full[name.split('/')[-1].replace('_noreg', '')]
      row.update(steps_run=args.steps, per_step_s={k: round(v, 4) for k, v in per_step.items()},
                 extrapolated_s=round(wall + est - sum(
                     v * args.steps for v in per_step.values()), 1),
                 config_steps={k: full[k.split('/')[-1].replace('_noreg', '')]
                               for k in per_step})
    print(json.dumps(row), flush=True)
  if args.by_function:
    _print_functions(base, spans, events, dispatch)


def _bare(fun_name: str) -> str:
  """'jit(step)' (the lowering's and compilation's name) → 'step' (the tracing's)."""
  while fun_name.startswith(('jit(', 'pjit(')) and fun_name.endswith(')'):
    fun_name = fun_name[fun_name.index('(') + 1:-1]
  return fun_name


def _call_site() -> str:
  """path:line of the innermost frame of this repository outside benchmarks/ (where the
  jitted function was called, so that two '<lambda>'s are told apart)."""
  f = sys._getframe(2)  # pylint: disable=protected-access
  while f is not None:
    path = f.f_code.co_filename
    if path.startswith(ROOT) and '/benchmarks/' not in path and '/.venv/' not in path:
      return f'{os.path.relpath(path, ROOT)}:{f.f_lineno}'
    f = f.f_back
  return '?'


def _print_functions(base: dict, spans: list, events: list, dispatch) -> None:
  """One JSON line per (stage, jitted function at its call site): seconds traced, lowered
  and compiled (or loaded), executables obtained and how many came from the cache."""
  rows: dict[tuple, dict] = {}
  for t, event, name, secs, cpu, gc_s, hit in events:
    stage = next((label for label, t0, t1 in spans if t0[0] <= t < t1[0]), '?')
    r = rows.setdefault((stage, name), dict(trace_s=0.0, lower_s=0.0, backend_s=0.0,
                                            trace_lower_cpu_s=0.0, gc_s=0.0, traces=0,
                                            executables=0, cache_hits=0))
    r['gc_s'] += gc_s
    if event == dispatch.JAXPR_TRACE_EVENT:
      r['trace_s'] += secs
      r['trace_lower_cpu_s'] += cpu
      r['traces'] += 1
    elif event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
      r['lower_s'] += secs
      r['trace_lower_cpu_s'] += cpu
    else:
      r['backend_s'] += secs
      r['executables'] += 1
      r['cache_hits'] += hit
  for (stage, name), r in sorted(rows.items(), key=lambda kv: -kv[1]['trace_s']
                                 - kv[1]['lower_s']):
    print(json.dumps(dict(base, stage='function', of=stage, function=name,
                          **{k: round(v, 3) if isinstance(v, float) else v
                             for k, v in r.items()})), flush=True)


def _run_child(args, label: str, workdir: str, cache_dir: str) -> list[dict]:
  cmd = [sys.executable, os.path.abspath(__file__), '--child', '--scenario', args.scenario,
         '--label', label, '--workdir', workdir, '--cache_dir', cache_dir,
         '--steps', str(args.steps), '--celeba_test', str(args.celeba_test)]
  cmd += ['--inn'] * args.inn + ['--invariance'] * args.invariance
  cmd += ['--stages', *args.stages] if args.stages else []
  cmd += ['--by_function'] * args.by_function
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  if out.returncode:
    tail = [l for l in out.stderr.splitlines() if 'it/s' not in l][-15:]
    sys.exit(f'the {label} run failed (exit {out.returncode}):\n' + '\n'.join(tail))
  rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith('{')]
  for r in rows:
    print(json.dumps(r), flush=True)
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--scenario', choices=('demo', 'given_classifier', 'celeba64'),
                  default='demo')
  ap.add_argument('--runs', nargs='+', default=['cold', 'warm'])
  ap.add_argument('--steps', type=int, default=6, help='celeba64: steps per stage')
  ap.add_argument('--celeba_test', type=int, default=512, help='celeba64: test images')
  ap.add_argument('--inn', action='store_true',
                  help='also train the factor INN (config.inn.enabled; off by default)')
  ap.add_argument('--invariance', action='store_true',
                  help='also train the invariance stages (config.invariance.enabled)')
  ap.add_argument('--stages', nargs='+', default=[],
                  help='time only these stages (no evaluation), e.g. concepts inn')
  ap.add_argument('--by_function', action='store_true',
                  help='also rank the jitted functions (at their call sites) by seconds '
                       'traced + lowered, with their executables and cache hits')
  ap.add_argument('--keep_metrics', default='',
                  help="copy each run's eval/metrics.json to DIR/<run>_metrics.json")
  ap.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  ap.add_argument('--label', default='', help=argparse.SUPPRESS)
  ap.add_argument('--workdir', default='', help=argparse.SUPPRESS)
  ap.add_argument('--cache_dir', default='',
                  help='compilation cache directory to use and keep (default: a fresh one)')
  args = ap.parse_args()
  if args.child:
    return child(args)
  tmp = tempfile.mkdtemp(prefix='tte_')
  try:
    # --cache_dir: a compilation cache kept after the runs (and used as found), e.g. to time
    # warm runs of two commits in turn; default: a fresh one, removed afterwards.
    cache_dir = args.cache_dir or os.path.join(tmp, 'xla')
    base = None
    if args.scenario == 'given_classifier':
      base = os.path.join(tmp, 'given')
      env = dict(os.environ, PYTHONPATH=ROOT)
      subprocess.run([sys.executable, 'train.py', '--config=configs/shapes.py',
                      f'--workdir={base}', '--stages=classifier', '--compilation_cache='],
                     check=True, capture_output=True, cwd=ROOT, env=env)
    rows = []
    for i, label in enumerate(args.runs):
      wd = os.path.join(tmp, f'run{i}')
      if base:
        shutil.copytree(base, wd)
      rows += _run_child(args, label, wd, cache_dir)
      metrics = os.path.join(wd, 'eval', 'metrics.json')
      if args.keep_metrics and os.path.exists(metrics):   # to check a change left them equal
        os.makedirs(args.keep_metrics, exist_ok=True)
        shutil.copy(metrics, os.path.join(args.keep_metrics, f'{label}_metrics.json'))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f'\n{args.scenario}: seconds per stage (compile + train/eval = wall)')
  print('| run | stage | compile s | train/eval s | wall s | other CPU | cache hits / '
        'executables | compiled s |' + (' extrapolated s |' if args.scenario == 'celeba64' else ''))
  print('|---|---|---|---|---|---|---|---|' + ('---|' if args.scenario == 'celeba64' else ''))
  for label in args.runs:
    mine = [r for r in rows if r['cache'] == label and r['stage'] != 'function']
    for r in mine:
      work = r.get('train_s', r.get('eval_s', ''))
      ext = f" {r.get('extrapolated_s', '')} |" if args.scenario == 'celeba64' else ''
      print(f"| {label} | {r['stage']} | {r.get('compile_s', '')} | {work} | {r['wall_s']} | "
            f"{r.get('other_cpu_frac', '')} | {r.get('cache_hits', '')} / "
            f"{r.get('executables', '')} | {r.get('uncached_compile_s', '')} |{ext}")
    total = sum(r['wall_s'] for r in mine)
    comp = sum(r.get('compile_s', 0) for r in mine)
    ext = sum(r.get('extrapolated_s', r['wall_s']) for r in mine)
    hits, exe = (sum(r.get(k, 0) for r in mine) for k in ('cache_hits', 'executables'))
    missed = sum(r.get('uncached_compile_s', 0) for r in mine)
    print(f"| {label} | **total** | {comp:.1f} | {total - comp:.1f} | {total:.1f} | | "
          f"{hits} / {exe} ({hits / max(exe, 1):.0%}) | {missed:.1f} |"
          + (f' {ext:.0f} |' if args.scenario == 'celeba64' else ''))

  if args.by_function:
    _function_table(rows, args.runs)


def _function_table(rows: list[dict], runs: list[str], top: int = 25) -> None:
  """Per run, the jitted functions ranked by seconds traced + lowered (what no persistent
  cache saves), the `top` first and the rest summed."""
  for label in runs:
    mine = [r for r in rows if r['cache'] == label and r['stage'] == 'function']
    print(f'\n{label}: jitted functions by trace + lower seconds')
    print('| stage | function @ call site | trace s | lower s | trace+lower CPU s | '
          'of which GC s | backend s | traces | cache hits / executables |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in mine[:top]:
      print(f"| {r['of']} | `{r['function']}` | {r['trace_s']:.2f} | {r['lower_s']:.2f} | "
            f"{r['trace_lower_cpu_s']:.2f} | {r['gc_s']:.2f} | {r['backend_s']:.2f} | "
            f"{r['traces']} | {r['cache_hits']} / {r['executables']} |")
    sums = {k: sum(r[k] for r in mine) for k in ('trace_s', 'lower_s', 'trace_lower_cpu_s',
                                                 'gc_s', 'backend_s', 'traces', 'executables',
                                                 'cache_hits')}
    print(f"| all | {len(mine)} functions | {sums['trace_s']:.2f} | {sums['lower_s']:.2f} | "
          f"{sums['trace_lower_cpu_s']:.2f} | {sums['gc_s']:.2f} | {sums['backend_s']:.2f} | "
          f"{sums['traces']} | {sums['cache_hits']} / {sums['executables']} |")


if __name__ == '__main__':
  main()
