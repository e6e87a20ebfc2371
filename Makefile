# Entry points named in README.md. `run` and `test` set everything up first (see
# scripts/setup.sh); the set-up reruns only when its inputs change.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= llava-hf/llava-onevision-qwen2-0.5b-ov-hf
SAMPLE := tests/data/vtest_20s
SETUP_STAMP := $(VENV)/.setup-done
SETUP_INPUTS := setup.cfg pyproject.toml scripts/setup.sh $(wildcard ros2_ws/src/streamvlm_msgs/*.txt \
	ros2_ws/src/streamvlm_msgs/*.xml ros2_ws/src/streamvlm_msgs/msg/* ros2_ws/src/streamvlm_msgs/srv/*)

.PHONY: setup run run-eval test sample-bag clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): $(SETUP_INPUTS)
	VENV=$(VENV) scripts/setup.sh
	touch $@

SCENE := build/scene.mcap

# The main job: stream the sample bag, print captions and an answer at 10 s. Where the
# model cannot be reached (no network, not cached), the evaluation model instead.
run: setup
	@if $(PY) -c "import sys; from streamvlm.models import resolve; resolve(sys.argv[1])" $(MODEL) 2>/dev/null; then \
		$(VENV)/bin/streamvlm replay $(SAMPLE) --model $(MODEL) --ask "What is happening?" --at 10; \
	else \
		echo "$(MODEL) cannot be reached: the evaluation model on a synthetic scene instead"; \
		$(MAKE) --no-print-directory run-eval; \
	fi

# The evaluation model (trained offline, see README) on a generated 2-minute scene: its
# captions, and answers to the scene's questions next to the right ones.
run-eval: setup
	test -e $(SCENE) || $(VENV)/bin/streamvlm synth --out $(SCENE) --minutes 2 --seed 1
	$(VENV)/bin/streamvlm replay $(SCENE) --config config/eval.yaml --questions build/scene.questions.json

test: setup
	$(PY) -m pytest -q

# Rebuilds the committed sample bag from OpenCV's vtest.avi (Debian's opencv-doc).
sample-bag: setup
	$(PY) scripts/make_sample_bag.py --out $(SAMPLE)

clean:
	rm -rf $(VENV) build
