"""U-Net Lens: look inside a building-segmentation U-Net.

This package imports nothing heavy at import time: the CLI and the pipeline never build the Dash
app, and page modules never load TensorFlow.
"""

__version__ = "0.1.0"
