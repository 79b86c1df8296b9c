# make run   - install into .venv and run the main job (experiments.compare) on the default corpus
# make test  - install into .venv and run the default (fast, CPU) test suite
PYTHON ?= python3
VENV ?= .venv
# Pinned first so that pip never pulls a multi-GB CUDA build onto a machine without a GPU.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# glibc keeps freed memory (no mmap for large blocks, no trimming): fewer page faults per step (benchmarks/allocator.py);
# the entry points (python -m experiments.*) set the same themselves, or jemalloc where the system has it
GLIBC_KEEP := glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776

.PHONY: install run test test-all lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

run: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m experiments.compare

# the fast CPU set plus the Triton kernels under the interpreter (tiny shapes, a few seconds), one pytest
# worker per core (pytest-xdist; tests/conftest.py shares the cores' threads out among the workers)
test: install
	LONGLAB_ALLOCATOR=glibc-keep GLIBC_TUNABLES=$(GLIBC_KEEP) TRITON_INTERPRET=1 $(BIN)/python -m pytest -n auto -m "not slow and not gpu" --durations=15

test-all: install
	LONGLAB_ALLOCATOR=glibc-keep GLIBC_TUNABLES=$(GLIBC_KEEP) TRITON_INTERPRET=1 $(BIN)/python -m pytest -m "not gpu"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs
