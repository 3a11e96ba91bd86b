# Monitoring (issue 5): the no-Docker local stack. `make monitor` runs Prometheus, Alertmanager,
# node exporter and the alert logger in the foreground on the ports below (each a make variable:
# `make monitor PROMETHEUS_PORT=19090`), scraping the service at TARGET (start it first with
# `make serve`). Ctrl-C stops them all. Configs, data and logs: .build/monitor/.
# The docker-compose stack: monitoring/docker-compose.yml.
# docker-compose (v1) only validates monitoring/docker-compose.yml in the tests: no engine needed;
# nginx runs monitoring/nginx.conf in front of a real service in the tests.
APT_PACKAGES += prometheus prometheus-alertmanager prometheus-node-exporter docker-compose nginx
TARGET ?= 127.0.0.1:$(PORT)
# The defaults are monitoring/localstack.py's (tests/test_docs_figures.py checks they agree).
PROMETHEUS_PORT ?= 9090
ALERTMANAGER_PORT ?= 9093
NODE_EXPORTER_PORT ?= 9100
ALERT_LOGGER_PORT ?= 5001

.PHONY: monitor dashboards
monitor: install sysdeps  ## local Prometheus (:PROMETHEUS_PORT) + Alertmanager scraping TARGET (default 127.0.0.1:$(PORT)); Ctrl-C stops
	$(PY) -m monitoring.localstack --target $(TARGET) --workdir .build/monitor \
	  --prometheus-port $(PROMETHEUS_PORT) --alertmanager-port $(ALERTMANAGER_PORT) \
	  --node-exporter-port $(NODE_EXPORTER_PORT) --alert-logger-port $(ALERT_LOGGER_PORT)

dashboards: install  ## regenerate monitoring/grafana/dashboards/*.json from monitoring/dashboards.py
	$(PY) -m monitoring.dashboards

.PHONY: monitor-check
monitor-check: install  ## run every dashboard query against `make monitor`'s Prometheus; report which return data
	$(PY) -m monitoring.check_dashboards --prometheus http://127.0.0.1:$(PROMETHEUS_PORT)
