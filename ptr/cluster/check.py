"""``ptr cluster check``: before a run is submitted, what on this cluster is missing for it.

    ptr cluster check --config pipelines/configs/cluster-example.yaml [--context NAME] [--kfp-host URL]

Prints one ✓/✗ line per fact, with the fix under each ✗, and exits 0 when all hold, 2 otherwise (and,
in one line, when no cluster can be reached). It reads the config's ``run.cluster`` (and the training
shape) and asks the API server, as the user of the kubeconfig context:

* the CRDs a run uses exist (PyTorchJob, InferenceService, ServingRuntime; Profile in multi-user KFP);
* the run's namespace exists (labelled as a KFP profile namespace in multi-user mode);
* the step account can do each thing in :data:`ptr.cluster.rbac.STEP_NEEDS` and the workload account
  none of :data:`~ptr.cluster.rbac.WORKLOAD_FORBIDDEN` (a SubjectAccessReview per account, verb and
  resource — what ``kubectl auth can-i --as=system:serviceaccount:NS:NAME`` asks — or, where the user
  may not create those, the Roles and RoleBindings read and evaluated here);
* the shared volume is Bound and ReadWriteMany; the secrets the config names hold their keys; the
  Secret and ConfigMap KFP's launcher reads are there;
* the images name a registry; KFP answers with the credentials given;
* nodes exist that the GPU pods fit: the config's node selector, tolerations for their taints, enough
  GPUs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from ptr.cluster import kfp_client, rbac
from ptr.cluster.api import load, status, transient
from ptr.cluster.settings import Cluster, Resources, Toleration
from ptr.errors import PtrError

CRDS = {  # CRD -> (group, version, plural) listed in the namespace to see whether it exists
    "pytorchjobs.kubeflow.org": ("kubeflow.org", "v1", "pytorchjobs"),
    "inferenceservices.serving.kserve.io": ("serving.kserve.io", "v1beta1", "inferenceservices"),
    "servingruntimes.serving.kserve.io": ("serving.kserve.io", "v1alpha1", "servingruntimes"),
}
PROFILE_CRD = ("kubeflow.org", "v1", "profiles")
KFP_SECRET, KFP_SECRET_KEYS = "mlpipeline-minio-artifact", ("accesskey", "secretkey")
KFP_CONFIGMAP = "kfp-launcher"
KFP_NAMESPACE_LABEL = "pipelines.kubeflow.org/enabled"
S3_ENDPOINT_ANNOTATION = "serving.kserve.io/s3-endpoint"


class Unreachable(PtrError):
    """No API server answers (no kubeconfig, wrong context, network)."""


@dataclass(frozen=True)
class Result:
    ok: bool
    what: str
    detail: str = ""
    fix: str = ""

    def lines(self) -> list[str]:
        head = f"{'✓' if self.ok else '✗'} {self.what}" + (f": {self.detail}" if self.detail else "")
        return [head] + ([f"    fix: {self.fix}"] if self.fix and not self.ok else [])


@dataclass
class Apis:
    """The API classes the check asks (one FakeKube in the tests)."""

    core: object
    custom: object
    authorization: object
    rbac: object

    @classmethod
    def connect(cls, context: str | None) -> Apis:
        from kubernetes import client, config  # heavy: only when checking a cluster

        try:
            api_client = load(context)
        except (config.ConfigException, FileNotFoundError, OSError) as err:
            raise Unreachable(f"no cluster to check: {err}") from None
        return cls(
            client.CoreV1Api(api_client),
            client.CustomObjectsApi(api_client),
            client.AuthorizationV1Api(api_client),
            client.RbacAuthorizationV1Api(api_client),
        )


def _forbidden(err: BaseException) -> bool:
    return status(err) in (401, 403)


def _answer(err: BaseException) -> str:
    code = status(err)
    return (
        f"the API answered {code} {getattr(err, 'reason', '')}".strip()
        if code
        else f"{type(err).__name__}: {err}"
    )


def registry_qualified(image: str) -> bool:
    """``host[:port]/path:tag`` with a host that is a registry (has a dot or port, or is localhost)."""
    head, sep, _ = image.partition("/")
    return bool(sep) and ("." in head or ":" in head or head == "localhost")


def tolerates(tolerations: Iterable[Toleration], taint) -> bool:
    """Whether a pod with ``tolerations`` may run on a node with ``taint`` (k8s.io/api core/v1
    toleration.go ToleratesTaint)."""
    for t in tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.key and t.key != taint.key:
            continue
        if not t.key and t.operator != "Exists":
            continue
        if t.operator == "Exists" or (t.value or "") == (taint.value or ""):
            return True
    return False


class Preflight:
    def __init__(
        self,
        cluster: Cluster,
        apis: Apis,
        *,
        train_nodes: int = 1,
        kfp_host: str | None = None,
        kfp_connect: Callable | None = None,
        env: dict[str, str] | None = None,
    ):
        self.cluster, self.apis, self.train_nodes = cluster, apis, train_nodes
        self.kfp_host = kfp_host
        self.kfp_connect = kfp_connect or kfp_client.connect
        self.env = dict(os.environ if env is None else env)
        self.namespace = cluster.namespace

    def results(self) -> list[Result]:
        found = [self.namespace_exists()]
        found += self.crds()
        found += self.accounts()
        found += [self.volume(), *self.secrets(), *self.kfp_objects(), *self.images(), self.kfp()]
        found += self.gpu_nodes()
        return [r for r in found if r is not None]

    # -- the namespace, which also tells whether anything answers at all
    def namespace_exists(self) -> Result:
        try:
            ns = self.apis.core.read_namespace(self.namespace)
        except Exception as err:  # noqa: BLE001
            if status(err) == 404:
                return Result(False, f"namespace {self.namespace}", "does not exist", self._apply_fix())
            if _forbidden(err):
                return Result(True, f"namespace {self.namespace}", "exists (you may not read it)")
            if transient(err) or status(err) is None:
                raise Unreachable(f"cannot reach the cluster: {_answer(err)}") from None
            return Result(False, f"namespace {self.namespace}", _answer(err))
        labels = (ns.metadata.labels or {}) if ns.metadata else {}
        if self.cluster.kfp_mode == "multi-user" and labels.get(KFP_NAMESPACE_LABEL) != "true":
            return Result(
                False,
                f"namespace {self.namespace}",
                f"not a KFP profile namespace (no label {KFP_NAMESPACE_LABEL}=true)",
                f"kubectl label namespace {self.namespace} {KFP_NAMESPACE_LABEL}=true (or create it with a "
                "Kubeflow Profile); for standalone KFP set run.cluster.kfp_mode: standalone",
            )
        return Result(
            True, f"namespace {self.namespace}", "exists" + (" (KFP profile namespace)" if labels else "")
        )

    def _apply_fix(self) -> str:
        overlay = "gpu-standalone" if self.cluster.kfp_mode == "standalone" else "gpu"
        return f"kubectl apply -k manifests/overlays/{overlay} (README, 'On a cluster')"

    # -- CRDs: listing one in the namespace answers 404 when the resource type does not exist
    def crds(self) -> list[Result]:
        wanted = dict(CRDS)
        if self.cluster.kfp_mode == "multi-user":
            wanted["profiles.kubeflow.org"] = PROFILE_CRD
        found = []
        for crd, (group, version, plural) in wanted.items():
            try:
                if plural == "profiles":
                    self.apis.custom.list_cluster_custom_object(group, version, plural, limit=1)
                else:
                    self.apis.custom.list_namespaced_custom_object(
                        group, version, self.namespace, plural, limit=1
                    )
            except Exception as err:  # noqa: BLE001
                if status(err) == 404:
                    component = {
                        "kubeflow.org": "the Training Operator v1.9",
                        "serving.kserve.io": "KServe >= 0.15",
                    }
                    if plural == "profiles":
                        what = "Kubeflow's profile controller (multi-user KFP)"
                    else:
                        what = component[group]
                    found.append(Result(False, f"CRD {crd}", "not installed", f"install {what}"))
                    continue
                if not _forbidden(err):
                    found.append(Result(False, f"CRD {crd}", _answer(err)))
                    continue
            found.append(Result(True, f"CRD {crd}", "installed"))
        return found

    # -- what each account may do
    def accounts(self) -> list[Result]:
        found = []
        for account in (self.cluster.service_account, self.cluster.workload_service_account):
            try:
                self.apis.core.read_namespaced_service_account(account, self.namespace)
            except Exception as err:  # noqa: BLE001
                if status(err) == 404:
                    found.append(
                        Result(False, f"service account {account}", "does not exist", self._apply_fix())
                    )
        rbac_objects = None
        for account, needs, want in (
            (self.cluster.service_account, rbac.STEP_NEEDS, True),
            (self.cluster.workload_service_account, rbac.WORKLOAD_FORBIDDEN, False),
        ):
            try:
                answers = {need: self._can(account, need) for need in needs}
                how = "SubjectAccessReview"
            except Exception as err:  # noqa: BLE001
                if not _forbidden(err):
                    found.append(Result(False, f"rights of {account}", f"cannot ask: {_answer(err)}"))
                    continue
                try:
                    rbac_objects = rbac_objects if rbac_objects is not None else self._rbac_objects()
                except Exception as err2:  # noqa: BLE001
                    found.append(
                        Result(
                            False,
                            f"rights of {account}",
                            f"may not ask the API server ({_answer(err)}) nor read Roles ({_answer(err2)})",
                            f"ask your admin: kubectl auth can-i --list -n {self.namespace} "
                            f"--as=system:serviceaccount:{self.namespace}:{account}",
                        )
                    )
                    continue
                answers = {need: rbac.allowed(rbac_objects, self.namespace, account, need) for need in needs}
                how = "Roles and RoleBindings read"
            wrong = [need for need, allowed in answers.items() if allowed != want]
            as_user = f"--as=system:serviceaccount:{self.namespace}:{account}"
            if want:
                found.append(
                    Result(
                        not wrong,
                        f"step account {account} may do what a run does",
                        (f"all {len(needs)} rights ({how})" if not wrong else "cannot " + _rights(wrong)),
                        f"{self._apply_fix()} (Role ptr-pipeline); check with kubectl auth can-i "
                        f"{wrong[0].verb} {wrong[0].resource_path} -n {self.namespace} {as_user}"
                        if wrong
                        else "",
                    )
                )
            else:
                found.append(
                    Result(
                        not wrong,
                        f"workload account {account} has no API rights",
                        (
                            f"none of {len(needs)} checked ({how})"
                            if not wrong
                            else "it can " + _rights(wrong)
                        ),
                        f"remove the RoleBindings that name {account}: kubectl get rolebindings -n "
                        f"{self.namespace} -o wide | grep {account}",
                    )
                )
        return found

    def _can(self, account: str, need: rbac.Need) -> bool:
        from kubernetes import client  # heavy: only when checking a cluster

        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{self.namespace}:{account}",
                groups=[
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{self.namespace}",
                    "system:authenticated",
                ],
                resource_attributes=client.V1ResourceAttributes(**need.attributes(self.namespace)),
            )
        )
        return bool(self.apis.authorization.create_subject_access_review(review).status.allowed)

    def _rbac_objects(self) -> list[dict]:
        from kubernetes.client import ApiClient  # heavy: only when checking a cluster

        found = []
        for kind, items in (
            ("Role", self.apis.rbac.list_namespaced_role(self.namespace).items),
            ("RoleBinding", self.apis.rbac.list_namespaced_role_binding(self.namespace).items),
            ("ClusterRole", self.apis.rbac.list_cluster_role().items),
            ("ClusterRoleBinding", self.apis.rbac.list_cluster_role_binding().items),
        ):
            for item in items:
                found.append({"kind": kind, **ApiClient().sanitize_for_serialization(item)})
        return found

    # -- storage and secrets
    def volume(self) -> Result | None:
        pvc_name = self.cluster.storage.pvc
        if not pvc_name:
            return None
        what = f"volume {pvc_name}"
        try:
            pvc = self.apis.core.read_namespaced_persistent_volume_claim(pvc_name, self.namespace)
        except Exception as err:  # noqa: BLE001
            if status(err) == 404:
                return Result(False, what, "does not exist", self._apply_fix())
            return Result(False, what, _answer(err))
        phase = pvc.status.phase if pvc.status else None
        modes = (
            (pvc.status.access_modes if pvc.status and pvc.status.access_modes else None)
            or pvc.spec.access_modes
            or []
        )
        if phase != "Bound":
            return Result(
                False,
                what,
                f"{phase or 'not bound'} (storageClassName {pvc.spec.storage_class_name or 'the default'})",
                "set storageClassName in your overlay to a ReadWriteMany class (kubectl get storageclass), "
                "then delete and re-apply the PVC",
            )
        if "ReadWriteMany" not in modes:
            return Result(
                False,
                what,
                f"access modes {', '.join(modes)}: training replicas on several nodes and the steps share it",
                "a ReadWriteMany storage class (NFS, CephFS, a cloud file store), or storage.s3_uri",
            )
        return Result(True, what, "Bound, ReadWriteMany")

    def _secret(self, name: str):
        return self.apis.core.read_namespaced_secret(name, self.namespace)

    def secrets(self) -> list[Result]:
        found = []
        for name, keys in sorted(self.cluster.env_secrets.items()):
            what = f"secret {name}"
            try:
                secret = self._secret(name)
            except Exception as err:  # noqa: BLE001
                fix = f"kubectl -n {self.namespace} create secret generic {name} " + " ".join(
                    f"--from-literal={k}=…" for k in keys
                )
                found.append(
                    Result(False, what, "does not exist" if status(err) == 404 else _answer(err), fix)
                )
                continue
            absent = [k for k in keys if k not in (secret.data or {})]
            found.append(
                Result(
                    not absent,
                    what,
                    f"has {', '.join(keys)}" if not absent else f"lacks {', '.join(absent)}",
                    f"recreate it with {', '.join(absent)}" if absent else "",
                )
            )
            if name == self.cluster.storage.s3_secret and self.cluster.storage.s3_uri:
                endpoint = (secret.metadata.annotations or {}).get(S3_ENDPOINT_ANNOTATION)
                found.append(
                    Result(
                        bool(endpoint),
                        f"secret {name} tells KServe's storage initializer the S3 endpoint",
                        endpoint or f"no {S3_ENDPOINT_ANNOTATION} annotation",
                        f"kubectl -n {self.namespace} annotate secret {name} {S3_ENDPOINT_ANNOTATION}=HOST:PORT "
                        "serving.kserve.io/s3-usehttps=0",
                    )
                )
        return found

    def kfp_objects(self) -> list[Result]:
        """The Secret and ConfigMap KFP v2's launcher reads in the run's namespace
        (backend/src/v2/config/env.go: the ConfigMap may be absent, the default artifact store's
        Secret may not)."""
        if self.cluster.kfp_mode == "multi-user":
            fix = (
                f"label the namespace {KFP_NAMESPACE_LABEL}=true (manifests/components/kfp-multi-user) and "
                "give KFP's profile controller a minute to create it"
            )
        else:
            fix = "in standalone mode run.cluster.namespace must be KFP's own namespace (kubeflow)"
        found = []
        try:
            secret = self._secret(KFP_SECRET)
            absent = [k for k in KFP_SECRET_KEYS if k not in (secret.data or {})]
            found.append(
                Result(
                    not absent,
                    f"KFP artifact secret {KFP_SECRET}",
                    "present" if not absent else f"lacks {absent}",
                    fix,
                )
            )
        except Exception as err:  # noqa: BLE001
            found.append(
                Result(
                    False,
                    f"KFP artifact secret {KFP_SECRET}",
                    "absent" if status(err) == 404 else _answer(err),
                    fix,
                )
            )
        try:
            self.apis.core.read_namespaced_config_map(KFP_CONFIGMAP, self.namespace)
            found.append(Result(True, f"KFP launcher config {KFP_CONFIGMAP}", "present"))
        except Exception as err:  # noqa: BLE001
            if status(err) == 404:
                found.append(
                    Result(True, f"KFP launcher config {KFP_CONFIGMAP}", "absent: KFP's defaults apply")
                )
            else:
                found.append(Result(False, f"KFP launcher config {KFP_CONFIGMAP}", _answer(err)))
        return found

    # -- images and KFP
    def images(self) -> list[Result]:
        found = []
        for field, image in (("image", self.cluster.image), ("gpu_image", self.cluster.gpu_image)):
            ok = registry_qualified(image)
            found.append(
                Result(
                    ok,
                    f"run.cluster.{field} names a registry",
                    image if ok else f"{image} would be pulled from Docker Hub",
                    "make images IMAGE_REGISTRY=<registry>; make use-registry IMAGE_REGISTRY=<registry>",
                )
            )
        return found

    def kfp(self) -> Result:
        what = "Kubeflow Pipelines answers"
        if not self.kfp_host:
            return Result(
                False, what, "no KFP endpoint given", "set KFP_HOST (or --kfp-host) to the KFP API's URL"
            )
        how, _ = kfp_client.credentials(self.env)
        try:
            client = self.kfp_connect(
                self.kfp_host, mode=self.cluster.kfp_mode, namespace=self.namespace, env=self.env
            )
            namespace = kfp_client.run_namespace(self.cluster.kfp_mode, self.namespace, self.env)
            client.list_experiments(page_size=1, **({"namespace": namespace} if namespace else {}))
        except PtrError as err:
            return Result(False, what, str(err))
        except Exception as err:  # noqa: BLE001
            code = status(err) or getattr(err, "status", None)
            fix = (
                f"set {kfp_client.TOKEN_ENV} (a bearer token) or {kfp_client.COOKIE_ENV} (the session cookie of "
                "your Dex/oauth2-proxy login)"
                if code in (401, 403)
                else "check KFP_HOST: the KFP API's URL (e.g. https://kubeflow.example.com/pipeline)"
            )
            return Result(
                False, what, f"{self.kfp_host}: {code or type(err).__name__} (credentials: {how})", fix
            )
        return Result(True, what, f"{self.kfp_host} (credentials: {how})")

    # -- nodes for the GPU pods
    def gpu_nodes(self) -> list[Result]:
        wanted = [
            (f"training ({self.train_nodes} node(s))", self.cluster.train_resources, self.train_nodes),
            ("serving", self.cluster.serve_resources, 1),
            ("generation steps", self.cluster.generate_resources, 1),
        ]
        wanted = [w for w in wanted if w[1].gpus]
        if not wanted:
            return []
        try:
            nodes = self.apis.core.list_node().items
        except Exception as err:  # noqa: BLE001
            return [
                Result(
                    False,
                    "GPU nodes",
                    f"cannot list nodes: {_answer(err)}",
                    "ask your admin for `get nodes`, or check by hand: kubectl get nodes --show-labels",
                )
            ]
        return [self._fit(role, resources, count, nodes) for role, resources, count in wanted]

    def _fit(self, role: str, resources: Resources, count: int, nodes) -> Result:
        fitting, reasons = 0, []
        for node in nodes:
            name = node.metadata.name
            labels = node.metadata.labels or {}
            if node.spec and node.spec.unschedulable:
                reasons.append(f"{name}: cordoned")
                continue
            have = int(str((node.status.allocatable or {}).get(resources.gpu_resource, "0")) or 0)
            if have < resources.gpus:
                continue  # not a GPU node for this size: not worth listing
            off = {k: v for k, v in self.cluster.node_selector.items() if labels.get(k) != v}
            if off:
                reasons.append(f"{name}: lacks labels {', '.join(f'{k}={v}' for k, v in off.items())}")
                continue
            untolerated = [
                t
                for t in (node.spec.taints or [] if node.spec else [])
                if t.effect in ("NoSchedule", "NoExecute") and not tolerates(self.cluster.tolerations, t)
            ]
            if untolerated:
                t = untolerated[0]
                reasons.append(
                    f"{name}: taint {t.key}{'=' + t.value if t.value else ''}:{t.effect} not tolerated"
                )
                continue
            fitting += 1
        what = f"nodes for {role}: {resources.gpus} × {resources.gpu_resource} each"
        if fitting >= count:
            return Result(True, what, f"{fitting} fit")
        detail = f"{fitting} of {count} needed fit" + (f" ({'; '.join(reasons[:4])})" if reasons else "")
        return Result(
            False,
            what,
            detail,
            "match run.cluster.node_selector and tolerations to your GPU nodes "
            "(kubectl get nodes -L nvidia.com/gpu.present; kubectl describe node <node> | grep Taints)",
        )


def _rights(needs: list[rbac.Need]) -> str:
    return ", ".join(f"{n.verb} {n.resource_path}" for n in needs)


def load_settings(path: Path) -> tuple[Cluster, int]:
    """``run.cluster`` of a pipeline config, and the training node count."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PtrError(f"{path}: cannot read pipeline config: {err}") from None
    run = raw.get("run") or {}
    if run.get("runtime") != "kubernetes" or not run.get("cluster"):
        raise PtrError(f"{path}: run.runtime is not kubernetes or run.cluster is missing: nothing to check")
    try:
        cluster = Cluster.model_validate(run["cluster"])
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(p) for p in problem["loc"])
        raise PtrError(f"{path}: run.cluster.{field}: {problem['msg']}") from None
    nodes = (raw.get("train") or {}).get("num_nodes", 1)
    if not isinstance(nodes, int) or nodes < 1:
        raise PtrError(f"{path}: train.num_nodes: expected a whole number >= 1, got {nodes!r}")
    return cluster, nodes


