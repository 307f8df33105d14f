"""Training and evaluation of the Faster R-CNN detector (the paper's Table 2).

The classifiers' machinery is reused as it is: the train state with its
alpha/beta optimizer, checkpoints, resume, SIGTERM and divergence checks
(``evalnorm.training.trainer.train_loop``), config validation and the evaluation modes.
What is detection's own: the dataset, the model, the train step (detection
losses, ground truth passed to the model, an rng for sampling) and the
evaluation, which scores detections with pycocotools.

``train_and_evaluate(config, workdir)`` is what ``python -m evalnorm.main``
runs for a detection config (``config.dataset`` in ``DATASETS``).
"""

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from evalnorm import calibration
from evalnorm.detection import (digit_scenes,
                                evaluation as detection_evaluation, faster_rcnn,
                                pretrained_backbone, training_targets)
from evalnorm.training import (builders, checkpoint, config_lib, evaluation,
                               files, offline_estimation, parallel, summary,
                               trainer)
from evalnorm.variables import set_alpha_beta



def _coco_dataset(config):
  from evalnorm.detection import coco  # tensorflow only when used
  return coco.CocoDataset(config)


# The detection datasets: config.dataset -> constructor(config).
DATASETS = {'digit_scenes': digit_scenes.DigitScenesDataset, 'coco': _coco_dataset}


@dataclasses.dataclass(frozen=True)
class Detector:
  """A detector that ``config.model`` names.

  make: (config, num_classes, norm, settings) -> the flax module.
  classifier: the ``builders.MODELS`` entry it starts from (``init_from``).
  base_stages: that classifier's stages that become the base network (the
    others the RCN).
  check: config -> None, raising ConfigError for a value of the model's own
    keys that it cannot take.
  """
  make: Callable
  classifier: str
  base_stages: int
  check: Callable[[ml_collections.ConfigDict], None] = lambda config: None


MODELS = {
    'resnet_v2_small': Detector(
        lambda c, num_classes, norm, settings: faster_rcnn.small_detector(
            num_classes, norm, width=c.width, **settings),
        classifier='resnet_v2_cifar', base_stages=2,
        check=lambda c: config_lib.require(
            isinstance(c.width, int) and c.width >= 1, 'width', c.width,
            'must be a positive integer')),
    'resnet50_v2': Detector(
        lambda c, num_classes, norm, settings: faster_rcnn.resnet50_detector(
            num_classes, norm, **settings),
        classifier='resnet50_v2', base_stages=3),
}


def is_detection(config) -> bool:
  return config.dataset in DATASETS


def validate(config: ml_collections.ConfigDict, num_devices: int,
             num_processes: int = 1) -> None:
  """Raises ConfigError for the first detection config value that cannot
  work: detection's own keys, then the rules every task shares."""
  require = config_lib.require
  builders.lookup(DATASETS, 'dataset', config.dataset)
  builders.lookup(MODELS, 'model', config.model).check(config)
  require(config.parallelism == 'pmap', 'parallelism', config.parallelism,
          "the detector runs under 'pmap' only (its evaluation reads every "
          "device's own detections)")
  for key in ('canvas_size', 'num_eval_images', 'num_proposals',
              'rois_per_image', 'pre_nms_top_k', 'rpn_samples',
              'max_detections'):
    require(isinstance(config[key], int) and config[key] > 0, key,
            config[key], 'must be a positive integer')
  for key in ('rpn_nms_threshold', 'detection_nms_threshold',
              'score_threshold'):
    require(0 < config[key] <= 1, key, config[key], 'must be in (0, 1]')
  builders.validate_shared(config, num_devices, num_processes)


def make_dataset(config):
  return builders.lookup(DATASETS, 'dataset', config.dataset)(config)


def build_detector(config, num_classes: int, norm_name: str | None = None):
  """The detector of ``config.model`` with the norm of ``norm_name``."""
  settings = dict(
      anchor_sizes=tuple(config.anchor_sizes),
      aspect_ratios=tuple(config.aspect_ratios),
      pre_nms_top_k=config.pre_nms_top_k,
      rpn_nms_threshold=config.rpn_nms_threshold,
      num_proposals=config.num_proposals,
      rois_per_image=config.rois_per_image, dtype=builders.dtype(config))
  return builders.lookup(MODELS, 'model', config.model).make(
      config, num_classes, builders.make_norm(config, norm_name), settings)


def smooth_l1(x, beta: float = 1.0 / 9):
  """Huber-like loss of Faster R-CNN's box regression, summed over (dx..dh)."""
  absolute = jnp.abs(x)
  return jnp.sum(jnp.where(absolute < beta, 0.5 * x**2 / beta,
                           absolute - 0.5 * beta), axis=-1)


