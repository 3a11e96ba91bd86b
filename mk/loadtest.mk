# Load testing with Locust (loadtest/): the web UI, and headless runs of the seed's stress modes
# with an SLO verdict. Reports (CSV, HTML) go to loadtest/reports/, git-ignored.
HOST ?= http://localhost:$(PORT)
MODE ?= quick
WEB_HOST ?= 127.0.0.1
WEB_PORT ?= 8089
# Extra options for loadtest.stress / Locust, e.g. LOCUST_ARGS="--rate 100 --duration 30" or "--processes 4"
LOCUST_ARGS ?=
LOCUST := $(VENV)/bin/locust

.PHONY: loadtest stress
loadtest: install  ## Locust web UI on http://localhost:8089 against HOST (default http://localhost:3000)
	@case "$(HOST)" in http://*|https://*) ;; *) echo "HOST must be a URL like http://localhost:3000, got '$(HOST)'" >&2; exit 2;; esac
	@echo "==> Locust web UI: http://localhost:$(WEB_PORT) (target $(HOST)); Ctrl-C to stop"
	$(LOCUST) -f loadtest/locustfile.py --host $(HOST) --web-host $(WEB_HOST) --web-port $(WEB_PORT) ApiUser $(LOCUST_ARGS)

stress: install  ## headless load test: MODE=single|quick|stress|health [HOST=...]; fails when an SLO is missed
	$(PY) -m loadtest.stress $(MODE) --host $(HOST) $(LOCUST_ARGS)
