"""The version of probe, in a module of its own so that reading it (pyproject, the CLI's
--version, the files probe writes) does not import torch and the whole package."""
__version__ = "0.1.0"
