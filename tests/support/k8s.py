"""Validate Kubernetes objects: core kinds with kubernetes-validate, custom resources against the CRDs
in ../shared/crds (strict: unknown fields are errors, as ``kubectl apply --validate=strict`` makes them),
and kustomizations rendered with ``kubectl kustomize``."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "crds"
K8S_VERSION = "1.32"  # the kubectl this machine ships; any supported version validates the same kinds


def crd_dir() -> Path:
    """../shared/crds beside the repository (or beside $PTR_DATA_DIR, for a worktree elsewhere)."""
    candidates = [CRDS]
    if os.environ.get("PTR_DATA_DIR"):
        candidates.append(Path(os.environ["PTR_DATA_DIR"]).parent / "crds")
    for path in candidates:
        if path.is_dir():
            return path
    pytest.skip(f"no CRDs to validate against: {CRDS} is absent (it sits beside the repository in CI)")


def _strict(schema):
    """Forbid properties a structural schema does not declare (the API server would prune or reject them)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → strict JSON schema, for every CRD in ../shared/crds."""
    found = {}
    for path in sorted(crd_dir().glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                found[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return found


@functools.cache
def _validator(key: tuple[str, str]):
    """One validator per CRD version (jsonschema.validate would check the 2 MB schema on every call)."""
    import jsonschema

    schema = crd_schemas()[key]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_custom(obj: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    assert key in crd_schemas(), f"no CRD for {key} in {crd_dir()}"
    error = next(iter(sorted(_validator(key).iter_errors(obj), key=lambda e: [str(p) for p in e.path])), None)
    if error is not None:
        raise error


def validate_core(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def kustomize(path: Path) -> list[dict]:
    """Render a kustomization with the real kustomize (``kubectl kustomize`` or ``kustomize build``)."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed: cannot render kustomizations")
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


# ------------------------------------------------------------------------------ a recorded fake API
#
# No Kubernetes API server can run on this machine. FakeKube stands in for the kubernetes client's API
# classes (CustomObjectsApi, CoreV1Api, AppsV1Api, ApiextensionsV1Api, AuthorizationV1Api,
# RbacAuthorizationV1Api): it answers from objects the test puts in, in the shapes the real client
# returns (dicts for custom objects, kubernetes model objects for core kinds), raises ApiException with
# the status codes the server would, and records every call.


def model(obj: dict | list, kind: str):
    """A kubernetes client model (``V1Pod``, ``V1PodList``, ...) deserialized from its JSON, as the real
    client builds it from the server's answer."""
    import json
    import types

    from kubernetes.client import ApiClient

    return ApiClient().deserialize(types.SimpleNamespace(data=json.dumps(obj)), kind)


def api_error(status: int, reason: str = ""):
    from kubernetes.client.exceptions import ApiException

    return ApiException(
        status=status, reason=reason or {404: "Not Found", 403: "Forbidden"}.get(status, "Error")
    )


