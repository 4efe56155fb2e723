"""The Dash dashboard. Pages hold no ML; they call ``app.ml`` and ``app.artifacts``."""
