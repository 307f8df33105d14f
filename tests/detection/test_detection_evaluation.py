"""COCO-format output and AP of the detection evaluation on hand-made cases."""

import json

import numpy as np

from evalnorm.detection import evaluation as detection_evaluation


def hand_made_ground_truth():
  """Two 40x40 images: one object in the first, two in the second."""
  boxes = np.zeros((2, 2, 4), np.float32)
  boxes[0, 0] = [2, 3, 12, 13]
  boxes[1, 0] = [20, 20, 30, 36]
  boxes[1, 1] = [0, 0, 8, 10]
  classes = np.asarray([[1, 0], [1, 2]], np.int32)
  return detection_evaluation.ground_truth_json(
      [1, 2], [(40, 40), (40, 40)], boxes, classes, {1: 'a', 2: 'b'})


def detections(rows):
  """One image's detections from (box, score, class) rows, padded to 4."""
  out = {'boxes': np.zeros((1, 4, 4), np.float32),
         'scores': np.zeros((1, 4), np.float32),
         'category_ids': np.ones((1, 4), np.int32),
         'valid': np.zeros((1, 4), bool)}
  for i, (box, score, category) in enumerate(rows):
    out['boxes'][0, i], out['scores'][0, i] = box, score
    out['category_ids'][0, i], out['valid'][0, i] = category, True
  return out


def test_ground_truth_is_coco_format():
  gt = hand_made_ground_truth()
  assert [a['bbox'] for a in gt['annotations']] == [
      [2, 3, 10, 10], [20, 20, 10, 16], [0, 0, 8, 10]]
  assert [a['category_id'] for a in gt['annotations']] == [1, 1, 2]
  assert gt['categories'] == [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]
  assert len({a['id'] for a in gt['annotations']}) == 3


def test_ap_matches_the_hand_computed_coco_value(tmp_path):
  """Class a: 2 objects; a hit (0.9), a false alarm (0.8), a hit (0.7).

  Precision/recall: (1, 1/2), (1/2, 1/2), (2/3, 1). COCO interpolates
  precision as the best at any higher recall: 1 for recall <= 0.5 (51 of
  the 101 recall points), 2/3 above: AP = (51 + 50 * 2/3) / 101 at every
  IoU threshold (the hits are exact). Class b's object is found with IoU
  0.62: a hit for thresholds 0.5, 0.55, 0.6 only: AP 0.3, AP50 1, AP75 0.
  """
  per_image = [
      detections([([2, 3, 12, 13], 0.9, 1), ([30, 0, 40, 10], 0.8, 1)]),
      detections([([20, 20, 30, 36], 0.7, 1), ([0, 0, 8, 6.2], 0.6, 2)]),
  ]
  results = []
  for image_id, dets in zip((1, 2), per_image):
    results += detection_evaluation.detections_json([image_id], dets)
  assert results[0] == {'image_id': 1, 'category_id': 1,
                        'bbox': [2.0, 3.0, 10.0, 10.0], 'score': 0.9}
  metrics = detection_evaluation.write_and_score(
      str(tmp_path), hand_made_ground_truth(), {'ema': results})['ema']
  class_a = (51 + 50 * 2 / 3) / 101
  np.testing.assert_allclose(metrics['AP'], 100 * (class_a + 0.3) / 2, atol=1e-6)
  np.testing.assert_allclose(metrics['AP50'], 100 * (class_a + 1) / 2, atol=1e-6)
  np.testing.assert_allclose(metrics['AP75'], 100 * class_a / 2, atol=1e-6)
  with open(tmp_path / 'detections_ema.json') as f:
    assert json.load(f) == results


def test_a_mode_without_detections_scores_zero(tmp_path):
  gt = hand_made_ground_truth()
  metrics = detection_evaluation.write_and_score(str(tmp_path), gt, {'ema': []})
  assert metrics == {'ema': {'AP': 0.0, 'AP50': 0.0, 'AP75': 0.0}}


def test_a_perfect_detector_scores_100(tmp_path):
  gt = hand_made_ground_truth()
  results = [{'image_id': a['image_id'], 'category_id': a['category_id'],
              'bbox': a['bbox'], 'score': 0.9} for a in gt['annotations']]
  metrics = detection_evaluation.write_and_score(str(tmp_path), gt, {'m': results})
  assert metrics['m'] == {'AP': 100.0, 'AP50': 100.0, 'AP75': 100.0}
