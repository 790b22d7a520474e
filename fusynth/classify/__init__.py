"""View classification: backbones, training, metrics."""

#: Bootstrap resamples (of subjects) behind the 95% intervals of classification metrics.
N_BOOT = 1000
#: Loader batch size of FU-LoRA's running accuracy (its notebook's batch of 24).
LEGACY_BATCH_SIZE = 24
