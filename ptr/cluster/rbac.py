"""What the pipeline's two service accounts must and must not be allowed to do, and a reader of RBAC
objects that answers "can this account do that" the way the API server's RBAC authorizer does.

One table, :data:`STEP_NEEDS`, is the single list of API rights a run uses: the manifests are tested
against it (``manifests/base/rbac.yaml`` must grant exactly these) and ``ptr cluster check`` asks the
cluster for each of them (a SubjectAccessReview, or these same rules applied to the Roles and
RoleBindings it can read). The workload account (training replicas, model servers) gets none, and
:data:`WORKLOAD_FORBIDDEN` names the rights whose absence is checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    """One API right: ``verb`` on ``group``/``resource`` (``subresource``, one object ``name``)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    name: str = ""
    why: str = ""

    @property
    def resource_path(self) -> str:
        """``pods/log``, ``pytorchjobs.kubeflow.org`` — as ``kubectl auth can-i`` writes it."""
        kind = f"{self.resource}.{self.group}" if self.group else self.resource
        kind = f"{kind}/{self.subresource}" if self.subresource else kind
        return f"{kind}/{self.name}" if self.name else kind

    def attributes(self, namespace: str) -> dict:
        """The ``resourceAttributes`` of a SubjectAccessReview asking for this right."""
        attrs = {"namespace": namespace, "verb": self.verb, "group": self.group, "resource": self.resource}
        if self.subresource:
            attrs["subresource"] = self.subresource
        if self.name:
            attrs["name"] = self.name
        return attrs


def _needs(verbs: str, group: str, resource: str, why: str, **kw) -> list[Need]:
    return [Need(verb, group, resource, why=why, **kw) for verb in verbs.split()]


# KFP v2 (kubeflow/pipelines backend/src/v2/config/env.go): the driver and launcher of every step read
# the kfp-launcher ConfigMap (absent is fine, forbidden is an error) and log in to the artifact store
# with the mlpipeline-minio-artifact Secret; Argo's executor (>= 3.4, docs/workflow-rbac.md) reports
# each step's outputs as a WorkflowTaskResult.
KFP_NEEDS = [
    *_needs("get", "", "configmaps", "KFP launcher config", name="kfp-launcher"),
    *_needs("get", "", "secrets", "KFP artifact store login", name="mlpipeline-minio-artifact"),
    *_needs("create patch", "argoproj.io", "workflowtaskresults", "Argo executor step results"),
]
STEP_NEEDS = [
    *KFP_NEEDS,
    *_needs("create get list watch delete", "kubeflow.org", "pytorchjobs", "train step"),
    *_needs(
        "create get list watch update delete", "serving.kserve.io", "inferenceservices", "deploy, promote"
    ),
    *_needs("get list watch", "", "pods", "a failing job's pods"),
    *_needs("get", "", "pods", "a failing job's logs", subresource="log"),
    *_needs("list", "", "events", "why a pod did not start"),
    *_needs("get", "apps", "deployments", "rollout of a raw-mode predictor"),
]
WORKLOAD_FORBIDDEN = [
    *_needs("create", "kubeflow.org", "pytorchjobs", "workloads create nothing"),
    *_needs("create", "serving.kserve.io", "inferenceservices", "workloads create nothing"),
    *_needs("get", "", "secrets", "workloads read no secrets through the API"),
]


def _matches(values: Iterable[str], wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def rule_allows(rule: dict, need: Need) -> bool:
    """One PolicyRule against one right (kubernetes pkg/apis/rbac/v1/evaluation_helpers.go)."""
    resource = f"{need.resource}/{need.subresource}" if need.subresource else need.resource
    resources = rule.get("resources") or []
    return (
        _matches(rule.get("verbs"), need.verb)
        and _matches(rule.get("apiGroups"), need.group)
        and (resource in resources or "*" in resources)
        and (not rule.get("resourceNames") or (need.name and need.name in rule["resourceNames"]))
    )


def _binds(binding: dict, namespace: str, account: str, binding_namespace: str) -> bool:
    for subject in binding.get("subjects") or []:
        if subject.get("kind") == "ServiceAccount" and subject.get("name") == account:
            if (subject.get("namespace") or binding_namespace) == namespace:
                return True
        if subject.get("kind") == "Group" and subject.get("name") in (
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
        ):
            return True
    return False


def granted_rules(objects: list[dict], namespace: str, account: str) -> list[dict]:
    """Every rule that RoleBindings in ``namespace`` (and ClusterRoleBindings) give the account."""
    roles = {
        (o["kind"], o["metadata"].get("namespace", namespace), o["metadata"]["name"]): o for o in objects
    }
    rules: list[dict] = []
    for binding in objects:
        kind = binding.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        where = binding["metadata"].get("namespace", namespace)
        if kind == "RoleBinding" and where != namespace:
            continue
        if not _binds(binding, namespace, account, where):
            continue
        ref = binding["roleRef"]
        role_ns = where if ref["kind"] == "Role" else namespace
        role = roles.get((ref["kind"], role_ns, ref["name"])) or roles.get(
            (ref["kind"], namespace, ref["name"])
        )
        if role is not None:
            rules += role.get("rules") or []
    return rules


def allowed(objects: list[dict], namespace: str, account: str, need: Need) -> bool:
    """Whether the RBAC objects let ``system:serviceaccount:<namespace>:<account>`` have ``need``."""
    return any(rule_allows(rule, need) for rule in granted_rules(objects, namespace, account))


def missing(objects: list[dict], namespace: str, account: str, needs: list[Need]) -> list[Need]:
    return [need for need in needs if not allowed(objects, namespace, account, need)]
