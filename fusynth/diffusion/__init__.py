"""Latent diffusion: base models (incl. the tiny offline smoke base), LoRA training,
generation."""
