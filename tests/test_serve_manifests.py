"""InferenceService manifests: rendered from parameters, valid under the real KServe CRD (../shared/crds).

No Kubernetes API server exists here, so validation is against the CRD's own OpenAPI schema (plus a
strict check for unknown fields, as `kubectl apply --validate=strict` would do)."""

import pytest

from ptr.serve.manifests import RUNTIMES, find_crd, inference_service, to_yaml, validate


@pytest.fixture(scope="module")
def crd():
    path = find_crd()
    if path is None:
        pytest.skip("the InferenceService CRD is not at ../shared/crds (or $PTR_CRD_DIR)")
    return path


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("gpus", [0, 2])
@pytest.mark.parametrize("uri", ["s3://models/ptr/run-7/final", "pvc://ptr-models/run-7/final"])
def test_manifests_valid_under_crd(crd, runtime, gpus, uri):
    m = inference_service(
        "ptr-candidate",
        uri,
        runtime=runtime,
        gpus=gpus,
        resources={"cpu": "4", "memory": "16Gi"},
        service_account="ptr-s3",
        labels={"ptr/run": "run-7"},
        namespace="ptr",
        max_replicas=3,
    )
    assert validate(m, crd) == []
    pred = m["spec"]["predictor"]
    assert m["metadata"] == {
        "name": "ptr-candidate",
        "namespace": "ptr",
        "labels": {
            "app.kubernetes.io/name": "ptr",
            "app.kubernetes.io/component": "serving",
            "ptr/run": "run-7",
        },
    }
    assert pred["serviceAccountName"] == "ptr-s3" and pred["maxReplicas"] == 3
    if runtime == "ptr":
        (c,) = pred["containers"]
        assert c["name"] == "kserve-container"
        assert {"name": "STORAGE_URI", "value": uri} in c["env"]
        args = c["args"]
        assert args[:3] == ["serve", "--model_path", "/mnt/models"]
        assert args[args.index("--backend") + 1] == ("vllm" if gpus else "transformers")
        assert args[args.index("--host") + 1] == "0.0.0.0"
        res = c["resources"]
    else:
        model = pred["model"]
        assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == uri
        assert f"--backend={'vllm' if gpus else 'huggingface'}" in model["args"]
        res = model["resources"]
    assert res["limits"]["memory"] == "16Gi"
    assert res["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert "kind: InferenceService" in to_yaml(m)


def test_validation_catches_real_mistakes(crd):
    m = inference_service(
        "ptr", "pvc://claim/model", resources={"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}
    )
    assert validate(m, crd) == []
    c = m["spec"]["predictor"]["containers"][0]
    c["imagee"] = "typo"
    c["resources"]["limits"]["cpu"] = "lots"
    m["spec"]["predictor"]["minReplicas"] = "one"
    problems = "\n".join(validate(m, crd))
    assert "containers[0].imagee: unknown field" in problems
    assert "limits.cpu" in problems
    assert "minReplicas: 'one' is not of type 'integer'" in problems


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "PTR_Model"}, "DNS-1035"),
        ({"model_uri": "models:/ptr@champion"}, "resolve models:/"),
        ({"model_uri": "/local/dir"}, "s3://bucket"),
        ({"runtime": "triton"}, "runtime"),
        ({"gpus": -1}, "gpus"),
        ({"labels": {"a": "not a label!"}}, "label"),
    ],
)
def test_bad_parameters_rejected(kwargs, message):
    args = {"name": "ptr", "model_uri": "s3://b/m", **kwargs}
    with pytest.raises(ValueError, match=message):
        inference_service(args.pop("name"), args.pop("model_uri"), **args)
