# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medtransfer-installed
BUNDLE ?= busi_classification
# The main job fine-tunes the ImageNet EfficientNet-Lite0 (shipped offline) with MetaLR; STRATEGY= (empty) gives
# plain fine-tuning, START= a randomly initialised ResNet-18 (the papers' architecture is --arch resnet18).
STRATEGY ?= metalr
START ?= --arch efficientnet_lite0 --pretrained imagenet
# fixed once (:=), so training and evaluation name the same run
ifndef RUN
RUN := demo-$(shell date +%Y%m%d-%H%M%S)
endif
# Extra bundle overrides, e.g. make demo ARGS='--dataset_dir "$$MEDTRANSFER_DATA/busi"'
ARGS ?=

.PHONY: install demo test lint bundles clean-runs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/medtransfer run $(BUNDLE) $(if $(STRATEGY),--strategy $(STRATEGY)) --evaluate --run_name $(RUN) $(START) $(ARGS)
	@echo "results: runs/$(BUNDLE)/$(RUN) (model.pt, history.png, lr_curves.png, test_metrics.json, test_confusion_matrix.png)"

test: install
	$(VENV)/bin/ruff check medtransfer tests benchmarks
	$(PY) -m pytest

# the classification bundles' configs are composed from medtransfer/configs/parts/: edit a part, then run this
bundles: install
	$(VENV)/bin/medtransfer bundle compose

lint: install
	$(VENV)/bin/ruff check medtransfer tests benchmarks
	$(VENV)/bin/ruff format --check medtransfer tests benchmarks

clean-runs:
	rm -rf runs
