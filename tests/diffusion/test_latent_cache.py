"""Training images are streamed and their latents cached on disk: nothing is decoded up
front, the streamed cache equals encoding everything in memory, masks come along."""

from __future__ import annotations

import numpy as np
import torch

from fusynth.diffusion.dataset import cache_latents, encode_images, load_training_set
from fusynth.diffusion.lora import LoraTrainConfig


def test_loading_the_training_set_decodes_no_image(phantom_prepared, monkeypatch):
    import fusynth.data.images as images

    calls = []
    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = load_training_set(LoraTrainConfig(train_data=str(phantom_prepared)), 32)
    assert len(data) > 0 and calls == []  # captions come from the small columns only
    assert data.images[0]["pixels"].shape == (3, 32, 32) and len(calls) == 1


def test_streamed_cache_on_disk_equals_in_memory_encoding(tiny_base, phantom_prepared, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(tiny_base), subfolder="vae")
    config = LoraTrainConfig(train_data=str(phantom_prepared), views=["head"])
    data = load_training_set(config, 32, need_masks=True)
    cache = cache_latents(vae, data, flip=True, folder=tmp_path, num_workers=2, batch=8)
    expected = encode_images(vae, data.pixels, flip=True)
    assert cache.mean.shape == (len(data), 2, 4, 4, 4)
    torch.testing.assert_close(cache.mean, expected.mean, rtol=0, atol=0)
    torch.testing.assert_close(cache.std, expected.std, rtol=0, atol=0)
    # on disk, read back as arrays of the same values
    assert np.array_equal(np.load(tmp_path / "mean.npy"), expected.mean.numpy())
    assert isinstance(data.masks, np.memmap) and data.masks.shape == (len(data), 32, 32)
    assert set(np.unique(data.masks)) <= {0, 1} and data.masks.any()
    # the packed mask channel and the cached mask are the same picture
    packed = load_training_set(config, 32, packing="image,image,mask")
    assert np.array_equal((packed.images[0]["pixels"][2].numpy() > 0), data.masks[0] > 0)
