# The two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test lint format clean architecture results docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fusynth data phantom $(DEMO_OUT)/phantom_source --n 64 --size 128 --seed 0 --overwrite
	$(BIN)/fusynth data prepare --format metadata $(DEMO_OUT)/phantom_source $(DEMO_OUT)/phantom --seed 0 --overwrite
	$(BIN)/fusynth data inspect $(DEMO_OUT)/phantom --json $(DEMO_OUT)/phantom_summary.json
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train_lora.py --train_data $(DEMO_OUT)/phantom --views head,femur --resolution 64 \
		--max_train_steps 40 --checkpointing_steps 20 --learning_rate 1e-3 \
		--validation_prompt "an ultrasound image of the fetal head" --validation_steps 20 \
		--num_validation_images 4 --output_dir $(DEMO_OUT)/lora --overwrite_output_dir
	$(BIN)/fusynth generate text2img --lora $(DEMO_OUT)/lora --views head:16,femur:16 --steps 10 \
		--out $(DEMO_OUT)/cohort --overwrite
	$(BIN)/fusynth data inspect $(DEMO_OUT)/cohort
	$(BIN)/fusynth audit cohort $(DEMO_OUT)/cohort --reference $(DEMO_OUT)/phantom:test --training $(DEMO_OUT)/phantom:train
	$(BIN)/fusynth evaluate clustering --embed pixels --data $(DEMO_OUT)/phantom --extra $(DEMO_OUT)/cohort \
		--k 4 --overcluster 8 --out $(DEMO_OUT)/clustering --overwrite
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train_classifier.py --train $(DEMO_OUT)/phantom:train --synthetic $(DEMO_OUT)/cohort \
		--resolution 64 --max_train_steps 30 --output_dir $(DEMO_OUT)/classifier --overwrite_output_dir
	$(BIN)/fusynth evaluate classification --model $(DEMO_OUT)/classifier --data $(DEMO_OUT)/phantom:test \
		--metrics standard,fulora-legacy --out $(DEMO_OUT)/classifier_eval --overwrite
	$(BIN)/fusynth evaluate zeroshot --data $(DEMO_OUT)/phantom:test --out $(DEMO_OUT)/zeroshot --overwrite
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train_controlnet.py --train_data $(DEMO_OUT)/phantom --views head --resolution 64 \
		--max_train_steps 20 --learning_rate 1e-4 --output_dir $(DEMO_OUT)/controlnet --overwrite_output_dir
	$(BIN)/fusynth generate pairs --method controlnet --adapter $(DEMO_OUT)/controlnet --masks_from ellipse \
		--n 8 --steps 10 --out $(DEMO_OUT)/pairs --overwrite
	$(BIN)/fusynth audit pairs $(DEMO_OUT)/pairs
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/finetune_sam.py --train $(DEMO_OUT)/phantom:train --synthetic $(DEMO_OUT)/pairs \
		--max_train_steps 40 --embedding_cache $(DEMO_OUT)/sam_embeddings \
		--output_dir $(DEMO_OUT)/sam --overwrite_output_dir
	$(BIN)/fusynth evaluate segmentation --model $(DEMO_OUT)/sam --data $(DEMO_OUT)/phantom:test \
		--box_jitter 0,10 --rounds 2 --out $(DEMO_OUT)/sam_eval --overwrite
	$(BIN)/fusynth experiment seg-augment --real $(DEMO_OUT)/phantom --test $(DEMO_OUT)/phantom \
		--synthetic $(DEMO_OUT)/pairs --n_real 4 --n_synthetic 0,8 --repeats 2 --max_train_steps 20 \
		--embedding_cache $(DEMO_OUT)/sam_embeddings --out $(DEMO_OUT)/seg_augment --overwrite
	$(BIN)/fusynth publish model $(DEMO_OUT)/lora --repo_id fusynth-demo/tiny-lora \
		--dry_run $(DEMO_OUT)/publish/lora --overwrite
	$(BIN)/fusynth publish cohort $(DEMO_OUT)/cohort --repo_id fusynth-demo/tiny-cohort \
		--dry_run $(DEMO_OUT)/publish/cohort --overwrite
	$(BIN)/fusynth publish model $(DEMO_OUT)/sam --repo_id fusynth-demo/tiny-sam --eval $(DEMO_OUT)/sam_eval \
		--dry_run $(DEMO_OUT)/publish/sam --overwrite
	$(BIN)/python scripts/check_published.py $(DEMO_OUT)/publish
	$(BIN)/fusynth report $(DEMO_OUT) --out $(DEMO_OUT)/report.html
	@echo
	@echo "demo outputs in $(DEMO_OUT)/ (tiny smoke base: the images are noise-like by design):"
	@echo "  phantom_source/        raw phantom frames, masks and metadata.csv"
	@echo "  phantom/               prepared dataset (datasets.load_from_disk)"
	@echo "  phantom/montage.png    samples per view with mask overlays"
	@echo "  phantom_summary.json   counts, sizes, mask coverage, split check"
	@echo "  lora/                  LoRA adapter (diffusers + peft), checkpoints, validation grids, card"
	@echo "  cohort/                synthetic cohort (head, femur) in the same schema, previews/"
	@echo "  cohort/audit/          FID/KID per view with counts, memorization check, closest pairs"
	@echo "  clustering/            k-means on pixels: purity, NMI, ARI, fidelity, montages, 2-D plot"
	@echo "  classifier/            ResNet-18 view classifier (real + synthetic), best checkpoint, card"
	@echo "  classifier_eval/       its metrics.json (with intervals and FU-LoRA legacy), confusion.png"
	@echo "  zeroshot/              zero-shot view classification with the tiny smoke CLIP"
	@echo "  controlnet/            mask-conditioned ControlNet, checkpoints, card"
	@echo "  pairs/                 synthetic head image/mask pairs, previews/, audit/pairs.csv"
	@echo "  sam/                   SAM (tiny smoke model) fine-tuned on phantom heads + the pairs, card"
	@echo "  sam_eval/              its native-resolution evaluation: per_image.csv, summary.json, overlays/"
	@echo "  publish/               dry-run Hub folders of the LoRA, the cohort and the SAM with its evaluation"
	@echo "  seg_augment/           the augmentation experiment: table.md, results.csv, differences.csv, dice_vs_real.png, dice_difference.png"
	@echo "  report.html            all of the above on one self-contained page, in pipeline order"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The demo's figures as docs/demo-results.md, read from demo_out/ (run `make demo` first).
results: $(STAMP)
	$(BIN)/python scripts/demo_results.py $(DEMO_OUT) > docs/demo-results.md.tmp
	mv docs/demo-results.md.tmp docs/demo-results.md

# The reference pages in docs/ as a site in site/ (mkdocs, in the dev extra).
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict

# Check the layout rule (no import against the pipeline order, no circle) and redraw its picture.
architecture: $(STAMP)
	$(BIN)/python scripts/architecture.py --draw docs/architecture.png

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache site
