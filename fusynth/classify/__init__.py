"""View classification: backbones, training, metrics."""
