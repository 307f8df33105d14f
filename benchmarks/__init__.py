"""Speed and memory benchmarks, each printing ratios against flax's BatchNorm."""
