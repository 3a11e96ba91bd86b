# AWS deployment (issue 6): the Pulumi program (infra_pulumi/) and the ops tool (python -m ops).
# The aws-* targets need AWS credentials; aws-deploy/aws-destroy/infra-preview also need the Pulumi
# CLI and Docker (see docs/deployment.md). test-deploy needs neither: Pulumi runs under mocks, AWS
# under moto, and the service under the task definition's read-only root in a mount namespace.
APT_PACKAGES += util-linux  # unshare, for that mount namespace
OPS_STACK ?= prod
OPS := $(PY) -m ops --stack $(OPS_STACK)

.PHONY: test-deploy infra-preview aws-deploy aws-update aws-promote aws-publish-model aws-rollback aws-status aws-report aws-health aws-logs aws-cleanup aws-scale aws-destroy
test-deploy: install  ## Pulumi program policy tests (mocks) and ops tests (moto/Stubber)
	$(PY) -m pytest tests/test_infra_*.py tests/test_ops_*.py

infra-preview: install  ## pulumi preview of stack OPS_STACK (default prod)
	cd infra_pulumi && pulumi preview --stack $(OPS_STACK)

aws-deploy: model  ## pulumi preview, confirm (YES=1 skips), pulumi up (builds + pushes the image), wait until stable
	$(OPS) deploy $(if $(YES),--yes)

aws-update: model  ## roll out a new image (IMAGE_TAG=... to reuse one already in ECR)
	$(OPS) update $(if $(IMAGE_TAG),--image-tag $(IMAGE_TAG))

aws-publish-model: install  ## upload a model from the store to the stack's model bucket (TAG=... default latest); prints its URI
	$(OPS) publish-model $(TAG)

aws-promote: install  ## make the running candidate model the primary (same image), wait
	$(OPS) promote

aws-rollback: install  ## back to the previous task definition (TO=<image tag> for a given image), wait
	$(OPS) rollback $(if $(TO),--to $(TO))

aws-status: install  ## service, tasks, deployments
	$(OPS) status

aws-report: install  ## status + target health + CloudWatch metrics over MINUTES (default 60)
	$(OPS) report --minutes $(or $(MINUTES),60)

aws-health: install  ## /livez and /readyz through the ALB, target health; non-zero if unhealthy
	$(OPS) health

aws-logs: install  ## service logs since SINCE (default 10m); FOLLOW=1 to tail
	$(OPS) logs --since $(or $(SINCE),10m) $(if $(FOLLOW),--follow)

aws-cleanup: install  ## delete ECR images beyond the newest KEEP (default 10), never those in use
	$(OPS) cleanup --keep $(or $(KEEP),10)

aws-scale: install  ## set the desired task count: make aws-scale N=8
	@test -n "$(N)" || { echo "usage: make aws-scale N=<tasks>" >&2; exit 2; }
	$(OPS) scale $(N)

aws-destroy: install  ## pulumi destroy, then delete the images and the repository (asks for the stack name)
	$(OPS) destroy
