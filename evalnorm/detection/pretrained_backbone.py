"""The detector's fine-tuning start: backbone weights from a trained classifier.

The paper's paradigms (b)-(d) start Faster R-CNN from an ImageNet ResNet-50;
at the small scale the "ImageNet model" is a ResNet v2 classifier trained on
`noisy_digits` (``configs/digits.py``, depth 8, stem stride 2), whose layers
have the detector's names and shapes: ``stem``, ``stage1_block0`` and
``stage2_block0`` become the base network (``backbone/...``), and
``stage3_block0`` and ``final_norm`` the RCN (``rcn/...``). The RPN and the
RCN's class and box layers start fresh, as the classifier's ``head`` is
dropped. For the COCO setup the same mapping takes ResNet-50 v2's stages 1-3
to the base network and stage 4 to the RCN.

``init_norm='reset'`` keeps every norm layer's fresh scale, bias and moving
averages (paradigm (b)); alpha/beta always start from alpha_init/beta_init.
"""

import functools
from collections.abc import Callable

import flax
import flax.linen as nn
from absl import logging

from evalnorm.training import checkpoint, finetune

# Top-level classifier module -> the detector part that holds it.
_PARTS = {'stem': 'backbone', 'final_norm': 'rcn'}


def _detector_part(classifier_module: str, num_base_stages: int) -> str | None:
  if classifier_module in _PARTS:
    return _PARTS[classifier_module]
  if classifier_module.startswith('stage'):
    stage = int(classifier_module[len('stage'):].split('_')[0])
    return 'backbone' if stage <= num_base_stages else 'rcn'
  return None  # the classifier's head


def merge(fresh, loaded, collection: str, num_base_stages: int,
          reset_norm: bool, norm_paths: frozenset, source: str):
  """``fresh`` detector variables with the classifier's where they map;
  ``reset_norm``: not those of the classifier's norm layers (``norm_paths``)."""
  fresh = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh))
  loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded))
  placed = set()
  for path, value in loaded.items():
    part = _detector_part(path[0], num_base_stages)
    if part is None or (reset_norm and (collection == 'batch_stats'
                                        or path[:-1] in norm_paths)):
      continue
    target = (part,) + path
    if target not in fresh or fresh[target].shape != value.shape:
      raise checkpoint.CheckpointError(
          f'init_from={source!r}: its {collection} {"/".join(path)} has no '
          'place in the detector (trained with another model or width?)')
    fresh[target] = value
    placed.add(target)
  if not placed and loaded and not (reset_norm and collection == 'batch_stats'):
    raise checkpoint.CheckpointError(f'init_from={source!r}: no {collection} '
                                     'of it maps onto the detector')
  return flax.traverse_util.unflatten_dict(fresh)


def initialize_from_classifier(state, init_from: str, init_norm: str,
                               classifier: Callable[[int], nn.Module],
                               group_size: int, channels: int,
                               num_base_stages: int):
  """``state`` with the classifier of ``init_from`` in its backbone/RCN.

  ``classifier(num_classes)`` builds that classifier; its first
  ``num_base_stages`` stages become the base network, the others the RCN.
  """
  # Parameter shapes do not depend on the image size: a small one will do.
  pretrained, norm_paths = finetune.restore_pretrained(
      init_from, classifier, group_size, (32, 32, channels))
  merge_one = functools.partial(merge, num_base_stages=num_base_stages,
                                reset_norm=init_norm == 'reset',
                                norm_paths=norm_paths,
                                source=init_from)
  logging.info('Detector initialized from classifier %s (norm layers: %s).',
               init_from, init_norm)
  return state.replace(
      params=merge_one(state.params, pretrained['params'], 'params'),
      batch_stats=merge_one(state.batch_stats, pretrained['batch_stats'],
                            'batch_stats'))
