"""Publishing to the Hugging Face Hub: what ``fusynth publish`` builds and uploads.

:func:`fusynth.publish.hub.publish_dry_run` builds, atomically, exactly the folder an upload would send:

- a training output (LoRA, ControlNet, SAM, classifier, SSL encoder): its weights and
  configs, the sample grids, and a model card (``README.md``) naming the repository.
  Checkpoints, logs and optimizer states stay behind.
- a cohort: ``data/<split>-0000k-of-0000n.parquet`` shards (images as PNG, masks as
  single-channel PNG, ``view`` a class label whose ``id2label`` is in the card metadata),
  the generation request and audit reports under ``provenance/``, and a dataset card
  rendered from ``model_cards/dataset.md``. ``datasets.load_dataset(folder)`` reads it
  with the stock library. A cohort without ``audit/cohort_audit.json``, or whose
  flagged memorization share is above the threshold, is refused unless forced; the card
  then says so.

Absolute local paths (a home folder, a data disk) in the cards, configs, provenance files and the
per-sample ``provenance`` column are replaced by ``<local>/NAME`` (their last part):
the folder says which local folder was used without publishing the machine's layout.
A local ``base_model`` is dropped from the card metadata, which the Hub reads as a repo id.

:func:`fusynth.publish.hub.upload` builds the same folder in a temporary place and sends it with
huggingface_hub (``create_repo(exist_ok=True)``, ``create_branch`` for ``--revision``,
then one atomic ``create_commit``). The token comes from ``HF_TOKEN`` or ``hf auth
login`` and is never printed or written.
"""
