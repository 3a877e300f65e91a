"""Kubernetes for the pipeline: the only part of ``ptr`` that imports the Kubernetes client and the
kubeflow-training SDK.

* :mod:`ptr.cluster.pytorchjob` builds the multi-node PyTorchJob that trains, submits it and waits;
* :mod:`ptr.cluster.job_entry` is what each training pod runs (stage in, ``torchrun``, stage out);
* :mod:`ptr.cluster.inference` creates or updates InferenceServices and waits until they are ready.

Stages never import this package; the pipeline steps (:mod:`ptr.pipeline.steps`) do, and only when the
run's runtime is ``kubernetes``.
"""

RUN_ID_LABEL = "ptr.run_id"
