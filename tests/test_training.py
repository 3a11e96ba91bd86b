"""Training, registration and the model contract."""

from __future__ import annotations

import json
import subprocess
import sys

import bentoml
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

import train_export
from testkit.byom_datasets import churn_binary, noise_binary, write_csv
from testkit.servers import REPO
from model_store import ModelContractError, load_bundle, stored_model
from model_store import dataset
from model_store.bundle import SCALER_FILE
from model_store.dataset import EXAMPLE_RECORD, FEATURE_NAMES
from model_store.tabular import read_table

FEATURES = dataset.SCHEMA.features


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train_export.py", *args], cwd=REPO, capture_output=True, text=True)


def model_count() -> int:
    return len(bentoml.models.list("xgb_classifier"))


def test_same_data_and_seed_give_the_same_model():
    x, y = dataset.generate(3000, seed=5)
    rounds = 20  # the seed's reach (sampling, the split) shows in any number of rounds
    first, scaler1, metrics1 = train_export.train(x, y, seed=5, rounds=rounds)
    second, scaler2, metrics2 = train_export.train(x, y, seed=5, rounds=rounds)
    assert first.save_raw("ubj") == second.save_raw("ubj")
    np.testing.assert_array_equal(scaler1.mean_, scaler2.mean_)
    assert metrics1 == metrics2
    other, _, _ = train_export.train(x, y, seed=6, rounds=rounds)
    assert other.save_raw("ubj") != first.save_raw("ubj"), "a different seed must change the model"


def test_the_generated_dataset_is_deterministic_and_in_range():
    x1, y1 = dataset.generate(2000, seed=1)
    x2, y2 = dataset.generate(2000, seed=1)
    assert dataset.data_hash(x1, y1) == dataset.data_hash(x2, y2)
    assert dataset.data_hash(x1, y1) != dataset.data_hash(*dataset.generate(2000, seed=2))
    assert np.bincount(y1).tolist() == [400] * 5
    for j, feature in enumerate(FEATURES):
        assert all(feature.in_range(v) for v in x1[:, j]), feature.name


def test_the_seed_example_is_a_valid_record():
    assert list(EXAMPLE_RECORD) == list(FEATURE_NAMES)
    assert all(f.in_range(EXAMPLE_RECORD[f.name]) for f in FEATURES)


def test_cli_registers_booster_scaler_and_metadata(bentoml_home):
    result = run_train("--rows", "3000", "--seed", "9")
    assert result.returncode == 0, result.stderr
    assert "held-out" in result.stdout and "accuracy" in result.stdout
    model = bentoml.models.get("xgb_classifier:latest")
    meta = model.info.metadata
    assert model.info.labels["dataset"] == "synthetic"
    assert meta["training_params"]["max_depth"] == 6 and meta["training_params"]["num_boost_round"] == 100
    assert meta["data_sha256"] == dataset.data_hash(*dataset.generate(3000, 9))
    assert 0.4 < meta["metrics"]["accuracy"] <= 1.0 and meta["metrics"]["log_loss"] > 0
    assert {"xgboost-cpu", "numpy", "bentoml", "scikit-learn"} <= meta["library_versions"].keys()
    assert len(meta["class_prior"]) == 5 and sum(meta["class_prior"]) == pytest.approx(1.0, abs=1e-3)
    assert meta["schema"] == dataset.SCHEMA.to_dict()
    assert load_bundle().tag == str(model.tag)
    bentoml.models.delete(model.tag)  # the default model is the latest again for the other tests


def test_numpy_scaling_equals_the_sklearn_scaler():
    x, y = dataset.generate(2000, seed=3)
    booster, scaler, _ = train_export.train(x, y, seed=3)
    sample = x[:50]
    mean, scale = scaler.mean_, scaler.scale_
    np.testing.assert_allclose((sample - mean) / scale, scaler.transform(sample), rtol=1e-12)