def _weighted_mean(values, weights):
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def detection_loss(outputs, batch, key, rpn_samples: int):
  """RPN and RCN classification and box losses; (total, parts)."""
  targets = jax.vmap(
      functools.partial(training_targets.rpn_targets, num_samples=rpn_samples),
      in_axes=(0, None, 0, 0))(
          jax.random.split(key, batch['image'].shape[0]), outputs['anchors'],
          batch['boxes'], batch['classes'])
  sampled = targets['weights']
  parts = {
      'rpn_cls': _weighted_mean(optax.sigmoid_binary_cross_entropy(
          outputs['rpn_logits'], targets['labels']), sampled),
      'rpn_box': jnp.sum(targets['box_weights'] * smooth_l1(
          outputs['rpn_deltas'] - targets['box_targets']))
                 / jnp.maximum(jnp.sum(sampled), 1.0)}
  rois = outputs['roi_targets']
  parts['rcn_cls'] = _weighted_mean(
      optax.softmax_cross_entropy_with_integer_labels(
          outputs['rcn_logits'], rois['classes']), rois['weights'])
  # The box layer predicts one box per class; the loss reads the true class's.
  true_class = jnp.maximum(rois['classes'] - 1, 0)[..., None, None]
  deltas = jnp.take_along_axis(outputs['rcn_deltas'], true_class, axis=2)
  parts['rcn_box'] = (jnp.sum(rois['box_weights'] * smooth_l1(
      deltas[..., 0, :] - rois['box_targets'])) /
                      jnp.maximum(jnp.sum(rois['weights']), 1.0))
  parts['rcn_accuracy'] = _weighted_mean(
      jnp.argmax(outputs['rcn_logits'], -1) == rois['classes'], rois['weights'])
  total = parts['rpn_cls'] + parts['rpn_box'] + parts['rcn_cls'] + parts['rcn_box']
  return total, parts


def detector_forward(state: trainer.TrainState, batch, *, seed: int,
                     rpn_samples: int):
  """The detector's ``forward`` for ``trainer.sgd_step`` and ``alpha_beta_step``.

  Anchor and ROI sampling draw from a key of (seed, step, device), so a
  resumed run samples exactly as an uninterrupted one.
  """
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed),
                                              state.step),
                           lax.axis_index(parallel.DEVICE_AXIS))
  rpn_key, roi_key = jax.random.split(key)

  def forward(variables, mutable):
    outputs, new_vars = state.apply_fn(
        variables, batch['image'], train=True, gt_boxes=batch['boxes'],
        gt_classes=batch['classes'], mutable=mutable,
        rngs={'sampling': roi_key})
    task_loss, parts = detection_loss(outputs, batch, rpn_key, rpn_samples)
    return task_loss, new_vars, parts
  return forward


def results_table(results: dict) -> str:
  """A markdown table of COCO AP, AP50 and AP75 per evaluation mode."""
  return summary.results_table(results, summary.DETECTION_COLUMNS, 'eval images')


def fine_tuning_start(config, channels: int):
  """What a new detection run does to its fresh state: put the classifier
  of ``config.init_from`` in its backbone and RCN (``detection_init``), or
  nothing (None)."""
  if not config.init_from:
    return None
  model = MODELS[config.model]
  classifier_config = config.copy_and_resolve_references()
  classifier_config.model = model.classifier
  classifier_config.depth = 8  # one block a stage, as the small detector's
  classifier_config.stem_strides = 2
  return functools.partial(
      pretrained_backbone.initialize_from_classifier,
      init_from=config.init_from, init_norm=config.init_norm,
      classifier=functools.partial(builders.build_model, classifier_config),
      group_size=config.norm_batch_size, channels=channels,
      num_base_stages=model.base_stages)


def detection_task(config: ml_collections.ConfigDict, workdir: str
                   ) -> trainer.Task:
  """The detector of ``config`` on its dataset; the final evaluation also
  writes the COCO files to ``workdir/coco``."""
  validate(config, jax.device_count(), jax.process_count())
  dataset = make_dataset(config)
  model = build_detector(config, dataset.num_classes)
  estimate = builders.estimates_online(config)
  evaluator = make_evaluator(
      config, dataset, model,
      build_detector(config, dataset.num_classes, 'evalnorm'),
      evaluation.ModeSettings.from_config(config, estimate))
  return trainer.Task(
      dataset, model, evaluator, estimate, forward_fn(config),
      fine_tuning_start(config, dataset.image_shape[-1]),
      lambda state: evaluator(state.params, evaluator.modes(state), dataset,
                              directory=files.path(workdir) / 'coco'),
      lambda results: {f'eval/{mode}_{name}': value
                       for mode, r in results.items()
                       for name, value in r.items()},
      evaluator.devices)


