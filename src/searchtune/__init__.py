"""searchtune: a Kubeflow Pipelines retraining pipeline for e-commerce search relevance."""

__version__ = "0.1.0"