def test_the_dense_predictor_returns_exactly_what_inplace_predict_returns():
    import xgboost

    from model_store.bundle import XGBOOST_VERSION, DensePredictor

    assert xgboost.__version__ == XGBOOST_VERSION, (
        "xgboost changed version: re-check DensePredictor in model_store/bundle.py against it, then update XGBOOST_VERSION"
    )
    x, y = dataset.generate(2000, seed=3)
    booster, scaler, _ = train_export.train(x, y, seed=3)
    predictor = DensePredictor(booster)
    scaled = (x - scaler.mean_) / scaler.scale_
    for rows in (scaled[:1], scaled[:7], scaled[100:356], scaled, np.asfortranarray(scaled[:40]), scaled[::3]):
        expected = booster.inplace_predict(rows, validate_features=False)
        got = predictor(rows)
        assert got.shape == expected.shape == (len(rows), 5)
        np.testing.assert_array_equal(got, expected)
    first = predictor(scaled[:3])
    predictor(scaled[3:9])
    np.testing.assert_array_equal(first, booster.inplace_predict(scaled[:3], validate_features=False)), "results must be copies"


def test_the_dense_predictor_reads_category_codes_as_xgboost_does():
    """XGBoost 3.2's C predict from a dense float array takes a categorical feature's codes as its
    categories, exactly as a DMatrix with the categorical type does (missing values included)."""
    import xgboost as xgb

    from model_store.bundle import DensePredictor

    rng = np.random.default_rng(5)
    x = np.column_stack([rng.integers(0, 6, 2000), rng.normal(size=2000), np.where(rng.random(2000) < 0.2, np.nan, rng.integers(0, 3, 2000))])
    y = np.isin(x[:, 0], [1, 4]) ^ (x[:, 1] > 0.3)
    types = ["c", "q", "c"]
    booster = xgb.train({"objective": "binary:logistic", "max_cat_to_onehot": 1, "max_depth": 4},
                        xgb.DMatrix(x, label=y, feature_types=types, enable_categorical=True), 20)  # fmt: skip
    # A categorical split tests a set of categories: its condition is a list, not a threshold.
    assert any('"split_condition": [' in tree for tree in booster.get_dump(dump_format="json")), "the model must split on categories"
    expected = booster.predict(xgb.DMatrix(x, feature_types=types, enable_categorical=True))
    np.testing.assert_array_equal(DensePredictor(booster)(x)[:, 0], expected)


ROWS = 60


def good(rows: int = ROWS) -> dict[str, list]:
    """A learnable binary CSV: a number, a category with missing values, a True/False label."""
    return {"x": [i % 7 for i in range(rows)], "colour": [["red", "blue", ""][i % 3] for i in range(rows)], "target": [i % 7 > 3 for i in range(rows)]}


GOOD = good()


def test_cli_trains_on_a_users_csv(bentoml_home, tmp_path):
    before = model_count()
    result = run_train("--data", str(write_csv(tmp_path / "ok.csv", GOOD)), "--label", "target", "--rounds", "5")
    assert result.returncode == 0, result.stderr
    assert model_count() == before + 1
    model = bentoml.models.get("xgb_classifier:latest")
    assert model.info.labels == {"framework": "xgboost", "task": "binary", "dataset": "csv"}
    schema = load_bundle(str(model.tag)).schema
    assert schema.class_names == ("False", "True") and [f.kind for f in schema.features] == ["continuous", "categorical"]
    assert schema.features[1].categories == ("blue", "red") and schema.features[1].nullable
    bentoml.models.delete(model.tag)  # the default model is the latest again for the other tests


