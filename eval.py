"""Prints the paper's Table 1 and Table 2 and writes WORKDIR/eval/{metrics.json, fig3_grid.png}.

  python eval.py --config=configs/shapes.py --workdir=runs/shapes
  python eval.py … --workdir=runs/seed0 --seed_workdirs=runs/seed1,runs/seed2
"""
import json

from absl import app, flags
from ml_collections import config_flags

from lsei_jax import cli
from lsei_jax.pipeline import evaluation
from lsei_jax.reporting import report

config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory holding the trained stages.')
flags.DEFINE_list('seed_workdirs', [], 'Workdirs of the same config trained with other '
                  'seeds: also report mean ± std of Tables 1 and 2 over all of them.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')

  def run():
    if FLAGS.seed_workdirs:
      agg = evaluation.evaluate_seeds(FLAGS.config, FLAGS.workdir, FLAGS.seed_workdirs)
      print(report.format_seeds(agg['figures']))
      if agg['concept_stability']['mean'] is not None:
        print(f'  concept code stability (Hungarian-matched |corr| with each other run): '
              f'{agg["concept_stability"]["mean"]:.3f}')
    result = json.load(open(f'{FLAGS.workdir}/eval/metrics.json')) if FLAGS.seed_workdirs \
        else evaluation.evaluate(FLAGS.config, FLAGS.workdir)
    print(report.format_tables(result))
    print(report.format_concepts(result))
    print(report.format_bias(result))
    if result.get('invariance'):
      print(report.format_invariance(result))
    if result.get('factor_sweep'):
      print(report.format_factor_sweep(result))
    print(f'wrote {FLAGS.workdir}/eval/report.html, metrics.json and figures')
  cli.run_main(run)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
