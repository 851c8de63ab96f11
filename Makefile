# Two commands work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on the embedded synthetic data: generate it, train a small
# YOLOv3-tiny (resumes if interrupted), evaluate the best model, convert it to int8 TFLite,
# evaluate the .tflite, compare.
demo: $(STAMP)
	$(VENV)/bin/yolo3 data config.json --no-decode
	$(VENV)/bin/yolo3 train -c config.json --quiet
	$(VENV)/bin/yolo3 evaluate -c config.json --model runs/demo/best.h5 --quiet --json runs/demo/evaluate.json
	$(VENV)/bin/yolo3 convert -c config.json --model runs/demo/best.h5 --format int8 --out runs/demo/best-int8.tflite --force
	$(VENV)/bin/yolo3 evaluate -c config.json --model runs/demo/best-int8.tflite --quiet --json runs/demo/evaluate-int8.json
	$(VENV)/bin/yolo3 compare runs/demo/evaluate.json runs/demo/evaluate-int8.json

# Two workers (this machine's cores), whole modules each: a module's fixtures (one compress run shared by its tests) are made once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs data/synthetic
