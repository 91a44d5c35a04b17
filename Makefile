# make setup   : .venv with the pinned stack (idempotent; a second run does nothing until this Makefile,
#                pyproject.toml or the lock changes, and then pip finds the pins met)
# make test    : the test suite (what CI runs)
# make demo    : the main job end to end on the default dataset (Complete Journey)
# make bench   : the quick benchmarks (JSON on stdout; figures go to BENCHMARKS.md; the others: README)
# make mlflow-ui: MLflow's UI on the local store (runs, sweeps, registered models) at 127.0.0.1:5000
# make tensorboard: TensorBoard on TB_LOGDIR (default artifacts/ray_results) at 127.0.0.1:6006
# ACCEL=cuda   : install the CUDA fbgemm-gpu instead of fbgemm-gpu-cpu (later targets keep it); the
#                default where nvidia-smi lists a GPU and no setup was made yet, cpu elsewhere
# TORCH_INDEX=https://download.pytorch.org/whl/cpu : torch's CPU build (about 200 MB) where pip
#                would otherwise take PyPI's torch, which brings CUDA's libraries (gigabytes); a
#                .venv already set up keeps its torch (rm -rf .venv first)
# DEMO_ARGS    : options for `make demo` (python -m jobs.demo --help), e.g. DEMO_ARGS=--reuse-data

PYTHON ?= python3
VENV   := .venv
# The last setup's ACCEL until another is asked for: a plain `make demo` after `make setup
# ACCEL=cuda` must not swap the CUDA fbgemm-gpu for the CPU one. A first setup takes CUDA's
# where a GPU answers nvidia-smi: GPU training needs fbgemm's CUDA build.
ACCEL  ?= $(or $(patsubst $(VENV)/.setup-%,%,$(firstword $(wildcard $(VENV)/.setup-*))),$(if $(shell nvidia-smi -L 2>/dev/null | grep -m1 '^GPU'),cuda,cpu))
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH_INDEX ?=
DEMO_ARGS   ?=
STAMP  := $(VENV)/.setup-$(ACCEL)

ifeq ($(ACCEL),cuda)
FBGEMM       := fbgemm-gpu==1.8.0
FBGEMM_OTHER := fbgemm-gpu-cpu
else ifeq ($(ACCEL),cpu)
FBGEMM       := fbgemm-gpu-cpu==1.8.0
FBGEMM_OTHER := fbgemm-gpu
else
$(error ACCEL must be cpu or cuda, not $(ACCEL))
endif

# One target at a time under make -j: setup, browser and nginx may each run apt-get, whose lock
# refuses a second one.
.NOTPARALLEL:

.PHONY: setup browser nginx cluster-files lint test test-faults test-fast demo bench mlflow-ui tensorboard clean distclean

setup: $(STAMP)

