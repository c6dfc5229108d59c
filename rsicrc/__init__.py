"""rsicrc: change captioning and bi-temporal text-to-image retrieval (RSICRC).

This package root stays torch-free on purpose: the deployed runtime imports
`rsicrc.errors`, `rsicrc.vocab`, `rsicrc.config` and `rsicrc.levircc` from it.
Modules that need torch (model, training, PyTorch evaluation) import it themselves.
"""

__version__ = "0.1.0"
