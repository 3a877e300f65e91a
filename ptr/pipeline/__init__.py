"""The pipeline's steps as plain Python: what each Kubeflow component calls.

:mod:`ptr.pipeline.config` defines the typed config sections (each builds its stage's config),
:mod:`ptr.pipeline.steps` one function per step (local or Kubernetes runtime),
:mod:`ptr.pipeline.launch` the local ``torchrun`` launcher, :mod:`ptr.pipeline.local_serve` the
``ptr serve`` process of a local run, and :mod:`ptr.pipeline.report` the base-vs-trained table.
Nothing here imports kfp; what differs on a cluster is in :mod:`ptr.cluster`.
"""
