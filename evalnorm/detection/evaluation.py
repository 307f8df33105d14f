"""Detection evaluation: every statistics mode in one pass, scored by pycocotools.

The modes are the classifiers' (``evalnorm.training.evaluation``). The RCN's norm
layers get their own normalization batch: in training they normalize the
``rois_per_image`` ROIs of each of the B images of a base-network group
together, so their B is ``B * rois_per_image`` ROIs, and ``rule_of_thumb``
(1/B^2) and ``one_over_b`` (1/B) use that count there (so both are close to
plain EMA evaluation in the RCN). ``ema``, ``evalnorm`` and ``fixed_<c>`` mean
the same in both parts; ``train_stats`` normalizes groups of B eval images in
the base network and their B * num_proposals proposals in the RCN.

Ground truth and each mode's detections are written in COCO format, and the
AP of each mode is computed by ``COCOeval`` from those very files, so any
COCO tool reading them gets the numbers of ``eval.json``.
"""

import contextlib
import functools
import io
import json
from typing import Any

import jax
import numpy as np

from evalnorm.training import evaluation, files

METRICS = ('AP', 'AP50', 'AP75')  # COCOeval.stats[0:3], in percent


def ground_truth_json(image_ids, boxes, classes, image_size: tuple[int, int],
                      category_names) -> dict:
  """COCO-format ground truth of images ``image_ids`` (N,) of ``image_size``
  (height, width), with boxes (N, G, 4) and classes (N, G; 0 = no object)."""
  height, width = image_size
  images, annotations = [], []
  for image_id, image_boxes, image_classes in zip(image_ids, boxes, classes):
    images.append({'id': int(image_id), 'width': width, 'height': height})
    for box, category in zip(image_boxes, image_classes):
      if category > 0:
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append({
            'id': len(annotations) + 1, 'image_id': int(image_id),
            'category_id': int(category), 'bbox': [x1, y1, x2 - x1, y2 - y1],
            'area': (x2 - x1) * (y2 - y1), 'iscrowd': 0})
  categories = [{'id': i + 1, 'name': name}
                for i, name in enumerate(category_names)]
  return {'images': images, 'annotations': annotations,
          'categories': categories}


