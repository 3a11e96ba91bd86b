# Monitoring (issue 5): the no-Docker local stack. `make monitor` runs Prometheus (:9090),
# Alertmanager (:9093), node exporter (:9100) and the alert logger (:5001) in the foreground,
# scraping the service at TARGET (start it first with `make serve`). Ctrl-C stops them all.
# Configs, data and logs: .build/monitor/. The docker-compose stack: monitoring/docker-compose.yml.
# docker-compose (v1) only validates monitoring/docker-compose.yml in the tests: no engine needed.
APT_PACKAGES += prometheus prometheus-alertmanager prometheus-node-exporter docker-compose
TARGET ?= 127.0.0.1:$(PORT)

.PHONY: monitor dashboards
monitor: install sysdeps  ## local Prometheus + Alertmanager scraping TARGET (default 127.0.0.1:$(PORT)); Ctrl-C stops
	$(PY) -m monitoring.localstack --target $(TARGET) --workdir .build/monitor

dashboards: install  ## regenerate monitoring/grafana/dashboards/*.json from monitoring/dashboards.py
	$(PY) -m monitoring.dashboards

.PHONY: monitor-check
monitor-check: install  ## run every dashboard query against `make monitor`'s Prometheus; report which return data
	$(PY) -m monitoring.check_dashboards --prometheus http://127.0.0.1:9090
