"""One path API for every file the programs write or read: local or a bucket.

On a pod slice the work directory is a bucket path (``gs://...``). Python's
``open`` and ``os.path`` take it for a relative local path
(``os.path.abspath('gs://b/run')`` is ``'<cwd>/gs:/b/run'``), so every
eval.json, results file, COCO json file and log goes through
``etils.epath`` (orbax's own path type; TensorFlow's gfile or fsspec behind
it for buckets, the local file system otherwise), and this module is the
one place a string becomes such a path. TensorBoard files (clu's writers)
and checkpoints (orbax) take the same paths. Config files are the
exception: they are Python code that ml_collections imports from the local
file system.
"""

import json
import os
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """Whether ``path`` names a file system by a prefix (gs://, s3://, ...)."""
  return '://' in os.fspath(path)


def path(name: PathLike) -> epath.Path:
  """``name`` as an ``epath.Path``.

  A remote path stays as given; a local one gets ``~`` expanded and is made
  absolute (orbax needs absolute paths), as ``os.path.abspath`` would.
  """
  result = epath.Path(name)
  if is_remote(result):
    return result
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(result))))


def read_json(name: PathLike) -> Any:
  return json.loads(path(name).read_text())


def write_json(name: PathLike, value: Any, indent: int | None = 2) -> None:
  """Writes ``value`` as JSON, creating the parent directories."""
  target = path(name)
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(json.dumps(value, indent=indent))


def join(base: PathLike, *names: str) -> str:
  """``base/names...`` as a string, remote or local, as given (a relative
  local path stays relative: for command lines and config values)."""
  return os.fspath(epath.Path(base, *names))
