"""The pipeline's Kubeflow components: one thin lightweight Python component per stage.

Each runs in the project image (``base_image``; the pipeline sets the image of each task from the
cluster config) and calls one function of :mod:`ptr.pipeline.steps`, which calls the stage. Inputs and
outputs are typed artifacts: Dataset, Model, Metrics, Markdown. The image already holds kfp, so nothing
is installed when a step starts (``install_kfp_package=False``).
"""

from components.ptr_components import (
    deploy_model,
    encode_thoughts,
    evaluate_base,
    evaluate_candidate,
    make_queries,
    make_thoughts,
    promote_candidate,
    register_model,
    train_model,
)

ALL = (
    make_queries,
    make_thoughts,
    encode_thoughts,
    train_model,
    register_model,
    deploy_model,
    evaluate_base,
    evaluate_candidate,
    promote_candidate,
)

__all__ = [c.name for c in ALL]
