"""Kubernetes for the pipeline: the only part of ``ptr`` that imports the Kubernetes client and the
kubeflow-training SDK.

* :mod:`ptr.cluster.settings` the cluster section of a pipeline config (plain data, no client);
* :mod:`ptr.cluster.training` the train step on a cluster: file layout, replica command, the job;
* :mod:`ptr.cluster.serving` the deploy and promote steps on a cluster: InferenceServices;
* :mod:`ptr.cluster.pytorchjob` builds the multi-node PyTorchJob that trains, submits it and waits;
* :mod:`ptr.cluster.job_entry` is what each training pod runs (stage in, ``torchrun``, stage out);
* :mod:`ptr.cluster.inference` creates or updates InferenceServices and waits until they are ready.

Stages never import this package; the pipeline steps (:mod:`ptr.pipeline.steps`) call it when the
run's runtime is ``kubernetes``. It never imports :mod:`ptr.pipeline`: it takes typed settings.
"""

RUN_ID_LABEL = "ptr.run_id"