# TorchRec's install order matters: `pip install torchrec` alone pulls the CUDA fbgemm-gpu,
# which cannot load without CUDA, and both fbgemm packages write the same fbgemm_gpu/ folder.
# A venv whose creation failed halfway (Debian without python3-venv leaves bin/python, no pip) is
# made again rather than reused forever; where venv fails, Debian's python3-venv is installed first. The pinned stack needs Python 3.11 or later (numpy 2.4,
# pandas 3.1): an older one is refused before any download; one other than 3.11 is warned of.
# LightGBM (the boosted ranker) and implicit (ALS) load the system's OpenMP runtime, which minimal
# images lack: Debian's libgomp1 is installed where it is missing. The CUDA fbgemm-gpu cannot load
# beside a CPU torch (a .venv set up for the CPU first, whose torch pip keeps): refused. The stamps
# are removed just before the first change to the venv (not earlier, so that a failed check or
# apt-get keeps the ACCEL the stamp remembers; the CPU torch is refused before, where one is installed): a failed install after the other fbgemm's uninstall would
# otherwise leave the last setup's stamp, and the next `make setup` would do nothing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# A fresh machine's apt-daily holds apt's lists lock for minutes, which `apt-get update` does not
# wait for (DPkg::Lock::Timeout is dpkg's lock alone, which the installs wait for): update is tried
# again every APT_WAIT_S while apt says another holds the lock, for 15 minutes at most; any other
# error (no network, a broken source, no permission to open the lock) stops at once with apt's own
# words. Bounded by the clock, not `timeout`: its child runs in a background process group, where
# sudo's password prompt stops and Ctrl-C does not reach.
APT_WAIT_S ?= 10
APT_UPDATE = sh -c 'end=$$(($$(date +%s) + 900)); until out=$$($(SUDO) env LC_ALL=C apt-get update -qq 2>&1); do case "$$out" in *"Could not get lock"*) [ "$$(date +%s)" -lt "$$end" ] || { echo "apt-get update: gave up after 15 minutes waiting for apt'"'"'s lock" >&2; exit 1; }; echo "apt-get update waits for another apt (apt-daily?) to release its lock"; sleep $(APT_WAIT_S);; *) printf "%s\n" "$$out" >&2; exit 1;; esac; done'
APT_INSTALL = $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq
CUDA_TORCH_CHECK = $(PY) -c "raise SystemExit(__import__('torch').version.cuda is None)" || { echo "error: $(VENV)'s torch is a CPU build, which the CUDA fbgemm-gpu cannot load beside: rm -rf $(VENV), then make setup ACCEL=cuda (without TORCH_INDEX)"; exit 1; }
$(STAMP): pyproject.toml requirements/lock.txt Makefile
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || { \
	  echo "installing Debian's python3-venv, which $(PYTHON) -m venv needs"; rm -rf $(VENV); \
	  $(APT_UPDATE) && $(APT_INSTALL) python3-venv >/dev/null \
	  && $(PYTHON) -m venv $(VENV); } || { \
	  echo "error: $(PYTHON) -m venv failed, and apt-get could not install python3-venv (for another Python than Debian's python3: its own venv package, python3.11-venv say)"; exit 1; }
	@$(PY) -c "raise SystemExit(__import__('sys').version_info[:2] < (3, 11))" || { echo "error: $(VENV) is $$($(PY) --version), the pinned stack needs Python 3.11: rm -rf $(VENV), then make setup PYTHON=python3.11"; exit 1; }
	@$(PY) -c "raise SystemExit(__import__('sys').version_info[:2] != (3, 11))" || echo "warning: $$($(PY) --version) is not Python 3.11, the version the pinned stack was tested on"
	@$(PY) -c "__import__('ctypes').CDLL('libgomp.so.1')" 2>/dev/null || { \
	  echo "installing Debian's libgomp1 (OpenMP), which LightGBM and implicit load"; \
	  $(APT_UPDATE) && $(APT_INSTALL) libgomp1 >/dev/null; } || { \
	  echo "error: no libgomp.so.1 (OpenMP), which LightGBM and implicit load, and apt-get could not install libgomp1"; exit 1; }
	@[ "$(ACCEL)" != cuda ] || ! $(PY) -c "import torch" 2>/dev/null || $(CUDA_TORCH_CHECK)
	@rm -f $(VENV)/.setup-*
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	@[ "$(ACCEL)" != cuda ] || $(CUDA_TORCH_CHECK)
	@if $(PIP) show -q $(FBGEMM_OTHER) 2>/dev/null; then $(PIP) uninstall -q -y $(FBGEMM_OTHER); fi
	$(PIP) install -q $(FBGEMM)
	$(PIP) install -q --no-deps torchrec==1.8.0
	$(PIP) install -q -r requirements/lock.txt
	@touch $@
	@echo "setup done ($(ACCEL)): $(VENV)"

# The report and explorer tests render their pages in headless Chromium (Debian's package;
# the explorer test drives it through Playwright, which then downloads no browser of its own).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium (about 100 MB) for the report and explorer tests"; \
	  $(APT_UPDATE) && $(APT_INSTALL) chromium >/dev/null; } || { \
	  echo "error: no chromium package here (Ubuntu ships it as a snap): install a Chromium whose command is chromium or chromium-browser"; exit 1; }