def detections_json(image_ids, detections) -> list[dict]:
  """COCO results from detections (N, D, ...) of images ``image_ids`` (N,)."""
  results = []
  for image_id, boxes, scores, classes, valid in zip(
      image_ids, detections['boxes'], detections['scores'],
      detections['classes'], detections['valid']):
    for box, score, category in zip(boxes[valid], scores[valid],
                                    classes[valid]):
      x1, y1, x2, y2 = (round(float(v), 2) for v in box)
      results.append({'image_id': int(image_id), 'category_id': int(category),
                      'bbox': [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                      'score': round(float(score), 5)})
  return results


def coco_metrics(ground_truth: dict, detections: list) -> dict[str, float]:
  """AP, AP50 and AP75 (percent) of COCO-format detections against ground truth.

  Both are the JSON values of the files (``read_json`` of them gives them
  back): pycocotools reads files from the local disk only, a work directory
  may be a bucket.
  """
  from pycocotools.coco import COCO  # only detection runs need it
  from pycocotools.cocoeval import COCOeval
  if not detections:  # COCO.loadRes cannot read an empty list.
    return {name: 0.0 for name in METRICS}
  # A JSON round trip, as through the files: the same values COCO(path) and
  # loadRes(path) would read, in new objects (loadRes edits its input).
  ground_truth, detections = json.loads(json.dumps([ground_truth, detections]))
  with contextlib.redirect_stdout(io.StringIO()):  # COCO's progress prints
    coco = COCO()
    coco.dataset = ground_truth
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(detections), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  # -1 marks "no ground truth in this category/area": no AP at all.
  return {name: float(100.0 * max(value, 0.0))
          for name, value in zip(METRICS, evaluator.stats[:3])}


def score_files(ground_truth_path: files.PathLike,
                detections_path: files.PathLike) -> dict[str, float]:
  """``coco_metrics`` of a ground-truth file and a results file (local or
  in a bucket), e.g. those ``write_and_score`` wrote."""
  return coco_metrics(files.read_json(ground_truth_path),
                      files.read_json(detections_path))


def write_and_score(directory: files.PathLike | None, ground_truth: dict,
                    detections: dict[str, list]) -> dict[str, dict]:
  """Scores each mode; writes ground_truth.json and detections_<mode>.json
  to ``directory`` (local or a bucket) unless it is None."""
  if directory is not None:
    directory = files.path(directory)
    files.write_json(directory / 'ground_truth.json', ground_truth, indent=None)
    for mode, mode_detections in sorted(detections.items()):
      files.write_json(directory / f'detections_{mode}.json', mode_detections,
                       indent=None)
  return {mode: coco_metrics(ground_truth, mode_detections)
          for mode, mode_detections in sorted(detections.items())}


def eval_step(params, stacked_modes, batch, apply_fn, postprocess,
              train_stats: bool):
  """Detections of every mode on one device's batch (vmapped over modes)."""
  num_modes = None if jax.tree_util.tree_leaves(stacked_modes) else 1

  def mode_detections(variables):
    return postprocess(apply_fn({'params': params, **variables},
                                batch['image'], train=False))
  results = {'modes': jax.vmap(mode_detections, axis_size=num_modes)(
      stacked_modes)}
  if train_stats:
    # Training-mode pass: groups use their own statistics; the EMA update it
    # computes is dropped.
    first_mode = jax.tree_util.tree_map(lambda v: v[0], stacked_modes)
    outputs, _ = apply_fn({'params': params, **first_mode}, batch['image'],
                          train=True, mutable=['batch_stats'])
    results['train_stats'] = postprocess(outputs)
  return results


class DetectionEvaluator(evaluation.Evaluator):
  """The classifiers' evaluator with detections and COCO AP in place of top-1.

  ``modes`` gives the RCN's layers their own B (see the module docstring);
  calling it returns each mode's COCO-format detections.
  """

  def __init__(self, model, evalnorm_model,
               settings: evaluation.ModeSettings, postprocess,
               rcn_group_size: int):
    """``postprocess``: the detector's outputs -> detections (as
    ``detector.postprocess`` with its settings bound); ``rcn_group_size``:
    the RCN layers' B (B * rois_per_image)."""
    super().__init__(model, evalnorm_model, settings,
                     functools.partial(eval_step, postprocess=postprocess))
    self.rcn_group_size = rcn_group_size

  def modes(self, state) -> dict[str, Any]:
    modes = super().modes(state)
    if not self.uses_batch_statistics:
      return modes
    rcn_modes = evaluation.fixed_modes(self.alpha_beta(state)['rcn'],
                                       self.rcn_group_size,
                                       self.settings.fixed_alpha_beta)
    for mode, rcn_alpha_beta in rcn_modes.items():
      modes[mode]['evalnorm'] = {**modes[mode]['evalnorm'],
                                 'rcn': rcn_alpha_beta}
    return modes

  def detect(self, params, mode_variables: dict[str, Any], dataset
             ) -> dict[str, list]:
    """{mode: COCO results} over the whole eval set."""
    names = list(mode_variables)
    stacked = jax.tree_util.tree_map(lambda *v: np.stack(v),
                                     *mode_variables.values())
    stacked, params = self.devices.replicate((stacked, params))
    detections = {name: [] for name in names}
    for batch in dataset.eval_batches():
      # Every device's own detections (pmap's leading device axis), not one
      # copy of a reduced value: jax.device_get, not devices.to_host.
      outputs = jax.device_get(self._step(params, stacked,
                                          self.devices.shard(batch)))
      real = batch['mask'] > 0
      image_ids = batch['image_id'][real]
      unshard = lambda x: x.reshape((-1,) + x.shape[2:])[real]
      for i, name in enumerate(names):
        mode = jax.tree_util.tree_map(lambda x: unshard(x[:, i]),
                                      outputs['modes'])
        detections[name] += detections_json(image_ids, mode)
      if 'train_stats' in outputs:
        detections.setdefault('train_stats', []).extend(detections_json(
            image_ids, jax.tree_util.tree_map(unshard, outputs['train_stats'])))
    return detections

  def __call__(self, params, mode_variables, dataset, directory=None
               ) -> dict[str, dict[str, float]]:
    """{mode: {'AP', 'AP50', 'AP75'}}; COCO files go to ``directory``.

    Without a directory (periodic evaluation) no file is written.
    """
    detections = self.detect(params, mode_variables, dataset)
    return write_and_score(directory, dataset.ground_truth(), detections)
