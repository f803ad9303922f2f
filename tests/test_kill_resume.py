"""SIGKILL in the middle of a stage, rerun: resumes from the last checkpoint and ends with
exactly the parameters of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

from lsei_jax.training import checkpoints
import pytest

pytestmark = pytest.mark.slow  # trains through the pipeline (the quick tier skips it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ['--config=configs/tiny.py', '--stages=classifier,concepts',
        '--config.classifier.steps=400', '--config.checkpoint.every_steps=20',
        '--config.checkpoint.max_to_keep=2']


def _train(workdir, k=1, **kw):
  args = ARGS + [f'--config.steps_per_dispatch={k}']
  return subprocess.Popen([sys.executable, 'train.py', f'--workdir={workdir}', *args],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kw)


def _metas(workdir, stages=('classifier', 'concepts')):
  out = {}
  for stage in stages:
    if not os.path.isdir(os.path.join(workdir, stage)):
      continue
    ckpt = checkpoints.StageCheckpoints(workdir, stage, read_only=True)
    out[stage] = ckpt.read_meta(ckpt.latest_step())
    ckpt.close()
  return out


# k = 4: four steps per dispatch (checkpoints every 20: windows end on them).
@pytest.mark.parametrize('k', [1, 4])
def test_sigkill_mid_stage_then_rerun_matches_uninterrupted(tmp_path, k):
  reference = str(tmp_path / 'reference')
  p = _train(reference, k)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]

  workdir = str(tmp_path / 'killed')
  p = _train(workdir, k)
  clf_dir = os.path.join(workdir, 'classifier')
  deadline = time.time() + 240
  try:
    # Wait for a finished checkpoint (Orbax renames its temporary directory when done).
    while time.time() < deadline and p.poll() is None:
      steps = [d for d in os.listdir(clf_dir) if d.isdigit()] if os.path.isdir(clf_dir) else []
      if steps:
        break
      time.sleep(0.02)
    assert p.poll() is None, 'training finished before it could be killed'
    time.sleep(0.3)  # into the middle of the next interval
    os.kill(p.pid, signal.SIGKILL)
  finally:
    p.wait(timeout=60)
  ckpt = checkpoints.StageCheckpoints(workdir, 'classifier', read_only=True)
  killed_at = ckpt.latest_step()
  assert killed_at is not None and not ckpt.read_meta(killed_at)['complete']
  ckpt.close()

  p = _train(workdir, k)
  _, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  assert f'classifier: resuming from step {killed_at}' in err
  got, want = _metas(workdir), _metas(reference)
  for stage in ('classifier', 'concepts'):
    assert got[stage]['complete']
    assert got[stage]['fingerprint'] == want[stage]['fingerprint'], stage


CHILD = '''
import os, runpy, sys
import orbax.checkpoint._src.path.atomicity as atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
  # Die in the middle of saving classifier step 8: files written, rename not done.
  if str(self._final_path).rstrip('/').endswith(os.path.join('classifier', '8')):
    os._exit(137)
  return await original(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
'''


def test_killed_during_a_save_never_restores_the_partial_checkpoint(tmp_path):
  args = ['--config=configs/tiny.py', '--stages=classifier',
          '--config.classifier.steps=12', '--config.checkpoint.every_steps=4']
  reference = str(tmp_path / 'reference')
  r = subprocess.run([sys.executable, 'train.py', f'--workdir={reference}', *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  workdir = str(tmp_path / 'killed')
  r = subprocess.run([sys.executable, '-c', CHILD, f'--workdir={workdir}', *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 137, r.stderr[-3000:]
  leftovers = [d for d in os.listdir(os.path.join(workdir, 'classifier')) if d.startswith('8')]
  assert leftovers and '8' not in leftovers  # only the unfinished temporary directory
  ckpt = checkpoints.StageCheckpoints(workdir, 'classifier', read_only=True)
  assert ckpt.latest_step() == 4
  ckpt.close()
  r = subprocess.run([sys.executable, 'train.py', f'--workdir={workdir}', *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'classifier: resuming from step 4' in r.stderr
  assert _metas(workdir)['classifier']['fingerprint'] == \
      _metas(reference)['classifier']['fingerprint']
