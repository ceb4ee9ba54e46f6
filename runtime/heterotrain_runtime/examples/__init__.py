"""Example training scripts that ship with the runtime, so any worker image with torch can run them
(``python -m heterotrain_runtime.examples.train``)."""