def forward_fn(config):
  """``detector_forward`` with the config's settings, as ``trainer.TrainPrograms`` takes it."""
  return functools.partial(detector_forward, seed=config.seed,
                           rpn_samples=config.rpn_samples)


def make_evaluator(config, dataset, model, evalnorm_model,
                   settings: evaluation.ModeSettings
                   ) -> detection_evaluation.DetectionEvaluator:
  """COCO evaluation of ``model`` (``evalnorm_model``: the same with
  EvalNorm layers) with the config's post-processing; the RCN's layers
  normalize groups of B * rois_per_image ROIs."""
  postprocess = functools.partial(
      faster_rcnn.postprocess, image_size=dataset.image_shape[:2],
      score_threshold=config.score_threshold,
      nms_threshold=config.detection_nms_threshold,
      max_detections=config.max_detections)
  return detection_evaluation.DetectionEvaluator(
      model, evalnorm_model, settings, postprocess,
      rcn_group_size=config.norm_batch_size * config.rois_per_image)


def estimate_and_evaluate(config: ml_collections.ConfigDict,
                          checkpoint_dir: str, workdir: str) -> dict:
  """Offline estimation for a trained detector (``evalnorm.estimate``).

  The detector of ``checkpoint_dir`` (EvalNorm or nn.BatchNorm, converted)
  stays frozen; alpha/beta start from alpha_init/beta_init and take
  ``offline_estimation_steps`` steps of the training loop's own alpha/beta
  program (``trainer.TrainPrograms.alpha_beta``) on training batches. Then every mode
  is evaluated, ``evalnorm`` being the offline estimate; eval.json and the
  COCO files go to ``workdir``.
  """
  validate(config, jax.device_count(), jax.process_count())
  offline_estimation.check_norm(config)
  manager = checkpoint.open_existing(checkpoint_dir)
  dataset = make_dataset(config)
  model = build_detector(config, dataset.num_classes, 'evalnorm')
  variables, meta = offline_estimation.restore_as_evalnorm(
      config, manager, checkpoint_dir,
      build_detector(config, dataset.num_classes), dataset.image_shape,
      {k: config[k] for k in ('model', 'norm', 'dataset')})
  alpha_beta_tx = trainer.Optimizers.from_config(config, 1).alpha_beta
  evalnorm = set_alpha_beta(variables['evalnorm'], config.alpha_init,
                            config.beta_init)
  frozen = trainer.TrainState.create(  # the weights' optimizer never runs
      apply_fn=model.apply, params=variables['params'], tx=optax.identity(),
      batch_stats=variables['batch_stats'], evalnorm=evalnorm,
      evalnorm_opt_state=alpha_beta_tx.init(evalnorm), evalnorm_tx=alpha_beta_tx)
  steps = trainer.TrainPrograms(forward_fn(config))
  devices = steps.devices
  state = devices.replicate(frozen)
  for i, batch in enumerate(itertools.islice(
      dataset.train_batches(0), config.offline_estimation_steps), start=1):
    evalnorm, opt_state, aux_loss = steps.alpha_beta(state,
                                                     devices.shard(batch))
    state = state.replace(evalnorm=evalnorm, evalnorm_opt_state=opt_state)
    if i % config.log_every_steps == 0:
      calibration.log_progress(i, float(devices.to_host(aux_loss)),
                               devices.to_host(evalnorm))
  estimated = frozen.replace(evalnorm=devices.to_host(state.evalnorm))
  evaluator = make_evaluator(
      config, dataset, model, model,
      evaluation.ModeSettings('evalnorm', config.norm_batch_size,
                              tuple(config.fixed_alpha_beta), estimated=True,
                              modes_at_once=config.eval_modes_at_once))
  results = evaluator(estimated.params, evaluator.modes(estimated), dataset,
                      directory=files.path(workdir) / 'coco')
  return summary.write_eval_json(
      workdir, config, meta.get('step'), dataset.num_eval_examples, results,
      estimated.evalnorm,
      offline_examples=config.offline_estimation_steps * config.batch_size,
      checkpoint=checkpoint_dir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir``), evaluates every mode with COCOeval,
  writes eval.json and the COCO files in ``workdir/coco``; preemption,
  failures and resume as for classification (``trainer.train_and_evaluate``)."""
  return trainer.train_and_evaluate(config, workdir, detection_task)
