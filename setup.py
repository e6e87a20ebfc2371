# colcon's ament_python build calls setup.py; everything is declared in setup.cfg.
from setuptools import setup

setup()
