"""Prints the paper's Table 1 and Table 2 and writes WORKDIR/eval/{metrics.json, fig3_grid.png}.

  python eval.py --config=configs/shapes.py --workdir=runs/shapes
"""
from absl import app, flags
from ml_collections import config_flags

from lsei_jax import cli, evaluation, report

config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory holding the trained stages.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')

  def run():
    result = evaluation.evaluate(FLAGS.config, FLAGS.workdir)
    print(report.format_tables(result))
    print(f'wrote {FLAGS.workdir}/eval/metrics.json and fig3_grid.png')
  cli.run_main(run)


if __name__ == '__main__':
  app.run(main)