def _with(**changes) -> dict[str, list]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    "columns,args,message",
    [
        (GOOD, ("--label", "outcome"), "label column 'outcome' is missing"),
        ({**GOOD, "x2": GOOD["x"]}, (), "duplicate column name(s) 'x'"),
        (_with(empty=[""] * ROWS), (), "column 'empty' is empty in every row"),
        (_with(x=[*range(ROWS - 1), "n/a"]), (), "column 'x' mixes numbers with text ('n/a')"),
        (_with(x=[*range(ROWS - 1), "inf"]), (), "column 'x' is not finite: 'inf'"),
        ({**good(300), "id": [f"customer-{i}" for i in range(300)]}, (), "column 'id' has 300 distinct text values (over 256)"),
        (_with(target=["yes"] * ROWS), (), "label 'target' has one class only ('yes')"),
        (_with(target=[i % 3 for i in range(ROWS)]), ("--task", "binary"), "label 'target' has 3 classes; --task binary needs 2"),
        (_with(target=[0] * (ROWS - 1) + [1]), (), "class '1' has 1 row"),
        ({k: v[:20] for k, v in _with(target=[i % 10 for i in range(ROWS)]).items()}, (), "more rows are needed"),
    ],
    ids=["missing label", "duplicate name", "all empty", "mixed column", "infinite value", "identifier column", "one class",
         "binary with 3 classes", "a class of one row", "too few rows to hold out every class"],
)
def test_unusable_csvs_are_refused_naming_the_column_and_register_nothing(bentoml_home, tmp_path, columns, args, message):
    header = ["x", "colour", "target", "x"] if "x2" in columns else None  # two columns both called "x"
    path = write_csv(tmp_path / "bad.csv", columns, header)
    before = model_count()
    result = run_train("--data", str(path), "--label", "target", "--rounds", "5", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "nothing was registered" in result.stderr, result.stderr
    assert model_count() == before


@pytest.mark.parametrize("separator,named", [(";", "';'"), ("\t", "tabs")])
def test_a_csv_saved_with_another_separator_is_refused_saying_so(bentoml_home, tmp_path, separator, named):
    """Excel in many locales saves "CSV" with ';': the one column found is the whole header."""
    path = tmp_path / "semicolons.csv"
    path.write_text(separator.join(GOOD) + "\n" + "".join(separator.join(map(str, row)) + "\n" for row in zip(*GOOD.values())))
    result = run_train("--data", str(path), "--label", "target", "--rounds", "5")
    assert result.returncode == 2 and f"the file looks separated by {named}: save it comma-separated" in result.stderr, result.stderr


def test_missing_model_names_the_tag_and_the_fix(bentoml_home, monkeypatch):
    monkeypatch.setenv("MODEL_TAG", "xgb_classifier:doesnotexist")
    with pytest.raises(ModelContractError, match=r"xgb_classifier:doesnotexist.*make train"):
        stored_model()


def store_legacy_model(feature_schema: list[dict]) -> str:
    """A model as stored before the schema travelled with it: booster + scaler, metadata "feature_schema"."""
    x, y = dataset.generate(500, seed=1)
    booster, scaler, _ = train_export.train(x, y, seed=1)
    with bentoml.models.create("xgb_classifier", metadata={"feature_schema": feature_schema, "class_names": list("01234")}) as model:
        booster.save_model(model.path_of("booster.ubj"))
        with open(model.path_of(SCALER_FILE), "w") as f:
            json.dump({"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}, f)
    return str(model.tag)


def test_a_model_stored_before_schemas_of_another_dataset_is_refused_with_the_fix(bentoml_home, monkeypatch):
    tag = store_legacy_model([{"name": "age"}])
    monkeypatch.setenv("MODEL_TAG", tag)
    try:
        for load in (load_bundle, stored_model):
            with pytest.raises(ModelContractError, match=rf"{tag}.*no feature schema.*make train"):
                load()
    finally:
        bentoml.models.delete(tag)


def test_a_default_model_stored_before_schemas_is_served_with_the_default_schema(bentoml_home, monkeypatch):
    tag = store_legacy_model(dataset.legacy_fingerprint())
    monkeypatch.setenv("MODEL_TAG", tag)
    try:
        assert load_bundle().schema == dataset.SCHEMA
        assert str(stored_model().tag) == tag
    finally:
        bentoml.models.delete(tag)


def test_a_corrupt_scaler_is_refused(bentoml_home, monkeypatch, tmp_path):
    assert run_train("--rows", "1000").returncode == 0
    model = bentoml.models.get("xgb_classifier:latest")  # deleted below: the default model is the latest again
    with open(model.path_of(SCALER_FILE), "w") as f:
        f.write("{not json")
    monkeypatch.setenv("MODEL_TAG", str(model.tag))
    try:
        with pytest.raises(ModelContractError, match="corrupt"):
            load_bundle()
    finally:
        bentoml.models.delete(model.tag)


def test_scaler_file_matches_the_fitted_scaler(bentoml_home):
    x, y = dataset.generate(20_000, dataset.DEFAULT_SEED)
    x_train, *_ = train_export.split(x, y, dataset.DEFAULT_SEED)
    bundle = load_bundle()
    reference = StandardScaler().fit(x_train)
    np.testing.assert_allclose(bundle.mean, reference.mean_)
    np.testing.assert_allclose(bundle.scale, reference.scale_)


def test_a_model_no_better_than_the_class_prior_needs_force(bentoml_home, tmp_path):
    path = str(noise_binary(tmp_path / "noise.csv"))
    before = model_count()
    refused = run_train("--data", path, "--label", "label", "--rounds", "20")
    assert refused.returncode == train_export.EXIT_NO_BETTER, refused.stderr
    assert "no better than the class prior's" in refused.stderr and "--force" in refused.stderr and "nothing was registered" in refused.stderr
    assert model_count() == before
    forced = run_train("--data", path, "--label", "label", "--rounds", "20", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "warning:" in forced.stderr and "no better than" in forced.stderr and "registered anyway" in forced.stderr
    model = bentoml.models.get("xgb_classifier:latest")
    assert model_count() == before + 1 and model.info.metadata["metrics"]["log_loss"] >= model.info.metadata["metrics"]["prior_log_loss"]
    bentoml.models.delete(model.tag)


def test_early_stopping_keeps_the_best_round_on_validation_rows_and_beats_overfitting(bentoml_home, tmp_path):
    path = churn_binary(tmp_path / "churn.csv")  # 600 rows: 100 rounds overfit them
    result = run_train("--data", str(path), "--label", "churn", "--early-stopping", "10")
    assert result.returncode == 0, result.stderr
    model = bentoml.models.get("xgb_classifier:latest")
    params, metrics = model.info.metadata["training_params"], model.info.metadata["metrics"]
    try:
        kept = params["num_boost_round"]
        assert params["early_stopping_rounds"] == 10 and params["max_boost_round"] == 100 and 1 <= kept < 100
        assert f"kept round {kept} of " in result.stdout
        assert load_bundle().booster.num_boosted_rounds() == kept, "the served booster is the kept round's"
        assert metrics["train_rows"] + metrics["validation_rows"] + metrics["test_rows"] == 600 and metrics["validation_rows"] > 0
        table = read_table(str(path), "churn", "auto")
        _, _, full = train_export.train(table.x, table.y, dataset.DEFAULT_SEED, table.schema)
        assert metrics["log_loss"] < full["log_loss"], f"held-out log loss {metrics['log_loss']} early-stopped vs {full['log_loss']} at 100 rounds"
    finally:
        bentoml.models.delete(model.tag)


@pytest.mark.parametrize("args", [("--early-stopping", "-1"), ("--rounds", "0")])
def test_bad_round_counts_are_refused_by_the_cli(args):
    result = run_train(*args)
    assert result.returncode == 2 and "--rounds must be at least 1 and --early-stopping at least 0" in result.stderr, result.stderr


def test_the_prior_check_reads_the_right_metrics():
    assert train_export.no_better_than_prior({"accuracy": 0.9, "log_loss": 0.3, "prior_accuracy": 0.5, "prior_log_loss": 0.69}) is None
    assert "accuracy 0.5000" in train_export.no_better_than_prior({"accuracy": 0.5, "log_loss": 0.6, "prior_accuracy": 0.5, "prior_log_loss": 0.69})
    assert "predicting the training mean" in train_export.no_better_than_prior({"rmse": 2.0, "r2": -0.01, "prior_rmse": 1.99})
    assert train_export.no_better_than_prior({"rmse": 1.0, "r2": 0.7, "prior_rmse": 1.99}) is None


def booster_trained_elsewhere(tmp_path):
    """A binary booster trained with plain XGBoost on codes (a categorical 'kind'), and its data as a CSV."""
    import xgboost as xgb

    rng = np.random.default_rng(0)
    a, flag, kind = rng.normal(size=300), rng.integers(0, 2, 300), rng.integers(0, 3, 300)
    y = ((a + flag + (kind == 1)) > 0.8).astype(int)
    x = np.column_stack([a, flag, kind]).astype(float)
    data = xgb.DMatrix(x, label=y, feature_names=["a", "flag b", "kind"], feature_types=["q", "q", "c"], enable_categorical=True)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, data, 20)
    booster.save_model(tmp_path / "model.json")
    columns = {"kind": [f"k{k}" for k in kind], "a": a.round(6).tolist(), "flag b": flag.tolist(), "y": y.tolist()}
    return tmp_path / "model.json", columns, booster, x


def test_import_registers_a_booster_with_its_sample_schema_and_metrics(bentoml_home, tmp_path):
    path, columns, booster, x = booster_trained_elsewhere(tmp_path)
    sample = write_csv(tmp_path / "sample.csv", columns)
    before = model_count()
    result = run_train("import", "--model", str(path), "--sample", str(sample), "--label", "y")
    assert result.returncode == 0, result.stderr
    model = bentoml.models.get("xgb_classifier:latest")
    try:
        assert model_count() == before + 1 and model.info.labels["dataset"] == "import"
        bundle = load_bundle(str(model.tag))
        assert bundle.schema.task == "binary" and bundle.schema.feature_names == ("a", "flag b", "kind")
        assert bundle.schema.features[2].categories == ("k0", "k1", "k2") and bundle.schema.features[1].kind == "binary"
        assert model.info.metadata["metrics"]["accuracy"] > 0.9 and model.info.metadata["training_params"]["objective"] == "binary:logistic"
        np.testing.assert_allclose(bundle.predict_proba(x[:50])[:, 1], booster.inplace_predict(x[:50]), atol=1e-7)
    finally:
        bentoml.models.delete(model.tag)


def test_import_names_both_missing_and_unknown_columns_in_one_message(bentoml_home, tmp_path):
    path, columns, _, _ = booster_trained_elsewhere(tmp_path)
    columns = {("alpha" if k == "a" else k): v for k, v in columns.items()} | {"extra": columns["y"]}
    before = model_count()
    result = run_train("import", "--model", str(path), "--sample", str(write_csv(tmp_path / "sample.csv", columns)), "--label", "y")
    assert result.returncode == 2
    assert "the columns do not match the model's features: missing 'a'; unknown 'alpha', 'extra'" in result.stderr, result.stderr
    assert model_count() == before


def test_import_without_a_sample_takes_the_schema_from_the_booster(bentoml_home, tmp_path):
    import xgboost as xgb

    path, _, _, _ = booster_trained_elsewhere(tmp_path)
    refused = run_train("import", "--model", str(path))
    assert refused.returncode == 2 and "feature 'kind' is categorical: give --sample" in refused.stderr
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, label=x[:, 0] * 2), 5).save_model(tmp_path / "reg.ubj")
    assert run_train("import", "--model", str(tmp_path / "reg.ubj")).returncode == 0
    model = bentoml.models.get("xgb_classifier:latest")
    try:
        schema = load_bundle(str(model.tag)).schema
        assert schema.task == "regression" and schema.feature_names == ("f0", "f1") and schema.class_names == ()
    finally:
        bentoml.models.delete(model.tag)


@pytest.mark.parametrize(
    "labels,task,class_names",
    [
        ([["b", "a"][i % 2] for i in range(60)], "binary", ("a", "b")),
        ([["x", "y", "z"][i % 3] for i in range(60)], "multiclass", ("x", "y", "z")),
        ([i % 20 for i in range(60)], "multiclass", tuple(map(str, range(20)))),
        ([i % 21 for i in range(63)], "regression", ()),
        ([i / 7 for i in range(60)], "regression", ()),
        ([[3, 1][i % 2] for i in range(60)], "binary", ("1", "3")),
    ],
    ids=["two strings", "three strings", "20 integers", "21 integers", "floats", "two integers"],
)
def test_task_auto_follows_the_label(tmp_path, labels, task, class_names):
    path = write_csv(tmp_path / "t.csv", {"x": list(range(len(labels))), "y": labels})
    table = read_table(str(path), "y")
    assert table.schema.task == task and table.schema.class_names == class_names
    if task != "regression":
        assert [class_names[i] for i in table.y[:4]] == [str(v) for v in labels[:4]]
