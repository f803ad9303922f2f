"""Trains every stage that is not complete yet: classifier → concepts → explainer(s) → probe.

  python train.py --config=configs/shapes.py --workdir=runs/shapes [--stages=concepts]
  python train.py --config=configs/shapes.py --config.classifier.steps=1000 --workdir=…
"""
from absl import app, flags
from ml_collections import config_flags

from lsei_jax import cli
from lsei_jax import pipeline

config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
flags.DEFINE_list('stages', [], f'Stages to train (default: all of the config); '
                  f'any of {", ".join(pipeline.STAGES)}.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.run_main(lambda: pipeline.train(FLAGS.config, FLAGS.workdir, FLAGS.stages or None))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
