"""What tests, benchmarks, the container smoke test and the monitoring stack share to run the service.

    testkit.waiting    wait_until (the one poll loop), wait_settled (a count that stopped changing),
                       http_ready (a URL that answers as wanted)
    testkit.servers    Server: a real process on a free port with its log; BentoServer and bentoml_serve()
                       (started when every worker listens), free_port()
    testkit.inprocess  the service's ASGI app with BentoML's start-up run, behind an HTTP client
    testkit.byom_datasets, testkit.chromium   data sets and a headless browser more than one test uses

Imports no bentoml at module level, so a caller can set BENTOML_HOME first.
"""
