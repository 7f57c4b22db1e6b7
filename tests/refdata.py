"""Paths and loaders for the reference fixtures (copied from the original code's outputs)."""
import json
import os


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
REFERENCE = os.path.join(FIXTURES, "reference")


def reference_config(family, name):
    with open(os.path.join(REFERENCE, family, f"{name}.json")) as fh:
        return json.load(fh)


def reference_checkpoint(family, name):
    return os.path.join(REFERENCE, family, f"{name}.pt")


def load_reference_model(family, name):
    import probe

    return probe.load_model(family, checkpoint=reference_checkpoint(family, name),
                            **reference_config(family, name))