# The reverse-proxy test runs deploy/nginx/ncf.conf in Debian's nginx on a free port of 127.0.0.1.
# Where no nginx is installed, the package's files are unpacked into the venv (apt-get download,
# dpkg -x: about 530 kB, no root needed once apt's lists exist), not installed: installing it would
# start a system nginx on port 80.
NGINX_DIR := $(VENV)/tools/nginx
nginx: setup
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || [ -x $(NGINX_DIR)/usr/sbin/nginx ] || { \
	  echo "unpacking Debian's nginx into $(NGINX_DIR) for the reverse-proxy test"; \
	  rm -rf $(NGINX_DIR).part && mkdir -p $(NGINX_DIR).part && cd $(NGINX_DIR).part && \
	  { apt-get download -qq nginx 2>/dev/null || { $(APT_UPDATE) && apt-get download -qq nginx 2>/dev/null; }; } && \
	  dpkg -x nginx_*.deb files && [ -x files/usr/sbin/nginx ] && rm -rf ../nginx && mv files ../nginx && cd .. && rm -rf nginx.part; } || { \
	  echo "error: could not unpack Debian's nginx (apt-get download nginx) for the reverse-proxy test"; exit 1; }

# The Ray auth token `ray up` copies to every node (cluster.yaml's file_mounts).
AUTH_TOKEN := $(HOME)/.ray/auth_token

# What `ray up cluster.yaml` copies to every node: the project's files as git sees them (tracked
# and untracked, less what .gitignore ignores), staged afresh into $(CLUSTER_FILES). Ray hashes
# every file of a file mount on each `ray up`, and a changed hash restarts Ray on the nodes:
# pointed at ".", that was .venv and artifacts/ too (gigabytes read, and a restart after any run).
CLUSTER_FILES := .cluster-files
cluster-files:
	@rm -rf $(CLUSTER_FILES).part $(CLUSTER_FILES).tar && mkdir -p $(CLUSTER_FILES).part
	@git ls-files -z --cached --others --exclude-standard > $(CLUSTER_FILES).part/.list
	@tar --null --ignore-failed-read -T $(CLUSTER_FILES).part/.list -cf $(CLUSTER_FILES).tar
	@rm $(CLUSTER_FILES).part/.list && tar -xf $(CLUSTER_FILES).tar -C $(CLUSTER_FILES).part && rm $(CLUSTER_FILES).tar
	@[ "$$(find $(CLUSTER_FILES).part -type f | wc -l)" -gt 0 ] || { echo "error: git ls-files listed no file to stage"; exit 1; }
	@rm -rf $(CLUSTER_FILES) && mv $(CLUSTER_FILES).part $(CLUSTER_FILES) && \
	  echo "$$(find $(CLUSTER_FILES) -type f | wc -l) files staged in $(CLUSTER_FILES) for ray up"
	@# Untracked files go to every node too (new code not committed yet): named, so that a stray key is seen.
	@untracked=$$(git ls-files --others --exclude-standard); [ -z "$$untracked" ] || \
	  echo "of which $$(printf '%s\n' "$$untracked" | wc -l) not in git (every node gets them; .gitignore what should not go): $$(printf '%s\n' "$$untracked" | head -10 | tr '\n' ' ')"
	@# Ray writes the token with the umask (any local ray.init makes one: 0644), and ray up's rsync
	@# copies that mode to every node: a token others can read lets them submit jobs.
	@# (`ls -lL`: the mode of what a link names, in any ls; group's and others' letters.)
	@tok="$(AUTH_TOKEN)"; if [ -f "$$tok" ] && [ "$$(ls -lL "$$tok" | cut -c5-10)" != "------" ]; then \
	  chmod 600 "$$tok" && echo "$$tok was readable by others: made 0600 (ray up copies its mode to every node)"; fi

# ruff: lint and format check (line length 120, pyproject.toml); `ruff format .` fixes the format.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup browser nginx lint
	$(PY) -m pytest -q --durations=15 tests

