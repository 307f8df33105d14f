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

On several processes each process detects in its share of the eval images;
process 0 gathers every share, runs ``COCOeval`` once and alone writes the
COCO files, and the other processes get its AP.
"""

import contextlib
import functools
import io
import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from evalnorm.training import evaluation, files

METRICS = ('AP', 'AP50', 'AP75')  # COCOeval.stats[0:3], in percent


def category_ids_of(classes, category_ids) -> np.ndarray:
  """The detector's classes (1..K; 0: no object) as the dataset's category
  ids (``category_ids[k - 1]`` for class k; 0 stays 0)."""
  return np.concatenate([[0], np.asarray(category_ids)])[np.asarray(classes)]


def original_pixels(boxes, resized_size, original_size) -> np.ndarray:
  """Boxes (N, D, 4) in pixels of the detector's input, whose images were
  resized from ``original_size`` to ``resized_size`` (N, 2: height, width
  each) and padded at the bottom and right: the same boxes in pixels of
  the original images, clipped to them.

  Each axis scales on its own: the resize rounds each side to whole pixels.
  """
  original = np.asarray(original_size, np.float64)
  scale = original / np.asarray(resized_size, np.float64)  # (N, 2): y, x
  factors = np.stack([scale[:, 1], scale[:, 0]] * 2, -1)[:, None]
  limits = np.stack([original[:, 1], original[:, 0]] * 2, -1)[:, None]
  return np.clip(boxes * factors, 0.0, limits).astype(np.float32)


def in_coco_terms(detections, batch, category_ids) -> dict[str, np.ndarray]:
  """Detections (N, D, ...) of an eval batch's images in the terms of its
  dataset's ground truth: boxes in original-image pixels, category ids."""
  return {'boxes': original_pixels(detections['boxes'], batch['resized_size'],
                                   batch['original_size']),
          # int32: the ids cross processes as jax arrays, which hold no int64.
          'category_ids': category_ids_of(detections['classes'],
                                          category_ids).astype(np.int32),
          'scores': detections['scores'], 'valid': detections['valid']}


def ground_truth_json(image_ids, image_sizes, boxes, category_ids,
                      categories: dict[int, str], is_crowd=None,
                      areas=None) -> dict:
  """COCO instances-format ground truth.

  For each image of ``image_ids``: its (height, width), its boxes (G, 4) as
  (x1, y1, x2, y2) pixels and their category ids (G,; 0: no object, left
  out); optionally its crowd flags (G,; default: none is a crowd) and areas
  (G,; default: the boxes'). G may differ from image to image.
  ``categories``: {id: name}.
  """
  images, annotations = [], []
  for i, (image_id, (height, width)) in enumerate(zip(image_ids, image_sizes)):
    images.append({'id': int(image_id), 'height': int(height),
                   'width': int(width)})
    for j, (box, category) in enumerate(zip(boxes[i], category_ids[i])):
      if category > 0:
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append({
            'id': len(annotations) + 1, 'image_id': int(image_id),
            'category_id': int(category), 'bbox': [x1, y1, x2 - x1, y2 - y1],
            'area': (x2 - x1) * (y2 - y1) if areas is None
                    else float(areas[i][j]),
            'iscrowd': 0 if is_crowd is None else int(is_crowd[i][j])})
  return {'images': images, 'annotations': annotations,
          'categories': [{'id': int(k), 'name': name}
                         for k, name in sorted(categories.items())]}


def detections_json(image_ids, detections) -> list[dict]:
  """COCO results from detections (N, D, ...) of images ``image_ids`` (N,),
  already in the ground truth's terms (``in_coco_terms``)."""
  results = []
  for image_id, boxes, scores, category_ids, valid in zip(
      image_ids, detections['boxes'], detections['scores'],
      detections['category_ids'], detections['valid']):
    for box, score, category in zip(boxes[valid], scores[valid],
                                    category_ids[valid]):
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
              train_stats: bool, modes_at_once: int = 0):
  """Detections of every mode on one device's batch (modes as
  ``evaluation.over_modes``)."""
  def mode_detections(variables):
    return postprocess(apply_fn({'params': params, **variables},
                                batch['image'], train=False))
  results = {'modes': evaluation.over_modes(mode_detections, stacked_modes,
                                            modes_at_once)}
  if train_stats:
    # Training-mode pass: groups use their own statistics; the EMA update it
    # computes is dropped.
    first_mode = jax.tree_util.tree_map(lambda v: v[0], stacked_modes)
    outputs, _ = apply_fn({'params': params, **first_mode}, batch['image'],
                          train=True, mutable=['batch_stats'])
    results['train_stats'] = postprocess(outputs)
  return results


