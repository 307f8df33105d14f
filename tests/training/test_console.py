"""The console of the command lines: own lines only, one line per log step."""

import logging
import os

from clu import metric_writers

from evalnorm.training import console


def record(pathname, level=logging.INFO, message='m'):
  return logging.LogRecord('absl', level, pathname, 1, message, (), None)


def test_library_info_is_dropped_own_lines_and_warnings_kept():
  package = os.path.dirname(os.path.dirname(console.__file__))
  keep = console.OwnLinesOnly()
  for own in ('training/trainer.py', 'calibration.py', 'detection/train.py'):
    assert keep.filter(record(os.path.join(package, own))), own
  assert not keep.filter(record('/site-packages/orbax/checkpoint_manager.py'))
  assert keep.filter(record('/site-packages/orbax/x.py', logging.WARNING))


class Recorder(metric_writers.MetricWriter):
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  write_summaries = write_images = write_videos = write_audios = None
  write_texts = write_histograms = write_hparams = flush = close = None


def test_one_line_per_logged_step_and_every_scalar_passed_on(caplog,
                                                             monkeypatch):
  inner = Recorder()
  writer = console.MetricsConsole(inner, total_steps=30)
  clock = iter([100.0, 105.0])
  monkeypatch.setattr(console.time, 'monotonic', lambda: next(clock))
  # absl's logger may have been left at WARNING by an earlier command line.
  with caplog.at_level(logging.INFO, logger='absl'):
    writer.write_scalars(10, {'loss': 2.0, 'accuracy': 0.5, 'alpha': 0.1,
                              'beta': 0.2, 'grad_norm': 1.0})
    writer.write_scalars(20, {'loss': 1.0, 'accuracy': 0.75})
    writer.write_scalars(20, {'steps_per_sec': 2.0})
    writer.write_scalars(25, {'eval/ema_top1': 50.0, 'eval/ema_loss': 1.0})
    writer.write_scalars(30, {'eval/ema_top1': 60.0})  # the final table's
  lines = [r.getMessage() for r in caplog.records]
  assert lines == [
      'step 10/30: loss 2.0000, accuracy 0.5000, alpha 0.1000, beta 0.2000',
      'step 20/30: loss 1.0000, accuracy 0.7500, 2.00 steps/s, ETA 0:05',
      'step 25 eval: ema_top1 50.00']
  assert len(inner.scalars) == 5
