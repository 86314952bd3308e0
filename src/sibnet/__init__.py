"""sibnet: interpretability-guided inductive bias (SIBNet) for medical image deep learning."""

__version__ = "0.1.0"
