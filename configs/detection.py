r"""Faster R-CNN with the norm slot on `digit_scenes` (default) or COCO (paper Table 2).

    python -m evalnorm.main --config=configs/detection.py --workdir=/tmp/det_b2 \
        --config.batch_size=2 --config.norm_batch_size=2

Runtime: about 3-4 minutes on 2 idle CPU cores (3000 steps at ~30 steps/s, then
compilation and a ~30 s evaluation of every mode); 7-9 minutes on shared cores.
Expected result at B=2 (three seeds): EMA ~45-49 AP, EvalNorm (online) ~48-52 AP,
rule of thumb ~47-51 AP; AP50 ~63-73.
`configs/detection.py:dataset=coco` is the paper's setup: ResNet-50 v2 Faster
R-CNN on 600x600 COCO images, 300 proposals, 64 ROIs per image, lr 0.015 x N/8
(N images per batch), cosine decay.
"""

from evalnorm.training import config_lib


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.dataset = 'digit_scenes'    # 'digit_scenes' (built in) or 'coco' (tfds coco/2017)
  config.model = 'resnet_v2_small'   # 3x3/2 stem, base stages 16/32 filters, RCN stage 64
  config.width = 1                   # filters times this (resnet_v2_small)
  config.canvas_size = 64            # digit_scenes canvas (pixels a side)
  config.num_eval_images = 256       # digit_scenes eval scenes (held-out digits)
  config.image_size = 600            # coco: images resized and padded to this square
  config.anchor_sizes = (12.0, 18.0, 24.0)  # anchor sides (pixels), one anchor set per feature cell
  config.aspect_ratios = (1.5,)      # anchor height / width (digits are tall)
  config.rpn_samples = 64            # anchors sampled per image for the RPN loss (half positive at most)
  config.pre_nms_top_k = 200         # RPN boxes per image entering NMS
  config.rpn_nms_threshold = 0.7     # IoU above which NMS drops a proposal
  config.num_proposals = 32          # proposals per image kept after NMS (eval: the RCN's ROIs)
  config.rois_per_image = 16         # ROIs per image sampled for the RCN in training (1/4 foreground at most)
  config.score_threshold = 0.05      # detections below this class probability are dropped
  config.detection_nms_threshold = 0.5  # class-wise NMS of the final detections
  config.max_detections = 20         # detections per image (COCO's AP uses at most 100)
  config.batch_size = 2              # global SGD batch of images
  config.eval_batch_size = 16        # global evaluation batch of images
  config.norm_batch_size = 2         # B: images per normalization group of the base network
  config.num_train_steps = 3000
  config.warmup_steps = 100
  config.learning_rate = 0.02        # peak SGD learning rate (cosine decay to 0)
  config.weight_decay = 1e-4
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 100000   # periodic COCO evaluation is slow: final only
  config.log_every_steps = 100
  config = config_lib.override(config, arg)
  if config.dataset == 'coco':
    _paper_setup(config)
  return config


def _paper_setup(config):
  """Section 4.3's Faster R-CNN on COCO (values only where they differ)."""
  config.model = 'resnet50_v2'
  config.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
  config.aspect_ratios = (0.5, 1.0, 2.0)
  config.rpn_samples = 256
  config.pre_nms_top_k = 1000        # NMS holds a K x K IoU matrix per image: K stays moderate
  config.num_proposals = 300
  config.rois_per_image = 64
  config.max_detections = 100
  config.eval_batch_size = 8
  config.eval_modes_at_once = 1      # one mode's activations at a time (300 ROIs through stage 4)
