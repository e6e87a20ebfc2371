# Everything is declared in setup.cfg. This file exists for colcon's ament_python build,
# which runs `setup.py develop` / `setup.py install` itself.
import sys

from setuptools import setup

options = {}
if {"install", "develop"} & set(sys.argv[1:]):
    # `ros2 run streamvlm <node>` looks in <prefix>/lib/streamvlm, not <prefix>/bin. Only
    # colcon calls these commands: pip builds a wheel and writes console scripts to the
    # environment's bin/, which is what a venv wants (a [develop]/[install] section in
    # setup.cfg would send pip's scripts to lib/streamvlm too).
    options = {"develop": {"script_dir": "$base/lib/streamvlm"},
               "install": {"install_scripts": "$base/lib/streamvlm"}}
setup(options=options)
