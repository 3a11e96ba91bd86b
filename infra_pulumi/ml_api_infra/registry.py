"""ECR repository for the `bentoml containerize` image: scan on push, immutable tags, lifecycle."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from .settings import StackSettings


def lifecycle_policy(images_to_keep: int) -> str:
    """Untagged layers go after a day; of tagged images, the newest `images_to_keep` stay.

    Rollbacks need old images, so the count is generous; `ops cleanup` trims further on demand.
    """
    return json.dumps({"rules": [
        {"rulePriority": 1, "description": "drop untagged images after 1 day",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                       "countUnit": "days", "countNumber": 1},
         "action": {"type": "expire"}},
        {"rulePriority": 2, "description": f"keep the newest {images_to_keep} images",
         "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                       "countNumber": images_to_keep},
         "action": {"type": "expire"}},
    ]})


class Registry(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:registry:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository = aws.ecr.Repository(
            f"{name}-repo", name=settings.prefix,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "AES256"}],
            force_delete=settings.force_delete_images,
            tags=settings.tags, opts=child)
        aws.ecr.LifecyclePolicy(f"{name}-lifecycle", repository=self.repository.name,
                                policy=lifecycle_policy(settings.images_to_keep), opts=child)
        self.register_outputs({"repositoryUrl": self.repository.repository_url})
