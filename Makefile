# Entry points named in README.md. `run` and `test` set everything up first (see
# scripts/setup.sh); the set-up reruns only when its inputs change.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= llava-hf/llava-onevision-qwen2-0.5b-ov-hf
SAMPLE := tests/data/vtest_20s
SETUP_STAMP := $(VENV)/.setup-done
SETUP_INPUTS := setup.cfg pyproject.toml scripts/setup.sh $(wildcard ros2_ws/src/streamvlm_msgs/*.txt \
	ros2_ws/src/streamvlm_msgs/*.xml ros2_ws/src/streamvlm_msgs/msg/* ros2_ws/src/streamvlm_msgs/srv/*)

.PHONY: setup run test sample-bag clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): $(SETUP_INPUTS)
	VENV=$(VENV) scripts/setup.sh
	touch $@

# The main job: stream the sample bag, print captions and an answer at 10 s.
run: setup
	$(VENV)/bin/streamvlm replay $(SAMPLE) --model $(MODEL) --ask "What is happening?" --at 10

test: setup
	$(PY) -m pytest -q

# Rebuilds the committed sample bag from OpenCV's vtest.avi (Debian's opencv-doc).
sample-bag: setup
	$(PY) scripts/make_sample_bag.py --out $(SAMPLE)

clean:
	rm -rf $(VENV) build
