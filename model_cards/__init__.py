"""Model and dataset card templates (Jinja, rendered with huggingface_hub's card classes).

Installed as ``fusynth.model_cards`` so the templates ship with the package.
"""
