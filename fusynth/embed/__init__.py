"""Image embedders: one contract (:class:`~fusynth.embed.base.Embedder`) and one registry
(:func:`~fusynth.embed.registry.embedder_from_spec`) for pixels, CLIP, SSL and Inception."""
