"""U-Net Lens: look inside a building-segmentation U-Net.

This package imports nothing heavy at import time: the CLI and the pipeline never build the Dash
app, and page modules never load TensorFlow. It only sets up how TensorFlow starts, before
anything imports it (``app.tf_setup``: quiet C++ start-up logs, one plain line about the devices).
"""

from app import tf_setup

__version__ = "0.1.0"

tf_setup.install()
