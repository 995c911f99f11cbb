# Two entry points: `make demo` (the main job, end to end) and `make test`.
# Each creates .venv when missing and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO := demo
MODEL := models/cpu-64-null
FDN := $(VENV)/bin/fdn-index
# The query: the demo archive's case with the largest lesion (synth.json lists every case).
DEMO_CASE = $$($(PY) -c "import json; cases = json.load(open('$(DEMO)/archive/synth.json'))['case_list']; \
	print(max(cases, key=lambda c: c['lesion_voxels'])['case'])")

.PHONY: demo test test-fast lint bench install clean system-deps serve

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt setup.py hashindex/_fastscan.c hashindex/fastscan_scan.h hashindex/fastscan_x86.h \
	hashindex/fastscan_neon.h
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The inner loop: every test but those marked slow (the pipeline, service, DICOM and benchmark
# folders; see tests/conftest.py).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Real components of the tests, from Debian's packages: Orthanc with its DICOMweb plugin (a PACS),
# dcm2niix (an independent DICOM converter), headless Chromium and its WebDriver (the viewer's
# browser tests). Installs only what is missing.
SYSTEM_PACKAGES := orthanc:/usr/sbin/Orthanc \
	orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so \
	dcm2niix:/usr/bin/dcm2niix \
	chromium:/usr/bin/chromium \
	chromium-driver:/usr/bin/chromedriver \
	gcc-aarch64-linux-gnu:/usr/bin/aarch64-linux-gnu-gcc \
	qemu-user:/usr/bin/qemu-aarch64
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
		test -e "$${entry#*:}" || missing="$$missing $${entry%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "system packages present"; fi

# The training archive of the shipped models is re-made from its recorded command (models/README.md).
TRAIN_ARCHIVE := benchmarks/results/quality-cpu/work/train-archive
bench: $(STAMP)
	$(PY) -m benchmarks.speed
	$(PY) -m benchmarks.optimization
	$(PY) -m benchmarks.scale
	$(PY) -m benchmarks.build_scale
	$(PY) -m benchmarks.assembly_scale
	$(FDN) synth $(TRAIN_ARCHIVE) --cases 40 --size 64 --seed 100 --healthy-fraction 0.3
	$(PY) -m benchmarks.quality --model models/cpu-64 --model-no-dm models/cpu-64-nodm \
		--train-archive $(TRAIN_ARCHIVE)
	$(PY) -m benchmarks.quality --model $(MODEL) --train-archive $(TRAIN_ARCHIVE) \
		--out benchmarks/results/quality-ablation/null-origin-fixed-point
	$(PY) -m benchmarks.gate_cost --model $(MODEL)
	$(PY) -m benchmarks.kernels --n 1000000
	$(PY) -m benchmarks.filtered
	$(PY) -m benchmarks.region --n 1000000
	$(PY) -m benchmarks.quality_region
	$(PY) -m benchmarks.quality.generalisation --model $(MODEL) --families all --cases 30

lint: $(STAMP)
	$(VENV)/bin/ruff check fdn hashindex cli crashsafe benchmarks tests
	$(VENV)/bin/ruff format --check fdn hashindex cli crashsafe benchmarks tests
	$(VENV)/bin/mypy

# The main job on an embedded default: a fresh synthetic archive (never seen in training), the
# shipped CPU model (models/cpu-64-null, trained by the commands in its TRAIN_COMMAND.txt), an index,
# and one lesion slice queried by normal anatomy, by lesion and by both.
demo: $(STAMP)
	$(FDN) synth $(DEMO)/archive --cases 16 --size 64 --seed 7 --healthy-fraction 0.3
	$(FDN) show $(DEMO)/archive/$(DEMO_CASE) -o $(DEMO)/query_case.png
	$(FDN) build $(DEMO)/archive --model $(MODEL) --index $(DEMO)/index
	$(FDN) query --index $(DEMO)/index --case $(DEMO_CASE) --mode all --topq 6 \
		--montage $(DEMO)/montage.png
	@echo
	@echo "Pictures: $(DEMO)/query_case.png (the query case), $(DEMO)/montage.png (its hits)"

# The query service over the demo index (after `make demo`): the viewer at http://127.0.0.1:8000/,
# the API under /api, its docs at /docs. PORT=... picks another port.
PORT ?= 8000
serve: $(STAMP)
	@test -f $(DEMO)/index/manifest.json || { echo "no $(DEMO)/index: run make demo first"; exit 1; }
	$(FDN) serve --index $(DEMO)/index --port $(PORT)

clean:
	rm -rf $(DEMO) .pytest_cache