class FakeKube:
    """One fake API server for every API class the cluster code uses (pass the same instance as each)."""

    def __init__(self):
        self.custom: dict[tuple[str, str, str, str], dict] = {}  # (group, plural, namespace, name) -> obj
        self.statuses: dict[tuple[str, str, str, str], list[dict]] = {}  # scripted status per get
        self.errors: dict[str, list[Exception]] = {}  # method name -> exceptions raised first, in order
        self.core: dict[tuple[str, str, str], dict] = {}  # (kind, namespace, name) -> obj (JSON)
        self.pods: list[list[dict]] = []  # scripted pod lists, one per list call (the last repeats)
        self.logs: dict[str, str] = {}
        self.deployments: dict[tuple[str, str], list[dict]] = {}  # scripted Deployment per read
        self.crds: set[str] = set()
        self.nodes: list[dict] = []
        self.rbac: list[dict] = []  # Roles, RoleBindings, ClusterRoles, ClusterRoleBindings
        self.access: dict[tuple[str, str, str, str, str], bool] | None = None  # SAR answers; None: from rbac
        self.sar_forbidden = False
        self.calls: list[tuple] = []
        self.generation: dict[tuple[str, str, str, str], int] = {}

    # -- helpers
    def _fail(self, method: str):
        queue = self.errors.get(method)
        if queue:
            raise queue.pop(0)

    def add(self, group: str, plural: str, obj: dict, statuses: list[dict] | None = None):
        meta = obj["metadata"]
        key = (group, plural, meta.get("namespace", ""), meta["name"])
        self.custom[key] = obj
        if statuses:
            self.statuses[key] = list(statuses)
        return key

    # -- CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        import copy

        from kubernetes.client import ApiClient

        self.calls.append(
            (
                "create",
                plural,
                namespace,
                body["metadata"]["name"] if isinstance(body, dict) else body.metadata.name,
            )
        )
        self._fail("create_namespaced_custom_object")
        body = ApiClient().sanitize_for_serialization(body)
        key = (group, plural, namespace, body["metadata"]["name"])
        if key in self.custom:
            raise api_error(409, "Conflict: AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(generation=1, resourceVersion="1", namespace=namespace)
        self.custom[key] = obj
        return obj

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        import copy

        self.calls.append(("get", plural, namespace, name))
        self._fail("get_namespaced_custom_object")
        key = (group, plural, namespace, name)
        if key not in self.custom:
            raise api_error(404)
        queue = self.statuses.get(key)
        if queue:
            self.custom[key]["status"] = queue.pop(0) if len(queue) > 1 else queue[0]
        obj = copy.deepcopy(self.custom[key])
        if kw.get("async_req"):
            return _Thread(obj)
        return obj

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        import copy

        self.calls.append(("replace", plural, namespace, name))
        self._fail("replace_namespaced_custom_object")
        key = (group, plural, namespace, name)
        if key not in self.custom:
            raise api_error(404)
        current = self.custom[key]["metadata"]
        sent = body["metadata"].get("resourceVersion")
        if sent is None or sent != current.get("resourceVersion"):
            raise api_error(409, "Conflict: the object has been modified")
        obj = copy.deepcopy(body)
        changed = obj.get("spec") != self.custom[key].get("spec")
        obj["metadata"]["generation"] = current.get("generation", 1) + (1 if changed else 0)
        obj["metadata"]["resourceVersion"] = str(int(current.get("resourceVersion", "1")) + 1)
        obj["status"] = self.custom[key].get("status", {})
        self.custom[key] = obj
        return obj

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        self.calls.append(("patch", plural, namespace, name))
        raise AssertionError("merge patch used: it cannot remove keys (use replace)")

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None, **kw):
        self.calls.append(("delete", plural, namespace, name))
        self._fail("delete_namespaced_custom_object")
        key = (group, plural, namespace, name)
        if key not in self.custom:
            raise api_error(404)
        del self.custom[key]
        self.statuses.pop(key, None)

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        self.calls.append(("list", plural, namespace, None))
        self._fail("list_namespaced_custom_object")
        if f"{plural}.{group}" not in self.crds:
            raise api_error(404)  # what the API server answers for a resource type it does not know
        items = [o for (g, p, ns, _), o in self.custom.items() if (g, p, ns) == (group, plural, namespace)]
        return {"items": items}

    def list_cluster_custom_object(self, group, version, plural, **kw):
        self.calls.append(("list", plural, "", None))
        self._fail("list_cluster_custom_object")
        if f"{plural}.{group}" not in self.crds:
            raise api_error(404)
        return {"items": []}

    # -- CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=None, **kw):
        self.calls.append(("list", "pods", namespace, label_selector))
        self._fail("list_namespaced_pod")
        items = (self.pods.pop(0) if len(self.pods) > 1 else self.pods[0]) if self.pods else []
        return model({"items": items}, "V1PodList")

    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None, previous=False, **kw):
        self.calls.append(("log", "pods", namespace, name))
        self._fail("read_namespaced_pod_log")
        if name not in self.logs:
            raise api_error(404)
        lines = self.logs[name].splitlines()
        return "\n".join(lines[-tail_lines:] if tail_lines else lines) + "\n"

    def list_namespaced_event(self, namespace, **kw):
        self.calls.append(("list", "events", namespace, kw.get("field_selector")))
        return model({"items": []}, "CoreV1EventList")

    def _core(self, kind: str, namespace: str, name: str, model_kind: str):
        self.calls.append(("get", kind, namespace, name))
        self._fail(f"read_{kind}")
        if (kind, namespace, name) not in self.core:
            raise api_error(404)
        return model(self.core[(kind, namespace, name)], model_kind)

    def read_namespace(self, name, **kw):
        return self._core("namespace", "", name, "V1Namespace")

    def read_namespaced_persistent_volume_claim(self, name, namespace, **kw):
        return self._core("persistentvolumeclaim", namespace, name, "V1PersistentVolumeClaim")

    def read_namespaced_secret(self, name, namespace, **kw):
        return self._core("secret", namespace, name, "V1Secret")

    def read_namespaced_config_map(self, name, namespace, **kw):
        return self._core("configmap", namespace, name, "V1ConfigMap")

    def read_namespaced_service_account(self, name, namespace, **kw):
        return self._core("serviceaccount", namespace, name, "V1ServiceAccount")

    def list_node(self, **kw):
        self.calls.append(("list", "nodes", "", None))
        self._fail("list_node")
        return model({"items": self.nodes}, "V1NodeList")

    # -- AppsV1Api
    def read_namespaced_deployment(self, name, namespace, **kw):
        self.calls.append(("get", "deployments", namespace, name))
        self._fail("read_namespaced_deployment")
        queue = self.deployments.get((namespace, name))
        if not queue:
            raise api_error(404)
        return model(queue.pop(0) if len(queue) > 1 else queue[0], "V1Deployment")

    # -- ApiextensionsV1Api
    def read_custom_resource_definition(self, name, **kw):
        self.calls.append(("get", "customresourcedefinitions", "", name))
        self._fail("read_custom_resource_definition")
        if name not in self.crds:
            raise api_error(404)
        return model(
            {
                "metadata": {"name": name},
                "spec": {
                    "group": name.split(".", 1)[1],
                    "names": {"kind": "X", "plural": name.split(".")[0]},
                    "scope": "Namespaced",
                    "versions": [],
                },
            },
            "V1CustomResourceDefinition",
        )

    # -- AuthorizationV1Api
    def create_subject_access_review(self, body, **kw):
        from kubernetes.client import ApiClient

        body = ApiClient().sanitize_for_serialization(body)
        attrs = body["spec"]["resourceAttributes"]
        user = body["spec"]["user"]
        self.calls.append(("sar", user, attrs.get("namespace"), attrs))
        if self.sar_forbidden:
            raise api_error(403)
        namespace, account = user.split(":")[2:4]
        need = _need_from(attrs)
        if self.access is not None:
            key = (account, need.verb, need.group, need.resource_path, namespace)
            ok = self.access.get(key, False)
        else:
            from ptr.cluster import rbac

            ok = rbac.allowed(self.rbac, namespace, account, need)
        return model({"spec": body["spec"], "status": {"allowed": ok}}, "V1SubjectAccessReview")

    # -- RbacAuthorizationV1Api
    def _rbac_list(self, kind: str, namespace: str | None):
        items = [
            o
            for o in self.rbac
            if o["kind"] == kind and (namespace is None or o["metadata"].get("namespace") == namespace)
        ]
        return model({"items": items}, f"V1{kind}List")

    def list_namespaced_role(self, namespace, **kw):
        return self._rbac_list("Role", namespace)

    def list_namespaced_role_binding(self, namespace, **kw):
        return self._rbac_list("RoleBinding", namespace)

    def list_cluster_role(self, **kw):
        return self._rbac_list("ClusterRole", None)

    def list_cluster_role_binding(self, **kw):
        return self._rbac_list("ClusterRoleBinding", None)


class _Thread:
    """What ``async_req=True`` returns: the kubeflow-training SDK calls ``.get(timeout)`` on it."""

    def __init__(self, value):
        self.value = value

    def get(self, timeout=None):
        return self.value


def _need_from(attrs: dict):
    from ptr.cluster import rbac

    return rbac.Need(
        attrs["verb"],
        attrs.get("group", ""),
        attrs["resource"],
        attrs.get("subresource", ""),
        attrs.get("name", ""),
    )
