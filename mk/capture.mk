# Capture and model quality (issue 22): the served model's answers joined with the true labels.
.PHONY: quality
quality: install  ## quality of the served model: CAPTURE=<XGB_CAPTURE_URI> LABELS=labels.csv [MARGIN=0.05] [PLOT=quality.png]
	$(PY) -m model_store.quality --capture '$(CAPTURE)' --labels '$(LABELS)' $(if $(MARGIN),--margin $(MARGIN)) $(if $(PLOT),--plot '$(PLOT)')