test-faults: setup browser nginx
	$(PY) -m pytest -q --durations=15 -m faults tests

test-fast: setup
	$(PY) -m pytest -q -m unit tests

# About 15 minutes on 2 cores (BENCHMARKS.md, the demo's rows); DEMO_ARGS passes options.
demo: setup
	$(PY) -m jobs.demo $(DEMO_ARGS)

bench: setup
	$(PY) -m bench.run_all

# The platform records runs and models with mlflow-skinny (in the lock). The UI needs the full
# `mlflow` package, whose pins (pyarrow<26) clash with the lock's pyarrow 26: it gets an
# environment of its own, at the same MLflow
# version (the store's schema), pinned whole in requirements/mlflow-ui.txt, reading the same store.
MLFLOW_VENV  := .venv-mlflow
MLFLOW_STORE ?= sqlite:///artifacts/mlflow.db
MLFLOW_PORT  ?= 5000
# $(call tool_venv,DIR,REQUIREMENTS,TARGET): a tool's own pinned environment (Python 3.11 or newer),
# python3-venv installed from Debian where `venv` lacks it, as make setup does.
define tool_venv
	@$(1)/bin/python -c "raise SystemExit(__import__('sys').version_info[:2] < (3, 11))" 2>/dev/null && $(1)/bin/python -m pip --version >/dev/null 2>&1 || { rm -rf $(1) && $(PYTHON) -m venv $(1); } || { \
	  echo "installing Debian's python3-venv, which $(PYTHON) -m venv needs"; rm -rf $(1); \
	  $(APT_UPDATE) && $(APT_INSTALL) python3-venv >/dev/null \
	  && $(PYTHON) -m venv $(1); } || { \
	  echo "error: $(PYTHON) -m venv failed, and apt-get could not install python3-venv (for another Python than Debian's python3: its own venv package, python3.11-venv say)"; exit 1; }
	@$(1)/bin/python -c "raise SystemExit(__import__('sys').version_info[:2] < (3, 11))" || { echo "error: $$($(1)/bin/python --version) cannot install $(2), which needs Python 3.11: make $(3) PYTHON=python3.11"; rm -rf $(1); exit 1; }
	$(1)/bin/python -m pip --disable-pip-version-check install -q -r $(2)
	@touch $(1)/.setup
endef

$(MLFLOW_VENV)/.setup: Makefile requirements/mlflow-ui.txt
	$(call tool_venv,$(MLFLOW_VENV),requirements/mlflow-ui.txt,mlflow-ui)

mlflow-ui: $(MLFLOW_VENV)/.setup
	@mkdir -p artifacts
	MLFLOW_DISABLE_TELEMETRY=true $(MLFLOW_VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_STORE) --host 127.0.0.1 --port $(MLFLOW_PORT)

# TensorBoard (training curves) pins protobuf and grpcio of its own: an environment of its own too,
# pinned whole in requirements/tensorboard.txt. TB_LOGDIR: a sweep's SWEEP/tune, or artifacts/ray_results.
TB_VENV   := .venv-tensorboard
TB_LOGDIR ?= artifacts/ray_results
TB_PORT   ?= 6006
$(TB_VENV)/.setup: Makefile requirements/tensorboard.txt
	$(call tool_venv,$(TB_VENV),requirements/tensorboard.txt,tensorboard)

tensorboard: $(TB_VENV)/.setup
	$(TB_VENV)/bin/tensorboard --logdir $(TB_LOGDIR) --host 127.0.0.1 --port $(TB_PORT)

# clean: what set-up and the tests make again; distclean: also artifacts/ (DATA, the models, the
# MLflow store and registry, the reports), which only the jobs that wrote them can make again.
clean:
	rm -rf $(VENV) $(MLFLOW_VENV) $(TB_VENV) .pytest_cache $(CLUSTER_FILES) $(CLUSTER_FILES).part $(CLUSTER_FILES).tar

distclean: clean
	rm -rf artifacts