def main(argv: list[str] | None = None, *, apis: Apis | None = None, kfp_connect=None) -> int:
    parser = argparse.ArgumentParser(prog="ptr cluster check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the pipeline config (YAML) a run will use")
    parser.add_argument("--context", help="kubeconfig context (default: the current one, or in-cluster)")
    parser.add_argument("--kfp-host", default=os.environ.get("KFP_HOST"), help="KFP API URL (env KFP_HOST)")
    args = parser.parse_args(argv)
    try:
        cluster, nodes = load_settings(Path(args.config))
        apis = apis or Apis.connect(args.context)
        results = Preflight(
            cluster, apis, train_nodes=nodes, kfp_host=args.kfp_host, kfp_connect=kfp_connect
        ).results()
    except PtrError as err:  # Unreachable included: one line
        print(f"✗ {err}" if isinstance(err, Unreachable) else f"error: {err}", file=sys.stderr)
        return 2
    for result in results:
        print("\n".join(result.lines()))
    failed = sum(not r.ok for r in results)
    print(
        f"\n{len(results) - failed} of {len(results)} hold"
        + ("" if not failed else f"; fix the {failed} ✗ above")
    )
    return 0 if not failed else 2


def cluster_main(argv: list[str] | None = None) -> int:
    """``ptr cluster <subcommand>``: only ``check`` for now."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: ptr cluster check --config FILE [--context NAME] [--kfp-host URL]", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return main(argv[1:])
