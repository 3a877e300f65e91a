"""Kubernetes for the pipeline: the only part of ``ptr`` that imports the Kubernetes client, the
kubeflow-training SDK and (in :mod:`~ptr.cluster.kfp_client`) the KFP client.

* :mod:`ptr.cluster.settings` the cluster section of a pipeline config (plain data, no client);
* :mod:`ptr.cluster.training` the train step on a cluster: file layout, replica command, the job;
* :mod:`ptr.cluster.serving` the deploy and promote steps on a cluster: InferenceServices;
* :mod:`ptr.cluster.pytorchjob` builds the multi-node PyTorchJob, submits it, follows it (recording
  why replicas fail) and deletes it when the step fails;
* :mod:`ptr.cluster.job_entry` is what each training pod runs (stage in, ``torchrun``, stage out);
* :mod:`ptr.cluster.inference` creates or replaces InferenceServices and waits for their rollout;
* :mod:`ptr.cluster.api` API clients, and retries that outlive the API server's bad moments;
* :mod:`ptr.cluster.kfp_client` KFP credentials, the run's namespace by KFP mode, the run's URL;
* :mod:`ptr.cluster.rbac` the API rights a run needs (and an evaluator of RBAC objects);
* :mod:`ptr.cluster.check` ``ptr cluster check``, the preflight of a cluster against a config.

Stages never import this package; the pipeline steps (:mod:`ptr.pipeline.steps`) call it when the
run's runtime is ``kubernetes``. It never imports :mod:`ptr.pipeline`: it takes typed settings.
"""

RUN_ID_LABEL = "ptr.run_id"
