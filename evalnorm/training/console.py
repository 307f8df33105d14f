"""What the command lines print while they run.

By default the console shows this project's own lines only: the device layout,
one line per log interval (step, loss, accuracy, alpha/beta, steps/s, ETA),
one line per checkpoint save, warnings and errors, and the final table on
stdout. The libraries' INFO chatter (orbax's handler registries and save
internals, jax's backend probes, clu's raw metric dumps) is what
``--verbosity=1`` (absl's flag) adds back, with absl's full line prefix.

Only the console is filtered: every record still reaches the loggers, so
tests and log collectors that attach their own handlers see all of them, and
the metric writer behind ``MetricsConsole`` still writes every scalar.
"""

import logging as python_logging
import os
import time

from absl import logging
from clu import metric_writers

# evalnorm/, whose modules' INFO lines are this project's own.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class OwnLinesOnly(python_logging.Filter):
  """Passes warnings and errors, and the INFO lines of evalnorm's own code."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    return (record.levelno >= python_logging.WARNING
            or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR))


class ShortFormatter(python_logging.Formatter):
  """``HH:MM:SS message``; warnings and errors name their level."""

  def __init__(self):
    super().__init__('%(asctime)s %(message)s', datefmt='%H:%M:%S')

  def format(self, record: python_logging.LogRecord) -> str:
    line = super().format(record)
    if record.levelno >= python_logging.WARNING:
      time_text, _, message = line.partition(' ')
      line = f'{time_text} {record.levelname}: {message}'
    return line


def configure() -> None:
  """The console of a command: short own lines, or everything at --verbosity>=1."""
  if logging.get_verbosity() >= logging.DEBUG:
    return
  handler = logging.get_absl_handler().python_handler
  handler.addFilter(OwnLinesOnly())
  handler.setFormatter(ShortFormatter())


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'


class MetricsConsole(metric_writers.MetricWriter):
  """Writes every call through to ``writer``; logs one line per logged step.

  Training scalars (they hold ``loss``) become ``step N/T: loss ..., accuracy
  ..., alpha ..., beta ..., R steps/s, ETA m:ss``, the rate measured since the
  previous such line (the first, which includes compilation, has none).
  Periodic evaluations become one line of top-1 (or AP) per mode; the final
  one is the table the command prints.
  """

  def __init__(self, writer: metric_writers.MetricWriter, total_steps: int):
    self._writer = writer
    self._total_steps = total_steps
    self._last = None  # (step, time) of the previous training line

  def write_scalars(self, step, scalars):
    self._writer.write_scalars(step, scalars)
    if 'loss' in scalars:
      self._log_training(step, scalars)
    elif step < self._total_steps:
      evaluated = {k[len('eval/'):]: v for k, v in scalars.items()
                   if k.startswith('eval/') and k.endswith(('_top1', '_AP'))}
      if evaluated:
        logging.info('step %d eval: %s', step, ', '.join(
            f'{k} {float(v):.2f}' for k, v in evaluated.items()))

  def _log_training(self, step, scalars):
    now = time.monotonic()
    parts = [f"loss {scalars['loss']:.4f}"]
    if 'accuracy' in scalars:
      parts.append(f"accuracy {scalars['accuracy']:.4f}")
    for name in ('alpha', 'beta'):
      if name in scalars:
        parts.append(f'{name} {scalars[name]:.4f}')
    if self._last is not None and step > self._last[0] and now > self._last[1]:
      rate = (step - self._last[0]) / (now - self._last[1])
      parts += [f'{rate:.2f} steps/s',
                f'ETA {_duration((self._total_steps - step) / rate)}']
    self._last = (step, now)
    logging.info('step %d/%d: %s', step, self._total_steps, ', '.join(parts))

  def write_summaries(self, step, values, metadata=None):
    self._writer.write_summaries(step, values, metadata)

  def write_images(self, step, images):
    self._writer.write_images(step, images)

  def write_videos(self, step, videos):
    self._writer.write_videos(step, videos)

  def write_audios(self, step, audios, *, sample_rate):
    self._writer.write_audios(step, audios, sample_rate=sample_rate)

  def write_texts(self, step, texts):
    self._writer.write_texts(step, texts)

  def write_histograms(self, step, arrays, num_buckets=None):
    self._writer.write_histograms(step, arrays, num_buckets)

  def write_hparams(self, hparams):
    self._writer.write_hparams(hparams)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()
