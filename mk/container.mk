# The service image (issue 7): `bentoml build` + `bentoml containerize` (container/containerize.sh).
#   make image            Docker where an engine answers, buildah otherwise; FROM python:3.11-slim-bookworm
#   make test-container   offline: local Debian base (debootstrap), buildah build, run with podman,
#                         /predict checked against the model in-process (~3 min cold, ~1 min warm)
# buildah and podman keep their images in $(CONTAINER_DIR)/storage, not in the machine's default
# store; `make clean-container` removes it all. It is outside the checkout: `bentoml build` walks
# the whole build context, and a build's layers, the debootstrap root (with /proc mounted) and a
# running container's /tmp volume come and go under it.
APT_PACKAGES += buildah podman runc debootstrap

CONTAINER_DIR ?= /var/tmp/xgb-serving$(CURDIR)/container
# overlay where the kernel has it (fast, shared layers), vfs (plain copies) otherwise.
CONTAINER_STORAGE_DRIVER ?= $(if $(shell grep -w overlay /proc/filesystems 2>/dev/null),overlay,vfs)
CONTAINER_STORAGE_CONF := $(CONTAINER_DIR)/storage.conf
# Set only for these recipes: other targets' tools keep the machine's defaults.
CONTAINER_ENV := CONTAINERS_STORAGE_CONF=$(CONTAINER_STORAGE_CONF) BUILDAH_ISOLATION=chroot XGB_CONTAINER_DIR=$(CONTAINER_DIR)
OFFLINE_BASE_IMAGE ?= localhost/xgb-serving-base:bookworm

.PHONY: image container-base test-container clean-container
$(CONTAINER_STORAGE_CONF):
	@mkdir -p $(CONTAINER_DIR)
	@printf '[storage]\ndriver = "%s"\ngraphroot = "%s"\nrunroot = "%s"\n' \
	  $(CONTAINER_STORAGE_DRIVER) $(CONTAINER_DIR)/storage $(CONTAINER_DIR)/run > $@

image: model $(CONTAINER_STORAGE_CONF)  ## bentoml build + containerize, tagged with the Bento version (BASE_IMAGE=... to change FROM)
	$(CONTAINER_ENV) BENTOML=$(CURDIR)/$(BENTOML) container/containerize.sh

container-base: sysdeps $(CONTAINER_STORAGE_CONF)  ## the local Debian base image for offline builds (cached in CONTAINER_DIR)
	$(CONTAINER_ENV) BASE_IMAGE=$(OFFLINE_BASE_IMAGE) BUILD_DIR=$(CONTAINER_DIR) container/build-base-image.sh

test-container: model container-base  ## build the image offline, run it, check /predict, uid and size
	$(CONTAINER_ENV) $(PY) -m container.smoke_test --base-image $(OFFLINE_BASE_IMAGE)

clean-container:  ## remove the offline base cache and every image in CONTAINER_DIR/storage
	@if [ -f $(CONTAINER_STORAGE_CONF) ]; then \
	  $(CONTAINER_ENV) podman rm --all --force >/dev/null 2>&1; \
	  $(CONTAINER_ENV) buildah rm --all >/dev/null 2>&1; \
	  $(CONTAINER_ENV) buildah rmi --all --force >/dev/null 2>&1; \
	  findmnt -rn -o TARGET | grep "^$(CONTAINER_DIR)/" | sort -r | xargs -r umount; \
	fi; true
	rm -rf $(CONTAINER_DIR)
