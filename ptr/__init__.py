"""Progressive Thought Refinement (PTR) as a Kubernetes-native MLOps system."""

__version__ = "0.1.0"
