"""Wire the components together; return the stack outputs (`__main__` exports them)."""

from __future__ import annotations

import pulumi

from .edge import Edge
from .capture import CaptureBucket
from .iam import TaskRoles
from .image import ServiceImage
from .models import ModelBucket
from .managed_prometheus import ManagedPrometheus
from .network import Network
from .observability import LogGroups, Monitoring
from .registry import Registry
from .scaling import Scaling
from .secrets import ApiKeySecret
from .service import Service
from .settings import StackSettings


def build(settings: StackSettings) -> dict[str, pulumi.Input]:
    name = settings.prefix
    network = Network(name, settings)
    registry = Registry(name, settings)
    image = ServiceImage(name, settings, repository_url=registry.repository.repository_url,
                         repository=registry.repository)
    logs = LogGroups(name, settings)
    secret_arn = ApiKeySecret(name, settings).secret.arn if settings.api_key is not None else None
    models = ModelBucket(name, settings)
    roles = TaskRoles(name, settings, repository_arn=registry.repository.arn,
                      log_group_arn=logs.app.arn, secret_arn=secret_arn, model_bucket=models.bucket.bucket)
    capture = CaptureBucket(name, settings, task_role=roles.task_role) if settings.capture_percent else None
    prometheus = ManagedPrometheus(name, settings, task_role_name=roles.task_role.name)
    edge = Edge(name, settings, vpc_id=network.vpc.id,
                public_subnet_ids=[s.id for s in network.public_subnets],
                waf_log_group_arn=logs.waf.arn)
    service = Service(
        name, settings, vpc_id=network.vpc.id,
        private_subnet_ids=[s.id for s in network.private_subnets],
        image_url=image.image_url,
        log_group_name=logs.app.name, execution_role_arn=roles.execution_role.arn,
        task_role_arn=roles.task_role.arn, target_group_arn=edge.target_group.arn,
        alb_security_group_id=edge.security_group.id, listener=edge.listener, secret_arn=secret_arn,
        capture_uri=capture.uri if capture else None, remote_write_url=prometheus.remote_write_url)
    scaling = Scaling(name, settings, cluster_name=service.cluster.name,
                      service_name=service.service.name,
                      alb_arn_suffix=edge.load_balancer.arn_suffix,
                      target_group_arn_suffix=edge.target_group.arn_suffix)
    monitoring = Monitoring(name, settings, cluster_name=service.cluster.name,
                            service_name=service.service.name, service_arn=service.service.id,
                            alb_arn_suffix=edge.load_balancer.arn_suffix,
                            target_group_arn_suffix=edge.target_group.arn_suffix)
    # The first five are for people; the rest let `python -m ops` find what it operates on.
    return {
        "url": edge.url,
        "ecrRepositoryUrl": registry.repository.repository_url,
        "clusterName": service.cluster.name,
        "serviceName": service.service.name,
        "dashboardUrl": monitoring.dashboard_url,
        "region": settings.region,
        "image": image.image_url,
        "albDnsName": edge.load_balancer.dns_name,
        "ecrRepositoryName": registry.repository.name,
        "logGroupName": logs.app.name,
        "taskFamily": service.task_definition.family,
        # What this `up` registered: `ops deploy` compares it with the service's after `up` (a
        # circuit-breaker rollback satisfies wait_for_steady_state too).
        "taskDefinitionArn": service.task_definition.arn,
        "modelBucket": models.bucket.bucket,
        "albArnSuffix": edge.load_balancer.arn_suffix,
        "targetGroupArn": edge.target_group.arn,
        "targetGroupArnSuffix": edge.target_group.arn_suffix,
        "scalingResourceId": scaling.target.resource_id,
        "minCapacity": settings.min_capacity,
        "maxCapacity": settings.max_capacity,
        **({"captureUri": capture.uri} if capture else {}),
        "prometheusWorkspaceId": prometheus.workspace.id,
        "prometheusEndpoint": prometheus.workspace.prometheus_endpoint,
    }