def results_json(detections) -> dict[str, list]:
  """{mode: COCO results} of the real images (mask > 0) of gathered eval
  batches ('image_id', 'mask', 'modes': {mode: ``in_coco_terms`` arrays})."""
  real = detections['mask'] > 0
  return {mode: detections_json(
      detections['image_id'][real],
      jax.tree_util.tree_map(lambda x: x[real], mode_detections))  # noqa: B023
          for mode, mode_detections in sorted(detections['modes'].items())}


def gather_from_processes(local: dict) -> dict:
  """Every process's ``local`` arrays, concatenated along their first axis
  in process order, on every process.

  Every process holds arrays of the same shapes (each runs as many eval
  batches, padded with masked repeats), as the all-gather needs.
  """
  if jax.process_count() == 1:
    return local
  gathered = multihost_utils.process_allgather(local, tiled=True)
  return jax.tree_util.tree_map(np.asarray, gathered)


def score_on_process_0(directory: files.PathLike | None, dataset,
                       detections: dict) -> dict | None:
  """Process 0: ``write_and_score`` of the gathered ``detections`` (as
  ``results_json`` takes them) against ``dataset.ground_truth()``. The other
  processes return None: they neither read the ground truth nor write."""
  if jax.process_index() > 0:
    return None
  return write_and_score(directory, dataset.ground_truth(),
                         results_json(detections))


def scores_from_process_0(scores: dict | None, modes) -> dict:
  """Process 0's ``scores`` ({mode: {metric: value}}) on every process.

  The other processes pass None; they get process 0's values as float32
  went through the broadcast (process 0 keeps its own exactly, as it
  writes them to eval.json).
  """
  if jax.process_count() == 1:
    return scores
  template = {mode: {name: 0.0 for name in METRICS} for mode in modes}
  shared = multihost_utils.broadcast_one_to_all(
      template if scores is None else scores)
  if jax.process_index() == 0:
    return scores
  return jax.tree_util.tree_map(float, shared)


class DetectionEvaluator(evaluation.Evaluator):
  """The classifiers' evaluator with detections and COCO AP in place of top-1.

  ``modes`` gives the RCN's layers their own B (see the module docstring).
  A dataset's eval batches
  carry, besides 'image' and 'mask', each image's 'image_id' and the
  'original_size' and 'resized_size' (height, width) that turn the
  detector's boxes into the ground truth's pixels; ``dataset.category_ids``
  are the ground truth's ids of classes 1..K.
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

  def _local_detections(self, params, mode_variables: dict[str, Any],
                        dataset) -> dict[str, Any]:
    """This process's eval batches, concatenated: 'image_id', 'mask' and
    'modes', each mode's detections in COCO's terms (``in_coco_terms``)."""
    names = list(mode_variables)
    stacked = jax.tree_util.tree_map(lambda *v: np.stack(v),
                                     *mode_variables.values())
    stacked, params = self.devices.replicate((stacked, params))
    # pmap's outputs: (local devices, images per device, ...) -> images.
    unshard = lambda x: x.reshape((-1,) + x.shape[2:])
    parts = []
    for batch in dataset.eval_batches():
      # Every device's own detections, not one copy of a reduced value:
      # jax.device_get, not devices.to_host.
      outputs = jax.device_get(self._step(params, stacked,
                                          self.devices.shard(batch)))
      by_mode = {name: jax.tree_util.tree_map(lambda x: unshard(x[:, i]),
                                              outputs['modes'])
                 for i, name in enumerate(names)}
      if 'train_stats' in outputs:
        by_mode['train_stats'] = jax.tree_util.tree_map(
            unshard, outputs['train_stats'])
      parts.append({'image_id': batch['image_id'], 'mask': batch['mask'],
                    'modes': {name: in_coco_terms(d, batch,
                                                  dataset.category_ids)
                              for name, d in by_mode.items()}})
    return jax.tree_util.tree_map(lambda *x: np.concatenate(x), *parts)

  def __call__(self, params, mode_variables, dataset, directory=None
               ) -> dict[str, dict[str, float]]:
    """{mode: {'AP', 'AP50', 'AP75'}}; COCO files go to ``directory``.

    Without a directory (periodic evaluation) no file is written. On
    several processes process 0 scores every process's detections and
    writes the files; every process returns process 0's scores.
    """
    detections = gather_from_processes(
        self._local_detections(params, mode_variables, dataset))
    return scores_from_process_0(
        score_on_process_0(directory, dataset, detections),
        detections['modes'])
