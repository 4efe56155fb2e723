"""Machine learning: plain Python + Keras/TF/scikit-learn. Imports no Dash or Flask."""
