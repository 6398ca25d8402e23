# Two entry points on a fresh clone: `make demo` and `make test`.
# Both create .venv on first use and install reidkit with the pinned torch stack, plus the
# `bench` extra (torchreid) that the tests use as an independent reference for the metrics.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= demo_data

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

# Synthesise a small multi-camera dataset, train a few epochs (prints rank-1 and mAP), then
# evaluate the checkpoint with plots and export it to a verified ONNX file; index the test
# crops in a gallery and search it; associate a synthetic site's tracks into one global id per
# person (scored against its ground truth); create an admin token and print the command that
# serves the gallery.
demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/reidkit dataset synth --out $(DEMO)/synth --ids 60 --cameras 4 --images-per-id 12
	$(VENV)/bin/reidkit train -e examples/demo.yaml
	$(VENV)/bin/reidkit evaluate -e examples/demo.yaml
	$(VENV)/bin/reidkit export -e examples/demo.yaml
	$(VENV)/bin/reidkit gallery add -e examples/demo.yaml
	@# Two searches with the calibrated threshold (false-match rate 0.001 per pair of crops).
	@# Illustrations, not guarantees: on the demo model about 5 in 6 query crops of gallery
	@# people come out "match", and 1 in 8 to 1 in 6 crops of people never added find a look-alike
	@# under the threshold (0.001 per pair over ~300 stored crops).
	@echo "== Search for person 0032 (a query crop from camera 3; the gallery holds them):"
	@$(VENV)/bin/reidkit gallery search -e examples/demo.yaml \
		gallery.query=[$(DEMO)/synth/query/0032_c3s1_236516_00.jpg]
	@echo "== Search for person 0001 (a training identity, never added to the gallery):"
	@$(VENV)/bin/reidkit gallery search -e examples/demo.yaml \
		gallery.query=[$(DEMO)/synth/bounding_box_train/0001_c1s1_002683_00.jpg]
	@echo "== A multi-camera site (synthetic tracks with embeddings): tracks in, one id per person out:"
	$(VENV)/bin/reidkit dataset synth --site --out $(DEMO)/site --tracks 300 --cameras 6 --hours 1
	$(VENV)/bin/reidkit associate -e examples/demo_site.yaml
	@echo "Admin token for the page (shown once):"
	@$(VENV)/bin/reidkit serve token -e examples/demo.yaml --name demo-admin --scopes admin
	@echo "Serve the demo gallery and its page (then open http://127.0.0.1:8080/):"
	@echo "  $(VENV)/bin/reidkit serve -e examples/demo.yaml"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(DEMO) results .pytest_cache .ruff_cache
