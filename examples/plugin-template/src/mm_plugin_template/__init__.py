"""An mm plugin to copy: a small vision transformer trained on generated shapes."""
