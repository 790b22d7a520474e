"""Self-supervised learning: SimCLR on fetal ultrasound (model, augmentations, training, card)."""
