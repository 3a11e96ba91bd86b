"""The README's first steps as a new user takes them: a fresh clone, `make train`, plain `bentoml serve`.

`make` and plain `bentoml` commands share BentoML's default store (~/bentoml), as BentoML's own
docs do. HOME points at a temporary directory here, so the real home is never touched.
"""

from __future__ import annotations

import re
import subprocess

import requests
from testkit.servers import BENTOML, REPO, bentoml_serve, environment
from model_store.dataset import EXAMPLE_RECORD


def test_plain_bentoml_serve_in_a_fresh_clone_serves_the_model_make_train_registered(tmp_path):
    clone, home = tmp_path / "clone", tmp_path / "home"
    home.mkdir()
    # The committed tree, as `git clone` gives it to a new user.
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    env = {"HOME": str(home), "BENTOML_HOME": None}  # BentoML's default store, in this HOME
    plain_env = environment(env)
    # This checkout's virtual environment (make install's own work is not what this test is about).
    train = subprocess.run(["make", "train", f"VENV={REPO / '.venv'}"], cwd=clone, env=plain_env,
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    listed = subprocess.run([BENTOML, "models", "list"], cwd=clone, env=plain_env, capture_output=True, text=True, timeout=120)
    tags = re.findall(r"xgb_classifier:\w+", listed.stdout)
    assert len(tags) == 1, listed.stdout + listed.stderr
    tag = tags[0]
    assert (home / "bentoml" / "models" / "xgb_classifier" / tag.split(":")[1]).is_dir()

    server = bentoml_serve(env, workers=1, cwd=clone, service=(), private_bentoml_home=False)  # BentoML's default store
    try:
        server.start(timeout=120)
        answer = requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == tag.split(":")[1]
        served = [line for line in server.log().splitlines() if "serving model" in line]
        assert len(served) == 1, server.log()[-3000:]
        assert re.search(rf"serving model {re.escape(tag)} \(task multiclass, 36 features, created \d{{4}}-\d\d-\d\dT", served[0]), served
    finally:
        server.stop()
