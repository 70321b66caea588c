"""TF1's tag_constants: the tags that name a meta graph of a SavedModel."""

SERVING = "serve"
TRAINING = "train"
GPU = "gpu"
TPU = "tpu"
